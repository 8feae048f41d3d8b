"""mode=teacher: the frozen MAE teacher, pre-trained here or given.

Both ways of getting a teacher (MAE pre-training here, `convert_mae` from
the official PyTorch checkpoints) write a teacher directory with
`model_dirs.save_teacher`; every later stage reads it with
`model_dirs.load_teacher`.
"""

from __future__ import annotations

import jax
import optax
from etils import epath
from flax import nnx

from masktas_jax import artifacts, data, model_dirs, parallel, trainer
from masktas_jax.models.mae import MAE


def run(config, workdir: epath.Path, stop_at: int = 0) -> MAE | None:
  """mode=teacher: use `config.teacher.checkpoint`, or pre-train a MAE.

  Training writes `teacher/checkpoints`, `teacher/metrics.jsonl` and
  `teacher/loss.png`, and at the end the teacher directory
  `teacher/model` (skipped when it already exists). With `stop_at`, training
  ends early at that step (checkpointed, resumable) and returns None.
  """
  t = config.teacher
  if t.checkpoint:
    model = model_dirs.load_teacher(t.checkpoint, config)
    parallel.log(f'teacher: using {t.checkpoint} (width '
                 f'{model.config.embed_dim}, depth {model.config.depth})')
    return model
  out = artifacts.stage_dir(workdir, 'teacher')
  model_dir = artifacts.model_dir(workdir, 'teacher')
  if artifacts.is_model_dir(model_dir, 'teacher'):
    parallel.log(f'teacher: {model_dir} exists; not training again')
    return model_dirs.load_teacher(model_dir, config)

  # --- data -----------------------------------------------------------------
  data_iter, steps, warmup = data.training_input(config, 'teacher',
                                                 config.seed)

  # --- model and optimizer --------------------------------------------------
  cfg = model_dirs.mae_config(config)
  graphdef = nnx.split(nnx.eval_shape(lambda: MAE(cfg, rngs=nnx.Rngs(0))),
                       nnx.Param, ...)[0]
  # MAE's recipe: lr scaled by batch / 256, betas (0.9, 0.95).
  opt = trainer.adamw(t.base_lr * t.batch_size / 256, steps, warmup,
                      t.weight_decay, b2=0.95)

  def init_fn(rng):
    _, params, fixed = nnx.split(MAE(cfg, rngs=nnx.Rngs(rng)), nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    # `fixed` (sin-cos tables) rides along untrained, outside the optimizer.
    return {'params': params, 'fixed': nnx.to_pure_dict(fixed),
            'opt_state': opt.init(params)}

  # --- update step ----------------------------------------------------------
  def step_fn(state, batch, rng):

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state['fixed'])
      return model(batch['image'], rng, t.mask_ratio)[0]

    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = opt.update(grads, state['opt_state'], state['params'])
    return {**state, 'params': optax.apply_updates(state['params'], updates),
            'opt_state': opt_state}, {'loss': loss}

  # --- loop, then the teacher directory --------------------------------------
  state, reached = trainer.train(
      trainer.LoopConfig.from_config(config, 'teacher', out, steps,
                                     t.batch_size, stop_at),
      init_fn=init_fn, step_fn=step_fn, data_iter=data_iter, seed=config.seed)
  if reached < steps:
    parallel.log(f'teacher: stopped at step {reached} of {steps}; run '
                 'again to resume')
    return None
  model = nnx.merge(graphdef, state['params'], state['fixed'])
  model_dirs.save_teacher(model, model_dir)
  parallel.log(f'teacher: wrote {model_dir}')
  return model
