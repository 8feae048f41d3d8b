"""mode=pipeline: every stage in one command, a kill during the search, and
the summary.json / report.png it ends with."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
from etils import epath
from flax import nnx

from masktas_jax.storage import model_dirs
from helpers import ROOT, SHRUNK as SMALL

def _pipeline(workdir):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1'}
  return subprocess.Popen(
      [sys.executable, '-m', 'masktas_jax.main',
       f'--config={ROOT}/configs/demo.py', f'--workdir={workdir}', *SMALL],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _snapshot(workdir):
  """Path -> (size, mtime) of everything the teacher and supernet wrote."""
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
          for stage in ('teacher', 'supernet')
          for p in sorted((workdir / stage).rglob('*')) if p.is_file()}


def test_pipeline_killed_in_the_search_resumes_there_and_summarizes(
    tmp_path):
  # First run: SIGKILL as soon as the first generation is saved.
  first = _pipeline(tmp_path)
  seen = []
  for line in first.stdout:
    seen.append(line)
    if line.startswith('search generation 1/'):
      first.send_signal(signal.SIGKILL)
      break
  first.wait(timeout=300)
  assert first.returncode == -signal.SIGKILL, ''.join(seen)
  assert (tmp_path / 'search/state.json').exists()
  assert not (tmp_path / 'search/best_arch.json').exists()
  trained = _snapshot(tmp_path)
  assert any('teacher/model' in p for p in trained)
  assert any('supernet/model' in p for p in trained)

  # Second run: the teacher and supernet are left alone; the search goes on
  # from generation 1.
  second = _pipeline(tmp_path)
  out, _ = second.communicate(timeout=600)
  assert second.returncode == 0, out
  for stage in ('teacher', 'supernet'):
    assert f'{stage}: {tmp_path}/{stage}/model exists; not training again' in (
        out), out
  assert not any(l.startswith(('teacher step', 'supernet step'))
                 for l in out.splitlines()), out
  assert 'search: resumed after generation 1' in out
  assert 'search generation 1/' not in out
  assert _snapshot(tmp_path) == trained

  # summary.json agrees with the stages' own outputs.
  summary = json.loads((tmp_path / 'summary.json').read_text())
  best = json.loads((tmp_path / 'search/best_arch.json').read_text())
  tuned = json.loads((tmp_path / 'finetune/metrics.json').read_text())
  assert summary['search']['best_arch'] == best['arch'] == tuned['arch']
  assert summary['search']['best_fitness'] == best['fitness']
  assert (summary['finetune']['top1'], summary['finetune']['top5']) == (
      tuned['top1'], tuned['top5'])
  assert 0 <= tuned['top1'] <= tuned['top5'] <= 1 and tuned['images'] == 360
  # params: what the exported classifier really holds.
  classifier = model_dirs.load_classifier(epath.Path(tmp_path) /
                                          'finetune/model')
  held = sum(int(np.prod(x.shape)) for x in
             jax.tree.leaves(nnx.state(classifier, nnx.Param)))
  assert summary['params'] == held
  assert summary['flops'] == 2 * summary['macs'] > 0
  assert (tmp_path / 'report.png').read_bytes()[:4] == b'\x89PNG'
