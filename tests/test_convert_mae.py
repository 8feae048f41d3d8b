"""MAE checkpoint conversion: parity with a PyTorch reference, and errors."""

import argparse
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch  # The test extra installs it: the reference must be there.

from masktas_jax import convert_mae, errors
from masktas_jax.storage import model_dirs  # noqa: E402
from masktas_jax.masking import random_masking  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from torch_mae import TorchMAE  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL = dict(image=32, patch=8, chans=3, dim=128, depth=2, heads=2, dec_dim=64,
             dec_depth=2, dec_heads=4)


def _save(model, path, wrap=True, drop=(), add=None):
  sd = {k: v for k, v in model.state_dict().items() if k not in drop}
  if add:
    sd.update(add)
  torch.save({'model': sd} if wrap else sd, path)
  return path


def _rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(ours - ref) / np.linalg.norm(ref)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  torch.manual_seed(0)
  model = TorchMAE(**SMALL).eval()
  path = _save(model, tmp_path_factory.mktemp('ckpt') / 'mae_full.pth')
  return model, path


@pytest.mark.parametrize('wrap', [True, False])
def test_encode_matches_the_pytorch_encoder(reference, tmp_path, wrap):
  ref_model, _ = reference
  path = _save(ref_model, tmp_path / 'mae.pth', wrap=wrap,
               drop=[k for k in ref_model.state_dict()
                     if k.startswith(('decoder', 'mask_token'))])
  model = convert_mae.load_pytorch_checkpoint(path)
  assert not model.has_decoder
  c = model.config
  assert (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.image_size) == (
      128, 2, 2, 8, 32)
  images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(
      np.float32)
  with torch.no_grad():
    want = ref_model.forward_encoder(torch.from_numpy(images).permute(
        0, 3, 1, 2)).numpy()
  got = model.encode(images)
  assert got.shape == (3, 17, 128)
  assert _rel_err(got, want) <= 1e-5
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_reconstruction_matches_the_pytorch_decoder(reference):
  ref_model, path = reference
  model = convert_mae.load_pytorch_checkpoint(path,
                                              decoder_num_heads=4)
  assert model.has_decoder and model.config.decoder_depth == 2
  images = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(
      np.float32)
  ids_keep, _, ids_restore = random_masking(jax.random.key(0), 3, 16, 0.75)
  with torch.no_grad():
    t_ids_keep = torch.from_numpy(np.asarray(ids_keep, np.int64))
    t_restore = torch.from_numpy(np.asarray(ids_restore, np.int64))
    latent = ref_model.forward_encoder(
        torch.from_numpy(images).permute(0, 3, 1, 2), t_ids_keep)
    want = ref_model.forward_decoder(latent, t_restore).numpy()
  got = model.reconstruct(images, ids_keep, ids_restore)
  assert got.shape == (3, 16, 8 * 8 * 3)
  assert _rel_err(got, want) <= 1e-5
  # Wrong decoder heads give a different model: the head count matters.
  wrong = convert_mae.load_pytorch_checkpoint(path, decoder_num_heads=2)
  assert _rel_err(wrong.reconstruct(images, ids_keep, ids_restore), want) > 1e-4


def test_converted_teacher_round_trips_through_the_cli(reference, tmp_path):
  ref_model, path = reference
  out = tmp_path / 'teacher'
  result = subprocess.run(
      [sys.executable, '-m', 'masktas_jax.convert_mae', f'--checkpoint={path}',
       f'--output={out}', '--decoder_num_heads=4'], cwd=ROOT,
      capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
  assert result.returncode == 0, result.stderr
  loaded = model_dirs.load_teacher(out)
  images = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(
      np.float32)
  with torch.no_grad():
    want = ref_model.forward_encoder(torch.from_numpy(images).permute(
        0, 3, 1, 2)).numpy()
  assert _rel_err(loaded.encode(images), want) <= 1e-5
  # A second conversion to the same place refuses and leaves it intact.
  again = subprocess.run(
      [sys.executable, '-m', 'masktas_jax.convert_mae', f'--checkpoint={path}',
       f'--output={out}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
  assert again.returncode == 2
  assert again.stderr.strip().splitlines() == [
      f'convert_mae: error: {out}: already exists; not overwriting it']
  assert _rel_err(model_dirs.load_teacher(out).encode(images), want) <= 1e-5


def test_training_and_legacy_checkpoints_convert_in_one_line(reference,
                                                             tmp_path):
  """MAE's own training checkpoints (with their argparse Namespace) and
  files in PyTorch's legacy format convert, each in one line saying what
  was read, written and assumed."""
  ref_model, _ = reference
  training = tmp_path / 'checkpoint-799.pth'
  torch.save({'model': ref_model.state_dict(),
              'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-4}]},
              'epoch': 799, 'scaler': {'scale': 65536.0},
              'args': argparse.Namespace(model='mae_vit_base_patch16',
                                         mask_ratio=0.75)}, training)
  legacy = tmp_path / 'legacy.pth'
  torch.save(ref_model.state_dict(), legacy,
             _use_new_zipfile_serialization=False)
  images = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(
      np.float32)
  with torch.no_grad():
    want = ref_model.forward_encoder(torch.from_numpy(images).permute(
        0, 3, 1, 2)).numpy()
  for ckpt, read, heads in (
      (training, 'an MAE training checkpoint (epoch 799)', '4 heads (given)'),
      (legacy, 'a state dict (legacy format)', "16 heads (MAE's; the tensors "
       'cannot tell: --decoder_num_heads if not)')):
    out = tmp_path / f'{ckpt.stem}_teacher'
    given = ['--decoder_num_heads=4'] if ckpt == training else []
    result = subprocess.run(
        [sys.executable, '-m', 'masktas_jax.convert_mae',
         f'--checkpoint={ckpt}', f'--output={out}', *given], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''
    assert result.stdout.splitlines() == [
        f'convert_mae: read {ckpt}, {read}; wrote {out}: ViT width 128, depth '
        '2, 2 heads (width / 64), patch 8, image 32; decoder width 64, depth '
        f"2, {heads}; LayerNorm eps 1e-06 (MAE's)"]
    assert _rel_err(model_dirs.load_teacher(out).encode(images), want) <= 1e-5


def _cli_error(*args):
  result = subprocess.run(
      [sys.executable, '-m', 'masktas_jax.convert_mae', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  return lines[0]


def test_bad_checkpoints_give_one_line_errors(reference, tmp_path):
  ref_model, path = reference
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a checkpoint at all' * 10)
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  missing = _save(ref_model, tmp_path / 'missing.pth',
                  drop=['blocks.1.attn.proj.bias', 'norm.weight'])
  unexpected = _save(ref_model, tmp_path / 'unexpected.pth',
                     add={'head.weight': torch.zeros(10, 128)})
  bad_shape = _save(ref_model, tmp_path / 'shape.pth',
                    add={'blocks.0.attn.qkv.weight': torch.zeros(300, 128)})
  legacy = tmp_path / 'legacy.pth'
  torch.save(ref_model.state_dict(), legacy,
             _use_new_zipfile_serialization=False)
  truncated_legacy = tmp_path / 'truncated_legacy.pth'
  truncated_legacy.write_bytes(legacy.read_bytes()[:1000])
  # Any object weights-only loading refuses, here a path beside the model.
  pickled = tmp_path / 'pickled.pth'
  torch.save({'model': ref_model.state_dict(),
              'data': pathlib.PurePosixPath('/data')}, pickled)
  out = tmp_path / 'out'
  (tmp_path / 'a_directory').mkdir()
  cases = [
      (tmp_path / 'nope.pth', 'no such file'),
      (tmp_path / 'a_directory', 'cannot read it (Is a directory)'),
      (junk, 'not a PyTorch checkpoint'),
      # torch's reason, to the end of its sentence (it was once cut short).
      (truncated, 'truncated or corrupt checkpoint (torch: PytorchStreamReader'
                  ' failed reading zip archive: failed finding central '
                  'directory.)'),
      (truncated_legacy, 'truncated or corrupt'),
      (pickled, 'holds a pickled pathlib.PurePosixPath, which is not read'),
      (missing, 'missing keys: blocks.1.attn.proj.bias, norm.weight'),
      (unexpected, 'unexpected keys: head.weight'),
      (bad_shape, 'shapes do not form a ViT: blocks.0.attn.qkv.weight '
                  '(300, 128) (expected (384, 128))'),
  ]
  for ckpt, message in cases:
    line = _cli_error(f'--checkpoint={ckpt}', f'--output={out}')
    assert line.startswith(f'convert_mae: error: {ckpt}: ') and (
        message in line), line
    assert not out.exists()
  assert _cli_error(f'--checkpoint={path}') == (
      'convert_mae: error: --output required: python -m '
      'masktas_jax.convert_mae --checkpoint=FILE.pth --output=DIR')
  assert not out.exists()
  assert not list(tmp_path.glob('.out.tmp*'))


def test_vit_b_shapes_are_inferred():
  c = convert_mae.MAEConfig(embed_dim=768, depth=12, num_heads=12,
                            decoder_depth=8)
  shapes = convert_mae.expected_shapes(c)
  sd = {k: np.zeros(v, np.float32) for k, v in shapes.items()
        if not k.startswith('blocks.') or k.startswith('blocks.0.')}
  sd.update({k: np.zeros((1,), np.float32) for k in shapes
             if k.startswith('blocks.') and not k.startswith('blocks.0.')})
  inferred = convert_mae.infer_config(sd)
  assert inferred == c
  # ViT-B/16 has 86,567,656 parameters with its 1000-class head.
  assert sum(int(np.prod(s)) for k, s in shapes.items()
             if not k.startswith(('decoder', 'mask'))) == (
                 86_567_656 - (768 * 1000 + 1000))
  h = convert_mae.infer_config({**sd, 'cls_token': np.zeros((1, 1, 1280)),
                                'patch_embed.proj.weight':
                                    np.zeros((1280, 3, 14, 14))})
  assert h.num_heads == 16 and h.patch_size == 14


def test_teacher_that_conflicts_with_the_config_is_refused(reference,
                                                           tmp_path):
  _, path = reference
  out = model_dirs.save_teacher(
      convert_mae.load_pytorch_checkpoint(path, decoder_num_heads=4),
      tmp_path / 't')
  from masktas_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.space.image_size, config.space.patch_size = 32, 4
  with pytest.raises(errors.TeacherError,
                     match=r'patch_size 8 but config\.space\.patch_size is 4'):
    model_dirs.load_teacher(out, config_lib.space_from_config(config))
  config.space.image_size, config.space.patch_size = 64, 8
  with pytest.raises(errors.TeacherError, match='image_size 32'):
    model_dirs.load_teacher(out, config_lib.space_from_config(config))
  with pytest.raises(errors.TeacherError, match='not a teacher directory'):
    model_dirs.load_teacher(tmp_path)
