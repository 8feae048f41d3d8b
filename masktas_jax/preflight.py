"""Checks of a run's inputs before anything is written: the existing models
it would read, the search window, labels, data and batch sizes."""

from __future__ import annotations

from etils import epath

from masktas_jax import aot, artifacts, config_lib, data, errors, evolution
from masktas_jax import finetune
from masktas_jax import model_dirs, parallel, rank


# The MAE authors' ViT-B encoder, the paper's teacher (encoder only).
MAE_VIT_B_URL = ('https://dl.fbaipublicfiles.com/mae/pretrain/'
                 'mae_pretrain_vit_base.pth')

# Stages that read the training images, and whose global batch must split
# over the devices.
_DATA_STAGES = ('teacher', 'supernet', 'search', 'rank', 'finetune')
_BATCHED_STAGES = ('teacher', 'supernet', 'search', 'finetune')


def check_inputs(config, modes, workdir: epath.Path) -> None:
  """Raises DataError / ConfigError / ... for inputs that cannot work,
  before anything is written."""
  if modes == ('compile',):
    aot.check(config)
    return
  if modes == ('finetune',):
    finetune.resolve_arch(config, workdir, config_lib.space_from_config(config))
  uses = set(modes)
  t = config.teacher
  trained = artifacts.is_model_dir(artifacts.model_dir(workdir, 'teacher'),
                                   'teacher')
  if 'teacher' in uses and not (t.checkpoint or t.pretrain or trained):
    raise errors.TeacherError(
        'config.teacher.checkpoint: this config distils from a converted MAE '
        'teacher, as the paper does, and none is given: download '
        f'{MAE_VIT_B_URL}, run python -m masktas_jax.convert_mae '
        '--checkpoint=mae_pretrain_vit_base.pth --output=DIR, and pass '
        '--config.teacher.checkpoint=DIR; or pre-train a MAE here with '
        f'--config.teacher.pretrain=True ({t.epochs} epochs)')
  # Existing models the stages would read: before anything is written.
  for field, readers, check, error in (
      ('teacher.checkpoint', {'teacher', 'supernet', 'search', 'rank'},
       model_dirs.read_teacher_config, errors.TeacherError),
      ('search.supernet', {'supernet', 'search', 'rank', 'finetune'},
       model_dirs.read_student_meta, errors.SupernetError)):
    path = config[field]
    if path and uses & readers:
      try:
        check(path, config)
      except error as e:
        message = str(e)
        raise error(message if message.startswith('config.') else
                    f'config.{field}: {message}') from e
  if 'search' in modes or 'rank' in modes:
    evolution.check_window(config_lib.space_from_config(config),
                           evolution.Window.from_config(config.search))
  if 'rank' in modes:
    rank.check_labels(config)
  if not any(m in _DATA_STAGES for m in modes):
    return
  data.get_source(config.data, config.data.train_split)
  for mode in modes:
    if mode in _BATCHED_STAGES:
      parallel.check_batch_size(config[mode].batch_size, f'{mode}.batch_size')
