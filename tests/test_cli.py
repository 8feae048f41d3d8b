"""The command line: overrides, the space stage, one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from masktas_jax.space import Arch, SearchSpace

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(*args, cwd=ROOT):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'masktas_jax.main', *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


def test_space_stage_writes_description_and_plot(tmp_path):
  workdir = tmp_path / 'wd'
  result = run(f'--config={ROOT}/configs/demo.py', f'--workdir={workdir}',
               '--config.mode=space', '--config.space.depths=(3,4)',
               cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  info = json.loads((workdir / 'space.json').read_text())
  assert info['space']['depths'] == [3, 4]
  space = SearchSpace(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in info['space'].items()})
  hi = Arch.from_dict({k: info['max_arch'][k] for k in
                       ('embed_dim', 'depth', 'num_heads', 'mlp_ratios')})
  assert info['max_arch']['params'] == space.count_params(hi)
  assert (workdir / 'space.png').read_bytes()[:4] == b'\x89PNG'
  config = json.loads((workdir / 'config.json').read_text())
  assert config['space']['depths'] == [3, 4]


def test_default_pipeline_runs_the_built_stages_then_stops(tmp_path):
  result = run('--config=configs/demo.py', f'--workdir={tmp_path}',
               '--config.teacher.steps=4', '--config.teacher.batch_size=16',
               '--config.supernet.steps=2', '--config.supernet.batch_size=16',
               '--config.space.depths=(2,3)')
  assert result.returncode == 2, result.stderr
  assert (tmp_path / 'space.json').exists()
  assert (tmp_path / 'teacher/model/teacher.json').exists()
  assert (tmp_path / 'supernet/checkpoints').exists()
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("masktas_jax: error: config.mode: the 'search' "
                         'stage is not available yet')


def test_a_stage_not_built_yet_writes_nothing(tmp_path):
  (tmp_path / 'config.json').write_text('{"old": true}')
  result = run('--config=configs/demo.py', f'--workdir={tmp_path}',
               '--config.mode=search')
  assert result.returncode == 2
  assert (tmp_path / 'config.json').read_text() == '{"old": true}'
  assert [p.name for p in tmp_path.iterdir()] == ['config.json']


@pytest.mark.parametrize('args, expected', [
    (['--config.search.populaton=5'], "no field 'populaton'"),
    (['--config.seed=abc'], '--config.seed=abc'),
    (['--config.space.patch_size=5'], 'config.space.image_size'),
    (['--config.mode=serch'], 'config.mode'),
])
def test_bad_input_is_one_line_and_leaves_the_workdir_alone(
    tmp_path, args, expected):
  keep = tmp_path / 'supernet' / 'checkpoint'
  keep.parent.mkdir()
  keep.write_text('precious')
  result = run('--config=configs/demo.py', f'--workdir={tmp_path}', *args)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('masktas_jax: error:')
  assert expected in lines[0]
  assert keep.read_text() == 'precious'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['supernet']


def test_missing_config_file_is_one_line(tmp_path):
  result = run('--config=configs/nope.py', f'--workdir={tmp_path}/wd')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "masktas_jax: error: --config: cannot load the config file: [Errno 2] "
      "No such file or directory: 'configs/nope.py'"]
  assert not (tmp_path / 'wd').exists()

