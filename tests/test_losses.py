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


def _np_relation_fitness(zt, zs, tau):
  """Eq. 13-16 in float64: mean_j sum_k h_t[j,k] log h_s[j,k], per image."""
  def log_relation(z):
    a = np.einsum('bjd,bkd->bjk', z, z) / tau
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))
  h_t = np.exp(log_relation(zt.astype(np.float64)))
  return (h_t * log_relation(zs.astype(np.float64))).sum(-1).mean(-1)


def test_relation_consistency_against_float64_numpy():
  rng = np.random.default_rng(3)
  zt = rng.normal(size=(3, 7, 24)).astype(np.float32)
  zs = rng.normal(size=(3, 7, 16)).astype(np.float32)
  for tau in (1.0, 0.1, 5.0):
    got = losses.relation_consistency(zt, zs, tau)
    assert got.shape == (3,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _np_relation_fitness(zt, zs, tau),
                               rtol=1e-5, atol=1e-5)


def test_relation_consistency_is_stable_on_large_inputs():
  rng = np.random.default_rng(4)
  # Logits in the thousands: a naive log(softmax) would give -inf * 0 = NaN.
  # Token norms vary so rows peak off the diagonal, differently for the
  # teacher and the student (equal norms would make both maps the identity).
  def tokens(width):
    norms = rng.uniform(0.3, 3.0, size=(2, 9, 1))
    return (rng.normal(size=(2, 9, width)) * norms * 30).astype(np.float32)
  zt, zs = tokens(24), tokens(16)
  want = _np_relation_fitness(zt, zs, 1.0)
  assert np.abs(want).max() > 1e3
  for dtype in (jnp.float32, jnp.bfloat16):
    got = np.asarray(
        losses.relation_consistency(jnp.asarray(zt, dtype),
                                    jnp.asarray(zs, dtype), 1.0))
    assert np.isfinite(got).all()
    if dtype == jnp.float32:
      np.testing.assert_allclose(got, want, rtol=1e-4)


def test_relation_consistency_is_maximal_for_the_teachers_relations():
  rng = np.random.default_rng(5)
  zt = rng.normal(size=(4, 6, 16)).astype(np.float32)
  same = np.asarray(losses.relation_consistency(zt, zt, 1.0))
  noisy = zt + 0.5 * rng.normal(size=zt.shape).astype(np.float32)
  assert (same > np.asarray(losses.relation_consistency(zt, noisy, 1.0))).all()
  # The maximum is minus the entropy of the teacher's map.
  a = np.einsum('bjd,bkd->bjk', zt.astype(np.float64), zt)
  h_t = np.exp(a - a.max(-1, keepdims=True))
  h_t /= h_t.sum(-1, keepdims=True)
  neg_entropy = (h_t * np.log(h_t)).sum(-1).mean(-1)
  np.testing.assert_allclose(same, neg_entropy, rtol=1e-5, atol=1e-6)
  # A wider student with the same Gram matrix (an isometric embedding of the
  # teacher's tokens) has the same relation map, hence the same maximum.
  q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
  wide = zt @ q[:16].astype(np.float32)  # (B, N, 24), Z Z^T preserved
  np.testing.assert_allclose(losses.relation_consistency(zt, wide, 1.0),
                             neg_entropy, rtol=1e-4, atol=1e-5)
  # Any other student map scores lower, whatever its width.
  for width in (8, 32):
    other = rng.normal(size=(4, 6, width)).astype(np.float32)
    assert (np.asarray(losses.relation_consistency(zt, other, 1.0)) <
            neg_entropy).all()
