"""mode=compile: every stage's step compiled ahead of time for accelerators
this host lacks (TPU topologies through libtpu, GPUs through the CUDA
plugin), with memory per device, FLOPs and a roofline.

The programs are the ones training runs, built from the same Tasks and
jitted objects (`trainer.program`, `fitness.population_fn`) on a mesh of the
target's compile-only devices; every state is abstract (`eval_shape`), so
nothing is allocated and no weights are read. Per program the report gives
XLA's memory per device (arguments, outputs, temporaries, code), the
analytic model FLOPs (`flops`; XLA's own count, beside it, covers one
iteration of a layer `scan` and one `switch` branch), a roofline step time
max(FLOPs / peak, bytes / bandwidth) from the chip table (`chips`), images/s
per chip and the compile time. Writes `compile/report.json` and prints a
table; a program that does not fit its chip's memory ends the run with one
line naming it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from masktas_jax import config_lib, data, parallel
from masktas_jax.compilation import chips, flops, roofline
from masktas_jax.errors import MaskTASError
from masktas_jax.evaluation import evaluator, fitness, signals
from masktas_jax.evaluation.window import random_candidate, Window
from masktas_jax.masking import num_visible
from masktas_jax.models.mae import MAE
from masktas_jax.models.student import Student
from masktas_jax.stage import Stage
from masktas_jax.stages import supernet as supernet_stage
from masktas_jax.stages import teacher as teacher_stage
from masktas_jax.storage import artifacts, model_dirs
from masktas_jax.training import finetuning, trainer

# What each platform's compile-only back end is, and how to get it.
_BACKENDS = {'tpu': ('libtpu', "pip install -e '.[tpu]'"),
             'cuda': ('jax_cuda12_plugin', "pip install -e '.[cuda]'")}
# XLA options per platform. cuda: no Triton GEMM fusions. Compiled without a
# GPU, XLA cannot autotune: each GEMM fusion gets one default Triton tiling,
# untried. The attention's output projection reads the attention output
# transposed and flattened to (batch x tokens) rows, so its row tile must
# divide the token count; a ViT's (CLS + patches: 20, 50, 65, 197) never
# does, and XLA stops ("Couldn't find output tile sizes that satisfy hlo:
# dot f32[1040,128]", 1040 = 16 images x 65 tokens;
# benchmarks/gpu_triton_tiles.py). With a GPU the autotuner tries each
# tiling, drops those that fail and keeps cuBLAS as a candidate, so real
# runs likely compile with Triton on (unconfirmed: no GPU was lent);
# launch/gpu_multinode.sh turns it off too, so that real runs compile what
# these figures describe.
COMPILER_OPTIONS = {'cuda': {'xla_gpu_enable_triton_gemm': False}}
# libtpu also takes a lock file that lets one process per host load it:
# compiling opens no TPU, so several compiles (and a training run on a TPU
# VM) may run at once.
_QUIET_LIBTPU = {'TPU_SKIP_MDS_QUERY': '1', 'TPU_WORKER_HOSTNAMES': 'localhost',
                 'TPU_ACCELERATOR_TYPE': 'v5litepod-4',
                 'ALLOW_MULTIPLE_LIBTPU_LOAD': '1'}
# Abstract training states need a schedule length; shapes do not depend on
# it.
_STEPS, _WARMUP = 1000, 100


class CompileError(MaskTASError, RuntimeError):
  """A program cannot be compiled for the target, or does not fit it."""


@dataclasses.dataclass(frozen=True)
class CompileJob:
  """One jitted function and its abstract arguments.

  `batch`: global images per call; `model_flops`: analytic FLOPs per call,
  all devices together; `dtype`: the arithmetic of its matmuls (which peak
  applies); `note`: what the FLOPs stand for.
  """

  stage: str
  name: str
  fn: Callable[..., Any]
  args: tuple[Any, ...]
  batch: int
  model_flops: float
  dtype: str
  note: str = ''


def stages_of(config) -> tuple[str, ...]:
  """`compile.stages`, or when it is empty the programs this config runs:
  MAE pre-training only when it pre-trains its teacher (`teacher.pretrain`
  and no `teacher.checkpoint`), then the supernet's step, the search's and
  fine-tuning's."""
  given = tuple(config.compile.stages)
  if given:
    return given
  t = config.teacher
  return (('teacher',) if t.pretrain and not t.checkpoint else ()) + (
      'supernet', 'search', 'finetune')


def check(config) -> chips.Target:
  """The target of `config.compile`, once its stages, back end and batch
  sizes check out (CompileError naming the field otherwise): before
  anything is written."""
  c = config.compile
  target = chips.parse_target(c.platform, c.topology)
  stages = stages_of(config)
  if any(s not in COMPILABLE for s in stages):
    raise CompileError(f'config.compile.stages: expected some of '
                       f'{COMPILABLE} (empty: the ones this config runs), '
                       f'got {stages!r}')
  module, install = _BACKENDS[target.platform]
  if importlib.util.find_spec(module) is None:
    raise CompileError(
        f'config.compile.platform: compiling for {target.platform} needs '
        f'{module}, which is not installed: {install}')
  for stage in stages:
    batch = data.images_per_step(config[stage])
    if batch % target.count:
      raise CompileError(f'config.{stage}.batch_size: {batch} images a step '
                         f'is not divisible by the {target.count} devices of '
                         f'{target.topology}')
  return target


def target_devices(target: chips.Target) -> list[Any]:
  """The compile-only devices of `target` (its back end installed:
  `check`)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if target.platform == 'tpu':
    # Off a TPU VM, libtpu looks for the VM's own TPU when it loads and
    # prints a screen of warnings; the compile-only topology comes from its
    # name alone, whatever these say. A TPU VM's own values are kept.
    for name, value in _QUIET_LIBTPU.items():
      os.environ.setdefault(name, value)
  try:
    if target.platform == 'tpu':
      devices = topologies.get_topology_desc(target.topology, 'tpu').devices
    else:
      devices = topologies.get_topology_desc(
          platform='cuda', topology_name=target.topology,
          target_config=chips.gpu_target_config(target.key),
          topology=chips.gpu_topology(target.count)).devices
  except Exception as e:  # pylint: disable=broad-except
    reason = ' '.join(str(e).split())[:300]
    raise CompileError(f'config.compile.topology: {target.topology!r} could '
                       f'not be made for {target.platform}: {reason}') from e
  if len(devices) != target.count:
    raise CompileError(f'config.compile.topology: {target.topology!r} gave '
                       f'{len(devices)} devices, expected {target.count}')
  return list(devices)


def _abstract(tree: Any, sharding) -> Any:
  """Arrays or shape structs of `tree` as ShapeDtypeStructs on `sharding`."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      tree)


def _inputs(mesh, size: int, batch: int, **extra) -> dict[str, Any]:
  """A global batch as the pipelines give it: uint8 images (batch, size,
  size, 3), int32 labels, plus `extra` name -> dtype, split over 'data'."""
  sharded = parallel.batch_sharded(mesh)
  out = {'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8,
                                       sharding=sharded),
         'label': jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharded)}
  for name, dtype in extra.items():
    out[name] = jax.ShapeDtypeStruct((batch,), dtype, sharding=sharded)
  return out


def _key(mesh) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((), jax.eval_shape(
      lambda: jax.random.key(0)).dtype, sharding=parallel.replicated(mesh))


def _abstract_teacher(config) -> MAE:
  """The teacher later stages distil from, abstract: the converted one's
  shape when `teacher.checkpoint` exists, else `config.teacher`'s (the
  paper configs' defaults are MAE's ViT-B)."""
  path = config.teacher.checkpoint
  cfg = (model_dirs.read_teacher_config(
      path, config_lib.space_from_config(config)) if path and
         epath.Path(path).exists() else config_lib.mae_config(config))
  return nnx.eval_shape(lambda: MAE(cfg, rngs=nnx.Rngs(0)))


def _sample_archs(space, window=None, count: int = 256) -> list:
  """`count` Archs drawn as search's random population is (uniform, inside
  the window when one is given; seeded)."""
  rng = np.random.default_rng(0)
  window = window or Window()
  return [random_candidate(space, window, rng) for _ in range(count)]


def _training(stage: str, task: trainer.Task, mesh, batch: int,
              model_flops: float, dtype: str, note: str,
              size: int, images: int | None = None) -> CompileJob:
  """The train step of `batch` examples, reading `images` images (default
  `batch`; fewer when the supernet masks each several times)."""
  prog = trainer.program(task, mesh)
  constants = None if task.constants is None else _abstract(
      task.constants, parallel.replicated(mesh))
  return CompileJob(stage, 'train step', prog.step,
                 (prog.abstract_state, _inputs(mesh, size, images or batch),
                  _key(mesh), constants), batch, model_flops, dtype, note)


def _teacher_programs(config, mesh, space, teacher) -> list[CompileJob]:
  del teacher  # It is what this program trains.
  t = config.teacher
  return [_training(
      'teacher', teacher_stage.make_task(config, _STEPS, _WARMUP), mesh,
      t.batch_size, flops.mae_step(config_lib.mae_config(config), t.mask_ratio,
                                    t.batch_size), 'float32',
      'MAE pre-training', space.image_size)]


def _supernet_programs(config, mesh, space, teacher) -> list[CompileJob]:
  s = config.supernet
  task = supernet_stage.make_task(config, teacher, _STEPS, _WARMUP,
                                  s.batch_size)
  # The teacher distilled from: a converted one may differ from
  # config.teacher.
  step_flops = flops.SupernetStep(
      config_lib.student_config(config, teacher.config.embed_dim),
      teacher.config, s.mask_ratio)
  archs = _sample_archs(space)
  return [_training(
      'supernet', task, mesh, s.batch_size,
      float(np.mean([step_flops(a, s.batch_size) for a in archs])),
      s.compute_dtype, 'mean over uniformly drawn subnets', space.image_size,
      images=data.images_per_step(s))]


def _finetune_programs(config, mesh, space, teacher) -> list[CompileJob]:
  del teacher
  f = config.finetune
  arch = space.max_arch()
  task = finetuning.make_task(config.finetune, space, arch, space.num_classes,
                              _STEPS, _WARMUP, None)
  return [_training(
      'finetune', task, mesh, f.batch_size,
      flops.finetune_step(space, arch, f.batch_size), f.compute_dtype,
      'the largest subnet of the space', space.image_size)]


def programs(config, mesh, stages=None) -> list[CompileJob]:
  """The jitted steps of `stages` (default: all of COMPILABLE) on `mesh`,
  with abstract arguments."""
  space = config_lib.space_from_config(config)
  teacher = _abstract_teacher(config)
  wanted = dict.fromkeys(COMPILABLE if stages is None else stages)
  return [p for stage in wanted
          for p in _PROGRAMS[stage](config, mesh, space, teacher)]


def _search_programs(config, mesh, space, teacher) -> list[CompileJob]:
  """The search's two compiled calls: the teacher's features of a batch
  (once per image), and the population's scoring (per generation and
  batch) by 'vmap' and by 'map'."""
  s, rep = config.search, parallel.replicated(mesh)
  relation = config_lib.relation_from_config(s)
  teacher_def, teacher_state = nnx.split(teacher)
  teacher_state = _abstract(nnx.to_pure_dict(teacher_state), rep)
  student = nnx.eval_shape(lambda: Student(config_lib.student_config(
      config, teacher.config.embed_dim), rngs=nnx.Rngs(0)))
  # The signals search.fitness computes; the whole student when they read
  # its decoder or projector.
  names = signals.needed(s.fitness)
  heads = any(n in signals.NEEDS_HEADS for n in names)
  model_def, model_state = nnx.split(student if heads else student.encoder)
  model_state = _abstract(nnx.to_pure_dict(model_state), rep)
  k = num_visible(space.num_patches, config.supernet.mask_ratio)
  batch = _inputs(mesh, space.image_size, s.batch_size, valid=jnp.bool_)
  del batch['label']
  prepare = fitness.teacher_features_fn(teacher_def, space, relation,
                                        config.supernet.mask_ratio, names)
  jitted = _evaluator_jit(prepare, mesh, sharded_outputs=True)
  t = teacher.config
  out = [CompileJob(
      'search', 'teacher features', jitted, (teacher_state, batch, _key(mesh)),
      s.batch_size, 2 * s.batch_size * flops.vit_macs(
          t.embed_dim, t.depth, k, space.patch_dim, t.mlp_ratio), 'float32',
      'once per scoring image')]
  prepared = jax.eval_shape(jitted, *out[0].args)
  del prepared['entropy']
  prepared = _abstract(prepared, parallel.batch_sharded(mesh))
  capacity = fitness.capacity(s)
  window = Window.from_config(s)
  population = _sample_archs(space, window, capacity)
  population += population[-1:] * (capacity - len(population))
  for strategy, width, size in fitness.compiled_calls(capacity, space):
    group = population[:size]
    score = _evaluator_jit(fitness.population_fn(
        model_def, relation, strategy, width, names,
        patch_size=space.patch_size,
        norm_pix=config.teacher.norm_pix_loss), mesh)
    out.append(CompileJob(
        'search', f'score {size} ({strategy}' + (
            f', embed {width})' if width else ')'), score,
        ((model_state, _abstract(space.encode_batch(group), rep)), prepared,
         _key(mesh)), s.batch_size,
        flops.scoring_call(space, group, s.batch_size, k, strategy, width),
        'float32', f'{size} subnets of the window, per batch'))
  return out


# Each compilable stage's programs, in the pipeline's order.
_PROGRAMS = {'teacher': _teacher_programs, 'supernet': _supernet_programs,
             'search': _search_programs, 'finetune': _finetune_programs}
COMPILABLE = tuple(_PROGRAMS)


def generation_flops(config) -> dict[str, float]:
  """Model FLOPs of scoring one generation (`search.population` subnets
  drawn from the window) on one batch of `search.batch_size` images: 'map'
  (each at its own widths), 'vmap by width' (PopulationScorer's calls,
  padding included: each at its widest embed dim, max depth, heads and MLP
  ratio) and 'vmap at max width' (every candidate at the widest: what
  bucketing saves)."""
  s = config.search
  space = config_lib.space_from_config(config)
  k = num_visible(space.num_patches, config.supernet.mask_ratio)
  population = _sample_archs(space, Window.from_config(s), s.population)
  share = fitness.vmap_call_size(fitness.capacity(s), space)
  # Padded slots included: each call computes all of its `share`.
  by_width = sum(
      flops.scoring_call(space, population[:1] * share, s.batch_size, k,
                         'vmap', width)
      for width, _ in fitness.embed_chunks(population, share))
  return {
      'map': flops.scoring_call(space, population, s.batch_size, k, 'map'),
      'vmap by width': by_width,
      'vmap at max width': flops.scoring_call(space, population,
                                              s.batch_size, k, 'vmap')}


def _evaluator_jit(fn, mesh, sharded_outputs: bool = False):
  """`fn(inputs, batch, rng)` jitted as `evaluator.Evaluator` jits it: inputs
  replicated, the batch split over 'data', its uint8 images normalised."""
  return evaluator.Evaluator(fn, mesh, sharded_outputs=sharded_outputs).fn


def compile_program(program: CompileJob, target: chips.Target
                    ) -> dict[str, Any]:
  """Compiles `program`; its report row (sizes in bytes, FLOPs per step,
  seconds)."""
  start = time.perf_counter()
  row = {'stage': program.stage, 'program': program.name,
         'global_batch': program.batch, 'devices': target.count,
         'batch_per_device': program.batch / target.count}
  try:
    compiled = program.fn.lower(*program.args).compile(
        compiler_options=COMPILER_OPTIONS.get(target.platform))
  except Exception as e:  # pylint: disable=broad-except
    reason = ' '.join(str(e).split())[:400].rstrip('.')
    if 'RESOURCE_EXHAUSTED' in reason:
      # XLA:TPU refuses a program that cannot fit; the others are still
      # worth compiling and reporting.
      return {**row, 'fits': False, 'error': reason,
              'compile_s': time.perf_counter() - start}
    raise CompileError(f'{program.stage} ({program.name}): XLA could not '
                       f'compile it for {target.topology}: {reason}') from e
  seconds = time.perf_counter() - start
  return {**row, **roofline.figures(
      compiled, target, program.model_flops, program.dtype, program.batch),
          'model_flops_note': program.note, 'compile_s': seconds}


def run(config, workdir: epath.Path) -> list[dict[str, Any]]:
  """mode=compile: compiles `stages_of(config)` for `compile.platform` /
  `compile.topology`, writes `compile/report.json`, prints the table;
  CompileError when a program does not fit its chip."""
  target = check(config)
  stages = stages_of(config)
  mesh = parallel.make_mesh(target_devices(target))
  rows = []
  for program in programs(config, mesh, stages):
    parallel.log(f'compile: {program.stage} ({program.name}) for '
                 f'{target.topology}...')
    rows.append(compile_program(program, target))
    parallel.log(f'compile: {program.stage} ({program.name}) '
                 + ('does not fit' if 'error' in rows[-1] else 'compiled')
                 + f' in {rows[-1]["compile_s"]:.1f} s')
  out = artifacts.stage_dir(workdir, 'compile')
  out.mkdir(parents=True, exist_ok=True)
  report = {'platform': target.platform, 'topology': target.topology,
            'chip': dataclasses.asdict(target.chip), 'devices': target.count,
            'jax': jax.__version__, 'programs': rows,
            'note': 'compiler figures for the target, not measured runs'}
  if 'search' in stages:
    report['search_generation_flops_per_batch'] = generation_flops(config)
    saved = report['search_generation_flops_per_batch']
    parallel.log(
        f"compile: scoring a generation costs {saved['vmap by width']:.3g} "
        f"FLOPs per batch bucketed by embed width, against "
        f"{saved['vmap at max width']:.3g} all at the max width "
        f"({saved['vmap by width'] / saved['vmap at max width']:.0%}); "
        f"'map': {saved['map']:.3g}")
  (out / artifacts.COMPILE_REPORT).write_text(json.dumps(report, indent=2))
  parallel.log(roofline.table(rows, target))
  parallel.log(f'compile: wrote {out / artifacts.COMPILE_REPORT}')
  for r in rows:
    if not r['fits']:
      need = r.get('error') or (
          f"{r['bytes']['total'] / chips.GIB:.2f} GiB per device against "
          f"the {r['usable_memory'] / chips.GIB:.1f} GiB JAX may use of the "
          f"{target.chip.name}'s {target.chip.memory / chips.GIB:.0f} GiB")
      remedies = [f"lower config.{r['stage']}.batch_size", 'use more devices']
      if not config[r['stage']].get('remat', True):
        remedies.insert(1, f"set config.{r['stage']}.remat=True")
      raise CompileError(
          f"{r['stage']} ({r['program']}) does not fit {target.topology}: "
          f"{need}; {', '.join(remedies[:-1])} or {remedies[-1]}")
  return rows


STAGE = Stage('compile', run,
                    lambda config, workdir, earlier: check(config),
                    compile_only=True)
