"""Where an XLA:CPU step spends its time, from a JAX profiler trace.

`trace(directory)` wraps the timed steps of a benchmark in the profiler
with XLA:CPU's per-op trace events on; `breakdown(directory)` reads the
Perfetto trace it wrote and sums each op's self time (its time minus the
ops running inside it, e.g. a conditional's branch) by kind:

* `dots`: matrix products (`dot` thunks and XLA:CPU's library fusions
  around them, `ynn_fusion`);
* `moves`: copies, transposes, slices, pads, broadcasts, concatenations,
  dynamic slices and updates (the supernet's width switches and layer scan
  live here);
* `elementwise`: the other fusions (normalisation, GELU, softmax, the
  optimizer's update);
* `control`: conditionals and loops themselves, and the thunk executor
  between ops.

Host-side events (dispatch, the Python thread waiting for the result) are
left out, so the kinds add up to the time the step's ops ran.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import pathlib
import re

import jax

KINDS = ('dots', 'moves', 'elementwise', 'control')

_EXECUTOR = 'ThunkExecutor::Execute'
_MOVES = ('copy', 'transpose', 'slice', 'pad', 'broadcast', 'concatenate',
          'dynamic-slice', 'dynamic-update-slice', 'bitcast', 'gather',
          'scatter', 'reverse')


def enable_op_events() -> None:
  """XLA:CPU writes one trace event per op only with this flag; call it
  before JAX initialises its CPU backend."""
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_enable_xprof_traceme=true')


@contextlib.contextmanager
def trace(directory: str | os.PathLike):
  """Profiles the enclosed work (no Python tracer) into `directory`."""
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  options.host_tracer_level = 3  # XLA:CPU's op events are at level 3.
  jax.profiler.start_trace(str(directory), create_perfetto_trace=True,
                           profiler_options=options)
  try:
    yield
  finally:
    jax.profiler.stop_trace()


def kind(name: str) -> str | None:
  """The kind of a trace event named `name`, None for host-side events."""
  if name.startswith(('$', 'end: ', 'Pjit', 'CommonPjRt', 'Handle ',
                      'ParseArguments', 'DevicePut', 'PythonRefManager',
                      'AllocateOutputBuffers', 'ExecuteReplicated')):
    return None
  if name.startswith('ThunkExecutor::Execute'):
    # '... (wait for completion)' is the caller blocking, not work.
    return None if 'wait' in name else 'control'
  base = re.sub(r'(\.(clone|\d+))+$', '', name)  # cond.44.clone: cond
  if base.startswith(('ynn_fusion', 'dot', 'onednn', 'xnn')):
    return 'dots'
  if base in ('cond', 'conditional', 'while', 'call'):
    return 'control'
  if base.startswith('wrapped_') or base in _MOVES:
    base = base.removeprefix('wrapped_')
    return 'moves' if base in _MOVES else 'elementwise'
  if base.endswith('_fusion') or base == 'fusion':
    parts = base.removesuffix('_fusion').split('_')
    return 'moves' if parts and all(p in _MOVES for p in parts) else (
        'elementwise')
  return 'elementwise'


def breakdown(directory: str | os.PathLike) -> dict[str, float]:
  """Seconds of op self time per kind in the newest trace under
  `directory` (what `trace` wrote)."""
  files = sorted(pathlib.Path(directory).glob(
      'plugins/profile/*/perfetto_trace.json.gz'))
  if not files:
    raise FileNotFoundError(f'{directory}: no perfetto_trace.json.gz')
  with gzip.open(files[-1]) as f:
    events = json.load(f)['traceEvents']
  by_thread = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X' and 'dur' in e:
      by_thread[e['pid'], e['tid']].append(e)
  seconds = dict.fromkeys(KINDS, 0.0)
  for thread in by_thread.values():
    # Outer events first at equal start times; a stack of open events
    # charges each one's time to its innermost parent's children. Ops are
    # the events inside a thunk executor's run (compiler passes, also on
    # the trace when a step compiles, are not).
    thread.sort(key=lambda e: (e['ts'], -e['dur']))
    stack, inner, is_op = [], collections.Counter(), set()
    for i, e in enumerate(thread):
      while stack and thread[stack[-1]]['ts'] + thread[stack[-1]][
          'dur'] <= e['ts']:
        stack.pop()
      if stack:
        inner[stack[-1]] += e['dur']
      if _EXECUTOR in e['name'] or any(
          _EXECUTOR in thread[j]['name'] for j in stack):
        is_op.add(i)
      stack.append(i)
    for i in is_op:
      e = thread[i]
      k = kind(e['name'])
      if k:
        seconds[k] += (e['dur'] - inner[i]) * 1e-6  # microseconds
  return seconds
