"""mode=teacher: the frozen MAE teacher, pre-trained here or given.

Both ways of getting a teacher (MAE pre-training here, `convert_mae` from
the official PyTorch checkpoints) write a teacher directory with
`model_dirs.save_teacher`; every later stage reads it with
`model_dirs.load_teacher`.
"""

from __future__ import annotations

from etils import epath
from flax import nnx

from masktas_jax import config_lib, data, errors, parallel
from masktas_jax.models.mae import MAE
from masktas_jax.stage import Stage, TEACHER_CHECKPOINT
from masktas_jax.storage import artifacts, model_dirs
from masktas_jax.training import trainer

# The MAE authors' ViT-B encoder, the paper's teacher (encoder only).
MAE_VIT_B_URL = ('https://dl.fbaipublicfiles.com/mae/pretrain/'
                 'mae_pretrain_vit_base.pth')


def make_task(config, steps: int, warmup: int) -> trainer.Task:
  """MAE pre-training as a trainer.Task: the MAE of `config.teacher`, its
  masked pixel loss, AdamW with MAE's recipe (lr scaled by batch / 256,
  betas (0.9, 0.95))."""
  t = config.teacher
  cfg = config_lib.mae_config(config)
  graphdef = nnx.split(nnx.eval_shape(lambda: MAE(cfg, rngs=nnx.Rngs(0))),
                       nnx.Param, ...)[0]

  def init(rng, _):
    _, params, fixed = nnx.split(MAE(cfg, rngs=nnx.Rngs(rng)), nnx.Param, ...)
    # `fixed` (sin-cos tables) rides along untrained, outside the optimizer.
    return nnx.to_pure_dict(params), nnx.to_pure_dict(fixed)

  def loss(params, fixed, batch, rng, _):
    model = nnx.merge(graphdef, params, fixed)
    return model(batch['image'], rng, t.mask_ratio, remat=t.remat)[0], {}

  schedule = trainer.warmup_cosine(t.base_lr * t.batch_size / 256, steps,
                                   warmup)
  return trainer.Task(init=init, loss=loss, schedule=schedule,
                      optimizer=trainer.adamw(schedule, t.weight_decay,
                                              b2=0.95))


def check(config, workdir: epath.Path, earlier: frozenset[str]) -> None:
  """TeacherError when there is no teacher to use, to pre-train or already
  trained in the workdir."""
  del earlier  # No stage before it writes a teacher.
  t = config.teacher
  trained = artifacts.is_model_dir(artifacts.model_dir(workdir, 'teacher'),
                                   'teacher')
  if not (t.checkpoint or t.pretrain or trained):
    raise errors.TeacherError(
        'config.teacher.checkpoint: this config distils from a converted MAE '
        'teacher, as the paper does, and none is given: download '
        f'{MAE_VIT_B_URL}, run python -m masktas_jax.convert_mae '
        '--checkpoint=mae_pretrain_vit_base.pth --output=DIR, and pass '
        '--config.teacher.checkpoint=DIR; or pre-train a MAE here with '
        f'--config.teacher.pretrain=True ({t.epochs} epochs)')


def run(config, workdir: epath.Path) -> MAE:
  """mode=teacher: use `config.teacher.checkpoint`, or pre-train a MAE.

  Training writes `teacher/checkpoints`, `teacher/metrics.jsonl` and
  `teacher/loss.png`, and at the end the teacher directory `teacher/model`
  (when that exists, nothing is trained again).
  """
  t = config.teacher
  if t.checkpoint:
    model = model_dirs.load_teacher(t.checkpoint,
                                     config_lib.space_from_config(config))
    parallel.log(f'teacher: using {t.checkpoint} (width '
                 f'{model.config.embed_dim}, depth {model.config.depth})')
    return model
  model_dir = artifacts.model_dir(workdir, 'teacher')
  data_iter, steps, warmup = data.training_input(
      config.data, t, 'teacher', config.space.image_size, config.seed)
  graphdef = nnx.split(nnx.eval_shape(
      lambda: MAE(config_lib.mae_config(config), rngs=nnx.Rngs(0))),
                       nnx.Param, ...)[0]

  def save(params, fixed, path):
    model_dirs.save_teacher(nnx.merge(graphdef, params, fixed), path)

  outcome = trainer.train(
      trainer.LoopConfig('teacher', artifacts.stage_dir(workdir, 'teacher'),
                         steps, t.batch_size,
                         **config_lib.loop_settings(config)),
      make_task(config, steps, warmup), data_iter, seed=config.seed,
      export=trainer.Export(model_dir, 'teacher', save))
  if outcome.skipped:
    return model_dirs.load_teacher(model_dir,
                                   config_lib.space_from_config(config))
  return nnx.merge(graphdef, outcome.params, outcome.fixed)


STAGE = Stage('teacher', run, check, reads=(TEACHER_CHECKPOINT,),
                    data=True, batch='teacher', pipeline=True)
