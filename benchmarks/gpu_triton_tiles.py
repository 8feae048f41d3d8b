"""Why XLA:GPU's Triton GEMM path fails compiled without a GPU (#14 item 3):
one ViT block's gradient, compiled for an H100 (compile-only), by token count,
with Triton GEMM fusions on and off.

    python benchmarks/gpu_triton_tiles.py [--tokens 65,64,50,48,197,192,20,32]
        [--batch 16] [--width 128] [--heads 2]

Needs the '.[cuda]' extra (its own venv); runs on any host. The defaults are
the demo teacher's decoder (width 128, 2 heads of 64, 64 patches + CLS); a
row per token count says whether each setting compiles.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from masktas_jax.compilation import chips
from masktas_jax.models import vit
from masktas_jax.stages import compile as compile_stage


def compiles(fn, args, triton: bool) -> str:
  """'yes', or the first words of XLA's error."""
  try:
    jax.jit(fn).lower(*args).compile(
        {'xla_gpu_enable_triton_gemm': triton})
    return 'yes'
  except Exception as e:  # pylint: disable=broad-except
    return 'no: ' + ' '.join(str(e).split())[:90]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tokens', default='65,64,50,48,197,192,20,32')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--heads', type=int, default=2)
  args = parser.parse_args()
  # mode=compile's own compile-only device.
  (device,) = compile_stage.target_devices(chips.parse_target('cuda', '1xh100'))
  sharding = jax.sharding.SingleDeviceSharding(device)
  block = nnx.eval_shape(lambda: vit.Block(
      args.width, args.heads, 4 * args.width, rngs=nnx.Rngs(0),
      head_dim=args.width // args.heads))
  graphdef, state = nnx.split(block)
  state = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      state)

  def grads(state, x):
    return jax.grad(lambda s, x: (nnx.merge(graphdef, s)(x)**2).sum(),
                    argnums=(0, 1))(state, x)

  print(f'One ViT block (width {args.width}, {args.heads} heads), batch '
        f'{args.batch}, gradient, compiled for 1 x H100 without a GPU, '
        f'jax {jax.__version__}\n')
  print('| tokens | rows (batch x tokens) | Triton GEMM on | Triton GEMM off |')
  print('|---:|---:|---|---|')
  for n in (int(t) for t in args.tokens.split(',')):
    x = jax.ShapeDtypeStruct((args.batch, n, args.width), jnp.float32,
                             sharding=sharding)
    print(f'| {n} | {args.batch * n} | {compiles(grads, (state, x), True)} | '
          f'{compiles(grads, (state, x), False)} |', flush=True)


if __name__ == '__main__':
  main()
