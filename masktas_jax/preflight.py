"""Checks of a run's inputs before anything is written, from what its stages
declare (`stage.Stage`): each stage's own checks, the existing models they
read, the training data and the global batch sizes."""

from __future__ import annotations

from typing import Sequence

from etils import epath

from masktas_jax import config_lib, data, errors, parallel, stage as stage_lib
from masktas_jax.stages import cache as cache_stage
from masktas_jax.storage import model_dirs

# How to check an existing model a stage reads, by the field naming it.
_READERS = {
    stage_lib.TEACHER_CHECKPOINT: (model_dirs.read_teacher_config,
                                   errors.TeacherError),
    stage_lib.SUPERNET: (model_dirs.read_student_config, errors.SupernetError),
}


def check_inputs(config, stages: Sequence[stage_lib.Stage],
                 workdir: epath.Path) -> None:
  """Raises DataError / ConfigError / ... for inputs that cannot work,
  before anything is written."""
  for i, s in enumerate(stages):
    if s.check is not None:
      s.check(config, workdir, frozenset(e.mode for e in stages[:i]))
  # Existing models the stages would read.
  space = config_lib.space_from_config(config)
  for field in dict.fromkeys(f for s in stages for f in s.reads):
    path = config[field]
    if not path:
      continue
    check, error = _READERS[field]
    try:
      check(path, space)
    except error as e:
      message = str(e)
      raise error(message if message.startswith('config.') else
                  f'config.{field}: {message}') from e
  if any(s.data for s in stages):
    # With a cache, every split a run reads must be there before hours of
    # training end in an evaluation that cannot start.
    for split in (cache_stage.splits(config) if config.data.cache else
                  (config.data.train_split,)):
      data.get_source(config.data, split, config.space.image_size)
  for s in stages:
    if s.batch is not None:
      parallel.check_batch_size(config[s.batch].batch_size,
                                f'{s.batch}.batch_size')
