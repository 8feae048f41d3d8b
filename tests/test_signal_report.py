"""benchmarks/signal_study.py --report on a synthetic record whose truth is
known: the default it chooses, the seeds it shows part-way or hides, the
held-out verdict, and --against's paired differences, each against what the
record says directly."""

import json
import subprocess
import sys

import numpy as np
from scipy import stats

from masktas_jax.space import Arch
from masktas_jax.storage import artifacts

import helpers

BENCH = helpers.ROOT / 'benchmarks'

# Writes a record of 4 seeds x 30 fine-tuned subnets of configs/fashion.py
# (the study's own subnet sample, so --report finds them): 'relation_paper'
# is each subnet's true top-1 plus a little noise, every other signal noise;
# the two fine-tuning seeds are the truth plus run noise. Seeds 1 and 3 stop
# part-way (their first 12 subnets in the study's order); a second record
# ('other', another recipe) holds ft0 of seed 0's subnets, 0.5 points lower.
_MAKE = """
import json, sys
import numpy as np
sys.path.insert(0, {bench!r})
import common, signal_study, study_record
from masktas_jax import config_lib
from masktas_jax.evaluation import signals
root = {root!r}
config = common.load_config('configs/fashion.py')
names = signals.SIGNALS + ('fusion', 'probe')
for seed in range(4):
  c = config.copy_and_resolve_references()
  c.seed = seed
  archs = common.spread_archs(c, 30, seed)
  rng = np.random.default_rng(seed)
  true = 0.86 + 0.01 * rng.normal(size=30)
  record = study_record.Record(root) / 'record' / f'seed{{seed}}'
  values = {{n: rng.normal(size=30).tolist() for n in names}}
  values['relation_paper'] = (true + 0.001 * rng.normal(size=30)).tolist()
  (record / 'signals_30.json').put(values)
  order = signal_study.coverage_order(30)
  done = order if seed in (0, 2) else order[:12]
  for i in done:
    for k in range(2):
      top1 = float(true[i] + 0.0005 * rng.normal())
      run = {{'validation': top1, 'test': top1, 'arch': archs[i].to_dict()}}
      study_record.run_record(record, 1500, archs[i], f'ft{{k}}').put(run)
      if seed == 0 and k == 0:
        other = study_record.Record(root) / 'other' / 'seed0'
        study_record.run_record(other, 1500, archs[i], 'ft0').put(
            {{**run, 'validation': top1 - 0.005, 'test': top1 - 0.005}})
    if i % 3 == 0:
      study_record.run_record(record, 1500, archs[i], 'scratch0').put(
          {{'validation': float(true[i]) - 0.002, 'test': float(true[i])}})
  json.dump({{'true': true.tolist(), 'done': done}},
            open(f'{{root}}/truth{{seed}}.json', 'w'))
"""


def test_report_chooses_on_selection_seeds_and_reports_held_out(tmp_path):
  make = subprocess.run(
      [sys.executable, '-c', _MAKE.format(bench=str(BENCH),
                                          root=str(tmp_path))],
      cwd=helpers.ROOT, capture_output=True, text=True, timeout=600)
  assert make.returncode == 0, make.stderr[-3000:]

  def report(seeds, select):
    done = subprocess.run(
        [sys.executable, str(BENCH / 'signal_study.py'), '--report',
         f'--record={tmp_path}/record', f'--root={tmp_path}/root',
         f'--teacher={tmp_path}/teacher', f'--seeds={seeds}',
         f'--select={select}', '--steps=1500', f'--against={tmp_path}/other'],
        cwd=helpers.ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / 'record/signal_study.json').read_text())
    return done.stdout, summary['summary']

  # Seed 1, the other selection seed, is part-way: the choice on seed 0
  # (the signal that is the truth) says so, and the held-out verdict waits.
  out, summary = report('0,1,2,3', '0,1')
  assert ("provisional, selection seeds [1] not complete; chosen on seeds "
          "[0]: 'relation_paper'") in out, out
  assert summary['provisional'] is True and summary['chosen_on'] == [0]
  assert 'held_out' not in summary and 'held-out seeds' not in out, out
  assert 'held-out verdict withheld' in out, out
  # ... nor do the held-out seeds' signals show: seed 2, complete, shows
  # its ceiling only.
  seed2_line = next(l for l in out.splitlines() if l.startswith('| 2 |'))
  assert seed2_line.startswith('| 2 | test |'), out
  assert 'over the 30 subnets done' in seed2_line, seed2_line
  # Seed 1 (selection, 12 of 30) shows part-way; seed 3 (held out) does
  # not, only its ceiling.
  assert '| 1 (12 of 30 subnets, partial) | validation |' in out, out
  # Its progress, counted from what the record was given.
  done1 = json.loads((tmp_path / 'truth1.json').read_text())['done']
  scratch1 = sum(i % 3 == 0 for i in done1)
  assert (f'seed 1: {24 + scratch1} of 70 runs recorded (12 of 30 subnets '
          f'with every fine-tuning seed, {scratch1} of 10 random-weight '
          'runs)') in out, out
  assert '| 3 (' not in out and '| 3 | test |' in out, out
  # With seed 0 the only selection seed the choice is final, and the
  # held-out table marks it and computes its Kendall over seed 2's 30
  # subnets, as scipy does on the record.
  out, summary = report('0,2,3', '0')
  assert "\nchosen on seeds [0]: 'relation_paper'" in out, out
  assert summary['provisional'] is False
  assert '| **relation_paper** (chosen) |' in out, out
  seed2_line = next(l for l in out.splitlines() if l.startswith('| 2 |'))
  assert 'subnets done' not in seed2_line, seed2_line
  summary = json.loads((tmp_path / 'record/signal_study.json').read_text())
  truth = json.loads((tmp_path / 'truth2.json').read_text())
  signals2 = json.loads(
      (tmp_path / 'record/seed2/signals_30.json').read_text())
  # The yardstick from the run files themselves.
  yard = []
  for arch in summary['per_seed']['2']['archs']:
    runs = (tmp_path / 'record/seed2/1500steps' /
            artifacts.arch_key(Arch.from_dict(arch).to_json()))
    yard.append(np.mean([json.loads((runs / f'ft{k}.json').read_text())
                         ['test'] for k in range(2)]))
  # The second yardstick, the probe: each signal's Kendall with the
  # probe's top-1 as the signals file has them.
  for name in ('relation_paper', 'relation'):
    np.testing.assert_allclose(
        summary['summary']['2']['vs_probe'][name]['kendall'],
        stats.kendalltau(signals2[name], signals2['probe']).statistic,
        atol=1e-12)
  want = stats.kendalltau(signals2['relation_paper'], yard).statistic
  got = summary['summary']['held_out']['relation_paper']['kendall']
  assert abs(got - want) < 1e-9
  assert want > 0.8  # The truth, measured: not a vacuous comparison.
  # Fusions: a cached one kept as written; one the cache lacks derived from
  # the cached signals and the subnets' sizes (float64 NumPy).
  seed2 = summary['per_seed']['2']
  assert seed2['fusion'] == signals2['fusion']
  z = lambda v: (np.array(v) - np.mean(v)) / np.std(v)  # noqa: E731
  np.testing.assert_allclose(
      seed2['relation_params'],
      (z(signals2['relation']) + z(seed2['params'])) / 2, rtol=1e-9)
  assert np.ptp(seed2['params']) > 0
  assert len(truth['done']) == 30
  # --against: every seed-0 subnet's ft0, 0.5 points above the other's.
  against = summary['summary']['against']
  assert len(against['test']) == 30
  np.testing.assert_allclose(against['test'], 0.5, atol=1e-6)
  assert (tmp_path / 'record/signal_study.png').stat().st_size > 0
