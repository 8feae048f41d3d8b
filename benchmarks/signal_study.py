"""Does a label-free fitness pick better architectures on real data?

On `configs/fashion.py`, per seed (the supernet's training seed and the
sample of subnets; one teacher for all, `--teacher`):

1. trains the supernet (`--root/seed<s>/`, resumable) and keeps it in the
   record (`--record/seed<s>/supernet`);
2. picks `--archs` subnets spread evenly over the window's parameter range;
3. the yardstick: each fine-tuned from its inherited weights with the
   config's recipe for `--steps` steps, once per fine-tuning seed
   (`--ft-seeds`), top-1 on the validation split (what the default is
   chosen on) and on the test split (what is reported); the mean over the
   fine-tuning seeds is the yardstick, their agreement (Kendall between two
   seeds) its noise ceiling; also the linear probe of the inherited
   features, and every `--scratch-every`-th subnet from random weights
   with the recipe that suits them (`common.SCRATCH_RECIPE`: no layer
   decay): does inheriting keep the architectures' order?
4. every label-free signal (`masktas_jax.evaluation.signals`: the fitness
   variants and the student-entropy control) in one pass, plus parameters
   and MACs.

Each fitness's Kendall with the yardstick (bootstrap 95% interval over the
subnets) and within three parameter strata, and with the second
yardstick, the linear probe; the yardstick's ceiling (what a perfect
signal would reach against the mean of the fine-tuning seeds); the default
is the variant with the best mean validation Kendall on the `--select`
seeds, reported on the others with the test yardstick: provisional, and
the held-out seeds' signals not shown, until every selection seed is
complete. The results (signals, every run's
top-1) and each seed's supernet are recorded as they come in `--record`
(default `benchmarks/records/signal_study/`, committed: the study outlives
the machine that ran it); other checkpoints go under --root. A rerun on any
machine picks up where the record stops; `--report` trains nothing and
needs only the record. Prints the tables and writes `signal_study.json` and
`signal_study.png` into the record (`signal_report.py`).

  python -m masktas_jax.main --config=configs/fashion.py \
      --workdir=/tmp/fashion --config.mode=teacher     # once, if no teacher
  python benchmarks/signal_study.py --root=/tmp/signals \
      --teacher=/tmp/fashion/teacher/model --seeds=0,1,2,3 --select=0,1

(this repository's study: BENCHMARKS.md has its command, with the teacher
kept in its record).

On a small CPU host, one single-thread worker per core finishes more
fine-tunes than one process on all cores (XLA:CPU's step gains little from
a second thread at these sizes; two 1-thread workers did 1.7x the images/s
of one 2-thread process on 2 cores, with the same top-1):

  export XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
  for w in 0 1; do taskset -c $w python benchmarks/signal_study.py ... \
      --worker=$w/2 & done; wait
  python benchmarks/signal_study.py ... --report   # the tables
"""

from __future__ import annotations

import argparse
import ast
import shutil
import time
from typing import Any, Callable

from etils import epath

from masktas_jax import config_lib, main
from masktas_jax.evaluation import fitness, signals
from masktas_jax.space import Arch
from masktas_jax.stages import rank
from masktas_jax.storage import artifacts, checkpoint
from masktas_jax.training import finetuning, plots

import common  # pylint: disable=g-bad-import-order
import signal_report  # pylint: disable=g-bad-import-order
import study_record  # pylint: disable=g-bad-import-order


def _log(message: str) -> None:
  print(f'[signal_study] {message}', flush=True)


def seed_dir(args, seed: int) -> epath.Path:
  """Where everything of seed `seed` lives: its supernet's workdir."""
  return common.seed_dir(args.root, seed)


def supernet(args, config, seed: int) -> epath.Path:
  """The workdir of seed `seed`'s supernet, trained if not yet."""
  workdir = seed_dir(args, seed)
  c = config.copy_and_resolve_references()
  c.mode, c.seed = 'supernet', seed
  if not artifacts.is_model_dir(artifacts.model_dir(workdir, 'supernet'),
                                'student'):
    if args.report:
      raise SystemExit(f'--report: no supernet in {workdir} yet')
    _log(f'seed {seed}: training the supernet')
    main.run(c, str(workdir))
  return workdir


# How long a worker waits for worker 0's supernet and signals (a seed's
# supernet takes well under an hour on 2 cores) before it gives up.
WAIT_S = 4 * 3600


def fine_tuned(args, config, workdir, arch: Arch, ft_seed: int,
               scratch: bool = False, mine: bool = True,
               record: study_record.Record | None = None,
               ready: Callable[[], None] | None = None,
               progress: str = '') -> tuple[float, float] | None:
  """(validation, test) top-1 of `arch` fine-tuned with seed `ft_seed`, or
  None when not done and not to be run here (--report, or another
  --worker's run). With `record` (the seed's), a run is done once it is
  recorded there, and only its worker runs and records it; `ready()` is
  called before a run (it makes sure the supernet is there). `progress`
  (e.g. 'seed 1, run 18 of 70') heads the line logged when a run starts."""
  name = f'scratch{ft_seed}' if scratch else f'ft{ft_seed}'
  key = artifacts.arch_key(arch.to_json())
  run = workdir / 'finetune' / f'{args.steps}steps' / key / name
  if record is not None:
    record = study_record.run_record(record, args.steps, arch, name)
    if (done := record.get()) is not None:
      return done['validation'], done['test']
    if args.report or not mine:
      return None
  elif (args.report or not mine) and finetuning.finished(run) is None:
    return None
  if ready is not None:
    ready()
  _log(f'{progress + ": " if progress else ""}{name} of E{arch.embed_dim} '
       f'D{arch.depth} ({key}), {args.steps} steps'
       + (', from random weights' if scratch else ''))
  c = config.copy_and_resolve_references()
  c.finetune.steps, c.finetune.from_scratch = args.steps, scratch
  if scratch:  # The recipe that suits random weights, as inheritance.py's.
    c.finetune.update(common.SCRATCH_RECIPE)
  c.finetune.eval_split = config.data.eval_split
  c.finetune.arch = arch.to_json()
  if record is None:
    c.search.supernet = str(artifacts.model_dir(workdir, 'supernet'))
  # Its own data order and head per (supernet seed, fine-tuning seed).
  c.seed = 1000 * (ft_seed + 1) + config.seed
  setup = config_lib.finetune_setup(config_lib.validate(c))
  val = finetuning.fine_tune(setup, run, arch)['top1']
  test = common.test_top1(c, artifacts.model_dir(run, 'finetune'))
  if record is not None:
    record.put({'validation': val, 'test': test, 'arch': arch.to_dict(),
                'train_s': train_seconds(run, c.finetune)})
  return val, test


def train_seconds(run: epath.Path, recipe) -> float | None:
  """Wall seconds of the fine-tuning in `run` (`recipe`: its
  config.finetune), from its last logged throughput: the trainer's images/s
  since the run started, its first compile included and the evaluation
  left out (a resumed run counted at its last part's rate); None if that
  was not logged."""
  log = run / 'finetune' / artifacts.METRICS_LOG
  if not log.exists():
    return None
  rate = plots.read_metrics(log).get(recipe.steps, {}).get('images_per_s')
  return recipe.steps * recipe.batch_size / rate if rate else None


def wait_for(args, record: study_record.Record, what: str) -> Any:
  """`record`'s content once worker 0 has written it (at once for worker
  0 and --report, which may find it absent: None); a worker gives up
  after `WAIT_S`."""
  deadline = time.monotonic() + WAIT_S
  while common.worker(args)[0] and not args.report and record.get() is None:
    if time.monotonic() > deadline:
      raise SystemExit(f'no {record.path} after {WAIT_S / 3600:g} h; is '
                       'worker 0 running, with the same arguments?')
    _log(f'worker {args.worker} waits for worker 0\'s {what}')
    time.sleep(60)
  return record.get()


def coverage_order(count: int) -> list[int]:
  """range(count) in bit-reversed order (0, 16, 8, 24, 4, ... for 30):
  every prefix is spread evenly over the indices, so over archs sorted by
  parameters."""
  bits = max(1, (count - 1).bit_length())
  reverse = lambda i: int(format(i, f'0{bits}b')[::-1], 2)
  return sorted(range(count), key=reverse)


def recorded_supernet(args, config, seed: int,
                      record: study_record.Record) -> epath.Path:
  """The model directory of seed `seed`'s supernet kept in `record` (the
  seed's), trained under --root and copied there first if not yet (worker
  0 only; the others find it there, since worker 0 records it before the
  signals they wait for).

  The supernet is kept with the results because no machine outlives the
  study and XLA:CPU picks its kernels per CPU model: a supernet retrained
  elsewhere need not be the one the recorded runs fine-tuned.
  """
  kept = record.path / 'supernet'
  if artifacts.is_model_dir(kept, 'student'):
    return kept
  if common.worker(args)[0]:
    raise SystemExit(f'seed {seed}: no supernet in {kept}, which worker 0 '
                     'records before the signals; was it removed?')
  workdir = supernet(args, config, seed)
  trained = artifacts.model_dir(workdir, 'supernet')
  with checkpoint.atomic_directory(kept) as scratch:
    shutil.copytree(trained, scratch, dirs_exist_ok=True)
  # Who copied it, from where; the run that trained it is in that
  # workdir's config.json and logs.
  (record / 'supernet.json').put({
      'fingerprint': study_record.supernet_fingerprint(kept),
      'copied_from': str(trained), 'recorded_by': study_record.versions()})
  return kept


def study_seed(args, config, seed: int,
               supernet_dir: epath.Path | None = None) -> dict:
  """Everything measured on seed `seed` (recorded as it comes in --record,
  other checkpoints in --root; a caller without --record keeps its record
  in --root/seed<s>/record). Worker 0 trains and records the supernet and
  measures the signals; the others wait for them. `supernet_dir`: a
  supernet kept elsewhere (another study's record) to use instead."""
  index, workers = common.worker(args)
  record = (study_record.Record(args.record) if getattr(args, 'record', '') else
            study_record.Record(seed_dir(args, seed) / 'record'))
  record = record / f'seed{seed}'
  cache = record / f'signals_{args.archs}.json'
  wait_for(args, cache, f'seed {seed} signals')
  workdir = seed_dir(args, seed)
  c = config.copy_and_resolve_references()
  c.seed = seed
  c.search.supernet = str(supernet_dir or record.path / 'supernet')

  def ready() -> None:  # The supernet in the record, trained if not yet.
    if supernet_dir is None:
      recorded_supernet(args, config, seed, record)

  space = config_lib.space_from_config(c)
  archs = common.spread_archs(c, args.archs, seed)
  out = cache.get()
  if out is None:
    if args.report:
      raise SystemExit(f'--report: no {cache.path} yet')
    ready()
    _log(f'seed {seed}: label-free signals and probe of {len(archs)} subnets')
    scorer = fitness.load_scorer(config_lib.scoring(c), workdir,
                                 capacity=len(archs), names=signals.SIGNALS)
    values = scorer.signals(archs)
    out = {name: v.tolist() for name, v in values.items()}
    probe = c.copy_and_resolve_references()
    probe.rank.yardstick = 'linear'
    out['probe'] = rank.yardstick_top1(probe, workdir, scorer.encoder, space,
                                       archs).tolist()
    cache.put(out)
  out['params'] = [space.count_params(a) for a in archs]
  out['macs'] = [space.count_macs(a) for a in archs]
  # The fusions by their z-scores among these subnets, as mode=rank's: from
  # the cached signals (a cache from before a fusion was added has them
  # too; one that holds a fusion keeps its own, the same values).
  for name in signals.FUSIONS:
    if name not in out:
      out[name] = signals.fuse(out, out, name).tolist()
  out['archs'] = [a.to_dict() for a in archs]
  # Subnet by subnet (every fine-tuning seed, then the scratch run), in an
  # order that covers the parameter range coarse to fine, so a study
  # stopped part-way already has a ceiling over subnets of every size.
  out['ft'] = [[None] * len(archs) for _ in range(args.ft_seeds)]
  out['scratch'] = [None] * len(archs)
  # --worker i/n runs every n-th of these runs, from the i-th.
  j = 0
  total = args.ft_seeds * len(archs) + sum(
      1 for i in range(len(archs))
      if args.scratch_every and i % args.scratch_every == 0)
  for i in coverage_order(len(archs)):
    a = archs[i]
    for k in range(args.ft_seeds):
      out['ft'][k][i] = fine_tuned(args, c, workdir, a, k,
                                   mine=j % workers == index, record=record,
                                   ready=ready,
                                   progress=f'seed {seed}, run {j + 1} of '
                                   f'{total}')
      j += 1
    if args.scratch_every and i % args.scratch_every == 0:
      out['scratch'][i] = fine_tuned(args, c, workdir, a, 0, scratch=True,
                                     mine=j % workers == index,
                                     record=record, ready=ready,
                                     progress=f'seed {seed}, run {j + 1} of '
                                     f'{total}')
      j += 1
  return out


def add_study_arguments(parser: argparse.ArgumentParser,
                        seeds: str) -> None:
  """The arguments every study on one teacher takes (this script's and
  search_vs_baselines.py's)."""
  parser.add_argument('--root', required=True)
  parser.add_argument('--config', default='configs/fashion.py')
  parser.add_argument('--teacher', required=True,
                      help='the teacher model directory every seed uses')
  parser.add_argument('--seeds', default=seeds)
  parser.add_argument('--set', action='append', default=[],
                      help='a config override KEY=VALUE (a Python literal), '
                      'e.g. supernet.steps=10 for a smoke run')
  parser.add_argument('--report', action='store_true',
                      help='print what is done; train nothing')


def study_config(args: argparse.Namespace):
  """--config with the --set overrides and --teacher as its teacher."""
  overrides = {}
  for item in args.set:
    key, _, value = item.partition('=')
    overrides[key] = ast.literal_eval(value)
  return common.load_config(args.config, **overrides,
                            **{'teacher.checkpoint': args.teacher})


def main_() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  add_study_arguments(parser, seeds='0,1,2,3')
  parser.add_argument('--select', default='0,1',
                      help='seeds the default is chosen on')
  parser.add_argument('--archs', type=int, default=30)
  parser.add_argument('--worker', default='0/1',
                      help='i/n: run every n-th fine-tune from the i-th, so '
                      'n processes (e.g. one per core: taskset -c i, '
                      'XLA_FLAGS=--xla_cpu_multi_thread_eigen=false) share '
                      'the study; worker 0 trains the supernets')
  parser.add_argument('--steps', type=int, default=500)
  parser.add_argument('--ft-seeds', type=int, default=2)
  parser.add_argument('--record',
                      default=str(study_record.RECORDS / 'signal_study'),
                      help='where the results and each seed\'s supernet are '
                      'kept (committed to the repository: a fresh machine '
                      'resumes from them); a study with other --set, '
                      '--config or --teacher is refused there')
  parser.add_argument('--against', default='',
                      help='--report: another record of the same subnets '
                      'and seeds under another recipe (e.g. '
                      'benchmarks/records/signal_study_ld09): this '
                      "study's inherited runs minus its, paired by subnet "
                      'and fine-tuning seed')
  parser.add_argument('--scratch-every', type=int, default=3,
                      help='every n-th subnet also from random weights; 0: '
                      'none')
  args = parser.parse_args()
  try:
    workers = common.worker(args)[1]
  except ValueError as e:
    parser.error(str(e))
  config = study_config(args)
  study_record.Record(args.record).bind(config)
  seeds = [int(s) for s in args.seeds.split(',')]
  select = [int(s) for s in args.select.split(',')]
  per_seed = {}
  for seed in seeds:
    try:
      per_seed[seed] = study_seed(args, config, seed)
    except SystemExit as e:
      _log(str(e))
  if workers > 1 and not args.report:
    # Its view misses the runs other workers had not finished.
    _log(f'worker {args.worker}: done; --report prints the tables once '
         'every worker is')
    return

  signal_report.report(args, per_seed, select)


if __name__ == '__main__':
  main_()
