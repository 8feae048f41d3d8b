"""Build, save and load the three models a run writes: the MAE teacher,
the supernet student and the fine-tuned classifier.

Each is a model directory in `artifacts`' format: `teacher.json` (the
MAEConfig), `student.json` (the StudentConfig) or
`classifier.json` (Arch, image and patch size, classes), beside Orbax
`params/`. Stages and tools load models through this module, never through
each other.
"""

from __future__ import annotations

import dataclasses

from etils import epath
from flax import nnx

from masktas_jax.errors import FinetuneError, SupernetError, TeacherError
from masktas_jax.models import vit
from masktas_jax.models.mae import MAE, MAEConfig
from masktas_jax.models.student import Student, StudentConfig
from masktas_jax.space import Arch, ArchError, SearchSpace
from masktas_jax.storage import artifacts

# --- the teacher -------------------------------------------------------------


def save_teacher(model: MAE, path: epath.PathLike,
                 overwrite: bool = False) -> epath.Path:
  """Writes `model` as a teacher directory at `path`, atomically; on every
  process alike when there are several."""
  return artifacts.save_model(path, 'teacher', model.config.to_dict(),
                              nnx.to_pure_dict(nnx.state(model)), overwrite)


def read_teacher_config(path: epath.PathLike,
                        space: SearchSpace | None = None) -> MAEConfig:
  """The MAEConfig of a teacher directory; with the run's `space`, checked
  to fit it.

  Raises:
    TeacherError: not a teacher directory, or its patch size or image size
      differs from `space`'s.
  """
  path = epath.Path(path)
  meta = artifacts.read_meta(path, 'teacher', TeacherError)
  try:
    mae_config = MAEConfig.from_dict(meta)
  except (TypeError, ValueError) as e:
    raise TeacherError(f'{path / artifacts.meta_file("teacher")}: unreadable '
                       f'teacher config: {e}') from e
  if space is not None:
    for field in ('patch_size', 'image_size'):
      theirs, ours = getattr(mae_config, field), getattr(space, field)
      if theirs != ours:
        raise TeacherError(
            f'config.teacher.checkpoint: teacher {path} has {field} {theirs} '
            f'but config.space.{field} is {ours}')
  return mae_config


def load_teacher(path: epath.PathLike, space: SearchSpace | None = None
                 ) -> MAE:
  """Reads a teacher directory; with the run's `space`, checks it fits.

  Raises:
    TeacherError: see `read_teacher_config`; or parameters that do not
      match.
  """
  path = epath.Path(path)
  mae_config = read_teacher_config(path, space)
  abstract = nnx.eval_shape(lambda: MAE(mae_config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = artifacts.load_arrays(path, 'teacher', nnx.to_pure_dict(state),
                               TeacherError)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


# --- the supernet student ----------------------------------------------------


def save_student(state, student_config: StudentConfig,
                 path: epath.PathLike, overwrite: bool = False) -> None:
  """Writes the trained student (no optimizer state) as a model directory:
  `student.json` (its StudentConfig) + `params/`."""
  artifacts.save_model(path, 'student', student_config.to_dict(),
                       {'params': state['params'], 'fixed': state['fixed']},
                       overwrite)


def read_student_config(path: epath.PathLike,
                        space: SearchSpace | None = None) -> StudentConfig:
  """The StudentConfig of the supernet at `path`; with the run's `space`,
  checked to be that space (the number of classes aside).

  Raises:
    SupernetError: no trained supernet at `path`, or one of another space.
  """
  path = epath.Path(path)
  meta = artifacts.read_meta(path, 'student', SupernetError,
                             what='trained supernet',
                             missing='run --config.mode=supernet first')
  try:
    student_config = StudentConfig.from_dict(meta)
  except (KeyError, TypeError, ValueError, ArchError) as e:
    raise SupernetError(f'{path / artifacts.meta_file("student")}: '
                        f'unreadable student config: {e}') from e
  if space is None:
    return student_config
  # The student has no classifier: a supernet serves any number of classes
  # (transfer searches an ImageNet supernet on CIFAR).
  ours = dataclasses.replace(space, num_classes=0).to_dict()
  saved = dataclasses.replace(student_config.space, num_classes=0).to_dict()
  if saved != ours:
    diff = sorted(k for k in ours if saved[k] != ours[k])
    raise SupernetError(
        f'{path}: the supernet was trained on another search space '
        f'(config.space.{diff[0]} is {ours[diff[0]]}, it has '
        f'{saved[diff[0]]})')
  return student_config


def load_student(path: epath.PathLike, space: SearchSpace | None = None
                 ) -> Student:
  """The student `save_student` wrote; with the run's `space`, checked to
  be that space (the number of classes aside). Built with remat, the
  supernet stage's default: loaded students score and extract, for which
  remat changes nothing.

  Raises:
    SupernetError: no trained supernet at `path`, or one of another space.
  """
  path = epath.Path(path)
  student_config = read_student_config(path, space)
  abstract = nnx.eval_shape(lambda: Student(student_config,
                                            rngs=nnx.Rngs(0)))
  graphdef, params, fixed = nnx.split(abstract, nnx.Param, ...)
  pure = artifacts.load_arrays(
      path, 'student', {'params': nnx.to_pure_dict(params),
                        'fixed': nnx.to_pure_dict(fixed)}, SupernetError)
  nnx.replace_by_pure_dict(params, pure['params'])
  nnx.replace_by_pure_dict(fixed, pure['fixed'])
  return nnx.merge(graphdef, params, fixed)


# --- the fine-tuned classifier -----------------------------------------------


def save_classifier(model: vit.VisionTransformer, space: SearchSpace,
                    arch: Arch, path: epath.PathLike) -> None:
  """`path/classifier.json` (Arch, image and patch size, classes, pooling)
  + Orbax `path/params/`."""
  meta = {'arch': arch.to_dict(), 'image_size': space.image_size,
          'patch_size': space.patch_size, 'in_chans': space.in_chans,
          'num_classes': model.head.out_features, 'pool': model.pool}
  artifacts.save_model(path, 'classifier', meta,
                       nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                       overwrite=True)


def load_classifier(path: epath.PathLike) -> vit.VisionTransformer:
  """The fine-tuned classifier at `path` (a `finetune/model` directory):
  `load_classifier(p)(images)` gives logits (B, classes) for normalised
  images (B, S, S, 3)."""
  path = epath.Path(path)
  meta = artifacts.read_meta(path, 'classifier', FinetuneError)
  arch = Arch.from_dict(meta['arch'])
  abstract = nnx.eval_shape(lambda: vit.VisionTransformer(
      embed_dim=arch.embed_dim, num_heads=arch.num_heads,
      mlp_dims=arch.mlp_dims, image_size=meta['image_size'],
      patch_size=meta['patch_size'], num_classes=meta['num_classes'],
      in_chans=meta['in_chans'], rngs=nnx.Rngs(0),
      # Classifiers saved before pooling was a choice read the CLS token.
      pool=meta.get('pool', 'cls')))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  pure = artifacts.load_arrays(path, 'classifier', nnx.to_pure_dict(params),
                               FinetuneError)
  nnx.replace_by_pure_dict(params, pure)
  return nnx.merge(graphdef, params, rest)
