"""The full supernet train step: throughput, model-FLOPs utilisation, and
cost against a dense train step of the same subnet, all in one run.

What is timed is the step `mode=supernet` trains with: the jitted step of
`trainer.program(supernet_stage.make_task(...))` (teacher forward under
stop_gradient, student supernet forward + backward on the subnet drawn in
the step, AdamW with `freeze_inactive`), the train state donated and the
teacher's weights an undonated argument, on one device. Space, image size,
patch, mask ratio, decoder and teacher come from the config
(configs/tiny.py: AutoFormer-T space, 224 px, patch 16, 90% masking,
ViT-B-sized MAE teacher); weights are random, the data is noise.

It reports:

  * images/s of that step with its Arch drawn in the step from the step's
    RNG, exactly as in training (mean over every timed step);
  * model FLOPs per step, counted analytically (`flops.SupernetStep`:
    matrix products only, 2 per multiply-accumulate): the teacher's forward
    on the visible tokens, plus 3x the forward (forward + backward) of the
    student at the drawn subnet's own widths (encoder, pixel decoder,
    projector). Remat recomputation,
    padding, elementwise work and the optimizer are not model FLOPs. XLA's
    cost analysis of each compiled dense step is printed beside it as a
    check;
  * utilisation = achieved model FLOP/s / peak, the peak being MEASURED in
    the same run by a jitted square matmul (`--peak_size`, in `--dtype`) on
    the same device, before and after the step timings (the higher counts);
  * for `--archs` Archs drawn with a fixed seed: the supernet step with that
    Arch forced (the same compiled step for every Arch, the encoded Arch an
    argument) vs a dense train step of the subnet alone: the dense student
    (`Student.extract`: the extracted ViT, the decoder and projector at the
    subnet's width), the same teacher, loss and AdamW (no freeze mask:
    every dense weight is active), compiled for that Arch, donated. The
    three steps (drawn, forced, dense) are timed in turn, rotating their
    order every iteration, with the forced and dense steps on the same
    masks; medians over `--iters`. Before timing, each supernet step runs
    every branch of its `lax.switch`es once and each dense step runs once
    (first executions are slow on XLA:CPU); the dense warm-up also checks
    that the forced and dense steps compute the same loss from the same
    weights.

Targets (issue #4): masked / dense <= 1.10; utilisation >= 50% of the
measured peak.

  python benchmarks/supernet_train.py    # tiny, ViT-B teacher, batch 32
  python benchmarks/supernet_train.py --batch 8 --iters 3 --archs 5  # ~5 min
  python benchmarks/supernet_train.py --teacher small --dtype bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from masktas_jax import config_lib, parallel
from masktas_jax.models.mae import MAE, MAEConfig
from masktas_jax.models.student import Student
from masktas_jax.space import Arch, SearchSpace
from masktas_jax.stages import supernet as supernet_stage
from masktas_jax.training import trainer

import common  # pylint: disable=g-bad-import-order

# Teachers smaller than the config's, to keep CPU runs bearable: (width,
# depth, heads) of MAE-style ViT-S and ViT-Ti.
TEACHERS = {'small': (384, 12, 6), 'tiny': (192, 12, 3)}

TARGET_RATIO = 1.10
TARGET_UTILISATION = 0.50


def load_config(path: str, args):
  """`get_config()` of a config file, with the benchmark's overrides."""
  config = common.load_config(path, check=False)
  # Locked configs accept new values for existing fields.
  config.supernet.batch_size = args.batch
  config.supernet.compute_dtype = args.dtype
  if args.teacher != 'config':
    t = config.teacher
    t.embed_dim, t.depth, t.num_heads = TEACHERS[args.teacher]
  return config_lib.validate(config)


def dense_task(task: trainer.Task, config, dense_def,
               teacher_def) -> trainer.Task:
  """`task` (the supernet's) for a `DenseStudent`: the same RNG split (so the
  same masks for the same RNG), teacher, casts, loss and AdamW; no update
  mask."""
  return dataclasses.replace(
      task, update_mask=None, loss=supernet_stage.make_loss(
          config, dense_def, teacher_def,
          forward=lambda student, images, _, *masks: student(images, *masks)))


def drawn_arch(space: SearchSpace, rng: jax.Array) -> Arch:
  """The Arch the supernet step draws from `rng`, drawn as
  `supernet_stage.make_loss` does (first half of `split(rng)`), here on the
  host for counting FLOPs."""
  return space.decode(jax.device_get(
      space.sample_encoded(jax.random.split(rng)[0])))


def branches(space: SearchSpace, arch: Arch) -> set[tuple[int, int]]:
  """The (embed choice, layer branch) pairs that `arch` runs in the supernet's
  'switch' path; layer branch `len(layer_choices)` is the skip."""
  e = space.embed_dims.index(arch.embed_dim)
  choices = space.layer_choices
  out = {(e, choices.index(c)) for c in zip(arch.num_heads, arch.mlp_ratios)}
  return out | ({(e, len(choices))} if arch.depth < space.max_depth else set())


def all_branches(space: SearchSpace) -> set[tuple[int, int]]:
  n = len(space.layer_choices) + (len(space.depths) > 1)
  return {(e, b) for e in range(len(space.embed_dims)) for b in range(n)}


def covering_archs(space: SearchSpace) -> list[Arch]:
  """Archs that together run every branch: per embed width, at the smallest
  depth (so the skip branch runs), cycling through the layer choices."""
  d, choices = space.depths[0], space.layer_choices
  archs = []
  for e in space.embed_dims:
    for start in range(0, len(choices), d):
      layers = [choices[(start + i) % len(choices)] for i in range(d)]
      archs.append(Arch(e, d, tuple(h for h, _ in layers),
                        tuple(r for _, r in layers)))
  return archs


def _fresh(tree):
  # New buffers: the dense state must not share any with the supernet state,
  # which the next supernet step donates (a slice that covers a whole array
  # can be that array).
  return jax.tree.map(jnp.copy, tree)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/tiny.py',
                      help='config file, relative to the repository root')
  parser.add_argument('--teacher', default='config',
                      choices=('config', *TEACHERS),
                      help="'config': the config's teacher (tiny.py: ViT-B); "
                      'small: ViT-S (384, 12 layers); tiny: ViT-Ti (192)')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--iters', type=int, default=5,
                      help='timed iterations per Arch (each times the drawn, '
                      'the forced and the dense step once)')
  parser.add_argument('--archs', type=int, default=10)
  parser.add_argument('--dtype', default='float32',
                      choices=config_lib.COMPUTE_DTYPES)
  parser.add_argument('--peak_size', type=int, default=2048)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  command = common.command()

  start = time.perf_counter()
  config = load_config(args.config, args)
  s, t = config.supernet, config.teacher
  space = config_lib.space_from_config(config)
  dtype = jnp.dtype(args.dtype)
  flop_model = common.supernet_flops(config)
  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind} '
        f'({jax.device_count()} device(s), 1 used), jax {jax.__version__}')
  print(f'config {args.config}: {space.image_size} px, patch '
        f'{space.patch_size}, mask {s.mask_ratio} ({flop_model.visible} '
        f'visible patches + CLS), space embed {space.embed_dims} depth '
        f'{space.depths} heads {space.num_heads} ratio {space.mlp_ratios}; '
        f'teacher {t.embed_dim}x{t.depth} ({args.teacher}); decoder '
        f'{s.decoder_embed_dim}x{s.decoder_depth}; batch {args.batch}, '
        f'{args.dtype}, remat {s.remat}, freeze_inactive {s.freeze_inactive}')
  peaks = [common.measure_peak(args.peak_size, dtype)]
  print(f'peak ({args.peak_size}^2 {args.dtype} matmul): '
        f'{peaks[0] / 1e9:.1f} GFLOP/s', flush=True)

  # --- the step supernet_stage.run trains with ------------------------------
  teacher = MAE(MAEConfig(
      image_size=space.image_size, patch_size=space.patch_size,
      in_chans=space.in_chans, embed_dim=t.embed_dim, depth=t.depth,
      num_heads=t.num_heads, decoder_depth=0), rngs=nnx.Rngs(args.seed))
  teacher_def = nnx.graphdef(teacher.encoder)
  # The schedule's length does not change the step's work.
  task = supernet_stage.make_task(config, teacher, 1000, 100, args.batch)
  # One device, as the utilisation is measured against one device's peak.
  mesh = parallel.make_mesh(jax.devices()[:1])
  program = trainer.program(task, mesh)
  state = program.init(jax.random.key(args.seed + 1), None)
  del teacher
  teacher_only = task.constants

  student_def = nnx.split(nnx.eval_shape(lambda: Student(
      config_lib.student_config(config, t.embed_dim), rngs=nnx.Rngs(0))),
                          nnx.Param, ...)[0]

  def drawn_step(state, batch, rng):
    return program.step(state, batch, rng, teacher_only)

  def forced_step(state, batch, rng, encoded):
    # The same jitted step; the Arch rides in its constants.
    return program.step(state, batch, rng, {**teacher_only, 'arch': encoded})

  batch = {'image': jax.random.normal(
      jax.random.key(args.seed + 2),
      (args.batch, space.image_size, space.image_size, space.in_chans))}
  step_key, warm_key = jax.random.split(jax.random.key(args.seed + 3))
  rng_archs = np.random.default_rng(args.seed)
  archs = [space.sample(rng_archs) for _ in range(args.archs)]

  # First calls compile. Then every branch of the step (embed width x layer
  # choice, and the skip of layers past the depth) runs once before timing:
  # on XLA:CPU a branch's first execution is several times slower than the
  # next ones (steady-state training has run them all long before).
  compile_s = {}
  compile_s['drawn'], (state, _) = common.timed(drawn_step, state, batch,
                                                warm_key)
  seen, warm = branches(space, drawn_arch(space, warm_key)), 1
  while seen != all_branches(space) and warm < 100:
    rng = jax.random.fold_in(warm_key, warm)
    state, _ = jax.block_until_ready(drawn_step(state, batch, rng))
    seen |= branches(space, drawn_arch(space, rng))
    warm += 1
  compile_s['forced'], (state, _) = common.timed(
      forced_step, state, batch, warm_key, space.encode(archs[0]))
  for arch in covering_archs(space):
    state, _ = jax.block_until_ready(forced_step(
        state, batch, warm_key, space.encode(arch)))
  print(f'first call (compile + run): drawn step {compile_s["drawn"]:.1f} s, '
        f'forced step {compile_s["forced"]:.1f} s; drawn step warmed up on '
        f'{warm} steps ({len(seen)} of {len(all_branches(space))} branches)',
        flush=True)

  # --- timed loop -----------------------------------------------------------
  drawn_s, drawn_flops, split = [], [], {}
  rows = []
  count = 1
  print(f'\n{"arch":>4} {"E":>4} {"L":>3} {"GFLOP":>7} {"XLA GFLOP":>9} '
        f'{"forced ms":>9} {"dense ms":>9} {"ratio":>6} {"util":>6} '
        f'{"d-util":>6} {"dloss":>8}', flush=True)
  for i, arch in enumerate(archs):
    encoded = jax.device_put(space.encode(arch))
    current = nnx.merge(student_def, state['params'], state['fixed'])
    dense_def, dense_params, dense_fixed = nnx.split(current.extract(arch),
                                                     nnx.Param, ...)
    del current
    weights = _fresh((nnx.to_pure_dict(dense_params),
                      nnx.to_pure_dict(dense_fixed)))
    dense = trainer.program(dataclasses.replace(
        dense_task(task, config, dense_def, teacher_def),
        init=lambda _, weights: weights, init_inputs=weights), mesh)
    dense_state = dense.init(step_key, weights)
    dense_step = dense.step.lower(dense_state, batch, step_key,
                                  teacher_only).compile()
    xla_flops = common.xla_flops(dense_step)

    # Warm-up on the same weights and masks: the losses must agree.
    rng = jax.random.fold_in(step_key, count)
    count += 1
    state, m_forced = forced_step(state, batch, rng, encoded)
    dense_state, m_dense = dense_step(dense_state, batch, rng, teacher_only)
    dloss = abs(float(m_forced['loss']) - float(m_dense['loss']))

    times = {'drawn': [], 'forced': [], 'dense': []}
    for j in range(args.iters):
      rng = jax.random.fold_in(step_key, count)
      count += 1
      calls = {
          'drawn': lambda st, r=rng: drawn_step(st, batch, r),
          'forced': lambda st, r=rng: forced_step(st, batch, r, encoded),
          'dense': lambda st, r=rng: dense_step(st, batch, r, teacher_only),
      }
      order = list(calls)
      order = order[j % 3:] + order[:j % 3]  # Rotate: no fixed first slot.
      for name in order:
        if name == 'dense':
          sec, (dense_state, _) = common.timed(calls[name], dense_state)
        else:
          sec, (state, _) = common.timed(calls[name], state)
        times[name].append(sec)
      parts = flop_model.parts(drawn_arch(space, rng), args.batch)
      for part, f in parts.items():
        split[part] = split.get(part, 0) + f
      drawn_flops.append(sum(parts.values()))
    drawn_s += times['drawn']

    forced_ms = statistics.median(times['forced']) * 1e3
    dense_ms = statistics.median(times['dense']) * 1e3
    step_flops = flop_model(arch, args.batch)
    row = dict(arch=arch, flops=step_flops, xla=xla_flops, forced=forced_ms,
               dense=dense_ms, ratio=forced_ms / dense_ms,
               util=step_flops / (forced_ms / 1e3) / peaks[0],
               dutil=step_flops / (dense_ms / 1e3) / peaks[0], dloss=dloss)
    rows.append(row)
    print(f'{i:>4} {arch.embed_dim:>4} {arch.depth:>3} '
          f'{step_flops / 1e9:>7.1f} {xla_flops / 1e9:>9.1f} '
          f'{forced_ms:>9.1f} {dense_ms:>9.1f} {row["ratio"]:>6.3f} '
          f'{row["util"]:>6.1%} {row["dutil"]:>6.1%} {dloss:>8.1e}',
          flush=True)
    dense_step = dense_state = None  # Frees them before the next Arch.

  peaks.append(common.measure_peak(args.peak_size, dtype))
  peak = max(peaks)
  # Utilisation columns above used the first peak; the summary uses the
  # higher of the two (the conservative figure).
  achieved = sum(drawn_flops) / sum(drawn_s)
  ratios = [r['ratio'] for r in rows]
  util = achieved / peak
  med_ratio, max_ratio = statistics.median(ratios), max(ratios)

  def met(ok):
    return '**yes**' if ok else '**no**'

  print(f'\nCommand: `{command}`')
  print(f'Device: {device.platform} {device.device_kind}, jax '
        f'{jax.__version__}; teacher {t.embed_dim}x{t.depth} '
        f'({args.teacher}), batch {args.batch}, {args.dtype}, '
        f'{args.archs} archs x {args.iters} iters\n')
  print('| measure | value | target | met |')
  print('|---|---|---|---|')
  print(f'| supernet train step, Arch drawn in the step: images/s '
        f'(mean of {len(drawn_s)} steps) | '
        f'{args.batch * len(drawn_s) / sum(drawn_s):.1f} | | |')
  print(f'| step time, drawn Arch (ms, mean) | '
        f'{statistics.mean(drawn_s) * 1e3:.0f} | | |')
  print(f'| model FLOPs per step (analytic: teacher fwd + 3x student fwd '
        f'at subnet width; GFLOP, mean over drawn Archs) | '
        f'{statistics.mean(drawn_flops) / 1e9:.1f} | | |')
  print('| of which (teacher fwd / student encoder / pixel decoder / '
        'projector) | ' + ' / '.join(
            f'{f / sum(split.values()):.0%}' for f in split.values())
        + ' | | |')
  print(f'| achieved model FLOP/s (GFLOP/s) | {achieved / 1e9:.1f} | | |')
  print(f'| measured peak, {args.peak_size}^2 {args.dtype} matmul (GFLOP/s; '
        f'before / after) | {peaks[0] / 1e9:.1f} / {peaks[1] / 1e9:.1f} | | |')
  print(f'| model-FLOPs utilisation (of the higher peak) | {util:.1%} | '
        f'>= {TARGET_UTILISATION:.0%} | {met(util >= TARGET_UTILISATION)} |')
  print(f'| masked / dense step, median of {len(rows)} Archs | '
        f'{med_ratio:.3f} | <= {TARGET_RATIO:.2f} | '
        f'{met(med_ratio <= TARGET_RATIO)} |')
  print(f'| masked / dense step, worst Arch | {max_ratio:.3f} | '
        f'<= {TARGET_RATIO:.2f} | {met(max_ratio <= TARGET_RATIO)} |')
  print(f'| max loss difference, forced vs dense (same weights and masks) '
        f'| {max(r["dloss"] for r in rows):.1e} | | |')
  print(f'| first call of the drawn / forced step (compile + run, s) | '
        f'{compile_s["drawn"]:.1f} / {compile_s["forced"]:.1f} | | |')
  print(f'| wall time of this run (s) | {time.perf_counter() - start:.0f} '
        '| | |')

  print('\n| arch | E | L | model GFLOP | XLA GFLOP (dense) | forced ms | '
        'dense ms | forced / dense | util forced | util dense |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for i, r in enumerate(rows):
    print(f'| {i} | {r["arch"].embed_dim} | {r["arch"].depth} | '
          f'{r["flops"] / 1e9:.1f} | {r["xla"] / 1e9:.1f} | '
          f'{r["forced"]:.0f} | {r["dense"]:.0f} | {r["ratio"]:.3f} | '
          f'{r["flops"] / (r["forced"] / 1e3) / peak:.1%} | '
          f'{r["flops"] / (r["dense"] / 1e3) / peak:.1%} |')


if __name__ == '__main__':
  main()
