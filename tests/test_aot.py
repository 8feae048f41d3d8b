"""mode=compile: every stage compiled for a TPU topology from this CPU host
(libtpu's compile-only devices), with memory, FLOPs and a roofline."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

# libtpu has Linux wheels only: elsewhere the test extra leaves it out.
pytest.importorskip('libtpu')

from helpers import ROOT, run
from masktas_jax import config_lib
from masktas_jax.compilation import chips
from masktas_jax.errors import ConfigError
from masktas_jax.stages import compile as compile_stage

# A space whose programs compile in seconds; the demo's teacher, batches of
# 32 (8 per device of a v5e:2x2, 4 of a v5e:2x4).
SPACE = ('--config=configs/demo.py', '--config.mode=compile',
         '--config.space.embed_dims=(32,48)', '--config.space.depths=(2,3)',
         '--config.space.num_heads=(1,2)', '--config.space.mlp_ratios=(2.0,4.0)',
         '--config.teacher.depth=2', '--config.supernet.decoder_embed_dim=32',
         '--config.supernet.decoder_depth=1', '--config.search.population=8',
         '--config.search.mutations=4', '--config.search.crossovers=4',
         '--config.search.min_params_m=0', '--config.search.max_params_m=0',
         '--config.teacher.batch_size=32', '--config.supernet.batch_size=32',
         '--config.search.batch_size=32', '--config.finetune.batch_size=32')


def _report(workdir):
  report = json.loads((workdir / 'compile/report.json').read_text())
  return report, {(r['stage'], r['program']): r for r in report['programs']}


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('compile')
  result = run(*SPACE, f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_every_stage_compiles_for_a_tpu_topology(compiled):
  workdir, result = compiled
  report, rows = _report(workdir)
  assert (report['platform'], report['topology'], report['devices']) == (
      'tpu', 'v5e:2x2', 4)
  assert set(rows) == {('teacher', 'train step'), ('supernet', 'train step'),
                       ('search', 'teacher features'),
                       ('search', 'score 4 (vmap, embed 32)'),
                       ('search', 'score 4 (vmap, embed 48)'),
                       ('search', 'score 8 (map)'),
                       ('finetune', 'train step')}
  for (stage, program), r in rows.items():
    assert r['fits'] and r['batch_per_device'] == 8, (stage, program)
    b = r['bytes']
    assert b['total'] == (b['argument'] + b['output'] - b['alias'] + b['temp']
                          + b['generated_code'])
    assert 0 < b['total'] < r['chip_memory'] == 16 * chips.GIB
    roof = r['roofline']
    assert roof['step_s'] == max(roof['compute_s'], roof['memory_s']) > 0
    assert r['images_per_s_per_chip'] == pytest.approx(8 / roof['step_s'])
    assert r['compile_s'] > 0
    # One table row each, in the printed report.
    assert sum(l.startswith(f'| {stage} | {program} |')
               for l in result.stdout.splitlines()) == 1
  # A training step donates its state: outputs alias it.
  assert rows['supernet', 'train step']['bytes']['alias'] > 0
  assert 'compiler figures, not runs' in result.stdout


def test_analytic_flops_agree_with_xla_where_it_counts_everything(compiled):
  """The teacher and the fine-tuned ViT have neither loops nor branches:
  XLA's count (matmuls plus elementwise work) is the analytic model's
  (matmuls) and a few percent more. The vmapped scoring runs its layers in a
  `scan` of max-depth (3) iterations, of which XLA counts one."""
  _, rows = _report(compiled[0])
  for key in (('teacher', 'train step'), ('finetune', 'train step')):
    r = rows[key]
    ratio = r['xla_flops_per_device_one_iteration'] / r[
        'model_flops_per_device']
    assert 1.0 <= ratio < 1.15, (key, ratio)
  for width in (32, 48):
    vmap = rows['search', f'score 4 (vmap, embed {width})']
    ratio = vmap['model_flops_per_device'] / vmap[
        'xla_flops_per_device_one_iteration']
    assert 2.5 < ratio < 3.2, (width, ratio)
  narrow, wide = (rows['search', f'score 4 (vmap, embed {w})'][
      'model_flops_per_device'] for w in (32, 48))
  # A third fewer channels: about (32/48)^1..2 of the work.
  assert 0.4 < narrow / wide < 0.75
  # Per generation: by embed width costs less than all at the max width,
  # and each candidate at its own widths ('map') less again.
  per_batch = _report(compiled[0])[0]['search_generation_flops_per_batch']
  assert (per_batch['map'] < per_batch['vmap by width'] <
          0.95 * per_batch['vmap at max width'])


def test_more_devices_hold_less_of_the_batch(compiled, tmp_path):
  """The same global batch over 8 chips instead of 4: half the FLOPs and
  fewer temporaries per device; the replicated state stays whole."""
  result = run(*SPACE, f'--workdir={tmp_path}',
               '--config.compile.topology=v5e:2x4',
               "--config.compile.stages=('teacher',)")
  assert result.returncode == 0, result.stderr[-3000:]
  four = _report(compiled[0])[1]['teacher', 'train step']
  eight = _report(tmp_path)[1]['teacher', 'train step']
  assert eight['batch_per_device'] == 4 and eight['devices'] == 8
  assert eight['model_flops_per_device'] == pytest.approx(
      four['model_flops_per_device'] / 2)
  assert eight['bytes']['temp'] < four['bytes']['temp']
  # The state (weights, optimizer) is most of the arguments: the batch's
  # share is a few hundred kB either way.
  assert abs(eight['bytes']['argument'] - four['bytes']['argument']) < 2**20


def test_a_program_that_does_not_fit_is_one_line(tmp_path):
  result = run(*SPACE, f'--workdir={tmp_path}',
               "--config.compile.stages=('teacher',)",
               '--config.teacher.batch_size=131072')
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, lines
  assert lines[0].startswith('masktas_jax: error: teacher (train step) does '
                             'not fit v5e:2x2: ')
  assert 'HBM' in lines[0] and 'config.teacher.batch_size' in lines[0]
  assert 'set config.teacher.remat=True' in lines[0]
  # The report says so too.
  (row,) = _report(tmp_path)[0]['programs']
  assert not row['fits'] and 'RESOURCE_EXHAUSTED' in row['error']


@pytest.mark.parametrize('override, field', [
    ('--config.compile.topology=v9:2x2', 'config.compile.topology'),
    ('--config.compile.topology=8xh100', 'config.compile.topology'),
    ('--config.compile.platform=rocm', 'config.compile.platform'),
    ("--config.compile.stages=('rank',)", 'config.compile.stages'),
    ('--config.supernet.batch_size=6', 'config.supernet.batch_size'),
])
def test_bad_targets_are_one_line_and_write_nothing(tmp_path, override,
                                                     field):
  result = run(*SPACE, f'--workdir={tmp_path / "w"}', override)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and field in lines[0], lines
  assert not (tmp_path / 'w').exists()


def test_targets_parse_to_chips_and_counts():
  assert chips.parse_target('tpu', 'v5p:2x2x1').count == 4
  assert chips.parse_target('tpu', 'v5e:4x4').chip.name == 'TPU v5e'
  target = chips.parse_target('cuda', '8xH100')
  assert target.count == 8 and 79 * chips.GIB < target.chip.memory < 80 * chips.GIB
  # float32 matmuls at default precision: TF32 on GPUs, one bf16 pass on
  # TPUs.
  assert target.chip.peak('float32') == pytest.approx(
      target.chip.peak('bfloat16') / 2, rel=1e-3)
  v6e = chips.parse_target('tpu', 'v6e:2x2').chip
  assert v6e.peak('float32') == v6e.peak('bfloat16')
  with pytest.raises(ConfigError, match='config.compile.topology'):
    chips.parse_target('cuda', '0xh100')
  # XLA's GPU topology: partitions x hosts x GPUs per host, 8 per host.
  assert [chips.gpu_topology(n) for n in (1, 4, 8, 32)] == [
      '1x1x1', '1x1x4', '1x1x8', '1x4x8']
  with pytest.raises(ConfigError, match='config.compile.topology'):
    chips.parse_target('cuda', '12xh100')
  # What XLA:GPU reads of the card it compiles for.
  config = chips.gpu_target_config('h200')
  assert 'device_memory_size: 150754820096' in config
  assert 'cuda_compute_capability { major: 9 minor: 0 }' in config


def test_a_missing_back_end_says_what_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: (
      None if name in ('libtpu', 'jax_cuda12_plugin') else real(name, *a)))
  for platform, topology, extra in (('tpu', 'v5e:2x2', '.[tpu]'),
                                    ('cuda', '8xh100', '.[cuda]')):
    config = config_lib.load_config(
        str(ROOT / 'configs/demo.py'), **{'compile.platform': platform,
                              'compile.topology': topology})
    with pytest.raises(compile_stage.CompileError,
                       match=re.escape(f"pip install -e '{extra}'")):
      compile_stage.check(config)


def test_the_default_config_names_a_valid_target():
  config = config_lib.base_config()
  target = chips.parse_target(config.compile.platform,
                              config.compile.topology)
  assert not config.compile.stages  # The ones the config runs.
  assert target.count == 4


def test_default_stages_are_the_ones_the_config_runs():
  """A config that distils from a converted teacher never pre-trains one:
  compiling MAE pre-training for it would fail on a program it never runs
  (configs/tiny.py's batch of 4,096 on v5e:2x2)."""
  config = config_lib.load_config(str(ROOT / 'configs/tiny.py'), check=False)
  assert not config.teacher.pretrain
  assert compile_stage.stages_of(config) == ('supernet', 'search', 'finetune')
  config.teacher.pretrain = True
  assert compile_stage.stages_of(config) == compile_stage.COMPILABLE
  config.teacher.checkpoint = '/some/converted/teacher'
  assert 'teacher' not in compile_stage.stages_of(config)
  config.compile.stages = ('teacher',)
  assert compile_stage.stages_of(config) == ('teacher',)


def test_teacher_remat_trades_temporaries_for_recomputation(tmp_path):
  """`teacher.remat` keeps each MAE block's input only: the step's
  temporaries shrink, XLA counts the recomputed forward, and the model
  FLOPs (what a step must compute) stay the same."""
  rows = {}
  for remat in (False, True):
    result = run(*SPACE, f'--workdir={tmp_path / str(remat)}',
                 "--config.compile.stages=('teacher',)",
                 '--config.teacher.batch_size=1024',
                 f'--config.teacher.remat={remat}')
    assert result.returncode == 0, result.stderr[-3000:]
    rows[remat] = _report(tmp_path / str(remat))[1]['teacher', 'train step']
  kept, remat = rows[False], rows[True]
  assert remat['bytes']['temp'] < 0.6 * kept['bytes']['temp']
  assert remat['model_flops_per_device'] == kept['model_flops_per_device']
  assert (remat['xla_flops_per_device_one_iteration'] >
          1.1 * kept['xla_flops_per_device_one_iteration'])
