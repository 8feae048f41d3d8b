"""Command line: `python -m masktas_jax.main --config=configs/demo.py --workdir=DIR`.

Override any config field with `--config.KEY=VALUE` (e.g.
`--config.mode=space`, `--config.search.population=20`). Bad input ends with
one line naming the field or file, exit code 2, and nothing in the workdir
touched.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from masktas_jax import cli, hostmem, parallel, preflight, registry
from masktas_jax.errors import MaskTASError, Preempted
from masktas_jax.storage import artifacts

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

def run(config, workdir: str) -> None:
  """Validates `config`, then runs `config.mode` (a stage or the pipeline).

  Nothing is written before the config and the inputs of the requested
  stage check out; the pipeline runs its stages in order, and a stage that
  fails keeps what the earlier ones wrote.
  """
  registry.validate(config)
  stages = registry.stages(config)
  workdir = epath.Path(workdir)
  compile_only = any(s.compile_only for s in stages)
  if (config.compilation_cache and not compile_only and
      not jax.config.jax_compilation_cache_dir):
    # Before the first compile: JAX settles on its cache then, once.
    jax.config.update('jax_compilation_cache_dir',
                      str(workdir / artifacts.JAX_CACHE))
  preflight.check_inputs(config, stages, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / artifacts.CONFIG).write_text(
        config.to_json_best_effort(indent=2))
  for stage in stages:
    stage.run(config, workdir)


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
    cli.fail(f'--config: cannot load the config file: {reason}')
  compile_only = config.mode in registry.STAGES and (
      registry.STAGES[config.mode].compile_only)
  if compile_only:
    # One process compiles for the target's compile-only devices: no local
    # accelerator (nor libtpu's probe of one) and no peers are started.
    jax.config.update('jax_platforms', 'cpu')
    # Compile-only executables cannot be loaded back from JAX's cache.
    jax.config.update('jax_enable_compilation_cache', False)
  else:
    # Before anything starts JAX's back end. Compiling runs no steps.
    hostmem.reuse_freed_memory()
  try:
    if not compile_only:
      parallel.initialize_distributed(
          _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    run(config, _WORKDIR.value)
  except Preempted as e:
    parallel.log(str(e))  # Exit 0: the scheduler may restart the job.
  except MaskTASError as e:
    cli.fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
