"""Masked supernet step vs the dense extracted subnet's step, same run.

For random Archs of a search space (AutoFormer tiny by default) at 224 px,
batch 32 and 90% masking (19 visible patches + CLS), times forward + backward
of the encoder (gradients of all parameters) for

  * the supernet's 'switch' path (one compile for every Arch),
  * the supernet's 'mask' path (one compile, max-width compute),
  * the dense ViT that `extract(arch)` returns (one compile per Arch), as is
    and with each block rematerialised (the supernet's default 'switch'
    path rematerialises its layers, which XLA:CPU rewards: a fairer bar),

alternating the three per repetition so machine noise hits them alike, and
prints per-Arch medians and a table of the ratios supernet / dense.

  python benchmarks/supernet_step.py            # the recorded configuration
  python benchmarks/supernet_step.py --archs 3 --reps 3 --image_size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from masktas_jax import config_lib
from masktas_jax.masking import num_visible, random_masking
from masktas_jax.models.supernet import Supernet
from masktas_jax.space import SearchSpace

import common  # pylint: disable=g-bad-import-order


def make_step(graphdef, encode):
  """A jitted (params, images, ids_keep, *extra) -> (loss, grads) function."""

  def loss_fn(params, images, ids_keep, *extra):
    model = nnx.merge(graphdef, params)
    tokens = encode(model, images, ids_keep, *extra)
    return jnp.mean(tokens.astype(jnp.float32)**2)

  return jax.jit(jax.value_and_grad(loss_fn))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--space', default='tiny',
                      choices=sorted(config_lib.AUTOFORMER_SPACES))
  parser.add_argument('--archs', type=int, default=20)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--mask_ratio', type=float, default=0.9)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  space = SearchSpace(**config_lib.AUTOFORMER_SPACES[args.space][0],
                      image_size=args.image_size,
                      patch_size=16, num_classes=0)
  supernet = Supernet(space, rngs=nnx.Rngs(args.seed))
  graphdef, params = nnx.split(supernet)
  images = jax.random.normal(jax.random.key(1), (args.batch, args.image_size,
                                                 args.image_size, 3))
  ids_keep, _, _ = random_masking(jax.random.key(2), args.batch,
                                  space.num_patches, args.mask_ratio)
  steps = {
      mode: make_step(graphdef, lambda m, x, ids, arch, mode=mode: m.encode(
          x, arch, ids, mode=mode)) for mode in ('switch', 'mask')
  }
  rng = np.random.default_rng(args.seed)
  archs = [space.sample(rng) for _ in range(args.archs)]
  print(f'device: {jax.devices()[0].device_kind}, space {args.space}, '
        f'{args.image_size} px, batch {args.batch}, '
        f'{num_visible(space.num_patches, args.mask_ratio)} visible patches '
        f'+ CLS, {args.archs} archs x {args.reps} reps')
  ratios = {(m, b): [] for m in ('switch', 'mask')
            for b in ('dense', 'dense_remat')}
  print(f'{"arch":>4} {"E":>4} {"L":>3} ' + ' '.join(
      f'{k + " ms":>{len(k) + 4}}'
      for k in ('dense', 'dense_remat', 'switch', 'mask')) + ' ' + ' '.join(
          f'{m + "/" + b:>13}' for m, b in ratios))

  compile_s = {}
  start = time.perf_counter()
  for mode, step in steps.items():
    jax.block_until_ready(step(params, images, ids_keep, space.encode(archs[0])))
    compile_s[mode] = time.perf_counter() - start
    start = time.perf_counter()

  for i, arch in enumerate(archs):
    encoded = jax.tree.map(jnp.asarray, space.encode(arch))
    dense = supernet.extract(arch)
    dense_def, dense_params = nnx.split(dense)
    dense_steps = {
        'dense': make_step(dense_def, lambda m, x, ids: m.encode(x, ids)),
        'dense_remat': make_step(dense_def, lambda m, x, ids: m.encode(
            x, ids, remat=True)),
    }
    for step in dense_steps.values():
      jax.block_until_ready(step(dense_params, images, ids_keep))
    for step in steps.values():  # Warm up once per Arch: a fair first rep.
      jax.block_until_ready(step(params, images, ids_keep, encoded))
    times = {k: [] for k in (*dense_steps, *steps)}
    for _ in range(args.reps):
      for name, step in dense_steps.items():
        times[name].append(common.timed(step, dense_params, images,
                                        ids_keep)[0])
      for mode, step in steps.items():
        times[mode].append(common.timed(step, params, images, ids_keep,
                                        encoded)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    for mode, base in ratios:
      ratios[mode, base].append(med[mode] / med[base])
    print(f'{i:>4} {arch.embed_dim:>4} {arch.depth:>3} '
          + ' '.join(f'{med[k] * 1e3:>{len(k) + 4}.1f}' for k in times)
          + ' ' + ' '.join(f'{ratios[k][-1]:>13.3f}' for k in ratios))

  print()
  print('| supernet step / dense step | median | min | max | '
        'supernet first compile (s) |')
  print('|---|---|---|---|---|')
  for (mode, base), r in ratios.items():
    print(f'| `{mode}` / {base} | {statistics.median(r):.3f} | {min(r):.3f} | '
          f'{max(r):.3f} | {compile_s[mode]:.1f} |')


if __name__ == '__main__':
  main()
