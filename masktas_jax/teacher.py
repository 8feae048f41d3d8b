"""The frozen MAE teacher: its on-disk format, loading, and the teacher stage.

A teacher directory holds `teacher.json` (the MAEConfig) and `params/`, an
Orbax checkpoint of the MAE's state. Both ways of getting a teacher (MAE
pre-training here, `convert_mae` from the official PyTorch checkpoints) write
it with `save_teacher`; every later stage reads it with `load_teacher`.
"""

from __future__ import annotations

import jax
import optax
from etils import epath
from flax import nnx

from masktas_jax import artifacts, data, parallel, trainer
from masktas_jax.errors import TeacherError
from masktas_jax.models.mae import MAE, MAEConfig


def save_teacher(model: MAE, path: epath.PathLike,
                 overwrite: bool = False) -> epath.Path:
  """Writes `model` as a teacher directory at `path`, atomically; on every
  process alike when there are several."""
  return artifacts.save_model(path, 'teacher', model.config.to_dict(),
                              nnx.to_pure_dict(nnx.state(model)), overwrite)


def read_config(path: epath.PathLike, config=None) -> MAEConfig:
  """The MAEConfig of a teacher directory; with a run `config`, checked to
  fit it.

  Raises:
    TeacherError: not a teacher directory, or its patch size or image size
      differs from `config.space`'s.
  """
  path = epath.Path(path)
  meta = artifacts.read_meta(path, 'teacher', TeacherError)
  try:
    mae_config = MAEConfig.from_dict(meta)
  except (TypeError, ValueError) as e:
    raise TeacherError(f'{path / artifacts.meta_file("teacher")}: unreadable '
                       f'teacher config: {e}') from e
  if config is not None:
    for field in ('patch_size', 'image_size'):
      theirs, ours = getattr(mae_config, field), config.space[field]
      if theirs != ours:
        raise TeacherError(
            f'config.teacher.checkpoint: teacher {path} has {field} {theirs} '
            f'but config.space.{field} is {ours}')
  return mae_config


def load_teacher(path: epath.PathLike, config=None) -> MAE:
  """Reads a teacher directory; with a run `config`, checks it fits.

  Raises:
    TeacherError: see `read_config`; or parameters that do not match.
  """
  path = epath.Path(path)
  mae_config = read_config(path, config)
  abstract = nnx.eval_shape(lambda: MAE(mae_config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = artifacts.load_arrays(path, 'teacher', nnx.to_pure_dict(state),
                               TeacherError)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def mae_config(config) -> MAEConfig:
  """The MAEConfig that `config.teacher` and `config.space` describe."""
  t, s = config.teacher, config.space
  return MAEConfig(
      image_size=s.image_size, patch_size=s.patch_size, in_chans=s.in_chans,
      embed_dim=t.embed_dim, depth=t.depth, num_heads=t.num_heads,
      decoder_embed_dim=t.decoder_embed_dim, decoder_depth=t.decoder_depth,
      decoder_num_heads=t.decoder_num_heads, norm_pix_loss=t.norm_pix_loss)


def run(config, workdir: epath.Path, stop_at: int = 0) -> MAE | None:
  """mode=teacher: use `config.teacher.checkpoint`, or pre-train a MAE.

  Training writes `teacher/checkpoints`, `teacher/metrics.jsonl` and
  `teacher/loss.png`, and at the end the teacher directory
  `teacher/model` (skipped when it already exists). With `stop_at`, training
  ends early at that step (checkpointed, resumable) and returns None.
  """
  t = config.teacher
  if t.checkpoint:
    model = load_teacher(t.checkpoint, config)
    parallel.log(f'teacher: using {t.checkpoint} (width '
                 f'{model.config.embed_dim}, depth {model.config.depth})')
    return model
  out = artifacts.stage_dir(workdir, 'teacher')
  model_dir = artifacts.model_dir(workdir, 'teacher')
  if artifacts.is_model_dir(model_dir, 'teacher'):
    parallel.log(f'teacher: {model_dir} exists; not training again')
    return load_teacher(model_dir, config)

  # --- data -----------------------------------------------------------------
  data_iter, steps, warmup = data.training_input(config, 'teacher',
                                                 config.seed)

  # --- model and optimizer --------------------------------------------------
  cfg = mae_config(config)
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
  save_teacher(model, model_dir)
  parallel.log(f'teacher: wrote {model_dir}')
  return model
