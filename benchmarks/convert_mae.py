"""Time and peak memory of converting ViT-B-sized MAE checkpoints on the CPU.

Builds MAE-layout state dicts with random weights (ViT-B encoder alone, and
with the 8-block decoder as in `*_full.pth`), saves them as `.pth`, and runs
`python -m masktas_jax.convert_mae` on each in a fresh process, reporting
its wall time and peak resident memory. Targets: < 60 s and < 2 GB.

  python benchmarks/convert_mae.py
"""

from __future__ import annotations

import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent /
                       'tests'))
from torch_mae import TorchMAE  # noqa: E402  pylint: disable=g-import-not-at-top


def convert(ckpt: pathlib.Path, out: pathlib.Path) -> tuple[float, float]:
  """(seconds, peak RSS in GB) of one conversion in its own process."""
  # Measure the child alone: wait4 gives that process's own rusage.
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, '-m', 'masktas_jax.convert_mae', f'--checkpoint={ckpt}',
       f'--output={out}'], env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(proc.stderr.read())
  return seconds, usage.ru_maxrss / 2**20  # KiB -> GiB


def main():
  torch.manual_seed(0)
  print('| checkpoint | tensors (M params) | file (MB) | convert (s) | '
        'peak RSS (GB) |')
  print('|---|---|---|---|---|')
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    for name, dec_depth in (('ViT-B encoder', 0), ('ViT-B + decoder', 8)):
      model = TorchMAE(image=224, patch=16, dim=768, depth=12, heads=12,
                       dec_dim=512, dec_depth=dec_depth, dec_heads=16)
      ckpt = tmp / f'{dec_depth}.pth'
      torch.save({'model': model.state_dict()}, ckpt)
      params = sum(p.numel() for p in model.state_dict().values()) / 1e6
      del model
      seconds, rss = convert(ckpt, tmp / f'out{dec_depth}')
      print(f'| {name} | {params:.1f} | {ckpt.stat().st_size / 1e6:.0f} | '
            f'{seconds:.1f} | {rss:.2f} |', flush=True)
  print(f'(ru_maxrss of the converting process; peak of this benchmark '
        f'process itself: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB)')


if __name__ == '__main__':
  main()
