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


def _np_log_relation(z, tau, form, exclude_self):
  """Eq. 16's log h in float64: log softmax_k(r(Z_j, Z_k) / tau)."""
  z = z.astype(np.float64)
  if form == 'centered_cosine':
    z = z - z.mean(1, keepdims=True)
  if form in ('cosine', 'centered_cosine'):
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
  a = np.einsum('bjd,bkd->bjk', z, z)
  if form == 'scaled_dot':
    a = a / np.einsum('bjd,bjd->b', z, z)[:, None, None] * z.shape[1]
  a = a / tau
  if exclude_self:
    a[:, np.arange(z.shape[1]), np.arange(z.shape[1])] = -np.inf
  a = a - a.max(-1, keepdims=True)
  return a - np.log(np.exp(a).sum(-1, keepdims=True))


def _np_relation_fitness(zt, zs, tau, form='dot', exclude_self=False,
                         student_tau=None):
  """Eq. 13-16 in float64: mean_j sum_k h_t[j,k] log h_s[j,k], per image."""
  log_t = _np_log_relation(zt, tau, form, exclude_self)
  log_s = _np_log_relation(zs, student_tau or tau, form, exclude_self)
  with np.errstate(invalid='ignore'):  # 0 * -inf on an excluded diagonal
    terms = np.where(np.isneginf(log_t), 0.0, np.exp(log_t) * log_s)
  return terms.sum(-1).mean(-1)


def _literal(zt, zs, tau):
  """The paper's literal form: raw dot products, self-relations included."""
  return losses.relation_consistency(zt, zs, tau, form='dot',
                                     exclude_self=False)


def test_relation_consistency_against_float64_numpy():
  rng = np.random.default_rng(3)
  zt = rng.normal(size=(3, 7, 24)).astype(np.float32)
  zs = (rng.normal(size=(3, 7, 16)) + 0.5).astype(np.float32)
  for tau in (1.0, 0.1, 5.0):
    got = _literal(zt, zs, tau)
    assert got.shape == (3,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _np_relation_fitness(zt, zs, tau),
                               rtol=1e-5, atol=1e-5)
  for form in losses.RELATION_FORMS:
    for exclude_self in (False, True):
      for tau, student_tau in ((0.1, None), (0.3, 0.05)):
        got = losses.relation_consistency(
            zt, zs, tau, form=form, exclude_self=exclude_self,
            student_tau=student_tau)
        want = _np_relation_fitness(zt, zs, tau, form, exclude_self,
                                    student_tau)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                   err_msg=f'{form} {exclude_self} {tau}')
        entropy = losses.relation_entropy(zs, tau, form, exclude_self)
        log_h = _np_log_relation(zs, tau, form, exclude_self)
        with np.errstate(invalid='ignore'):
          terms = np.where(np.isneginf(log_h), 0.0, np.exp(log_h) * log_h)
        np.testing.assert_allclose(
            entropy, -terms.sum(-1).mean(-1) / np.log(7 - exclude_self),
            rtol=1e-5, atol=1e-6)


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
    got = np.asarray(_literal(jnp.asarray(zt, dtype), jnp.asarray(zs, dtype),
                              1.0))
    assert np.isfinite(got).all()
    if dtype == jnp.float32:
      np.testing.assert_allclose(got, want, rtol=1e-4)
  # Without self-relations, the excluded diagonal (-inf logits) gives no NaN.
  got = losses.relation_consistency(zt, zs, 0.01, form='cosine')
  assert np.isfinite(np.asarray(got)).all()


def test_relation_consistency_is_maximal_for_the_teachers_relations():
  rng = np.random.default_rng(5)
  zt = rng.normal(size=(4, 6, 16)).astype(np.float32)
  same = np.asarray(_literal(zt, zt, 1.0))
  noisy = zt + 0.5 * rng.normal(size=zt.shape).astype(np.float32)
  assert (same > np.asarray(_literal(zt, noisy, 1.0))).all()
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
  np.testing.assert_allclose(_literal(zt, wide, 1.0), neg_entropy,
                             rtol=1e-4, atol=1e-5)
  # Any other student map scores lower, whatever its width.
  for width in (8, 32):
    other = rng.normal(size=(4, 6, width)).astype(np.float32)
    assert (np.asarray(_literal(zt, other, 1.0)) < neg_entropy).all()
  # The same holds for every form: the teacher's own tokens, rotated into a
  # wider space and zero-padded like a narrower subnet's, score the maximum.
  for form in losses.RELATION_FORMS:
    best = losses.relation_consistency(zt, zt, 0.2, form=form)
    padded = np.concatenate([wide, np.zeros((4, 6, 40), np.float32)], -1)
    np.testing.assert_allclose(
        losses.relation_consistency(zt, padded, 0.2, form=form), best,
        rtol=1e-4, atol=1e-5)
    assert (np.asarray(losses.relation_consistency(zt, noisy, 0.2, form=form))
            < np.asarray(best)).all()


def _final_norm_tokens(rng, batch, tokens, width, rank=8, signal=1.0):
  """LayerNormed tokens (|z|^2 = width) with a shared low-rank structure
  (what the image is) plus noise, like a ViT's final-norm output."""
  basis = rng.normal(size=(batch, rank, width))
  codes = rng.normal(size=(batch, tokens, rank))
  z = signal * codes @ basis / np.sqrt(rank) + rng.normal(
      size=(batch, tokens, width))
  z = z - z.mean(-1, keepdims=True)
  return z / z.std(-1, keepdims=True), codes, basis


def test_default_relation_stays_calibrated_from_student_to_vit_widths():
  """The paper's literal form collapses at ViT widths; the default does not.

  Teachers of width 192-1280 and students of 64-624 with N = 19 visible
  tokens (224 px, 90% masking): the teacher's map entropy stays inside the
  warning band, and students whose tokens hold more of the teacher's
  structure (from as much as the teacher's own, signal-to-noise 1, down)
  score strictly higher at every width."""
  rng = np.random.default_rng(6)
  default = losses.Relation()
  for teacher_width in (192, 768, 1280):
    zt, codes, _ = _final_norm_tokens(rng, 16, 19, teacher_width)
    literal = losses.relation_entropy(zt, 1.0, 'dot', False).mean()
    entropy = float(default.teacher_entropy(zt).mean())
    assert 0.1 < entropy < 0.95, (teacher_width, entropy)
    if teacher_width >= 768:
      # One-hot maps: every candidate would tie.
      assert literal < 1e-3
    for student_width in (64, 240, 624):
      scores = []
      for noise in (1.0, 2.0, 4.0, 8.0):
        basis = rng.normal(size=(16, 8, student_width))
        zs = codes @ basis / np.sqrt(8) + noise * rng.normal(
            size=(16, 19, student_width))
        zs = (zs - zs.mean(-1, keepdims=True)) / zs.std(-1, keepdims=True)
        scores.append(float(default.fitness(zt.astype(np.float32),
                                            zs.astype(np.float32)).mean()))
      assert np.all(np.diff(scores) < -1e-3), (teacher_width, student_width,
                                               scores)
