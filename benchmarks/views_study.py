"""What several masked views per decoded image do to the supernet's results.

`supernet.views_per_image` K masks each decoded image K times inside the
batch, so the host decodes K times fewer images for the same number of
views (BENCHMARKS.md, input pipeline). The step still trains on
`batch_size` views, but those views come from batch / K images: fewer
distinct images per step and per run. This measures what that costs on
`configs/fashion.py`, per seed (`--seeds`) and per variant (`--variants`:
K, with an `f` suffix for `supernet.view_flips`, e.g. `1,4,4f`), each
supernet trained for the config's steps on one teacher (`--teacher`):

1. the supernet's own losses on held-out images: feature prediction (eq.
   11) and pixel reconstruction (eq. 10) under the training mask, over
   `--archs` subnets spread over the window's parameters, the same
   subnets, images and masks for every variant of a seed (paired);
2. the search with the config's fitness, and the found subnet fine-tuned
   from its inherited weights for `--steps` steps (validation and test
   top-1).

Each variant's runs live in `--root/views<K>[f]/seed<s>/` (the K = 1
supernet too, so every variant is trained by the same code). Everything
is cached (a rerun picks up where it stopped; `--report` trains nothing).
Prints the tables and writes `--root/views_study.json`. The interval of a
paired difference is over the subnets of one supernet per variant and
seed: it leaves out supernet-to-supernet training noise, which only the
spread over seeds shows.

  python benchmarks/views_study.py --root=/root/studies/views \\
      --teacher=/root/studies/fashion_v2/teacher/model --seeds=0,1 \\
      --variants=1,4,4f --steps=1500
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from etils import epath

from masktas_jax import config_lib
from masktas_jax.evaluation import fitness, ranking, signals
from masktas_jax.storage import artifacts

import common  # pylint: disable=g-bad-import-order
import search_vs_baselines  # pylint: disable=g-bad-import-order
import signal_study  # pylint: disable=g-bad-import-order

# The supernet's own losses, as the signals (minus each loss) give them.
LOSSES = ('feature', 'pixel')


def _log(message: str) -> None:
  print(f'[views_study] {message}', flush=True)


def parse_variant(text: str) -> tuple[int, bool]:
  """'4f' -> (4, True): views per image and view_flips."""
  flips = text.endswith('f')
  count = text[:-1] if flips else text
  if not count.isdigit() or int(count) < 1 or (flips and int(count) < 2):
    raise SystemExit(f'--variants: {text!r} is not K or Kf with K >= 1 '
                     '(f needs K >= 2)')
  return int(count), flips


def variant_args(args, variant: str) -> argparse.Namespace:
  """`args` with the root of `variant`'s supernets."""
  return argparse.Namespace(**{**vars(args),
                                'root': f'{args.root}/views{variant}'})


def held_out_losses(c, workdir: epath.Path, seed: int, count: int) -> dict:
  """{loss: [per subnet]} of `workdir`'s supernet over `count` spread
  subnets (cached in the workdir)."""
  cache = workdir / f'views_losses_{count}.json'
  if cache.exists():
    return json.loads(cache.read_text())
  archs = common.spread_archs(c, count, seed)
  scoring = c.copy_and_resolve_references()
  scoring.search.fitness = LOSSES[0]  # A scorer computes its fitness's.
  names = tuple(dict.fromkeys(LOSSES + signals.needed(LOSSES[0])))
  scorer = fitness.load_scorer(config_lib.scoring(scoring), workdir,
                               capacity=len(archs), names=names)
  values = scorer.signals(archs)
  out = {name: (-np.asarray(values[name])).tolist() for name in LOSSES}
  artifacts.write_json(cache, out)
  return out


def study(args, config, seed: int, variant: str) -> dict:
  """Losses, found Arch and its top-1 of one (seed, variant)."""
  views, flips = parse_variant(variant)
  sub = variant_args(args, variant)
  c = config.copy_and_resolve_references()
  c.supernet.views_per_image, c.supernet.view_flips = views, flips
  workdir = signal_study.supernet(sub, c, seed)
  c.seed = seed
  c.search.supernet = str(artifacts.model_dir(workdir, 'supernet'))
  losses = held_out_losses(c, workdir, seed, args.archs)
  found, search_s = search_vs_baselines.searched(sub, c, workdir)
  top1 = signal_study.fine_tuned(sub, c, workdir, found, 0)
  return {'variant': variant, 'seed': seed, 'losses': losses,
          'arch': found.to_dict(),
          'params': config_lib.space_from_config(c).count_params(found),
          'search_s': search_s, 'top1': top1}


def paired(a: list[float], b: list[float], seed: int = 0) -> dict:
  """Mean of b - a over subnets, its bootstrap 95% interval, and how many
  subnets have b above a."""
  d = np.asarray(b) - np.asarray(a)
  resamples = np.random.default_rng(seed).integers(
      0, len(d), (ranking.BOOTSTRAP_RESAMPLES, len(d)))
  lo, hi = np.percentile(d[resamples].mean(axis=1), [2.5, 97.5])
  return {'mean': float(d.mean()), 'ci': [float(lo), float(hi)],
          'relative': float(d.mean() / np.mean(a)),
          'above': int((d > 0).sum()), 'of': len(d)}


def main_() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  signal_study.add_study_arguments(parser, seeds='0,1')
  parser.add_argument('--variants', default='1,4,4f',
                      help='K or Kf (with view_flips), comma-separated; the '
                      'first is the reference')
  parser.add_argument('--archs', type=int, default=30,
                      help='subnets the held-out losses are averaged over')
  parser.add_argument('--steps', type=int, default=0,
                      help="fine-tuning steps; 0: the config's")
  args = parser.parse_args()
  config = signal_study.study_config(args)
  args.fitness = config.search.fitness
  args.steps = args.steps or config.finetune.steps
  variants = args.variants.split(',')
  for v in variants:
    parse_variant(v)
  seeds = [int(s) for s in args.seeds.split(',')]

  done = {}
  for seed in seeds:
    for v in variants:
      try:
        done[seed, v] = study(args, config, seed, v)
      except SystemExit as e:
        _log(str(e))

  print(f'\n# {common.command()}')
  print(f'# {args.steps} fine-tuning steps; losses: mean over {args.archs} '
        'spread subnets on held-out images')
  print('| seed | views | feature loss | pixel loss | found Arch | params M '
        '| validation top-1 | test top-1 |')
  print('|---:|---|---:|---:|---|---:|---:|---:|')
  for (seed, v), r in done.items():
    a, top1 = r['arch'], r['top1']
    cells = ('- | -' if top1 is None else
             f'{100 * top1[0]:.2f} | {100 * top1[1]:.2f}')
    print(f'| {seed} | {v} | {np.mean(r["losses"]["feature"]):.4f} | '
          f'{np.mean(r["losses"]["pixel"]):.4f} | E{a["embed_dim"]} '
          f'D{a["depth"]} | {r["params"] / 1e6:.2f} | {cells} |')
  summary = {}
  ref = variants[0]
  for v in variants[1:]:
    rows = [(s, done[s, ref], done[s, v]) for s in seeds
            if (s, ref) in done and (s, v) in done]
    if not rows:
      continue
    summary[v] = {name: {s: paired(a['losses'][name], b['losses'][name], s)
                         for s, a, b in rows}
                  for name in LOSSES}
    summary[v]['top1'] = [100 * (b['top1'][1] - a['top1'][1])
                          for _, a, b in rows if a['top1'] and b['top1']]
    print(f'\nviews {v} against {ref}:')
    for name in LOSSES:
      print(f'  {name} loss: ' + '; '.join(
          f'seed {s} {p["mean"]:+.4f} [{p["ci"][0]:+.4f}, {p["ci"][1]:+.4f}]'
          f' ({p["relative"]:+.1%}, higher on {p["above"]} of {p["of"]})'
          for s, p in summary[v][name].items()))
    top1 = common.mean_sd(summary[v]['top1'], signed=True)
    print(f'  found subnet\'s test top-1: {top1} points')
  root = epath.Path(args.root)
  artifacts.write_json(root / 'views_study.json', {
      'steps': args.steps, 'runs': [done[k] for k in done],
      'summary': summary})


if __name__ == '__main__':
  main_()
