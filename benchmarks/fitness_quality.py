"""Does the label-free fitness track accuracy? Relation maps x temperature,
over several seeds, against fine-tuned top-1, a linear probe and k-NN.

For each seed (the supernet's seed and the sample of subnets), in the
setting of `configs/demo.py:wide`:

1. trains a supernet (one shared teacher, trained once with seed 0);
2. draws `--num_archs` random subnets of the search window and measures
   three yardsticks on their inherited weights (`rank.yardstick_top1`):
   top-1 on the validation split after `rank.finetune_steps` steps of
   fine-tuning, a linear probe and 20-NN; plus the fine-tuned top-1 on the
   test split;
3. sweeps the relation maps of the fitness (`losses.relation_consistency`:
   form x self-relation x teacher temperature x student/teacher ratio) on
   the students' and teacher's tokens of the search's masked images, and
   for each setting records the Kendall tau with each yardstick, with the
   teacher-free controls (parameters, MACs, the student's map entropy), and
   against the same fitness with each image's teacher tokens taken from
   another image or replaced by noise of the same per-token norms.

The setting with the best mean Kendall against fine-tuned top-1 on the
`--select` seeds, among those whose ranking depends on the teacher (Kendall
<= 0.5 against both replaced teachers), is then reported on the other,
held-out seeds, and searched with (`mode=search`) on every seed: the found
subnet, fine-tuned with the same budget, against the median random subnet
of the window and against its Arch trained from scratch, on the test split.

Every step is cached under --root (a rerun picks up where it stopped).
Prints Markdown tables and writes `--root/fitness_quality.json` and
`--root/fitness_quality.png`.

  python benchmarks/fitness_quality.py --root=/tmp/fq --seeds=0,1,2,3,4 \
      --select=0,1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from scipy import stats

from masktas_jax import config_lib, losses, main
from masktas_jax.evaluation import fitness, ranking
from masktas_jax.evaluation.window import Window
from masktas_jax.space import Arch
from masktas_jax.stages import finetune, rank, search
from masktas_jax.storage import artifacts
from masktas_jax.training import plots

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order

import common  # pylint: disable=g-bad-import-order

TAUS = {'dot': (1.0, 3.0, 10.0, 30.0, 100.0, 300.0),
        **{f: (0.01, 0.03, 0.1, 0.3, 1.0) for f in losses.RELATION_FORMS
           if f != 'dot'}}
RATIOS = (0.5, 1.0, 2.0)
# The ranking must depend on the teacher: at most this Kendall against the
# fitness with another image's teacher tokens, or noise, in their place.
MAX_TEACHER_FREE_TAU = 0.5


def settings() -> list[losses.Relation]:
  return [losses.Relation(form, tau, tau * ratio, exclude)
          for form in losses.RELATION_FORMS for exclude in (False, True)
          for tau in TAUS[form] for ratio in RATIOS]


def name(r: losses.Relation) -> str:
  return (f'{r.form}{"" if r.exclude_self else "+self"} tau {r.tau:g}'
          f' x{r.student_tau / r.tau:g}')


def kendall(a, b) -> float:
  value = stats.kendalltau(a, b).statistic
  return 0.0 if np.isnan(value) else float(value)


def _log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


# --- stage runs (each returns at once when its output exists) -------------

def teacher_dir(args) -> epath.Path:
  return epath.Path(args.root) / 'teacher'


def seed_config(args, seed: int, **overrides):
  return common.load_config(args.config, **{
      'seed': seed, 'rank.num_archs': args.num_archs,
      'teacher.checkpoint': str(teacher_dir(args) / 'teacher' / 'model'),
      **({'rank.finetune_steps': args.finetune_steps}
         if args.finetune_steps else {}), **overrides})


def train(args, seed: int) -> epath.Path:
  if not (teacher_dir(args) / 'teacher' / 'model').exists():
    _log('training the shared teacher')
    main.run(common.load_config(args.config, mode='teacher', seed=0),
             str(teacher_dir(args)))
  workdir = common.seed_dir(args.root, seed)
  _log(f'seed {seed}: supernet')
  main.run(seed_config(args, seed, mode='supernet'), str(workdir))
  return workdir


def finetuned_dir(config, workdir: epath.Path, arch: Arch) -> epath.Path:
  return rank.finetune_dir(config, workdir, arch) / 'finetune' / 'model'


# --- per seed: yardsticks and the sweep ------------------------------------

def fitness_variants(zt: np.ndarray, zs: np.ndarray, relations, seed: int):
  """{setting: {'real', 'permuted', 'noise', 'entropy': (P,)}}.

  zt (n, K, D_t) teacher tokens, zs (P, n, K, D) students' tokens."""
  rng = np.random.default_rng(seed)
  permuted = np.roll(zt, 1, axis=0)  # Each image gets its neighbour's.
  noise = rng.normal(size=zt.shape)
  noise *= np.linalg.norm(zt, axis=-1, keepdims=True) / np.linalg.norm(
      noise, axis=-1, keepdims=True)
  teachers = jnp.asarray(np.stack([zt, permuted, noise]), jnp.float32)
  students = jnp.asarray(zs)

  out, compiled = {}, {}
  for r in relations:
    key = (r.form, r.exclude_self)
    if key not in compiled:
      def one(teachers, students, tau, student_tau, form=r.form,
              exclude=r.exclude_self):
        rel = lambda t, s: losses.relation_consistency(
            t, s, tau, form=form, student_tau=student_tau,
            exclude_self=exclude).mean()
        fit = jax.vmap(lambda t: jax.lax.map(lambda s: rel(t, s), students))(
            teachers)
        ent = jax.lax.map(lambda s: losses.relation_entropy(
            s, student_tau, form, exclude).mean(), students)
        h_t = losses.relation_entropy(teachers[0], tau, form, exclude).mean()
        return fit, ent, h_t
      compiled[key] = jax.jit(one)
    fit, ent, h_t = jax.device_get(compiled[key](teachers, students, r.tau,
                                              r.student_tau))
    out[name(r)] = {'real': fit[0].tolist(), 'permuted': fit[1].tolist(),
                    'noise': fit[2].tolist(), 'entropy': ent.tolist(),
                    'teacher_entropy': float(h_t)}
  return out


def study_seed(args, seed: int) -> dict:
  workdir = train(args, seed)
  cache = workdir / 'study.json'
  if cache.exists():
    return json.loads(cache.read_text())
  config = seed_config(args, seed, mode='rank', **{
      'search.supernet': str(artifacts.model_dir(workdir, 'supernet'))})
  space = config_lib.space_from_config(config)
  archs = rank.sample_archs(space, Window.from_config(config.search),
                            config.rank.num_archs, config.seed + 4)
  scorer = fitness.load_scorer(config_lib.scoring(config), workdir,
                               capacity=len(archs))
  _log(f'seed {seed}: tokens of {len(archs)} subnets on '
       f'{scorer.num_images} images')
  zt, zs = scorer.tokens(archs)
  variants = fitness_variants(zt, zs, settings(), seed)
  del zt, zs
  result = {'seed': seed, 'archs': [a.to_dict() for a in archs],
            'params': [space.count_params(a) for a in archs],
            'macs': [space.count_macs(a) for a in archs], 'yardsticks': {},
            'fitness': variants}
  for yardstick in ('knn', 'linear', 'finetune'):
    _log(f'seed {seed}: {yardstick} yardstick')
    c = config.copy_and_resolve_references()
    c.rank.yardstick = yardstick
    result['yardsticks'][yardstick] = rank.yardstick_top1(
        c, workdir, scorer.encoder, space, archs).tolist()
  result['test_top1'] = [common.test_top1(config, finetuned_dir(config, workdir, a))
                         for a in archs]
  cache.write_text(json.dumps(result))
  return result


def retest(args, seed: int, study: dict, fitness: list[float]) -> dict:
  """The fine-tuned yardstick's own noise: the same subnets fine-tuned again
  with other fine-tuning seeds (data order, head init). Its Kendall with the
  first run bounds what any predictor of it can reach; `fitness` is also
  compared with the mean of both runs, a less noisy yardstick."""
  workdir = common.seed_dir(args.root, seed)
  supernet = str(artifacts.model_dir(workdir, 'supernet'))
  config = seed_config(args, seed + 1000)
  archs = [Arch.from_dict(a) for a in study['archs']]
  _log(f'seed {seed}: fine-tuning the {len(archs)} subnets again')
  again = rank.finetune_top1(config, workdir / 'retest', archs, supernet)
  test = [common.test_top1(config, finetuned_dir(config, workdir / 'retest', a))
          for a in archs]
  mean_val = (np.array(study['yardsticks']['finetune']) + again) / 2
  mean_test = (np.array(study['test_top1']) + test) / 2
  return {'val': ranking.correlation(study['yardsticks']['finetune'], again,
                                     seed),
          'test': ranking.correlation(study['test_top1'], test, seed),
          'fitness_vs_mean_val': ranking.correlation(fitness, mean_val, seed),
          'fitness_vs_mean_test': ranking.correlation(fitness, mean_test, seed)}


# --- selection on some seeds, report on the others -------------------------

def setting_row(study: dict, key: str) -> dict:
  f = study['fitness'][key]
  y = study['yardsticks']
  return {
      **{f'kendall_{k}': kendall(f['real'], v) for k, v in y.items()},
      'kendall_test': kendall(f['real'], study['test_top1']),
      'permuted': kendall(f['real'], f['permuted']),
      'noise': kendall(f['real'], f['noise']),
      'entropy_control': kendall(f['entropy'], y['finetune']),
      'fitness_vs_entropy': kendall(f['real'], f['entropy']),
      'teacher_entropy': f['teacher_entropy'],
  }


def mean_rows(studies, key):
  rows = [setting_row(s, key) for s in studies]
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def select(studies: list[dict]) -> tuple[str, list[tuple[str, dict]]]:
  keys = list(studies[0]['fitness'])
  table = sorted(((k, mean_rows(studies, k)) for k in keys),
                 key=lambda kv: -kv[1]['kendall_finetune'])
  eligible = [(k, r) for k, r in table
              if max(r['permuted'], r['noise']) <= MAX_TEACHER_FREE_TAU]
  return (eligible or table)[0][0], table


def relation_of(key: str) -> losses.Relation:
  return next(r for r in settings() if name(r) == key)


# --- search vs random ------------------------------------------------------

def search_seed(args, seed: int, relation: losses.Relation) -> dict:
  workdir = common.seed_dir(args.root, seed)
  tag = name(relation).replace(' ', '_')
  out = workdir / f'searched_{tag}'
  cache = out / 'comparison.json'
  if cache.exists():
    return json.loads(cache.read_text())
  supernet = str(artifacts.model_dir(workdir, 'supernet'))
  config = seed_config(args, seed, mode='search', **{
      'search.supernet': supernet, 'search.relation': relation.form,
      'search.tau': relation.tau,
      'search.student_tau_ratio': relation.student_tau / relation.tau,
      'search.exclude_self': relation.exclude_self})
  _log(f'seed {seed}: search with {name(relation)}')
  best = search.run(config, out)
  arch = Arch.from_dict(best['arch'])
  val = rank.finetune_top1(config, workdir, [arch], supernet)[0]
  test = common.test_top1(config, finetuned_dir(config, workdir, arch))
  scratch = config.copy_and_resolve_references()
  scratch.finetune.arch = arch.to_json()
  scratch.finetune.steps = config.rank.finetune_steps
  scratch.finetune.eval_split = config.data.eval_split
  scratch.finetune.from_scratch = True
  _log(f'seed {seed}: the found Arch from scratch')
  finetune.run(scratch, out / 'scratch')
  result = {'arch': best['arch'], 'fitness': best['fitness'],
            'params': best['params'], 'val_top1': float(val),
            'test_top1': test,
            'scratch_test_top1': common.test_top1(
                config, out / 'scratch' / 'finetune' / 'model')}
  cache.write_text(json.dumps(result))
  return result


# --- output -----------------------------------------------------------------

def plot(table, studies, chosen: str, path: epath.Path) -> None:
  """Mean Kendall (selection seeds) against fine-tuned top-1 per setting."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  by_key = dict(table)
  for ax, exclude in zip(axes, (True, False)):
    for i, form in enumerate(losses.RELATION_FORMS):
      taus = TAUS[form]
      for ratio, style in zip(RATIOS, (':', '-', '--')):
        keys = [name(losses.Relation(form, t, t * ratio, exclude))
                for t in taus]
        x = np.arange(len(taus))
        ax.plot(x, [by_key[k]['kendall_finetune'] for k in keys], style,
                color=f'C{i}', marker='o', ms=3,
                label=f'{form} x{ratio:g}' if ratio == 1.0 else None)
    params = np.mean([kendall(s['params'], s['yardsticks']['finetune'])
                      for s in studies])
    ax.axhline(params, color='k', lw=1, label='control: parameters')
    ax.axhline(0, color='grey', lw=0.5)
    ax.set_xticks(range(5), ['tau step 1', '2', '3', '4', '5'])
    ax.set_xlabel('temperature, low to high (dot: 1-300, others: 0.01-1)')
    ax.set_ylabel('mean Kendall vs fine-tuned top-1')
    ax.set_title(('without' if exclude else 'with') +
                 ' self-relations (dotted x0.5, dashed x2 student tau)')
    ax.legend(fontsize=7)
  fig.suptitle(f'selection seeds; chosen: {chosen}')
  plots.save_figure(fig, path)


def main_() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--config', default='configs/demo.py' +
                      ':wide')
  parser.add_argument('--seeds', default='0,1,2,3,4')
  parser.add_argument('--select', default='0,1',
                      help='seeds the default is chosen on')
  parser.add_argument('--num_archs', type=int, default=30)
  parser.add_argument('--finetune_steps', type=int, default=0,
                      help="0: the config's rank.finetune_steps")
  parser.add_argument('--retest', action='store_true',
                      help='fine-tune the first seed\'s subnets again with '
                      'other fine-tuning seeds: the yardstick\'s own noise')
  parser.add_argument('--only_study', action='store_true',
                      help='stop after the per-seed studies')
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  chosen_on = [int(s) for s in args.select.split(',')]
  held_out = [s for s in seeds if s not in chosen_on]
  root = epath.Path(args.root)
  root.mkdir(parents=True, exist_ok=True)

  studies = {s: study_seed(args, s) for s in seeds}
  chosen, table = select([studies[s] for s in chosen_on])
  relation = relation_of(chosen)
  print(f'\nSelection seeds {chosen_on}: the 12 best settings by mean Kendall '
        'against fine-tuned top-1\n')
  print('| setting | fine-tuned | linear | k-NN | permuted teacher | noise '
        'teacher | teacher entropy |')
  print('|---|---:|---:|---:|---:|---:|---:|')
  for k, r in table[:12]:
    print(f'| {k} | {r["kendall_finetune"]:.2f} | {r["kendall_linear"]:.2f} '
          f'| {r["kendall_knn"]:.2f} | {r["permuted"]:.2f} | {r["noise"]:.2f}'
          f' | {r["teacher_entropy"]:.2f} |')
  literal = name(losses.Relation('dot', 1.0, 1.0, False))
  r = mean_rows([studies[s] for s in chosen_on], literal)
  print(f'| (paper literal) {literal} | {r["kendall_finetune"]:.2f} | '
        f'{r["kendall_linear"]:.2f} | {r["kendall_knn"]:.2f} | '
        f'{r["permuted"]:.2f} | {r["noise"]:.2f} | '
        f'{r["teacher_entropy"]:.2f} |')
  print(f'\nchosen: {chosen}')

  print(f'\nHeld-out seeds {held_out} (and the selection seeds), {chosen}: '
        'Kendall [bootstrap 95%] against each yardstick, and the controls '
        'against fine-tuned top-1\n')
  print('| seed | fine-tuned (val) | fine-tuned (test) | linear | k-NN | '
        'params | MACs | student entropy | permuted | noise | fine-tuned '
        'top-1 range (%) |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  per_seed = {}
  for s in seeds:
    st, f = studies[s], studies[s]['fitness'][chosen]
    y = st['yardsticks']
    row = {k: ranking.correlation(f['real'], v, s) for k, v in y.items()}
    row['test'] = ranking.correlation(f['real'], st['test_top1'], s)
    row['controls'] = {
        'params': ranking.correlation(st['params'], y['finetune'], s),
        'macs': ranking.correlation(st['macs'], y['finetune'], s),
        'student_entropy': ranking.correlation(f['entropy'], y['finetune'], s)}
    row['permuted'] = kendall(f['real'], f['permuted'])
    row['noise'] = kendall(f['real'], f['noise'])
    row['held_out'] = s in held_out
    per_seed[s] = row

    def cell(c):
      return (f'{c["kendall_tau"]:.2f} [{c["kendall_ci"][0]:.2f}, '
              f'{c["kendall_ci"][1]:.2f}]')
    top = 100 * np.array(y['finetune'])
    print(f'| {s}{"" if s in held_out else " (sel.)"} | '
          f'{cell(row["finetune"])} | {cell(row["test"])} | '
          f'{cell(row["linear"])} | '
          f'{cell(row["knn"])} | {row["controls"]["params"]["kendall_tau"]:.2f}'
          f' | {row["controls"]["macs"]["kendall_tau"]:.2f} | '
          f'{row["controls"]["student_entropy"]["kendall_tau"]:.2f} | '
          f'{row["permuted"]:.2f} | {row["noise"]:.2f} | '
          f'{top.min():.1f}-{top.max():.1f} |')
  if held_out:
    def stat(fn):
      v = [fn(per_seed[s]) for s in held_out]
      return f'{np.mean(v):.2f} +- {np.std(v):.2f}'
    print(f'| held-out mean +- std | {stat(lambda r: r["finetune"]["kendall_tau"])}'
          f' | {stat(lambda r: r["test"]["kendall_tau"])}'
          f' | {stat(lambda r: r["linear"]["kendall_tau"])} | '
          f'{stat(lambda r: r["knn"]["kendall_tau"])} | '
          f'{stat(lambda r: r["controls"]["params"]["kendall_tau"])} | '
          f'{stat(lambda r: r["controls"]["macs"]["kendall_tau"])} | '
          f'{stat(lambda r: r["controls"]["student_entropy"]["kendall_tau"])}'
          f' | {stat(lambda r: r["permuted"])} | {stat(lambda r: r["noise"])}'
          ' | |')
  if args.retest:
    again = retest(args, seeds[0], studies[seeds[0]],
                   studies[seeds[0]]['fitness'][chosen]['real'])
    print(f'\nThe yardstick against itself (seed {seeds[0]}, the same '
          f'{args.num_archs} subnets fine-tuned again with other fine-tuning '
          f'seeds): Kendall {again["val"]["kendall_tau"]:.2f} '
          f'[{again["val"]["kendall_ci"][0]:.2f}, '
          f'{again["val"]["kendall_ci"][1]:.2f}] on validation, '
          f'{again["test"]["kendall_tau"]:.2f} '
          f'[{again["test"]["kendall_ci"][0]:.2f}, '
          f'{again["test"]["kendall_ci"][1]:.2f}] on test')
    for split in ('val', 'test'):
      c = again[f'fitness_vs_mean_{split}']
      print(f'{chosen} against the mean of both runs ({split}): Kendall '
            f'{c["kendall_tau"]:.2f} [{c["kendall_ci"][0]:.2f}, '
            f'{c["kendall_ci"][1]:.2f}]')
  result = {'chosen': chosen, 'relation': dataclasses.asdict(relation),
            'select_seeds': chosen_on, 'held_out_seeds': held_out,
            'selection_table': [{'setting': k, **r} for k, r in table],
            'per_seed': per_seed,
            'retest': again if args.retest else None}
  plot(table, [studies[s] for s in chosen_on], chosen,
       root / 'fitness_quality.png')
  (root / 'fitness_quality.json').write_text(json.dumps(result, indent=2))
  if args.only_study:
    return

  print(f'\nSearch ({chosen}) vs random subnets of the window, fine-tuned '
        'alike; test top-1 (%)\n')
  print('| seed | searched | median of random | best random | searched from '
        'scratch | searched params (M) |')
  print('|---|---:|---:|---:|---:|---:|')
  rows = []
  for s in seeds:
    c = search_seed(args, s, relation)
    randoms = studies[s]['test_top1']
    row = {'seed': s, 'searched': c['test_top1'],
           'median_random': statistics.median(randoms),
           'best_random': max(randoms), 'scratch': c['scratch_test_top1'],
           'arch': c['arch'], 'params': c['params'],
           'random_percentile': float(np.mean(np.array(randoms) <
                                              c['test_top1']))}
    rows.append(row)
    print(f'| {s}{"" if s in held_out else " (sel.)"} | '
          f'{100 * row["searched"]:.2f} | {100 * row["median_random"]:.2f} | '
          f'{100 * row["best_random"]:.2f} | {100 * row["scratch"]:.2f} | '
          f'{row["params"] / 1e6:.3f} |')
  for label, key in (('searched - median random', 'median_random'),
                     ('searched - from scratch', 'scratch')):
    d = [100 * (r['searched'] - r[key]) for r in rows]
    print(f'{label}: {np.mean(d):+.2f} +- {np.std(d):.2f} points '
          f'(mean +- std over {len(d)} seeds)')
  result['search_vs_random'] = rows
  (root / 'fitness_quality.json').write_text(json.dumps(result, indent=2))
  print(f'wrote {root / "fitness_quality.json"} and '
        f'{root / "fitness_quality.png"}')


if __name__ == '__main__':
  main_()
