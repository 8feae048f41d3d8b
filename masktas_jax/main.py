"""Command line: `python -m masktas_jax.main --config=configs/demo.py --workdir=DIR`.

Override any config field with `--config.KEY=VALUE` (e.g.
`--config.mode=space`, `--config.search.population=20`). Bad input ends with
one line naming the field or file, exit code 2, and nothing in the workdir
touched.
"""

from __future__ import annotations

import importlib
import sys

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from masktas_jax import artifacts, config_lib, data, errors, evolution, finetune
from masktas_jax import model_dirs, parallel, rank
from masktas_jax.errors import MaskTASError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file; override fields with '
    '--config.KEY=VALUE.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints and results go (path or gs://...).')
flags.mark_flags_as_required(['config', 'workdir'])
# Multi-host (launch/): all three, or none to let a TPU pod or SLURM job
# describe itself.
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'host:port of process 0, for multi-host runs.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', 0, 'Number of processes of a multi-host run.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', -1, "This process's index in a multi-host run.")

# mode -> 'module:function(config, workdir)'.
STAGES = {
    'space': 'masktas_jax.report:describe_space',
    'teacher': 'masktas_jax.teacher:run',
    'supernet': 'masktas_jax.supernet_train:run',
    'search': 'masktas_jax.search:run',
    'rank': 'masktas_jax.rank:run',
    'finetune': 'masktas_jax.finetune:run',
    'summary': 'masktas_jax.report:summarize',
}
# Each stage returns at once when its output exists, so a rerun of an
# interrupted pipeline resumes where it stopped.
PIPELINE = ('space', 'teacher', 'supernet', 'search', 'finetune', 'summary')


# Stages that read the training images, and whose global batch must split
# over the devices.
_DATA_STAGES = ('teacher', 'supernet', 'search', 'rank', 'finetune')
_BATCHED_STAGES = ('teacher', 'supernet', 'search', 'finetune')


def _check_inputs(config, modes, workdir: epath.Path) -> None:
  """Raises DataError / ConfigError / ... for inputs that cannot work,
  before anything is written."""
  if modes == ('finetune',):
    finetune.resolve_arch(config, workdir, config_lib.space_from_config(config))
  # Existing models the stages would read: before anything is written.
  uses = set(modes)
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


def run(config, workdir: str) -> None:
  """Validates `config`, then runs `config.mode` (a stage or the pipeline).

  Nothing is written before the config and the inputs of the requested
  stage check out; the pipeline runs its stages in order, and a stage that
  fails keeps what the earlier ones wrote.
  """
  config_lib.validate(config)
  modes = PIPELINE if config.mode == 'pipeline' else (config.mode,)
  workdir = epath.Path(workdir)
  _check_inputs(config, modes, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / artifacts.CONFIG).write_text(
        config.to_json_best_effort(indent=2))
  for mode in modes:
    module, function = STAGES[mode].split(':')
    getattr(importlib.import_module(module), function)(config, workdir)


def _fail(message: str) -> None:
  print(f'masktas_jax: error: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    # Libraries (Orbax above all) log every save at INFO; keep the progress
    # lines readable unless --verbosity asks for more.
    logging.set_verbosity(logging.WARNING)
  try:
    config = _CONFIG.value
    # A config file that failed to load yields a stand-in that raises on the
    # first field read: read one here.
    _ = config.mode
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    _fail(f'--config: cannot load the config file: {reason}')
  try:
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value)
    run(config, _WORKDIR.value)
  except MaskTASError as e:
    _fail(str(e))


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing whose config errors end in one line, exit code 2."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:
    # ml_collections reports an override of a field the locked config lacks
    # with the key and a suggestion in a quoted repr.
    parts = str(e).replace('\\n', '\n').strip('\'"').split('\n')
    key = parts[0].strip('\'"\\')
    overridden = [a.split('=')[0] for a in argv if a.startswith('--config.')]
    if any(path.split('.')[-1] == key or f'.{key}.' in path + '.'
           for path in overridden):
      hint = f' ({parts[1].strip()})' if len(parts) > 1 else ''
      _fail(f'--config: no field {key!r} in the config{hint}')
    _fail(f'--config: the config file raised AttributeError: {e}')
  except (flags.Error, KeyError, TypeError, ValueError) as e:
    message = str(e)
    if 'Error whilst parsing config file' in message:
      # get_config raised (e.g. a bad `:ARG`): its traceback ends with the
      # exception, the one line worth showing.
      last = message.strip().splitlines()[-1].strip()
      _fail(f'--config: the config file raised {last}')
    _fail(message)
  except Exception as e:  # pylint: disable=broad-except
    # Anything else comes from executing the user's config file.
    _fail(f'--config: the config file raised {type(e).__name__}: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
