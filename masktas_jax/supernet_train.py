"""mode=supernet: masked-distillation training of the student supernet.

Paper Algorithm 1: each step masks the images (MAE masking, the same visible
patches for teacher and student), draws one subnet uniformly from the search
space, and trains it to reconstruct the removed patches and to predict the
frozen teacher's features of the visible ones (eq. 7-11). The subnet is
drawn on device from the step's RNG, so the one compiled step serves every
subnet and every process draws the same one.

Writes `supernet/checkpoints` (student, optimizer, data iterator; never the
teacher), `supernet/metrics.jsonl` and `supernet/loss.png`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from etils import epath
from flax import nnx

from masktas_jax import config_lib, data, losses, trainer
from masktas_jax import teacher as teacher_lib
from masktas_jax.masking import patchify, random_masking
from masktas_jax.models.student import Student


def teacher_path(config, workdir: epath.Path) -> epath.Path:
  """`config.teacher.checkpoint`, or the teacher the teacher stage wrote."""
  if config.teacher.checkpoint:
    return epath.Path(config.teacher.checkpoint)
  path = workdir / 'teacher' / 'model'
  if not (path / teacher_lib.CONFIG_FILE).exists():
    raise teacher_lib.TeacherError(
        f'config.teacher.checkpoint: empty and no teacher at {path}; run '
        '--config.mode=teacher first or point it at a converted teacher')
  return path


def build_student(config, teacher_dim: int, rngs: nnx.Rngs) -> Student:
  s = config.supernet
  return Student(config_lib.space_from_config(config), teacher_dim=teacher_dim,
                 decoder_dim=s.decoder_embed_dim, decoder_depth=s.decoder_depth,
                 decoder_heads=s.decoder_num_heads, rngs=rngs, remat=s.remat)


def run(config, workdir: epath.Path, stop_at: int = 0):
  """Trains (or resumes) the supernet; returns the final train state, or
  None when `stop_at` ended the run early."""
  s = config.supernet
  space = config_lib.space_from_config(config)

  # --- teacher (frozen: a constant of the step, not in the train state) ----
  teacher = teacher_lib.load_teacher(teacher_path(config, workdir), config)
  teacher_def, teacher_state = nnx.split(teacher)
  teacher_dim = teacher.config.embed_dim

  # --- data -----------------------------------------------------------------
  # A seed of its own: the supernet does not replay the teacher's batches.
  data_iter, steps, warmup = data.training_input(config, 'supernet',
                                                 config.seed + 1)

  # --- model and optimizer --------------------------------------------------
  student_def = nnx.split(
      nnx.eval_shape(lambda: build_student(config, teacher_dim,
                                           nnx.Rngs(0))), nnx.Param, ...)[0]
  # AutoFormer's recipe: lr scaled by batch / 512.
  opt = trainer.adamw(s.base_lr * s.batch_size / 512, steps, warmup,
                      s.weight_decay, clip_norm=s.grad_clip)

  def init_fn(rng):
    _, params, fixed = nnx.split(build_student(config, teacher_dim,
                                               nnx.Rngs(rng)), nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    return {'params': params, 'fixed': nnx.to_pure_dict(fixed),
            'opt_state': opt.init(params)}

  # --- update step ----------------------------------------------------------
  def step_fn(state, batch, rng, teacher_state):
    arch_key, mask_key = jax.random.split(rng)
    arch = space.sample_encoded(arch_key)
    images = batch['image']
    ids_keep, mask, ids_restore = random_masking(
        mask_key, images.shape[0], space.num_patches, s.mask_ratio)
    teacher = nnx.merge(teacher_def, teacher_state)
    z_teacher = jax.lax.stop_gradient(teacher.encode(images, ids_keep)[:, 1:])
    target = patchify(images, space.patch_size)

    def loss_fn(params):
      student = nnx.merge(student_def, params, state['fixed'])
      pixels, z_student = student(images, arch, ids_keep, ids_restore)
      return losses.student_loss(pixels, target, mask, z_student, z_teacher,
                                 s.beta, config.teacher.norm_pix_loss)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt_state = opt.update(grads, state['opt_state'], state['params'])
    if s.freeze_inactive:
      # Weights outside the sampled subnet get exactly zero gradient.
      updates = jax.tree.map(lambda u, g: jnp.where(g != 0, u, 0), updates,
                             grads)
    params = optax.apply_updates(state['params'], updates)
    return {**state, 'params': params, 'opt_state': opt_state}, {
        'loss': loss, **parts}

  # --- loop -----------------------------------------------------------------
  state, reached = trainer.train(
      trainer.LoopConfig('supernet', workdir / 'supernet', steps,
                         s.batch_size, config.checkpoint_every,
                         config.keep_checkpoints, config.log_every, stop_at),
      init_fn=init_fn, step_fn=step_fn, data_iter=data_iter, seed=config.seed,
      constants=nnx.to_pure_dict(teacher_state))
  if reached < steps:
    print(f'supernet: stopped at step {reached} of {steps}; run again to '
          'resume', flush=True)
    return None
  print(f'supernet: trained {steps} steps; checkpoints in '
        f'{workdir / "supernet" / "checkpoints"}', flush=True)
  return state
