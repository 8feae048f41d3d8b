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
import optax
from etils import epath
from flax import nnx

from masktas_jax import artifacts, config_lib, data, losses, model_dirs
from masktas_jax import parallel, trainer
from masktas_jax.masking import patchify, random_masking


def cast(tree, dtype):
  """Floating leaves of `tree` as `dtype`; the rest unchanged."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, tree)


def make_step(config, student_def, teacher_def, opt, *, draw_arch=None,
              forward=None, freeze=None):
  """The update step `(state, batch, rng, teacher_state) -> (state, metrics)`.

  `state` is `{'params', 'fixed', 'opt_state'}` (pure dicts of the student's
  parameters, its other variables, the optimizer state); `batch['image']` is
  (B, S, S, 3) float32; metrics are the loss and its two terms, scalars.
  With `supernet.compute_dtype='bfloat16'` the forward and backward run in
  bf16 on bf16 copies of the weights; gradients, updates and the losses are
  float32.

  Hooks, for measuring the same step on other students (benchmarks):
  `draw_arch(key)` replaces `space.sample_encoded` (e.g. a fixed encoded
  Arch), `forward(student, images, arch, ids_keep, ids_restore)` replaces
  the student call (e.g. a dense student ignoring `arch`), and `freeze`
  overrides `supernet.freeze_inactive`.
  """
  s = config.supernet
  space = config_lib.space_from_config(config)
  dtype = jnp.dtype(s.compute_dtype)
  draw_arch = draw_arch or space.sample_encoded
  forward = forward or (lambda student, *args: student(*args))
  freeze = s.freeze_inactive if freeze is None else freeze

  def step_fn(state, batch, rng, teacher_state):
    arch_key, mask_key = jax.random.split(rng)
    arch = draw_arch(arch_key)
    images = batch['image']
    ids_keep, mask, ids_restore = random_masking(
        mask_key, images.shape[0], space.num_patches, s.mask_ratio)
    teacher = nnx.merge(teacher_def, cast(teacher_state, dtype))
    z_teacher = jax.lax.stop_gradient(
        teacher.encode(images.astype(dtype), ids_keep)[:, 1:])
    target = patchify(images, space.patch_size)

    def loss_fn(params):
      student = nnx.merge(student_def, cast(params, dtype),
                          cast(state['fixed'], dtype))
      pixels, z_student = forward(student, images.astype(dtype), arch,
                                  ids_keep, ids_restore)
      return losses.student_loss(
          pixels.astype(jnp.float32), target, mask,
          z_student.astype(jnp.float32), z_teacher.astype(jnp.float32),
          s.beta, config.teacher.norm_pix_loss)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt_state = opt.update(grads, state['opt_state'], state['params'])
    if freeze:
      # Weights outside the sampled subnet get exactly zero gradient.
      updates = jax.tree.map(lambda u, g: jnp.where(g != 0, u, 0), updates,
                             grads)
    params = optax.apply_updates(state['params'], updates)
    return {**state, 'params': params, 'opt_state': opt_state}, {
        'loss': loss, **parts}

  return step_fn


def run(config, workdir: epath.Path, stop_at: int = 0):
  """Trains (or resumes) the supernet; returns the final train state, or
  None when `stop_at` ended the run early or there is nothing to train.

  Nothing is trained when `config.search.supernet` names an existing
  supernet (later stages read that one) or when `supernet/model` exists: a
  restarted pipeline goes on from the search.
  """
  s = config.supernet
  existing = artifacts.supernet_model(config, workdir)
  if config.search.supernet or artifacts.is_model_dir(existing, 'student'):
    # Missing or of another space: fails here.
    model_dirs.read_student_meta(existing, config)
    parallel.log(f'supernet: {existing} exists; not training again')
    return None

  # --- teacher (frozen: a constant of the step, not in the train state) ----
  teacher = model_dirs.load_teacher(artifacts.teacher_model(config, workdir),
                                    config)
  teacher_def, teacher_state = nnx.split(teacher)
  teacher_dim = teacher.config.embed_dim

  # --- data -----------------------------------------------------------------
  # A seed of its own: the supernet does not replay the teacher's batches.
  data_iter, steps, warmup = data.training_input(config, 'supernet',
                                                 config.seed + 1)

  # --- model and optimizer --------------------------------------------------
  abstract = nnx.eval_shape(
      lambda: model_dirs.build_student(config, teacher_dim, nnx.Rngs(0)))
  student_def = nnx.split(abstract, nnx.Param, ...)[0]
  # AutoFormer's recipe: lr scaled by batch / 512.
  opt = trainer.adamw(s.base_lr * s.batch_size / 512, steps, warmup,
                      s.weight_decay, clip_norm=s.grad_clip)

  def init_fn(rng):
    student = model_dirs.build_student(config, teacher_dim, nnx.Rngs(rng))
    _, params, fixed = nnx.split(student, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    return {'params': params, 'fixed': nnx.to_pure_dict(fixed),
            'opt_state': opt.init(params)}

  # --- update step ----------------------------------------------------------
  step_fn = make_step(config, student_def, teacher_def, opt)

  # --- loop -----------------------------------------------------------------
  state, reached = trainer.train(
      trainer.LoopConfig.from_config(
          config, 'supernet', artifacts.stage_dir(workdir, 'supernet'), steps,
          s.batch_size, stop_at),
      init_fn=init_fn, step_fn=step_fn, data_iter=data_iter, seed=config.seed,
      constants=nnx.to_pure_dict(teacher_state))
  if reached < steps:
    parallel.log(f'supernet: stopped at step {reached} of {steps}; run '
                 'again to resume')
    return None
  out = artifacts.model_dir(workdir, 'supernet')
  model_dirs.save_student(state, teacher_dim, config, out, overwrite=True)
  parallel.log(f'supernet: trained {steps} steps; wrote {out}')
  return state
