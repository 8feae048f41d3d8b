"""mode=supernet: masked-distillation training of the student supernet.

Paper Algorithm 1: each step masks the images (MAE masking, the same visible
patches for teacher and student), draws one subnet uniformly from the search
space, and trains it to reconstruct the removed patches and to predict the
frozen teacher's features of the visible ones (eq. 7-11). The subnet is
drawn on device from the step's RNG, so the one compiled step serves every
subnet and every process draws the same one.

Writes `supernet/checkpoints` (student, optimizer, data iterator; never the
teacher), `supernet/metrics.jsonl`, `supernet/loss.png`, and at the end
`supernet/model/` (the trained student alone, what search and fine-tuning
read).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from masktas_jax import config_lib, data, losses, parallel
from masktas_jax.masking import patchify, random_masking
from masktas_jax.models.mae import MAE
from masktas_jax.models.student import Student
from masktas_jax.stage import Stage, SUPERNET, TEACHER_CHECKPOINT
from masktas_jax.storage import artifacts, model_dirs
from masktas_jax.training import trainer


def make_loss(config, student_def, teacher_def, *, forward=None):
  """The loss `(params, fixed, batch, rng, constants) -> (loss, terms)`.

  `params`/`fixed` are pure dicts of the student's parameters and other
  variables; `batch['image']` is (B / V, S, S, 3) float32, each image
  repeated V = `supernet.views_per_image` times (adjacent rows) into the B
  masked views of the step (each mirrored by a coin of its own with
  `supernet.view_flips`); `constants` is
  `{'teacher': the pure state of the teacher's encoder}` (`teacher_def`'s),
  plus optionally `'arch'`, an encoded Arch trained in place of the one
  the step draws (benchmarks, and one compiled step for any forced Arch).
  `terms` are the loss's parts (three with `supernet.cls_target`). With `supernet.compute_dtype=
  'bfloat16'` the forward and backward run in bf16 on bf16 copies of the
  weights; gradients and the losses are float32.

  `forward(student, images, arch, ids_keep, ids_restore)` replaces the
  student call (e.g. a dense student ignoring `arch`, for benchmarks).
  """
  s = config.supernet
  space = config_lib.space_from_config(config)
  dtype = jnp.dtype(s.compute_dtype)
  with_cls = s.cls_target != 'none'
  forward = forward or (lambda student, *args: student(*args, cls=with_cls))

  def loss(params, fixed, batch, rng, constants):
    arch_key, mask_key = jax.random.split(rng)
    arch = constants['arch'] if 'arch' in constants else (
        space.sample_encoded(arch_key))
    # Views of one image (adjacent rows) differ in their masks, and with
    # view_flips in their orientation: the host's flip XOR a fair coin per
    # view is a fair coin per view. Its key is one of its own: the masks
    # and the Arch stay as they are without it.
    images = jnp.repeat(batch['image'], s.views_per_image, axis=0)
    if s.views_per_image > 1 and s.view_flips:
      flip = jax.random.bernoulli(jax.random.fold_in(rng, 1), 0.5,
                                  (images.shape[0],))
      images = jnp.where(flip[:, None, None, None], images[:, :, ::-1],
                         images)
    ids_keep, mask, ids_restore = random_masking(
        mask_key, images.shape[0], space.num_patches, s.mask_ratio)
    teacher = nnx.merge(teacher_def,
                        trainer.cast(constants['teacher'], dtype))
    z_teacher = jax.lax.stop_gradient(
        teacher.encode(images.astype(dtype), ids_keep)).astype(jnp.float32)
    student = nnx.merge(student_def, trainer.cast(params, dtype),
                        trainer.cast(fixed, dtype))
    pixels, z_student = forward(student, images.astype(dtype), arch,
                                ids_keep, ids_restore)
    z_student = z_student.astype(jnp.float32)
    cls_student = cls_teacher = None
    if with_cls:
      if z_student.shape[1] != ids_keep.shape[1] + 1:
        raise ValueError('supernet.cls_target needs the forward to return '
                         'the CLS projection first (cls=True)')
      cls_student, z_student = z_student[:, 0], z_student[:, 1:]
      cls_teacher = losses.cls_prediction_target(z_teacher, s.cls_target)
    return losses.student_loss(
        pixels.astype(jnp.float32), patchify(images, space.patch_size), mask,
        z_student, z_teacher[:, 1:], s.beta, config.teacher.norm_pix_loss,
        cls_student, cls_teacher)

  return loss


def active(grads):
  """True where a gradient is non-zero: the weights of the subnet the step
  trained (the update mask of `supernet.freeze_inactive`)."""
  return jax.tree.map(lambda g: g != 0, grads)


def make_task(config, teacher: MAE, steps: int, warmup: int,
              batch_size: int) -> trainer.Task:
  """The supernet's trainer.Task: the student built for `teacher`'s width,
  the masked-distillation loss, AdamW with AutoFormer's lr scaling (batch /
  512) and, with `supernet.freeze_inactive`, no update outside the drawn
  subnet."""
  s = config.supernet
  # The step reads the teacher's encoder only. XLA drops unused arguments,
  # but the trainer puts every constant on every device: the MAE decoder's
  # weights (~0.1 GB for MAE's ViT-B) would sit in each one's memory.
  teacher_def, teacher_state = nnx.split(teacher.encoder)
  teacher_dim = teacher.config.embed_dim
  student_config = config_lib.student_config(config, teacher_dim)
  student_def = nnx.split(nnx.eval_shape(lambda: Student(
      student_config, rngs=nnx.Rngs(0), remat=s.remat)), nnx.Param, ...)[0]

  def init(rng, _):
    student = Student(student_config, rngs=nnx.Rngs(rng), remat=s.remat)
    _, params, fixed = nnx.split(student, nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(fixed)

  schedule = trainer.warmup_cosine(s.base_lr * batch_size / 512, steps,
                                   warmup)
  return trainer.Task(
      init=init, loss=make_loss(config, student_def, teacher_def),
      optimizer=trainer.adamw(schedule, s.weight_decay, clip_norm=s.grad_clip),
      schedule=schedule, update_mask=active if s.freeze_inactive else None,
      constants={'teacher': nnx.to_pure_dict(teacher_state)})


def run(config, workdir: epath.Path) -> trainer.Outcome | None:
  """Trains (or resumes) the supernet and writes `supernet/model`; returns
  how training ended, or None when `config.search.supernet` names an
  existing supernet (later stages read that one)."""
  s, space = config.supernet, config_lib.space_from_config(config)
  if config.search.supernet:
    # Missing or of another space: fails here.
    model_dirs.read_student_config(config.search.supernet, space)
    parallel.log(f'supernet: using {config.search.supernet}; not training')
    return None
  # A seed of its own: the supernet does not replay the teacher's batches.
  data_iter, steps, warmup = data.training_input(
      config.data, s, 'supernet', space.image_size, config.seed + 1)
  out = artifacts.model_dir(workdir, 'supernet')
  # Looked up when training needs it: an exported supernet is skipped
  # over even where its teacher is gone.
  teacher = lambda: artifacts.teacher_model(config.teacher.checkpoint,
                                            workdir)

  def task():
    # The frozen teacher is a constant of the step, not in the train state.
    return make_task(config, model_dirs.load_teacher(teacher(), space),
                     steps, warmup, s.batch_size)

  def save(params, fixed, path):
    teacher_dim = model_dirs.read_teacher_config(teacher(), space).embed_dim
    model_dirs.save_student({'params': params, 'fixed': fixed},
                            config_lib.student_config(config, teacher_dim),
                            path, overwrite=True)

  return trainer.train(
      trainer.LoopConfig('supernet', artifacts.stage_dir(workdir, 'supernet'),
                         steps, s.batch_size,
                         **config_lib.loop_settings(config)),
      task, data_iter, seed=config.seed,
      # A supernet/model of another space is refused, not skipped over.
      export=trainer.Export(out, 'student', save, check=lambda path: (
          model_dirs.read_student_config(path, space))))


STAGE = Stage('supernet', run,
                    reads=(TEACHER_CHECKPOINT, SUPERNET),
                    data=True, batch='supernet', pipeline=True)
