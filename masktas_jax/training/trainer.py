"""The one training loop the teacher, supernet and finetune stages share.

A stage describes what it trains as a `Task`: a model builder, a loss, an
optimizer and its schedule, an optional update mask and constants (a frozen
teacher). The trainer owns everything else: the train state, gradients and
the update, mesh placement, metrics (the loss and its parts, learning rate,
gradient and parameter norms, images/s), Orbax checkpoints of the state and
the data iterator, exact resume, the progress line, the loss plot, and the
final export of the model, which also marks the stage done.

`program(task)` gives the jitted init and step without running them, for
compile-only use (ahead-of-time compilation for other accelerators).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from etils import epath

from masktas_jax import data, parallel
from masktas_jax.errors import MaskTASError, Preempted
from masktas_jax.storage import artifacts
from masktas_jax.training import plots, preemption as preemption_lib
from masktas_jax.training import tensorboard

_DECAYED = {'wq', 'wk', 'wv', 'wo', 'w1', 'w2'}
# Metrics every step reports beside the stage's loss and its terms.
_OWN_METRICS = ('lr', 'grad_norm', 'param_norm')

Tree = Any  # A pytree of arrays (plain nested dicts).


class NonFiniteLoss(MaskTASError, RuntimeError):
  """Training produced a non-finite loss; the last good checkpoint stays."""


class CheckpointMismatch(MaskTASError, ValueError):
  """A stage's checkpoint is not of the model this run trains."""


@dataclasses.dataclass(frozen=True)
class Task:
  """What a stage trains, and how one step changes it.

  init(rng, init_inputs) -> (params, fixed): the model's trainable
    parameters and its other variables (e.g. sin-cos tables), pure dicts.
    `init_inputs` (e.g. inherited weights) is an argument of the jitted
    init, never a constant compiled into it.
  loss(params, fixed, batch, rng, constants) -> (loss, metrics): the scalar
    to minimise and scalar metrics to log beside it (e.g. its terms).
  optimizer: the optax transformation; `schedule(step)` its learning rate,
    logged as 'lr' (for layer-wise scaled rates: the unscaled one).
  update_mask(grads) -> tree of bools, or None: parameters whose update is
    forced to exactly zero where False (e.g. weights outside the subnet a
    supernet step trained: no weight decay or momentum reaches them).
  constants: arrays the loss reads but never trains (a frozen teacher):
    replicated, never donated, never checkpointed.
  """

  init: Callable[[jax.Array, Any], tuple[Tree, Tree]]
  loss: Callable[[Tree, Tree, dict[str, jax.Array], jax.Array, Any],
                 tuple[jax.Array, dict[str, jax.Array]]]
  optimizer: optax.GradientTransformation
  schedule: Callable[[jax.Array], jax.Array]
  update_mask: Callable[[Tree], Tree] | None = None
  init_inputs: Any = None
  constants: Any = None


@dataclasses.dataclass(frozen=True)
class Export:
  """The model a finished stage writes, `save(params, fixed, directory)`, a
  model directory of `kind` (artifacts.is_model_dir): a stage whose export
  exists is done and is not trained again, once `check(directory)` (if
  given) has found it to be what this run would have written (else it
  raises a MaskTASError naming the difference)."""

  directory: epath.Path
  kind: str
  save: Callable[[Tree, Tree, epath.Path], None]
  check: Callable[[epath.Path], Any] | None = None
  # The parameters to save, from the final train state (default: its
  # 'params'; e.g. an average kept in the optimizer state instead).
  params_of: Callable[[Tree], Tree] | None = None


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
  # Steps to trace with jax.profiler into `directory/profile`, starting
  # after this run's first step (which compiles). 0: none.
  profile_steps: int = 0


@dataclasses.dataclass(frozen=True)
class Outcome:
  """How `train` ended. `params`/`fixed`: the trained model (None when
  `skipped`: its export already existed); `step`: the step reached."""

  params: Tree | None
  fixed: Tree | None
  step: int
  skipped: bool = False


def cast(tree: Any, dtype) -> Any:
  """Floating leaves of `tree` as `dtype`; the rest unchanged."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, tree)


def decay_mask(params: Any) -> Any:
  """True for weight matrices (AdamW decays them), False for biases, norms,
  tokens and positional tables."""

  def is_weight(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return name == 'kernel' or name.endswith('_kernel') or name in _DECAYED

  return jax.tree_util.tree_map_with_path(is_weight, params)


def warmup_cosine(peak_lr: float, steps: int,
                  warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `peak_lr`, then cosine decay to 0 at `steps`."""
  return optax.warmup_cosine_decay_schedule(
      0.0, peak_lr, max(warmup_steps, 0), max(steps, warmup_steps + 1), 0.0)


def adamw(schedule: optax.Schedule, weight_decay: float, b1: float = 0.9,
          b2: float = 0.999,
          clip_norm: float = 0.0) -> optax.GradientTransformation:
  """AdamW at `schedule`'s rate, no decay on biases, norms and tokens;
  optional global-norm clipping."""
  opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                    mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if (
      clip_norm > 0) else opt


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


@dataclasses.dataclass(frozen=True)
class Program:
  """A Task's jitted functions on a mesh, built but not run.

  init(rng, init_inputs) -> state, where state is {'step': int32 (),
  'params', 'fixed', 'opt_state'}, replicated.
  step(state, batch, rng, constants) -> (state, metrics): `batch` a dict of
  arrays (B, ...) split over the mesh's 'data' axis, `state` donated,
  metrics scalars.
  abstract_state: the state's ShapeDtypeStructs, with their shardings (what
  a restore targets, and what `step.lower` takes).
  """

  init: Any
  step: Any
  abstract_state: Tree
  mesh: Any


def program(task: Task, mesh=None) -> Program:
  """The jitted init and data-parallel update step of `task`."""
  mesh = mesh or parallel.make_mesh()
  rep = parallel.replicated(mesh)

  def init(rng, init_inputs):
    params, fixed = task.init(rng, init_inputs)
    return {'step': jnp.zeros((), jnp.int32), 'params': params,
            'fixed': fixed, 'opt_state': task.optimizer.init(params)}

  def step(state, batch, rng, constants):

    def loss_fn(params):
      return task.loss(params, state['fixed'], data.prepare(batch), rng,
                       constants)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt_state = task.optimizer.update(grads, state['opt_state'],
                                               state['params'])
    if task.update_mask is not None:
      updates = jax.tree.map(lambda u, keep: jnp.where(keep, u, 0), updates,
                             task.update_mask(grads))
    params = optax.apply_updates(state['params'], updates)
    return {**state, 'step': state['step'] + 1, 'params': params,
            'opt_state': opt_state}, {
                'loss': loss, **metrics,
                'lr': jnp.asarray(task.schedule(state['step']), jnp.float32),
                'grad_norm': optax.tree.norm(grads),
                'param_norm': optax.tree.norm(params)}

  abstract = jax.eval_shape(init, jax.random.key(0), task.init_inputs)
  shardings = jax.tree.map(lambda _: rep, abstract)
  return Program(
      init=jax.jit(init, in_shardings=rep, out_shardings=shardings),
      step=jax.jit(step, in_shardings=(shardings,
                                       parallel.batch_sharded(mesh), rep, rep),
                   out_shardings=(shardings, rep), donate_argnums=0),
      abstract_state=jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          abstract, shardings),
      mesh=mesh)


def _checkpoints(loop: LoopConfig) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      (loop.directory / artifacts.CHECKPOINTS).resolve(),
      # A save cut short (a killed job) leaves a temporary directory that
      # never counts as a step; it is cleared on the next start.
      options=ocp.CheckpointManagerOptions(max_to_keep=loop.keep_checkpoints,
                                           create=True,
                                           cleanup_tmp_directories=True),
      item_names=('state', 'data'))


def train(loop: LoopConfig, task: Task | Callable[[], Task], data_iter, *,
          seed: int, mesh=None, export: Export | None = None) -> Outcome:
  """Trains (or resumes) `task` to `loop.steps`, then writes `export`.

  Returns at once (`skipped`) when `export` already exists; `task` may be a
  function that builds the Task, called only when there is training to do
  (when building it is costly: loading a teacher or a supernet). Each
  step's RNG is `fold_in(key(seed), step)` and the data iterator's position
  is saved with every checkpoint, so a resumed run draws what an
  uninterrupted one would. A run stopped by an exception (a kill, Ctrl-C)
  waits for the checkpoint being written, and the next run resumes from it.
  On SIGTERM it checkpoints the step it is at and raises Preempted.
  """
  if export is not None and artifacts.is_model_dir(export.directory,
                                                   export.kind):
    if export.check is not None:
      export.check(export.directory)
    parallel.log(f'{loop.name}: {export.directory} exists; not training '
                 'again')
    return Outcome(None, None, loop.steps, skipped=True)
  if not isinstance(task, Task):
    task = task()
  prog = program(task, mesh)
  rep = parallel.replicated(prog.mesh)
  init_key, step_key = jax.random.split(jax.random.key(seed))
  constants = jax.device_put(task.constants, rep)
  loop.directory.mkdir(parents=True, exist_ok=True)

  # --- resume, or a jitted init in place ------------------------------------
  manager = _checkpoints(loop)
  start = manager.latest_step()
  if start is not None:
    try:
      restored = manager.restore(start, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(prog.abstract_state),
          data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointMismatch(
          f'{loop.name}: the checkpoint of step {start} in '
          f'{loop.directory / artifacts.CHECKPOINTS} does not match this '
          'run\'s model or optimizer (another config or version); it is '
          'left as it is: use another workdir, or remove that directory to '
          'start over') from e
    state = restored.state
    data_iter.set_state(restored.data)
    parallel.log(f'{loop.name}: resumed from step {start}')
  else:
    start = 0
    state = prog.init(init_key, jax.device_put(task.init_inputs, rep))

  # --- loop -----------------------------------------------------------------
  writer = tensorboard.ScalarWriter(loop.directory)
  preemption = preemption_lib.Preemption()
  try:
    state = _loop(loop, prog, manager, writer, preemption, state, start,
                  data_iter, step_key, constants)
  finally:
    # Also on an exception: the checkpoint in flight completes, so the next
    # run resumes from it.
    manager.wait_until_finished()
    manager.close()
    writer.close()
    preemption.close()
    if hasattr(data_iter, 'close'):  # Stops the input's worker processes.
      data_iter.close()
  if jax.process_index() == 0:
    plots.loss_figure(loop.directory / artifacts.METRICS_LOG,
                      loop.directory / artifacts.LOSS_PLOT, loop.name)

  # --- export ---------------------------------------------------------------
  if export is not None:
    export.save(export.params_of(state) if export.params_of else
                state['params'], state['fixed'], export.directory)
    parallel.log(f'{loop.name}: trained {loop.steps} steps; wrote '
                 f'{export.directory}')
  return Outcome(state['params'], state['fixed'], loop.steps)


@jax.jit
def _note_non_finite(first_bad: jax.Array, metrics: dict[str, jax.Array],
                     step: int) -> jax.Array:
  """`first_bad`, or `step` if it is 0 and a metric is not finite."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v))
                              for v in jax.tree.leaves(metrics)]))
  return jnp.where((first_bad == 0) & ~finite, step, first_bad)


def _loop(loop: LoopConfig, prog: Program, manager, writer, preemption,
          state, start: int, data_iter, step_key, constants):
  """Steps `start`..`loop.steps` with logging (metrics.jsonl, TensorBoard,
  the progress line) and checkpoints; returns the state."""
  is_main = jax.process_index() == 0
  metrics_file = loop.directory / artifacts.METRICS_LOG
  end = loop.steps
  t0 = time.perf_counter()
  trace = (start + 1, min(start + 1 + loop.profile_steps, end)) if (
      loop.profile_steps) else (end, end)
  # The first step whose metrics were not all finite (0: none), kept on
  # the device: exact, without a host sync every step.
  first_bad = jax.device_put(jnp.zeros((), jnp.int32),
                             parallel.replicated(prog.mesh))
  for i in range(start, end):
    if i == trace[0] < trace[1]:
      options = jax.profiler.ProfileOptions()
      # No Python tracer: its per-thread profile hooks raced the input
      # pipeline's threads into a segfault (seen once under Python 3.11),
      # and the trace is for XLA's ops.
      options.python_tracer_level = 0
      jax.profiler.start_trace(str(loop.directory / artifacts.PROFILE),
                               profiler_options=options)
    batch = parallel.global_batch(next(data_iter), prog.mesh)
    state, metrics = prog.step(state, batch, jax.random.fold_in(step_key, i),
                               constants)
    n = i + 1
    first_bad = _note_non_finite(first_bad, metrics, n)
    if n == trace[1] > trace[0]:
      jax.block_until_ready(state)  # The trace ends with the step's work.
      jax.profiler.stop_trace()
      parallel.log(f'{loop.name}: traced steps {trace[0] + 1}-{n} into '
                   f'{loop.directory / artifacts.PROFILE}')
    stop = preemption.reached(n) and n < end
    save = n % loop.checkpoint_every == 0 or n == end or stop
    if n % loop.log_every == 0 or save:
      # A host sync, only at log and save points.
      fetched, bad_step = jax.device_get((metrics, first_bad))
      # The stage's loss and terms first, the trainer's own metrics last.
      values = {k: float(fetched[k]) for k in (
          ['loss'] + [k for k in fetched if k not in _OWN_METRICS + ('loss',)]
          + list(_OWN_METRICS))}
      if bad_step:
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        # Named from the metrics fetched now; finite again, they cannot
        # say which one it was.
        what = 'loss' if 'loss' in bad else ', '.join(bad) or 'metric'
        manager.wait_until_finished()
        last = manager.latest_step()
        where = ('no checkpoint was written' if last is None else
                 f'the last good checkpoint is step {last} in '
                 f'{loop.directory / artifacts.CHECKPOINTS}')
        raise NonFiniteLoss(
            f'{loop.name}: non-finite {what} at step {int(bad_step)} (seen '
            f'at step {n}: {values}); {where}')
      elapsed = time.perf_counter() - t0
      rate = (n - start) * loop.batch_size / max(elapsed, 1e-9)
      eta = elapsed / (n - start) * (loop.steps - n)
      writer.write(n, {**values, 'images_per_s': rate})
      if is_main:
        with metrics_file.open('a') as f:
          f.write(json.dumps({'step': n, **values,
                              'images_per_s': round(rate, 1)}) + '\n')
        shown = ' '.join(f'{k} {v:.4g}' for k, v in values.items())
        print(f'{loop.name} step {n}/{loop.steps} {shown} '
              f'{rate:.0f} img/s ETA {format_eta(eta)}', flush=True)
    if save:
      manager.save(n, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_iter.get_state())))
    if stop:
      manager.wait_until_finished()
      raise Preempted(
          f'{loop.name}: stopped by SIGTERM after step {n} of {loop.steps}; '
          f'checkpoint saved in {loop.directory / artifacts.CHECKPOINTS}; '
          'run the same command to resume')
  return state
