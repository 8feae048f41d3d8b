"""The one training loop the teacher, supernet and finetune stages share.

A stage supplies `init_fn(rng) -> state` (a pytree of arrays, plain dicts)
and `step_fn(state, batch, rng) -> (state, metrics)`; the loop owns the
mesh placement, resume, Orbax checkpoints (train state + data iterator),
metrics, progress line, non-finite guard and loss plot.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable

import jax
import optax
import orbax.checkpoint as ocp
from etils import epath

from masktas_jax import artifacts, parallel, report
from masktas_jax.errors import MaskTASError

_DECAYED = {'wq', 'wk', 'wv', 'wo', 'w1', 'w2'}


class NonFiniteLoss(MaskTASError, RuntimeError):
  """Training produced a non-finite loss; the last good checkpoint stays."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """How long to train and how often to log and save."""

  name: str  # Stage name, for messages.
  directory: epath.Path  # Checkpoints, metrics.jsonl and loss.png go here.
  steps: int
  batch_size: int  # Global batch, for images/s.
  checkpoint_every: int = 200
  keep_checkpoints: int = 2
  log_every: int = 20
  # End this run at this step with a checkpoint (e.g. a time-limited job);
  # the schedule still follows `steps` and a later run resumes. 0: no stop.
  stop_at: int = 0
  # Steps to trace with jax.profiler into `directory/profile`, starting
  # after this run's first step (which compiles). 0: none.
  profile_steps: int = 0

  @classmethod
  def from_config(cls, config, name: str, directory: epath.Path, steps: int,
                  batch_size: int, stop_at: int = 0) -> 'LoopConfig':
    """The loop of stage `name`, with the run-wide logging, checkpoint and
    profiling settings of `config`."""
    return cls(name, directory, steps, batch_size, config.checkpoint_every,
               config.keep_checkpoints, config.log_every, stop_at,
               config.profile_steps)


def decay_mask(params: Any) -> Any:
  """True for weight matrices (AdamW decays them), False for biases, norms,
  tokens and positional tables."""

  def is_weight(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return name == 'kernel' or name.endswith('_kernel') or name in _DECAYED

  return jax.tree_util.tree_map_with_path(is_weight, params)


def adamw(peak_lr: float, steps: int, warmup_steps: int, weight_decay: float,
          b1: float = 0.9, b2: float = 0.999,
          clip_norm: float = 0.0) -> optax.GradientTransformation:
  """AdamW with linear warm-up then cosine decay to 0; no decay on biases,
  norms and tokens; optional global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, peak_lr, max(warmup_steps, 0), max(steps, warmup_steps + 1), 0.0)
  opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                    mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if (
      clip_norm > 0) else opt


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def train(loop: LoopConfig, *, init_fn: Callable[[jax.Array], Any],
          step_fn: Callable[[Any, dict[str, jax.Array], jax.Array],
                            tuple[Any, dict[str, jax.Array]]],
          data_iter, seed: int, mesh=None,
          constants: Any = None) -> tuple[Any, int]:
  """Runs (or resumes) training to `loop.steps`; returns (state, step).

  `constants` (e.g. a frozen teacher's weights) reach the step as a fourth
  argument, `step_fn(state, batch, rng, constants)`: replicated, never
  donated, never checkpointed.

  `step` is the step reached: `loop.steps`, or `loop.stop_at` if that came
  first.

  The data-parallel step is jitted once, with the state replicated, the
  batch split over the mesh's 'data' axis and the state donated. Each step's
  RNG is `fold_in(key(seed), step)`, so a resumed run draws what an
  uninterrupted one would.
  """
  # --- mesh -----------------------------------------------------------------
  mesh = mesh or parallel.make_mesh()
  rep = parallel.replicated(mesh)
  root = jax.random.key(seed)
  is_main = jax.process_index() == 0
  loop.directory.mkdir(parents=True, exist_ok=True)

  # --- model and optimizer: shapes first, then a jitted init in place -------
  init_key, step_key = jax.random.split(root)
  abstract = jax.eval_shape(init_fn, init_key)
  state_sharding = jax.tree.map(lambda _: rep, abstract)

  # --- update step ----------------------------------------------------------
  if constants is None:
    step = jax.jit(step_fn, in_shardings=(state_sharding,
                                          parallel.batch_sharded(mesh), rep),
                   out_shardings=(state_sharding, rep), donate_argnums=0)
  else:
    constants = jax.device_put(constants, rep)
    jitted = jax.jit(step_fn,
                     in_shardings=(state_sharding,
                                   parallel.batch_sharded(mesh), rep, rep),
                     out_shardings=(state_sharding, rep), donate_argnums=0)

    def step(state, batch, rng):
      return jitted(state, batch, rng, constants)

  # --- resume ---------------------------------------------------------------
  manager = ocp.CheckpointManager(
      (loop.directory / artifacts.CHECKPOINTS).resolve(),
      # A save cut short (a killed job) leaves a temporary directory that
      # never counts as a step; it is cleared on the next start.
      options=ocp.CheckpointManagerOptions(max_to_keep=loop.keep_checkpoints,
                                           create=True,
                                           cleanup_tmp_directories=True),
      item_names=('state', 'data'))
  start = manager.latest_step()
  if start is not None:
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, state_sharding)
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=ocp.args.JsonRestore()))
    state = restored.state
    data_iter.set_state(restored.data)
    if is_main:
      print(f'{loop.name}: resumed from step {start}', flush=True)
  else:
    start = 0
    state = jax.jit(init_fn, out_shardings=state_sharding)(init_key)

  # --- loop -----------------------------------------------------------------
  metrics_file = loop.directory / artifacts.METRICS_LOG
  end = min(loop.steps, loop.stop_at or loop.steps)
  t0 = time.perf_counter()
  trace = (start + 1, min(start + 1 + loop.profile_steps, end)) if (
      loop.profile_steps) else (end, end)
  for i in range(start, end):
    if i == trace[0] < trace[1]:
      jax.profiler.start_trace(str(loop.directory / artifacts.PROFILE))
    batch = parallel.global_batch(next(data_iter), mesh)
    state, metrics = step(state, batch, jax.random.fold_in(step_key, i))
    n = i + 1
    if n == trace[1] > trace[0]:
      jax.block_until_ready(state)  # The trace ends with the step's work.
      jax.profiler.stop_trace()
      if is_main:
        print(f'{loop.name}: traced steps {trace[0] + 1}-{n} into '
              f'{loop.directory / artifacts.PROFILE}', flush=True)
    save = n % loop.checkpoint_every == 0 or n == end
    if n % loop.log_every == 0 or save:
      # A host sync, only at log and save points.
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not all(math.isfinite(v) for v in values.values()):
        manager.wait_until_finished()
        last = manager.latest_step()
        raise NonFiniteLoss(
            f'{loop.name}: non-finite loss at step {n} ({values}); the last '
            f'good checkpoint is step {last} in {loop.directory}/checkpoints'
            if last is not None else
            f'{loop.name}: non-finite loss at step {n} ({values}); no '
            'checkpoint was written')
      elapsed = time.perf_counter() - t0
      rate = (n - start) * loop.batch_size / max(elapsed, 1e-9)
      eta = elapsed / (n - start) * (loop.steps - n)
      if is_main:
        with metrics_file.open('a') as f:
          f.write(json.dumps({'step': n, **values,
                              'images_per_s': round(rate, 1)}) + '\n')
        shown = ' '.join(f'{k} {v:.4f}' for k, v in values.items())
        print(f'{loop.name} step {n}/{loop.steps} {shown} '
              f'{rate:.0f} img/s ETA {format_eta(eta)}', flush=True)
    if save:
      manager.save(n, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_iter.get_state())))

  # --- final save -----------------------------------------------------------
  manager.wait_until_finished()
  manager.close()
  if is_main:
    report.loss_figure(loop.directory / artifacts.METRICS_LOG,
                       loop.directory / artifacts.LOSS_PLOT, loop.name)
  return state, max(start, end)

