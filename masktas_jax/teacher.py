"""The frozen MAE teacher: its on-disk format, loading, and the teacher stage.

A teacher directory holds `teacher.json` (the MAEConfig) and `params/`, an
Orbax checkpoint of the MAE's state. Both ways of getting a teacher (MAE
pre-training here, `convert_mae` from the official PyTorch checkpoints) write
it with `save_teacher`; every later stage reads it with `load_teacher`.
"""

from __future__ import annotations

import json

from etils import epath
from flax import nnx

from masktas_jax import checkpoint
from masktas_jax.models.mae import MAE, MAEConfig

CONFIG_FILE = 'teacher.json'
PARAMS_DIR = 'params'


class TeacherError(ValueError):
  """A teacher directory that cannot be used with this config."""


def save_teacher(model: MAE, path: epath.PathLike,
                 overwrite: bool = False) -> epath.Path:
  """Writes `model` as a teacher directory at `path`, atomically."""
  with checkpoint.atomic_directory(path, overwrite=overwrite) as scratch:
    (scratch / CONFIG_FILE).write_text(
        json.dumps(model.config.to_dict(), indent=2))
    checkpoint.save_pytree(scratch / PARAMS_DIR,
                           nnx.to_pure_dict(nnx.state(model)))
  return epath.Path(path)


def load_teacher(path: epath.PathLike, config=None) -> MAE:
  """Reads a teacher directory; with a run `config`, checks it fits.

  Raises:
    TeacherError: not a teacher directory, or its patch size or image size
      differs from `config.space`'s.
  """
  path = epath.Path(path)
  meta = path / CONFIG_FILE
  if not meta.exists():
    raise TeacherError(f'{path}: not a teacher directory (no {CONFIG_FILE})')
  try:
    mae_config = MAEConfig.from_dict(json.loads(meta.read_text()))
  except (TypeError, ValueError) as e:
    raise TeacherError(f'{meta}: unreadable teacher config: {e}') from e
  if config is not None:
    for field in ('patch_size', 'image_size'):
      theirs, ours = getattr(mae_config, field), config.space[field]
      if theirs != ours:
        raise TeacherError(
            f'config.teacher.checkpoint: teacher {path} has {field} {theirs} '
            f'but config.space.{field} is {ours}')
  abstract = nnx.eval_shape(lambda: MAE(mae_config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = checkpoint.restore_pytree(path / PARAMS_DIR, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)
