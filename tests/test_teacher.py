"""The teacher stage: MAE pre-training, resume, and loading a teacher."""

import gzip
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from etils import epath

from masktas_jax import config_lib, convert_mae, errors, losses
from masktas_jax.models import vit
from masktas_jax.stages import teacher
from masktas_jax.storage import model_dirs
from masktas_jax.training import trainer

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers import Interrupted, assert_close, interrupt_after, tree_scale  # noqa: E402
from torch_mae import TorchMAE  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parent.parent


def demo_config(**overrides):
  return config_lib.load_config(str(ROOT / 'configs/demo.py'), check=False,
                                **overrides)


def test_norm_pix_loss_against_float64_numpy():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(3, 10, 12)).astype(np.float32)
  target = rng.normal(size=(3, 10, 12)).astype(np.float32) * 3 + 1
  mask = (rng.random((3, 10)) < 0.7).astype(np.float32)
  t64 = target.astype(np.float64)
  mean = t64.mean(-1, keepdims=True)
  var = ((t64 - mean)**2).sum(-1, keepdims=True) / (12 - 1)  # unbiased
  norm = (t64 - mean) / np.sqrt(var + 1e-6)
  for norm_pix, tgt in ((True, norm), (False, t64)):
    per_patch = ((pred.astype(np.float64) - tgt)**2).mean(-1)
    want = (per_patch * mask).sum() / mask.sum()
    got = losses.pixel_loss(pred, target, mask, norm_pix)
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_sincos_table_against_an_independent_construction():
  d, g = 16, 3
  want = np.zeros((1 + g * g, d))
  for r in range(g):
    for c in range(g):
      row = 1 + r * g + c
      for half, pos in ((0, c), (1, r)):  # column coordinate first
        for k in range(d // 4):
          angle = pos / 10000**(k / (d // 4))
          want[row, half * d // 2 + k] = np.sin(angle)
          want[row, half * d // 2 + d // 4 + k] = np.cos(angle)
  np.testing.assert_allclose(vit.sincos_pos_embed(d, g), want, atol=1e-6)


def test_remat_changes_what_is_kept_not_the_loss_or_its_gradient():
  """`teacher.remat` recomputes the blocks in the backward pass: the
  pre-training loss and every gradient match the plain step's (the memory
  it saves is checked on a TPU target in test_aot)."""
  images = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  results = []
  for remat in (False, True):
    task = teacher.make_task(demo_config(**{'teacher.remat': remat}), 10, 1)
    params, fixed = task.init(jax.random.key(0), None)
    results.append(jax.jit(jax.value_and_grad(
        lambda p, f=fixed, t=task: t.loss(p, f, {'image': images},
                                          jax.random.key(2), None)[0]))(
                                              params))
  (loss, grads), (loss_r, grads_r) = results
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  flat, flat_r = jax.tree.leaves(grads), jax.tree.leaves(grads_r)
  assert len(flat) == len(flat_r) > 10
  # To the scale of the whole gradient: recomputation may fuse and sum in
  # another order, and some entries cancel (the key bias's are zero).
  scale = tree_scale(grads)
  for g, g_r in zip(flat, flat_r):
    assert_close(g_r, g, scale)
  # The gradient is not trivially zero.
  assert scale > 1e-3


def test_teacher_stage_lowers_the_reconstruction_loss(tmp_path):
  config = demo_config(**{'teacher.steps': 60, 'teacher.batch_size': 32,
                          'log_every': 10, 'checkpoint_every': 30})
  model = teacher.run(config, epath.Path(tmp_path))
  records = [json.loads(l) for l in
             (tmp_path / 'teacher/metrics.jsonl').read_text().splitlines()]
  losses_ = [r['loss'] for r in records]
  assert [r['step'] for r in records] == list(range(10, 61, 10))
  assert np.mean(losses_[-2:]) < 0.95 * np.mean(losses_[:2]), losses_
  assert (tmp_path / 'teacher/loss.png').read_bytes()[:4] == b'\x89PNG'
  # The exported teacher is the trained one, loadable as any teacher.
  loaded = model_dirs.load_teacher(tmp_path / 'teacher/model',
                                   config_lib.space_from_config(config))
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(
      np.float32)
  np.testing.assert_allclose(loaded.encode(images), model.encode(images),
                             atol=1e-6)
  # Running the stage again reuses it instead of training.
  again = teacher.run(config, epath.Path(tmp_path))
  np.testing.assert_allclose(again.encode(images), model.encode(images),
                             atol=1e-6)


def test_training_resumed_from_a_checkpoint_ends_where_one_run_does(
    tmp_path, monkeypatch):
  """Data order, RNG and optimizer state all come back from the checkpoint."""
  config = demo_config(**{'teacher.steps': 6, 'teacher.batch_size': 16,
                          'checkpoint_every': 2, 'log_every': 2})
  straight = teacher.run(config, epath.Path(tmp_path / 'a'))
  # The same run, killed after step 3 (the last checkpoint is step 2), then
  # resumed.
  interrupt_after(monkeypatch, 3)
  with pytest.raises(Interrupted):
    teacher.run(config, epath.Path(tmp_path / 'b'))
  assert not (tmp_path / 'b/teacher/model').exists()
  # The resumed run also traces two steps: profiling must not change them.
  config.profile_steps = 2
  resumed = teacher.run(config, epath.Path(tmp_path / 'b'))
  traces = list((tmp_path / 'b/teacher/profile').glob(
      'plugins/profile/*/*.trace.json.gz'))
  assert len(traces) == 1
  with gzip.open(traces[0]) as f:
    assert json.load(f)['traceEvents']
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray,
                                               nnx_state(straight))),
                  jax.tree.leaves(jax.tree.map(np.asarray,
                                               nnx_state(resumed)))):
    np.testing.assert_allclose(a, b, atol=1e-6)


def nnx_state(model):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'masktas_jax.main', '--config=configs/demo.py',
       *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)


def test_converted_checkpoint_is_accepted_and_a_conflicting_one_refused(
    tmp_path):
  torch.manual_seed(0)
  for name, patch in (('ok', 4), ('bad', 8)):
    ref = TorchMAE(image=32, patch=patch, dim=128, depth=1, heads=2,
                   dec_depth=0)
    torch.save({'model': ref.state_dict()}, tmp_path / f'{name}.pth')
    model_dirs.save_teacher(
        convert_mae.load_pytorch_checkpoint(tmp_path / f'{name}.pth'),
        tmp_path / name)
  ok = _cli(f'--workdir={tmp_path}/wd', '--config.mode=teacher',
            f'--config.teacher.checkpoint={tmp_path}/ok')
  assert ok.returncode == 0, ok.stderr
  assert f'teacher: using {tmp_path}/ok' in ok.stdout
  assert not (tmp_path / 'wd/teacher').exists()  # Nothing trained.
  bad = _cli(f'--workdir={tmp_path}/wd', '--config.mode=teacher',
             f'--config.teacher.checkpoint={tmp_path}/bad')
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      f'masktas_jax: error: config.teacher.checkpoint: teacher {tmp_path}/bad '
      'has patch_size 8 but config.space.patch_size is 4')


def test_non_finite_loss_stops_at_its_step_with_the_last_good_checkpoint(
    tmp_path):
  """The error names the first non-finite step, though metrics reach the
  host only at log and save points, and no state from it is saved."""
  # A learning rate that diverges during the warm-up (~step 20 here).
  settings = {'teacher.steps': 40, 'teacher.batch_size': 16,
              'teacher.base_lr': 3000.0, 'teacher.warmup_epochs': 1}
  # Where it diverges, read from every step's logged metrics.
  with pytest.raises(trainer.NonFiniteLoss):
    teacher.run(demo_config(**settings, log_every=1, checkpoint_every=100),
                epath.Path(tmp_path / 'every'))
  logged = (tmp_path / 'every/teacher/metrics.jsonl').read_text().splitlines()
  first = len(logged) + 1
  assert 5 <= first < 36, first
  with pytest.raises(trainer.NonFiniteLoss) as e:
    teacher.run(demo_config(**settings, log_every=10, checkpoint_every=4),
                epath.Path(tmp_path / 'sparse'))
  # Seen at the next log or save point; saved up to the one before it.
  seen = next(n for n in range(first, 41) if n % 10 == 0 or n % 4 == 0)
  last = (first - 1) // 4 * 4
  message = str(e.value)
  assert re.match(rf'teacher: non-finite [a-z_, ]+ at step {first} \(seen '
                  rf'at step {seen}: ', message), message
  assert message.endswith(
      f'the last good checkpoint is step {last} in '
      f"{tmp_path / 'sparse/teacher/checkpoints'}"), message
  # Nothing after the last good step was written.
  assert max(int(p.name) for p in (
      tmp_path / 'sparse/teacher/checkpoints').iterdir()) == last
  assert not (tmp_path / 'sparse/teacher/model').exists()


def test_a_checkpoint_of_another_model_is_refused_and_kept(tmp_path,
                                                          monkeypatch):
  config = demo_config(**{'teacher.steps': 4, 'teacher.batch_size': 16,
                          'checkpoint_every': 2, 'log_every': 2})
  interrupt_after(monkeypatch, 3)
  with pytest.raises(Interrupted):
    teacher.run(config, epath.Path(tmp_path))
  saved = sorted(str(p) for p in (tmp_path / 'teacher/checkpoints').rglob('*'))
  config.teacher.depth += 1
  with pytest.raises(trainer.CheckpointMismatch,
                     match=r'^teacher: the checkpoint of step 2 in .* does '
                     r'not match'):
    teacher.run(config, epath.Path(tmp_path))
  assert sorted(str(p) for p in (tmp_path / 'teacher/checkpoints').rglob(
      '*')) == saved


def test_sigterm_saves_where_it_stopped_and_resumes_exactly(tmp_path,
                                                           monkeypatch):
  """A preempted job (SIGTERM during step 4) finishes the step, checkpoints
  step 4 (not a checkpoint_every multiple), says so, and the same call
  resumes to the losses and weights of an uninterrupted run."""
  config = demo_config(**{'teacher.steps': 8, 'teacher.batch_size': 16,
                          'checkpoint_every': 3, 'log_every': 1})
  straight = teacher.run(config, epath.Path(tmp_path / 'a'))
  interrupt_after(monkeypatch, 3,
                  action=lambda: os.kill(os.getpid(), signal.SIGTERM))
  with pytest.raises(errors.Preempted,
                     match=r'^teacher: stopped by SIGTERM after step 4 of 8; '
                     r'checkpoint saved in .*; run the same command to resume'):
    teacher.run(config, epath.Path(tmp_path / 'b'))
  steps = sorted(int(p.name) for p in (tmp_path / 'b/teacher/checkpoints')
                 .iterdir() if p.name.isdigit())
  assert steps == [3, 4]
  assert signal.getsignal(signal.SIGTERM) is not None  # Handler restored.
  resumed = teacher.run(config, epath.Path(tmp_path / 'b'))
  for a, b in zip(jax.tree.leaves(nnx_state(straight)),
                  jax.tree.leaves(nnx_state(resumed))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  losses_of = lambda d: {r['step']: r['loss'] for r in map(json.loads, (
      tmp_path / d / 'teacher/metrics.jsonl').read_text().splitlines())}
  straight_losses, resumed_losses = losses_of('a'), losses_of('b')
  assert set(resumed_losses) == set(range(1, 9))
  for step, loss in straight_losses.items():
    assert resumed_losses[step] == pytest.approx(loss, rel=1e-5), step


def test_sigterm_to_the_cli_ends_with_one_line_and_exit_0(tmp_path):
  proc = subprocess.Popen(
      [sys.executable, '-m', 'masktas_jax.main', '--config=configs/demo.py',
       f'--workdir={tmp_path}', '--config.mode=teacher',
       '--config.teacher.steps=100000', '--config.log_every=1'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  try:
    for line in proc.stdout:  # Training is under way: the job is preempted.
      if line.startswith('teacher step '):
        proc.send_signal(signal.SIGTERM)
        break
    out, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == 0, err
  last = out.strip().splitlines()[-1]
  assert last.startswith('teacher: stopped by SIGTERM after step '), out
  step = int(last.split('after step ')[1].split()[0])
  assert (tmp_path / f'teacher/checkpoints/{step}').is_dir()
  assert not (tmp_path / 'teacher/model').exists()
