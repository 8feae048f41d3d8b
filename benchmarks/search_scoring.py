"""Candidates scored per second: the vectorised scorer against per-candidate
loops.

Three ways to give every candidate of one population the label-free fitness
on the same images (randomly initialised models: speed does not depend on
the weights):

* `vectorised (vmap)` and `(map)`: `fitness.PopulationScorer`: the teacher's
  features once, then the whole population in one compiled call per image
  batch, vmapped at max width under masks, or looped inside the call at
  each subnet's FLOPs.
* `loop, shared teacher`: one candidate at a time on its own subnet's FLOPs
  (`switch` path), the teacher's features computed once.
* `loop, paper port`: one candidate at a time, the teacher's features
  recomputed for every candidate, as a direct port of the one-by-one
  evaluation does.

All three are compiled before timing; each is timed `--repeats` times,
interleaved, and the median kept. Prints a Markdown table of ratios.

  python benchmarks/search_scoring.py                  # demo space, 32 px
  python benchmarks/search_scoring.py --config=tiny --images=64 --batch=32
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from masktas_jax import config_lib
from masktas_jax.evaluation import fitness
from masktas_jax.models.mae import MAE
from masktas_jax.models.student import Student

import common  # pylint: disable=g-bad-import-order


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='demo', help='configs/NAME.py')
  parser.add_argument('--population', type=int, default=50)
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  config = common.load_config(args.config, check=False)
  space = config_lib.space_from_config(config)
  teacher = MAE(config_lib.mae_config(config), rngs=nnx.Rngs(0))
  encoder = Student(config_lib.student_config(
      config, teacher.config.embed_dim), rngs=nnx.Rngs(1)).encoder
  batches = common.random_batches(config, args.images, args.batch, 0)
  rng = np.random.default_rng(0)
  archs = [space.sample(rng) for _ in range(args.population)]
  mask_ratio = config.supernet.mask_ratio
  relation = config_lib.relation_from_config(config.search)

  t = time.perf_counter()
  scorer = fitness.PopulationScorer(encoder, teacher, space, batches,
                                    relation=relation,
                                    mask_ratio=mask_ratio, seed=0,
                                    capacity=args.population, strategy='vmap')
  teacher_once = time.perf_counter() - t
  # The same teacher features and masks, the other strategy.
  mapped = fitness.PopulationScorer(encoder, teacher, space, batches,
                                    relation=relation,
                                    mask_ratio=mask_ratio, seed=0,
                                    capacity=args.population, strategy='map')

  # The paper port: teacher and student features, per candidate.
  teacher_def, teacher_state = nnx.split(teacher)
  teacher_state = nnx.to_pure_dict(teacher_state)

  @jax.jit
  def port(teacher_state, encoder_state, arch, images, valid, ids_keep):
    z_teacher = nnx.merge(teacher_def, teacher_state).encode(
        images, ids_keep)[:, 1:]
    z_student = nnx.merge(scorer.encoder_def, encoder_state).encode(
        images, arch, ids_keep, mode='switch')[:, 1:]
    fitness = relation.fitness(z_teacher, z_student)
    return jax.numpy.sum(jax.numpy.where(valid, fitness, 0.0))

  def run_port():
    out = []
    for arch in archs:
      encoded = space.encode(arch)
      out.append(sum(port(teacher_state, scorer.encoder_state, encoded,
                          b['image'], b['valid'], b['ids_keep'])
                     for b in scorer.batches))
    return np.asarray(jax.device_get(out)) / scorer.num_images

  methods = {
      'vectorised (vmap)': lambda: scorer(archs),
      'vectorised (map)': lambda: mapped(archs),
      'loop, shared teacher': lambda: np.array(
          [scorer.score_alone(a) for a in archs]),
      'loop, paper port': run_port,
  }
  results = {name: fn() for name, fn in methods.items()}  # Compile.
  for name, scores in results.items():
    np.testing.assert_allclose(scores, results['vectorised (vmap)'],
                               rtol=1e-4, atol=1e-5, err_msg=name)
  times = {name: [] for name in methods}
  for _ in range(args.repeats):
    for name, fn in methods.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t)

  median = {k: statistics.median(v) for k, v in times.items()}
  print(f'command: {common.command()}')
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}; '
        f'space {args.config} ({space.image_size} px); population '
        f'{args.population}; {scorer.num_images} images; teacher features '
        f'once: {teacher_once:.2f} s (compile included)\n')
  port_s = median['loop, paper port']
  print('| method | s per population | candidates/s | speed-up over the '
        'paper port |')
  print('|---|---|---|---|')
  for name, seconds in median.items():
    print(f'| {name} | {seconds:.3f} | {args.population / seconds:.1f} | '
          f'{port_s / seconds:.2f}x |')
  default = 'map' if jax.default_backend() == 'cpu' else 'vmap'
  speedup = port_s / median[f'vectorised ({default})']
  print(f'\ntarget: the default strategy here ({default}) >= 3x the paper '
        f'port: {speedup:.2f}x ({"met" if speedup >= 3 else "NOT met"})')


if __name__ == '__main__':
  main()
