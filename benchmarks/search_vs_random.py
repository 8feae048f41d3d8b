"""What the search buys: the found subnet against random subnets of the same
parameter window, and what inheriting buys: against the found Arch trained
from scratch.

Reads a finished pipeline workdir (its supernet, search and fine-tuning)
and fine-tunes, with the same recipe, data order and seeds:

* `--random` Archs drawn uniformly from the search space inside the
  config's parameter/MAC window, each from its inherited supernet weights;
* the found Arch from random weights (`finetune.from_scratch`).

Each run goes to `WORKDIR/baselines/<name>/` (resumable: a finished run is
read back). Prints a Markdown table of top-1 / top-5 and the searched
subnet's margin over the median random subnet and over from-scratch, and
writes `WORKDIR/baselines/comparison.json`.

  python -m masktas_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python benchmarks/search_vs_random.py --workdir=/tmp/demo
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
from etils import epath

from masktas_jax import artifacts, config_lib, finetune
from masktas_jax.evolution import Window, random_candidate
from masktas_jax.space import Arch

import common  # pylint: disable=g-bad-import-order


def _variant(config, workdir: epath.Path, arch: Arch, from_scratch: bool):
  """`config` fine-tuning `arch` from the workdir's supernet (or from
  scratch)."""
  c = config.copy_and_resolve_references()
  c.finetune.arch = json.dumps(arch.to_dict())
  c.finetune.from_scratch = from_scratch
  c.search.supernet = str(artifacts.model_dir(workdir, 'supernet'))
  return c


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True,
                      help='a finished pipeline workdir')
  parser.add_argument('--config', default='configs/demo.py',
                      help='the config the workdir was made with')
  parser.add_argument('--random', type=int, default=5,
                      help='random Archs of the window to fine-tune')
  parser.add_argument('--seed', type=int, default=0,
                      help='seed of the random Archs')
  args = parser.parse_args()

  workdir = epath.Path(args.workdir)
  config = common.load_config(args.config)
  space = config_lib.space_from_config(config)
  best = json.loads(artifacts.best_arch(workdir).read_text())
  found = Arch.from_dict(best['arch'])
  searched = finetune.run(config, workdir)

  window = Window.from_config(config.search)
  rng = np.random.default_rng(args.seed)
  archs = []
  for _ in range(args.random):
    archs.append(random_candidate(space, window, rng,
                                  exclude={found, *archs}))
  runs = [('searched', found, searched)]
  out = workdir / 'baselines'
  for i, arch in enumerate(archs):
    print(f'--- random subnet {i}: {arch.to_dict()}', flush=True)
    runs.append((f'random {i}', arch, finetune.run(
        _variant(config, workdir, arch, False), out / f'random{i}')))
  print('--- the found Arch from scratch', flush=True)
  runs.append(('searched, from scratch', found, finetune.run(
      _variant(config, workdir, found, True), out / 'scratch')))

  rows = [{'name': name, 'arch': arch.to_dict(),
           'params': space.count_params(arch),
           'macs': space.count_macs(arch), 'top1': r['top1'],
           'top5': r['top5']} for name, arch, r in runs]
  median = statistics.median(r['top1'] for r in rows
                             if r['name'].startswith('random'))
  scratch = rows[-1]['top1']
  result = {'window': window.describe(), 'split': searched['split'],
            'images': searched['images'], 'runs': rows,
            'median_random_top1': median, 'scratch_top1': scratch,
            'searched_top1': searched['top1']}
  (out / 'comparison.json').write_text(json.dumps(result, indent=2))

  print(f'\nFine-tuned top-1 / top-5 on {searched["images"]} images of '
        f'{searched["split"]!r}; window {window.describe()}\n')
  print('| subnet | embed | depth | params (M) | top-1 (%) | top-5 (%) |')
  print('|---|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f'| {r["name"]} | {r["arch"]["embed_dim"]} | {r["arch"]["depth"]} '
          f'| {r["params"] / 1e6:.3f} | {100 * r["top1"]:.2f} '
          f'| {100 * r["top5"]:.2f} |')
  print(f'\nsearched - median random: {100 * (searched["top1"] - median):+.2f}'
        f' points; searched - from scratch: '
        f'{100 * (searched["top1"] - scratch):+.2f} points')
  print(f'wrote {out / "comparison.json"}')


if __name__ == '__main__':
  main()
