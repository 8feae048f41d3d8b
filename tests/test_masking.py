"""Patchify order and MAE random masking."""

import jax
import jax.numpy as jnp
import numpy as np

from masktas_jax.masking import gather_tokens, num_visible, patchify
from masktas_jax.masking import random_masking, unpatchify


def test_patchify_matches_a_numpy_loop_and_round_trips():
  images = np.random.default_rng(0).normal(size=(2, 12, 12, 3))
  p = 4
  want = np.zeros((2, 9, p * p * 3))
  for b in range(2):
    for i in range(3):
      for j in range(3):
        patch = images[b, i * p:(i + 1) * p, j * p:(j + 1) * p, :]
        want[b, i * 3 + j] = patch.reshape(-1)  # (row, column, channel)
  got = patchify(jnp.asarray(images), p)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(unpatchify(got, p, 3), images, atol=1e-6)


def test_patchify_equals_a_stride_p_convolution():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  kernel = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)  # HWIO
  conv = jax.lax.conv_general_dilated(images, kernel, (4, 4), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO',
                                                         'NHWC'))
  linear = patchify(jnp.asarray(images), 4) @ kernel.reshape(-1, 5)
  np.testing.assert_allclose(linear, conv.reshape(2, 4, 5), atol=1e-4)


def test_random_masking_keeps_int_n_times_one_minus_r():
  ids_keep, mask, ids_restore = random_masking(jax.random.key(0), 4, 196, 0.9)
  assert num_visible(196, 0.9) == 19 and ids_keep.shape == (4, 19)
  mask, ids_keep = np.asarray(mask), np.asarray(ids_keep)
  assert np.all(mask.sum(1) == 196 - 19)
  for b in range(4):
    assert len(set(ids_keep[b])) == 19
    assert np.all(mask[b, ids_keep[b]] == 0)
    # ids_restore[i] is patch i's place in the shuffled order, whose first
    # 19 entries are the kept patches.
    restore = np.asarray(ids_restore[b])
    np.testing.assert_array_equal(np.sort(restore), np.arange(196))
    np.testing.assert_array_equal(mask[b], restore >= 19)
    np.testing.assert_array_equal(np.argsort(restore)[:19], ids_keep[b])
  tokens = jnp.arange(4 * 196 * 2.0).reshape(4, 196, 2)
  np.testing.assert_array_equal(gather_tokens(tokens, ids_keep)[1, :, 0],
                                2 * (196 + ids_keep[1]))
