"""Our supernet's classification train step against AutoFormer's own.

AutoFormer (microsoft/Cream, `AutoFormer/`) trains its supernet by setting
the sampled subnet on a PyTorch module (`set_sample_config`) and running
that subnet's slices of the weights. Ours compiles one XLA program for
every subnet of the space (`Supernet`, 'switch' path). Both here train the
same space (configs/demo.py's: 32 px, patch 4, embed 64-128, depth 4-6, 1-2
heads of 64 channels, MLP ratio 2-4) as a classifier: cross-entropy on the
CLS token, AdamW, float32, batch 64, on the same sequence of subnets drawn
uniformly from the space. AutoFormer runs as its `supernet_train.py` builds
it for that space (`change_qkv`: heads of 64 channels as ours; absolute
positions, no relative ones, as ours; CLS token, not `gp`), unmodified;
the one shim is `torch._six`, which its `model/utils.py` imports and
current torch no longer has. One difference in the optimizers' work:
PyTorch's AdamW skips the parameters a subnet leaves unused (no
gradient), optax's updates every parameter every step (a few MFLOPs on
this space).

Each (implementation, threads) run is its own process pinned to that many
cores (`sched_setaffinity`; torch.set_num_threads; XLA sizes its pool from
the affinity), after warm-up steps (ours: the one compile), and the rounds
alternate the implementations so machine noise hits them alike. Prints
images/s per run and, per thread count, the median ratio ours / AutoFormer.

  git clone https://github.com/microsoft/Cream  # once, anywhere
  python benchmarks/peer_autoformer.py --autoformer=Cream/AutoFormer
  python benchmarks/peer_autoformer.py --autoformer=... --threads=1 --rounds=1
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import types

import numpy as np

# The repository's benchmarks/ for `common`, which a child imports.
HERE = pathlib.Path(__file__).resolve().parent


def _archs(space, steps: int, seed: int):
  """The subnet sequence both implementations train, drawn from `space`."""
  rng = np.random.default_rng(seed)
  return [space.sample(rng) for _ in range(steps)]


def _data(space, batch: int, seed: int):
  """Random images (B, S, S, 3) float32 and labels (B,) int."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, space.image_size, space.image_size,
                            space.in_chans)).astype(np.float32)
  return images, rng.integers(0, space.num_classes, batch)


def _time_jax(model, space, archs, images, labels, warmup: int,
              switched: bool, profile: str | None = None):
  """Seconds per step of training `model` (an nnx classifier; `switched`:
  our supernet, called with each of `archs` encoded, else a plain ViT of
  one Arch) with cross-entropy and AdamW, one jitted step. `profile`: a
  folder to trace the timed steps into (`op_profile.trace`)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt = optax.adamw(1e-3, weight_decay=0.05)
  opt_state = opt.init(params)

  # Parameters and optimizer state updated in place, as the stages do.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, images, labels, *arch):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p, rest)(images, *arch)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  images, labels = jnp.asarray(images), jnp.asarray(labels)
  times = []
  tracing = contextlib.ExitStack()
  for i, arch in enumerate(archs):
    if profile and i == warmup:
      import op_profile  # pylint: disable=g-import-not-at-top
      tracing.enter_context(op_profile.trace(profile))
    start = time.perf_counter()
    # Setting the subnet is timed on both sides (AutoFormer's
    # set_sample_config; our Arch's arrays, encoded and sent).
    extra = ((jax.tree.map(jnp.asarray, space.encode(arch)),) if switched
             else ())
    params, opt_state, loss = step(params, opt_state, images, labels, *extra)
    jax.block_until_ready(loss)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  tracing.close()
  return times


def run_ours(space, archs, images, labels, warmup: int, remat: bool,
             profile: str | None = None):
  """Seconds per step of our compiled supernet step over `archs`."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from masktas_jax.models.supernet import Supernet  # pylint: disable=g-import-not-at-top
  return _time_jax(Supernet(space, rngs=nnx.Rngs(0), remat=remat), space,
                   archs, images, labels, warmup, switched=True,
                   profile=profile)


def run_dense(space, archs, images, labels, warmup: int,
              profile: str | None = None):
  """Seconds per step of our plain ViT of one Arch (`vit.
  VisionTransformer`, compiled for it alone): what XLA:CPU makes of the
  same computation without the supernet's switches. `archs` must all be
  the same Arch (--largest)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from masktas_jax.models import vit  # pylint: disable=g-import-not-at-top
  arch = archs[0]
  assert all(a == arch for a in archs), 'dense runs one Arch (--largest)'
  model = vit.VisionTransformer(
      embed_dim=arch.embed_dim, num_heads=arch.num_heads,
      mlp_dims=arch.mlp_dims, image_size=space.image_size,
      patch_size=space.patch_size, num_classes=space.num_classes,
      in_chans=space.in_chans, rngs=nnx.Rngs(0))
  return _time_jax(model, space, archs, images, labels, warmup,
                   switched=False, profile=profile)


def _autoformer_config(arch) -> dict:
  """AutoFormer's `set_sample_config` dict of one of our Archs."""
  return {'embed_dim': [arch.embed_dim] * arch.depth,
          'mlp_ratio': list(arch.mlp_ratios),
          'num_heads': list(arch.num_heads), 'layer_num': arch.depth}


def run_autoformer(path: str, space, archs, images, labels, warmup: int):
  """Seconds per step of AutoFormer's supernet step over `archs`."""
  import torch  # pylint: disable=g-import-not-at-top
  # Its model/utils.py imports torch._six (gone from torch 2): the shim.
  six = types.ModuleType('torch._six')
  six.container_abcs, six.string_classes, six.int_classes = (
      collections.abc, str, int)
  six.inf = float('inf')
  sys.modules['torch._six'] = six
  sys.path.insert(0, path)
  # pylint: disable=g-import-not-at-top
  from model.supernet_transformer import Vision_TransformerSuper
  torch.manual_seed(0)
  model = Vision_TransformerSuper(
      img_size=space.image_size, patch_size=space.patch_size,
      in_chans=space.in_chans, num_classes=space.num_classes,
      embed_dim=space.max_embed, depth=space.max_depth,
      num_heads=space.max_heads, mlp_ratio=max(space.mlp_ratios),
      qkv_bias=True, change_qkv=True, gp=False, relative_position=False)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
  criterion = torch.nn.CrossEntropyLoss()
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(labels)
  times = []
  for i, arch in enumerate(archs):
    start = time.perf_counter()
    model.set_sample_config(_autoformer_config(arch))
    loss = criterion(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times


def _pin(threads: int) -> None:
  """This process on its first `threads` allowed cores (XLA sizes its pool
  from the affinity; one thread: no Eigen pool at all). Before JAX starts."""
  cores = sorted(os.sched_getaffinity(0))[:threads]
  if len(cores) < threads:
    raise SystemExit(f'--threads: {threads} asked, this process may '
                     f'run on {len(cores)} cores')
  os.sched_setaffinity(0, cores)
  if threads == 1:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_multi_thread_eigen=false')


def child(args) -> None:
  """One timed run, in this process: prints a JSON line."""
  _pin(args.threads)
  sys.path.insert(0, str(HERE))
  import common  # pylint: disable=g-import-not-at-top
  import op_profile  # pylint: disable=g-import-not-at-top
  trace_dir = None
  if args.profile:
    op_profile.enable_op_events()
    trace_dir = str(pathlib.Path(args.profile) /
                    f'{args.child}_{args.threads}threads')
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  from masktas_jax import config_lib  # pylint: disable=g-import-not-at-top
  space = config_lib.space_from_config(common.load_config(args.config))
  archs = ([space.max_arch()] * (args.warmup + args.steps) if args.largest
           else _archs(space, args.warmup + args.steps, args.seed))
  images, labels = _data(space, args.batch, args.seed)
  if args.child == 'ours':
    times = run_ours(space, archs, images, labels, args.warmup,
                     remat=not args.no_remat, profile=trace_dir)
  elif args.child == 'dense':
    times = run_dense(space, archs, images, labels, args.warmup,
                      profile=trace_dir)
  else:
    times = run_autoformer(args.autoformer, space, archs, images, labels,
                           args.warmup)
  ops = ({k: v / len(times) for k, v in op_profile.breakdown(
      trace_dir).items()} if trace_dir else None)
  print(json.dumps({'impl': args.child, 'threads': args.threads,
                    'images_per_s': args.batch * len(times) / sum(times),
                    'median_step_s': statistics.median(times),
                    'op_seconds_per_step': ops}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--autoformer',
                      help="AutoFormer's folder (holding model/)")
  parser.add_argument('--config', default='configs/demo.py')
  parser.add_argument('--threads', default='1,2')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--no-remat', action='store_true',
                      help="ours without rematerialising each layer")
  parser.add_argument('--largest', action='store_true',
                      help='every step on the largest subnet, and our plain '
                      'ViT of it compiled alone as a third runner')
  parser.add_argument('--profile', metavar='DIR',
                      help='instead of timing against AutoFormer: profile '
                      'our timed steps (and the plain ViT\'s with '
                      '--largest) into DIR, one round, and print the '
                      'share of op time per kind (op_profile.py)')
  parser.add_argument('--child', choices=('ours', 'autoformer', 'dense'),
                      help=argparse.SUPPRESS)
  parser.add_argument('--gemms', action='store_true',
                      help='instead: XLA\'s and PyTorch\'s GEMM rates at '
                      'the step\'s shapes, at the first of --threads')
  args = parser.parse_args()
  if args.gemms:
    threads = int(args.threads.split(',')[0])
    _pin(threads)
    gemms(threads)
    return
  if args.profile and not args.child:
    profile(args)
    return
  if not args.profile and (not args.autoformer or not (
      pathlib.Path(args.autoformer) / 'model' /
      'supernet_transformer.py').exists()):
    raise SystemExit('--autoformer: give the AutoFormer folder of '
                     'microsoft/Cream (it holds model/supernet_transformer.py)'
                     f', got {args.autoformer!r}')
  if args.child:
    args.threads = int(args.threads)
    child(args)
    return
  import common  # pylint: disable=g-import-not-at-top
  results = {}
  for r in range(args.rounds):
    for threads in (int(t) for t in args.threads.split(',')):
      # Alternate which goes first, so neither always follows the other.
      order = ('ours', 'autoformer') + (('dense',) if args.largest else ())
      for impl in (order if r % 2 == 0 else order[::-1]):
        line = _child(args, impl, threads)
        results.setdefault(threads, {}).setdefault(impl, []).append(
            line['images_per_s'])
        print(f'round {r}: {impl:10s} {threads} thread(s): '
              f'{line["images_per_s"]:8.1f} images/s', flush=True)
  print(f'\n# {common.command()}')
  subnets = 'the largest subnet' if args.largest else 'drawn subnets'
  print(f'# {subnets}, batch {args.batch}, {args.steps} timed steps a run, '
        f'{args.rounds} rounds')
  dense = ' | our plain ViT images/s | plain ViT / AutoFormer' * bool(
      args.largest)
  print('| threads | ours images/s | AutoFormer images/s | ours / AutoFormer '
        f'(median of rounds, range){dense} |')
  print('|---:|---:|---:|---:|' + '---:|---:|' * bool(args.largest))
  for threads, by in results.items():
    row = f'| {threads} | {statistics.median(by["ours"]):.0f} | ' + (
        f'{statistics.median(by["autoformer"]):.0f} | ' +
        _ratio(by['ours'], by['autoformer']))
    if args.largest:
      row += (f' | {statistics.median(by["dense"]):.0f} | ' +
              _ratio(by['dense'], by['autoformer']))
    print(row + ' |')


def _child(args, impl: str, threads: int) -> dict:
  """One child run's JSON line (see `child`)."""
  out = subprocess.run(
      [sys.executable, __file__, '--child', impl,
       '--threads', str(threads)] +
      (['--autoformer', args.autoformer] if args.autoformer else []) +
      ['--config', args.config, '--steps', str(args.steps),
       '--warmup', str(args.warmup), '--batch', str(args.batch),
       '--seed', str(args.seed)] +
      (['--no-remat'] if args.no_remat else []) +
      (['--largest'] if args.largest else []) +
      (['--profile', args.profile] if args.profile else []),
      capture_output=True, text=True, check=False)
  if out.returncode:
    raise SystemExit(f'{impl} ({threads} threads) failed:\n'
                     f'{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def profile(args) -> None:
  """--profile: our step's op time per kind, per thread count."""
  import common  # pylint: disable=g-import-not-at-top
  import op_profile  # pylint: disable=g-import-not-at-top
  print(f'# {common.command()}')
  print(f'# {"the largest subnet" if args.largest else "drawn subnets"}, '
        f'batch {args.batch}, {args.steps} profiled steps a run; op time '
        'per step (ms) and its share per kind')
  print('| implementation | threads | images/s (profiled) | op time ms | ' +
        ' | '.join(op_profile.KINDS) + ' |')
  print('|---|---:|---:|---:|' + '---:|' * len(op_profile.KINDS))
  for threads in (int(t) for t in args.threads.split(',')):
    for impl in ('ours',) + (('dense',) if args.largest else ()):
      line = _child(args, impl, threads)
      ops = line['op_seconds_per_step']
      total = sum(ops.values())
      shares = ' | '.join(f'{1e3 * ops[k]:.0f} ({ops[k] / total:.0%})'
                          for k in op_profile.KINDS)
      name = 'ours' if impl == 'ours' else 'our plain ViT'
      print(f'| {name} | {threads} | {line["images_per_s"]:.0f} | '
            f'{1e3 * total:.0f} | {shares} |', flush=True)


def gemms(threads: int, reps: int = 40) -> None:
  """--gemms: XLA's and PyTorch's GEMM rates (GFLOP/s) at the step's
  shapes, one process pinned to `threads` cores: a linear layer's forward
  (x @ w), input gradient (dy @ w.T) and weight gradient (x.T @ dy, the
  contraction over the batch's B * N = 64 * 65 token rows)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  products = {
      'forward': (lambda x, w, dy: x @ w, lambda x, w, dy: x @ w),
      'input grad': (lambda x, w, dy: dy @ w.T, lambda x, w, dy: dy @ w.T),
      'weight grad': (
          lambda x, w, dy: jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ()))),
          lambda x, w, dy: x.t() @ dy),
  }

  def rate(fn, args, flop, sync):
    sync(fn(*args))
    start = time.perf_counter()
    for _ in range(reps):
      out = fn(*args)
    sync(out)
    return flop * reps / (time.perf_counter() - start) / 1e9

  rng = np.random.default_rng(0)
  print('| rows x in x out | product | XLA GFLOP/s | PyTorch GFLOP/s | '
        'PyTorch / XLA |')
  print('|---|---|---:|---:|---:|')
  rows = 64 * 65
  for k, n in ((128, 128), (128, 512), (512, 128), (64, 128)):
    x, w, dy = (rng.random(s, np.float32) for s in ((rows, k), (k, n),
                                                     (rows, n)))
    flop = 2 * rows * k * n
    for name, (jax_fn, torch_fn) in products.items():
      ours = rate(jax.jit(jax_fn), [jnp.asarray(a) for a in (x, w, dy)],
                  flop, jax.block_until_ready)
      theirs = rate(torch_fn, [torch.from_numpy(a) for a in (x, w, dy)],
                    flop, lambda out: None)
      print(f'| {rows} x {k} x {n} | {name} | {ours:.0f} | {theirs:.0f} | '
            f'{theirs / ours:.2f} |', flush=True)


def _ratio(ours, theirs) -> str:
  """Median and range of the per-round ratios."""
  ratios = [o / t for o, t in zip(ours, theirs)]
  return (f'{statistics.median(ratios):.2f}x ({min(ratios):.2f}-'
          f'{max(ratios):.2f})')


if __name__ == '__main__':
  main()
