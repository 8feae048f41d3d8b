"""Student objective (paper eq. 9-11) against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from masktas_jax import losses


def _np_ln(x):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6)


def _np_smooth_l1(a, b):
  d = np.abs(a - b)
  return np.where(d < 1, 0.5 * d * d, d - 0.5)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  pred = rng.normal(size=(2, 6, 12)).astype(np.float32)
  target = (rng.normal(size=(2, 6, 12)) * 2 + 0.5).astype(np.float32)
  mask = np.array([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]], np.float32)
  # Large spread so both branches of the smooth L1 are exercised.
  zs = (rng.normal(size=(2, 4, 8)) * 3).astype(np.float32)
  zt = rng.normal(size=(2, 4, 8)).astype(np.float32)
  return pred, target, mask, zs, zt


def test_student_loss_against_float64_numpy():
  pred, target, mask, zs, zt = _inputs()
  t = target.astype(np.float64)
  mean = t.mean(-1, keepdims=True)
  var = ((t - mean)**2).sum(-1, keepdims=True) / (t.shape[-1] - 1)
  reg = (((pred - (t - mean) / np.sqrt(var + 1e-6))**2).mean(-1) * mask).sum(
  ) / mask.sum()
  diff = _np_smooth_l1(_np_ln(zs.astype(np.float64)),
                       _np_ln(zt.astype(np.float64)))
  assert (np.abs(_np_ln(zs.astype(np.float64)) - _np_ln(zt)) > 1).any()
  pre = diff.mean()
  for beta in (1.0, 0.3):
    total, parts = losses.student_loss(pred, target, mask, zs, zt, beta)
    np.testing.assert_allclose(parts['pixel_loss'], reg, rtol=2e-6)
    np.testing.assert_allclose(parts['feature_loss'], pre, rtol=2e-6)
    np.testing.assert_allclose(total, reg + beta * pre, rtol=2e-6)


def test_no_gradient_reaches_the_teacher():
  pred, target, mask, zs, zt = _inputs(1)
  grad_s, grad_t = jax.grad(
      lambda s, t: losses.student_loss(pred, target, mask, s, t, 1.0)[0],
      argnums=(0, 1))(jnp.asarray(zs), jnp.asarray(zt))
  assert np.all(np.asarray(grad_t) == 0)
  assert np.abs(np.asarray(grad_s)).max() > 1e-4
  # And the student's gradient matches a float64 finite difference.
  eps, i = 1e-3, (1, 2, 3)
  zp, zm = zs.astype(np.float64).copy(), zs.astype(np.float64).copy()
  zp[i] += eps
  zm[i] -= eps
  f = lambda z: _np_smooth_l1(_np_ln(z), _np_ln(zt.astype(np.float64))).mean()
  np.testing.assert_allclose(grad_s[i], (f(zp) - f(zm)) / (2 * eps),
                             rtol=1e-3, atol=1e-6)
