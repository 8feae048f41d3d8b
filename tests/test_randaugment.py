"""RandAugment (DeiT's rand-m9-mstd0.5-inc1): arguments, operations, policy."""

import math

import numpy as np
import pytest
from PIL import Image

from masktas_jax import data
from masktas_jax.data import randaugment
from masktas_jax.data.randaugment import apply, argument, RandAugment
from helpers import photo


# Arguments timm's "increasing" level functions give, worked out by hand.
@pytest.mark.parametrize('name, magnitude, negate, want', [
    ('Rotate', 9, False, 27.0), ('Rotate', 9, True, -27.0),
    ('Rotate', 0, False, 0.0),
    ('PosterizeIncreasing', 0, False, 4), ('PosterizeIncreasing', 9, False, 1),
    ('PosterizeIncreasing', 10, False, 0),
    ('SolarizeIncreasing', 0, False, 256), ('SolarizeIncreasing', 9, False, 26),
    ('SolarizeIncreasing', 10, False, 0),
    ('SolarizeAdd', 9, False, 99), ('SolarizeAdd', 10, False, 110),
    ('ColorIncreasing', 9, False, 1.81), ('ContrastIncreasing', 9, True, 0.19),
    ('BrightnessIncreasing', 10, True, 0.1),  # 1 - 0.9, at least 0.1.
    ('SharpnessIncreasing', 0, True, 1.0),
    ('ShearX', 9, False, 0.27), ('ShearY', 5, True, -0.15),
    ('TranslateXRel', 9, False, 0.405), ('TranslateYRel', 10, True, -0.45),
    ('AutoContrast', 9, False, None), ('Invert', 9, True, None),
])
def test_arguments_per_magnitude(name, magnitude, negate, want):
  got = argument(name, magnitude, negate)
  assert got == (None if want is None else pytest.approx(want))


def _image(h=20, w=24, seed=0):
  return Image.fromarray(np.random.default_rng(seed).integers(
      0, 256, (h, w, 3), dtype=np.uint8))


def test_pixel_operations_against_numpy():
  img = _image()
  x = np.asarray(img).astype(np.int32)
  # Posterize keeps the top bits; 0 bits (magnitude 10) is black.
  np.testing.assert_array_equal(apply(img, 'PosterizeIncreasing', 9), x & 0x80)
  np.testing.assert_array_equal(apply(img, 'PosterizeIncreasing', 10), 0)
  np.testing.assert_array_equal(apply(img, 'SolarizeIncreasing', 9),
                                np.where(x < 26, x, 255 - x))
  np.testing.assert_array_equal(apply(img, 'SolarizeAdd', 9),
                                np.where(x < 128, np.minimum(x + 99, 255), x))
  np.testing.assert_array_equal(apply(img, 'Invert', 3), 255 - x)
  # Brightness blends with black: factor 1.81 scales, rounds and clips.
  bright = np.asarray(apply(img, 'BrightnessIncreasing', 9)).astype(int)
  assert np.abs(bright - np.clip(x * 1.81, 0, 255)).max() <= 1
  # AutoContrast stretches each channel to 0..255.
  stretched = np.asarray(apply(img, 'AutoContrast', 0))
  assert (stretched.min((0, 1)) == 0).all() and (
      stretched.max((0, 1)) == 255).all()


def test_geometric_operations_move_content_and_fill_with_the_mean():
  img, fill = _image(20, 20), (124, 116, 104)
  x = np.asarray(img)
  # Magnitude 10: 45% of 20 px = 9 px. Positive shifts content left / up.
  left = np.asarray(apply(img, 'TranslateXRel', 10, fill=fill))
  np.testing.assert_array_equal(left[:, :11], x[:, 9:])
  assert (left[:, 11:] == fill).all()
  down = np.asarray(apply(img, 'TranslateYRel', 10, negate=True, fill=fill))
  np.testing.assert_array_equal(down[9:], x[:11])
  assert (down[:9] == fill).all()
  # Rotation about the centre by 27 degrees leaves the corners filled.
  turned = np.asarray(apply(img, 'Rotate', 9, fill=fill))
  assert (turned[0, 0] == fill).all() and (turned[-1, -1] == fill).all()
  # Shear along x reads row y from factor * y pixels to the right: the
  # last row's right end (~5 px) is filled, the first row's is not.
  sheared = np.asarray(apply(img, 'ShearX', 9, fill=fill))
  assert (sheared[-1, -4:] == fill).all()
  assert not (sheared[0, -4:] == fill).all(axis=-1).any()


def _clipped_normal_mean(mu, sigma, hi):
  """E[min(N(mu, sigma), hi)], by the closed form."""
  z = (hi - mu) / sigma
  pdf, cdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi), 0.5 * (
      1 + math.erf(z / math.sqrt(2)))
  return mu * cdf - sigma * pdf + hi * (1 - cdf)


def test_policy_draws_as_deit_configures_it():
  policy = RandAugment()
  rng = np.random.default_rng(0)
  plans = [policy.sample(rng) for _ in range(6000)]
  assert all(len(p) == 2 for p in plans)
  steps = [s for p in plans for s in p]
  applied = [s for s in steps if s is not None]
  assert abs(len(applied) / len(steps) - 0.5) < 0.02
  counts = np.array([sum(s[0] == name for s in applied)
                     for name in randaugment.OPS])
  assert len(counts) == 15
  expected = len(applied) / 15
  assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected)), counts
  magnitudes = np.array([s[1] for s in applied])
  assert magnitudes.max() == 10.0 and magnitudes.min() > 7
  assert abs(magnitudes.mean() - _clipped_normal_mean(9, 0.5, 10)) < 0.02
  assert abs(np.minimum(magnitudes, 9.5).std() - 0.4) < 0.05
  assert abs(np.mean([s[2] for s in applied]) - 0.5) < 0.03
  # Without spread, every magnitude is the given one.
  assert {s[1] for p in (RandAugment(7, 0).sample(rng) for _ in range(50))
          for s in p if s} == {7.0}


def test_out_of_range_settings_are_refused():
  for kwargs, field in (({'magnitude': 10.5}, 'magnitude'),
                        ({'magnitude': -1}, 'magnitude'),
                        ({'magnitude_std': -0.1}, 'magnitude_std')):
    with pytest.raises(ValueError, match=f'^{field}: '):
      RandAugment(**kwargs)


def test_training_batches_are_augmented_reproducibly(tmp_path):
  for i in range(8):
    Image.fromarray(photo(48, 40, seed=i)).save(tmp_path / f'{i}.png')
  source = data.get_source(_folder_config(tmp_path), 'train')

  def first(ra):
    it = data.train_pipeline(source, image_size=32, batch_size=8, seed=3,
                             randaugment=ra)
    batch = next(it)['image']
    it.close()
    return batch

  plain, augmented = first(None), first(RandAugment())
  np.testing.assert_array_equal(first(RandAugment()), augmented)
  changed = np.any(plain != augmented, axis=(1, 2, 3))
  # An image is left alone when both layers skip (probability 1/4): ~6 of 8
  # change.
  assert changed.sum() >= 3, changed


def test_only_finetuning_reads_randaugment_from_its_config():
  import ml_collections  # pylint: disable=g-import-not-at-top
  finetune = ml_collections.ConfigDict({'randaugment': 7.0,
                                        'randaugment_std': 0.25})
  # The data's mean colour (ImageNet's, which images are normalised by).
  assert data._randaugment(finetune) == RandAugment(7.0, 0.25,
                                                    fill=(124, 116, 104))
  assert data._randaugment(ml_collections.ConfigDict({'randaugment': 0.0,
                                                      'randaugment_std': 0.5
                                                      })) is None
  assert data._randaugment(ml_collections.ConfigDict({'flip': True})) is None


def _folder_config(root):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({
      'name': 'folder', 'data_dir': str(root), 'train_split': 'train',
      'eval_split': 'train', 'workers': 0, 'threads': 1, 'prefetch': 2})
