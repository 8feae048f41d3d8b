"""Multi-host: processes on 127.0.0.1 with gloo CPU collectives, and kills.

Each run is a separate `python -m masktas_jax.main` with its own fake
device count, so these tests exercise the real start-up path.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from masktas_jax import parallel
from masktas_jax.config_lib import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A small space and batch: what matters is the data order and collectives.
_OVERRIDES = (
    '--config.mode=supernet', '--config.space.embed_dims=(32,48)',
    '--config.space.depths=(2,3)', '--config.space.num_heads=(1,2)',
    '--config.space.mlp_ratios=(2.0,4.0)', '--config.supernet.batch_size=8',
    '--config.supernet.decoder_depth=1', '--config.supernet.decoder_embed_dim=32',
    '--config.supernet.warmup_epochs=0', '--config.supernet.base_lr=0.01')


def _command(workdir, teacher_dir, *extra):
  return [sys.executable, '-m', 'masktas_jax.main',
          f'--config={ROOT}/configs/demo.py', f'--workdir={workdir}',
          f'--config.teacher.checkpoint={teacher_dir}', *_OVERRIDES, *extra]


def _env(devices):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return {**env, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
          'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
          'JAX_DEFAULT_MATMUL_PRECISION': 'highest'}


def _losses(workdir):
  lines = (workdir / 'supernet/metrics.jsonl').read_text().splitlines()
  return [json.loads(l)['loss'] for l in lines]


def _free_port():
  """A port no socket holds now. The coordinator binds it a moment later;
  the rare case that something else takes it first is retried
  (`_run_two`)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# What a two-process run prints when it failed to start rather than computed
# something wrong: the coordinator's port taken between `_free_port` and its
# bind, or the peers too far apart on a loaded host when the CPU collectives
# connect (gloo's fixed 30 s; parallel.py lines the processes up so that
# this should not happen).
_START_UP_FAILURES = ('Address already in use', 'Failed to bind',
                      'Gloo context initialization failed')


def _two_processes(workdir, teacher_dir, *extra, env1=None):
  """The two processes of one run, stderr to files (read by `_run_two`) so
  that reading one's stdout line by line cannot block the other on a full
  pipe; both are killed after 600 s. `env1`: more environment for process
  1."""
  port = _free_port()
  workdir.mkdir(parents=True, exist_ok=True)
  procs = []
  for i in range(2):
    with open(workdir / f'stderr{i}.txt', 'a', encoding='utf-8') as err:
      procs.append(subprocess.Popen(
          _command(workdir, teacher_dir, *extra,
                   f'--coordinator_address=127.0.0.1:{port}',
                   '--num_processes=2', f'--process_id={i}'),
          env={**_env(2), **(env1 if i == 1 and env1 else {})},
          stdout=subprocess.PIPE, stderr=err, text=True))
  watchdog = threading.Timer(600, lambda: [p.kill() for p in procs])
  watchdog.daemon = True
  watchdog.start()
  return procs


def _run_two(workdir, teacher_dir, *extra, env1=None, watch=None,
             expect_success=True):
  """Runs `_two_processes` to the end: `watch(line, procs)` sees process 0's
  stdout lines until it returns True (to signal or kill them mid-run).
  Returns both processes' stdout. A run that failed to start (one of
  `_START_UP_FAILURES` in a process's stderr) is run once more with another
  port, and the reason is logged as a warning; any other failure, and a
  second failed start, fail the test."""
  for attempt in range(2):
    offsets = [(workdir / f'stderr{i}.txt').stat().st_size
               if (workdir / f'stderr{i}.txt').exists() else 0
               for i in range(2)]
    procs = _two_processes(workdir, teacher_dir, *extra, env1=env1)
    shown = []
    if watch:
      for line in procs[0].stdout:
        shown.append(line)
        if watch(line, procs):
          break
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    outputs[0] = ''.join(shown) + outputs[0]
    errors = [(workdir / f'stderr{i}.txt').read_text()[offsets[i]:]
              for i in range(2)]
    reason = next((f for f in _START_UP_FAILURES for e in errors if f in e),
                  None)
    if attempt == 0 and reason and any(p.returncode for p in procs):
      warnings.warn(f'two-process run in {workdir} failed to start '
                    f'({reason}); running it once more')
      continue
    if expect_success:
      for i, p in enumerate(procs):
        assert p.returncode == 0, errors[i][-2000:]
    return outputs
  raise AssertionError('unreachable')


def test_two_processes_follow_one_process_through_a_preemption(teacher_dir,
                                                               tmp_path):
  """Two processes, one of them sent SIGTERM mid-run, then the same command
  again: the same losses as one uninterrupted process."""
  steps = ('--config.supernet.steps=8', '--config.log_every=1',
           '--config.checkpoint_every=4')
  one = subprocess.run(_command(tmp_path / 'one', teacher_dir, *steps),
                       env=_env(4), capture_output=True, text=True,
                       timeout=600, check=False)
  assert one.returncode == 0, one.stderr[-2000:]

  # Each of the two reads with a worker process: reading options change
  # how batches are made, never which.
  two = (*steps, '--config.data.workers=1')
  def preempt_one(line, procs):  # Process 0 alone reports.
    if line.startswith('supernet step 2/8'):
      procs[1].send_signal(signal.SIGTERM)  # A preemption notice to one.
      return True
    return False

  outputs = _run_two(tmp_path / 'two', teacher_dir, *two, watch=preempt_one)
  stopped = [l for l in outputs[0].splitlines() if 'stopped by SIGTERM' in l]
  assert 'supernet step' not in outputs[1]
  assert len(stopped) == 1 and stopped[0].startswith(
      'supernet: stopped by SIGTERM after step '), outputs[0]
  at = int(stopped[0].split('after step ')[1].split()[0])
  assert 2 <= at < 8, stopped
  # The stop's step was saved (a checkpoint is one directory both
  # processes write; resuming from it below checks it is whole).
  assert str(at) in os.listdir(tmp_path / 'two/supernet/checkpoints')

  outputs = _run_two(tmp_path / 'two', teacher_dir, *two)
  assert f'supernet: resumed from step {at}' in outputs[0]

  # Same global batches (data order), same subnets, same all-reduced
  # gradients: the same trajectory, up to the order of float sums (each
  # loss is a mean of non-negative terms, so its own size is the scale of
  # what was summed).
  expected = _losses(tmp_path / 'one')
  assert len(expected) == 8
  np.testing.assert_allclose(_losses(tmp_path / 'two'), expected, rtol=2e-5)
  assert sorted(os.listdir(tmp_path / 'two/supernet/checkpoints'))[-1] == '8'


def test_a_half_written_checkpoint_is_skipped_on_resume(teacher_dir, tmp_path):
  """SIGKILL in the middle of a save, then the same command again."""
  workdir = tmp_path / 'wd'
  steps = ('--config.supernet.steps=6', '--config.checkpoint_every=2',
           '--config.log_every=1')
  # The child kills itself as the step-4 checkpoint is about to be
  # committed: its arrays are written, its directory not yet renamed.
  hook = tmp_path / 'sitecustomize.py'
  hook.write_text(
      'import os, signal\n'
      'from orbax.checkpoint._src.path import atomicity\n'
      'Temp = atomicity.AtomicRenameTemporaryPath\n'
      '_finalize = Temp.finalize\n'
      'async def finalize(self, *a, **k):\n'
      "  if os.path.basename(str(self._final_path)) == '4':\n"
      '    os.kill(os.getpid(), signal.SIGKILL)\n'
      '  return await _finalize(self, *a, **k)\n'
      'Temp.finalize = finalize\n')
  env = _env(4)
  killed = subprocess.run(
      _command(workdir, teacher_dir, *steps),
      env={**env, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{ROOT}'},
      capture_output=True, text=True, timeout=600, check=False)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  names = os.listdir(workdir / 'supernet/checkpoints')
  assert '2' in names and '4' not in names, names
  assert any(n.startswith('4.') for n in names), names  # Half-written.

  resumed = subprocess.run(_command(workdir, teacher_dir, *steps), env=env,
                           capture_output=True, text=True, timeout=600,
                           check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from step 2' in resumed.stdout

  names = os.listdir(workdir / 'supernet/checkpoints')
  assert {'4', '6'} <= set(names), names
  assert not any(n.startswith('4.') for n in names), names  # Cleared.


# Two processes that start together, then one of them is busy for DELAY s
# (compiling, on a loaded host) before the first reduction over every
# device. argv: port, process id, 1 to start through
# parallel.initialize_distributed, 0 through jax.distributed alone.
_LATE_PEER = '''
import sys, time
import jax, numpy as np
from masktas_jax import parallel
port, pid, ours = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'
if ours:
  parallel.initialize_distributed(f'127.0.0.1:{port}', 2, pid)
else:
  jax.distributed.initialize(f'127.0.0.1:{port}', 2, pid)
mesh = parallel.make_mesh()  # The back end starts, as a stage's would.
if pid == 1:
  time.sleep(DELAY)
ones = jax.make_array_from_process_local_data(parallel.batch_sharded(mesh),
                                              np.ones(2, np.float32))
total = jax.jit(jax.numpy.sum, out_shardings=parallel.replicated(mesh))(ones)
print('sum', float(total), flush=True)
'''


def test_a_peer_40_s_late_for_the_first_reduction_still_joins_it(tmp_path):
  """parallel.initialize_distributed connects the CPU collectives at
  start-up, so a process that reaches the first reduction 40 s after the
  other still joins it. Without it (the control pair, run alongside), gloo
  gives up after its fixed 30 s: the failure that made multi-host tests
  flaky on a loaded machine."""
  script = tmp_path / 'late_peer.py'
  script.write_text(_LATE_PEER.replace('DELAY', '40'))
  failure = 'Gloo context initialization failed'
  pairs = {}
  for ours in (1, 0):
    port = _free_port()
    pairs[ours] = []
    for i in range(2):
      with open(tmp_path / f'stderr{ours}{i}.txt', 'w', encoding='utf-8') as err:
        pairs[ours].append(subprocess.Popen(
            [sys.executable, str(script), str(port), str(i), str(ours)],
            env={**_env(2), 'PYTHONPATH': str(ROOT)}, stdout=subprocess.PIPE,
            stderr=err, text=True))
  try:
    outputs = [p.communicate(timeout=300)[0] for p in pairs[1]]
    # The control's process 0 gives up 30 s after reaching the reduction,
    # then waits minutes at exit for its peer: read its failure, not its
    # exit.
    control = ''
    for _ in range(120):
      control = (tmp_path / 'stderr00.txt').read_text()
      if failure in control or pairs[0][0].poll() is not None:
        break
      time.sleep(1)
  finally:
    for p in pairs[0] + pairs[1]:
      p.kill()
  for i, (p, out) in enumerate(zip(pairs[1], outputs)):
    # (gloo prints its connections to stdout too.)
    assert p.returncode == 0 and out.splitlines()[-1] == 'sum 4.0', (
        tmp_path / f'stderr1{i}.txt').read_text()[-2000:]
  assert failure in control, control[-2000:]


@pytest.mark.parametrize('kwargs, message', [
    ({'coordinator_address': 'h:1', 'num_processes': 2}, '--process_id: needed'),
    ({'num_processes': 2, 'process_id': 0}, '--coordinator_address: needed'),
    ({'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 2},
     r'--process_id: 2 is not in 0\.\.1'),
])
def test_incomplete_multihost_flags_are_named(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    parallel.initialize_distributed(**kwargs)


def _small_overrides(workdir):
  """CLI overrides for helpers.SMALL's space, reading `workdir`'s teacher
  and supernet (conftest's `workdir`): search, rank and fine-tuning cut to a
  few seconds each."""
  # pylint: disable=g-import-not-at-top
  from helpers import SMALL
  settings = {
      **SMALL, 'supernet.decoder_depth': 1, 'search.min_params_m': 0.0,
      'search.max_params_m': 0.0, 'search.population': 4,
      'search.generations': 4, 'search.parents': 2, 'search.mutations': 2,
      'search.crossovers': 2, 'rank.yardstick': 'knn', 'rank.num_archs': 3,
      'rank.train_images': 64, 'rank.eval_images': 32, 'rank.knn_k': 5,
      'finetune.steps': 4, 'finetune.batch_size': 16,
      'finetune.warmup_epochs': 0, 'finetune.eval_split': 'validation',
      'log_every': 1, 'checkpoint_every': 2}

  def text(value):
    return (f'({",".join(str(v) for v in value)})'
            if isinstance(value, tuple) else str(value))

  return (f'--config.teacher.checkpoint={workdir}/teacher/model',
          f'--config.search.supernet={workdir}/supernet/model',
          *(f'--config.{k}={text(v)}' for k, v in settings.items()))


# Process 1 logs every file in the workdir it opens for writing, except
# Orbax's: a checkpoint or model save is collective, every process writes
# its part.
_WRITE_LOG_HOOK = '''
import builtins, io, os
_open = builtins.open
if os.environ.get('MASKTAS_WRITE_LOG'):  # Proof that the hook is loaded.
  _open(os.environ['MASKTAS_WRITE_LOG'] + '.loaded', 'a').close()
def open(file, mode='r', *args, **kwargs):
  if os.environ.get('MASKTAS_WRITE_LOG') and any(c in mode for c in 'wax+'):
    path = os.path.abspath(os.fspath(file))
    if (path.startswith(os.environ['MASKTAS_WRITE_ROOT']) and
        '/checkpoints/' not in path and 'orbax-checkpoint' not in path and
        not path.endswith('stderr1.txt')):
      with _open(os.environ['MASKTAS_WRITE_LOG'], 'a') as log:
        log.write(path + chr(10))
  return _open(file, mode, *args, **kwargs)
# pathlib (and so etils' epath) opens through io.open.
builtins.open = io.open = open
'''


def test_search_rank_and_finetune_on_two_processes_match_one(workdir,
                                                              tmp_path):
  """mode=search (killed mid-way on both processes, then resumed), rank and
  finetune with two processes: the results of one process, and process 1
  neither prints nor writes a file outside the checkpoints."""
  small = _small_overrides(workdir)
  (tmp_path / 'hook').mkdir()
  (tmp_path / 'hook/sitecustomize.py').write_text(_WRITE_LOG_HOOK)
  log = tmp_path / 'writes1.txt'

  def run_one(mode):
    result = subprocess.run(
        _command(tmp_path / 'one', '', *small, f'--config.mode={mode}'),
        env=_env(4), capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]

  def run_two(mode, kill_after=None):
    def kill(line, procs):
      if line.startswith(kill_after):
        for p in procs[::-1]:
          p.kill()
        return True
      return False

    outputs = _run_two(
        tmp_path / 'two', '', *small, f'--config.mode={mode}',
        env1={'PYTHONPATH': f'{tmp_path / "hook"}{os.pathsep}{ROOT}',
              'MASKTAS_WRITE_LOG': str(log),
              'MASKTAS_WRITE_ROOT': str(tmp_path / 'two')},
        watch=kill if kill_after else None, expect_success=not kill_after)
    if not kill_after:
      # Process 0 alone reports. (Process 1 prints only gloo's C++
      # start-up lines, which its threads interleave mid-word at times.)
      for word in ('search', 'rank:', 'finetune', 'step', 'wrote'):
        assert word not in outputs[1], outputs[1]
    return outputs[0]

  for mode in ('search', 'rank', 'finetune'):
    run_one(mode)
  run_two('search', kill_after='search generation 1/4')
  # Killed after the first generation's state was saved, before the last.
  done = json.loads((tmp_path / 'two/search/state.json').read_text())[
      'generation']
  assert 1 <= done < 4, done
  resumed = run_two('search')
  assert f'search: resumed after generation {done}' in resumed, resumed
  for mode in ('rank', 'finetune'):
    run_two(mode)

  def read(run, name):
    return json.loads((tmp_path / run / name).read_text())

  one, two = (read(r, 'search/best_arch.json') for r in ('one', 'two'))
  assert one['arch'] == two['arch']
  np.testing.assert_allclose(two['fitness'], one['fitness'], rtol=1e-4)
  ranks = [read(r, 'rank/rank.json') for r in ('one', 'two')]
  for a, b in zip(ranks[0]['archs'], ranks[1]['archs']):
    assert a['arch'] == b['arch']
    np.testing.assert_allclose([a['fitness'], a['yardstick']],
                               [b['fitness'], b['yardstick']], rtol=1e-4)
  losses = [[json.loads(l)['loss'] for l in (
      tmp_path / r / 'finetune/metrics.jsonl').read_text().splitlines()]
            for r in ('one', 'two')]
  assert len(losses[0]) == 4
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-5)
  assert (read('one', 'finetune/metrics.json')['top1'] ==
          read('two', 'finetune/metrics.json')['top1'])
  assert pathlib.Path(f'{log}.loaded').exists()  # The hook ran...
  assert not log.exists(), log.read_text()  # ...and saw no write.
