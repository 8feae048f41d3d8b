"""Losses: masked pixel regression, feature prediction (supernet training) and
the teacher-student relation consistency (search fitness)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

NORM_PIX_EPS = 1e-6


def normalize_patches(target: jax.Array) -> jax.Array:
  """Per-patch (B, N, P) normalisation: mean 0 and unbiased variance 1 (eps
  1e-6 inside the square root), MAE's `norm_pix_loss` target."""
  mean = target.mean(-1, keepdims=True)
  var = target.var(-1, keepdims=True, ddof=1)
  return (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def pixel_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
               norm_pix: bool) -> jax.Array:
  """Mean squared error on the removed patches only (paper eq. 9-10).

  Args:
    pred: (B, N, P) predicted patches.
    target: (B, N, P) true patches (`patchify` of the images).
    mask: (B, N), 1 for removed patches, 0 for visible ones.
    norm_pix: normalise each target patch first.

  Returns:
    A scalar: the per-patch MSE averaged over removed patches.
  """
  if norm_pix:
    target = normalize_patches(target)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target)**2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


def layer_norm_no_affine(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """(..., D) -> (..., D): zero mean, unit (biased) variance over the last axis."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def smooth_l1(x: jax.Array, y: jax.Array, delta: float = 1.0) -> jax.Array:
  """Elementwise smooth L1 (Huber / delta, PyTorch's SmoothL1Loss form)."""
  d = jnp.abs(x - y)
  return jnp.where(d < delta, 0.5 * d * d / delta, d - 0.5 * delta)


def feature_prediction_loss(z_student: jax.Array,
                            z_teacher: jax.Array) -> jax.Array:
  """Paper eq. 11: SmoothL1(LN(Z~_s), LN(Z_t)), mean over tokens and channels.

  Args:
    z_student: (B, T, D_t) projected student tokens (projector output).
    z_teacher: (B, T, D_t) teacher tokens for the same visible patches; no
      gradient reaches them.

  Returns:
    A scalar. LN has no affine parameters (eps 1e-6).
  """
  target = layer_norm_no_affine(jax.lax.stop_gradient(z_teacher))
  return jnp.mean(smooth_l1(layer_norm_no_affine(z_student), target))


def cls_prediction_target(z_teacher: jax.Array, target: str) -> jax.Array:
  """What the student's CLS output predicts (`supernet.cls_target`): the
  teacher's CLS output ('teacher_cls') or the mean of its visible patch
  tokens ('teacher_mean'). z_teacher (B, 1 + K, D_t), CLS first -> (B, D_t).
  """
  if target == 'teacher_cls':
    return z_teacher[:, 0]
  if target == 'teacher_mean':
    return z_teacher[:, 1:].mean(axis=1)
  raise ValueError("cls target: expected 'teacher_cls' or 'teacher_mean', "
                   f'got {target!r}')


def student_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
                 z_student: jax.Array, z_teacher: jax.Array, beta: float,
                 norm_pix: bool = True, cls_student: jax.Array | None = None,
                 cls_teacher: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Paper eq. 9-11: L_reg(P~, X_m) + beta * L_pre(Z~_s, Z_t), plus, when
  the CLS output is supervised (ours), beta * L_pre of the projected CLS
  output against its target (a term of its own, as heavy as the patch
  tokens' together).

  Args:
    pred: (B, N, P) student decoder pixels.
    target: (B, N, P) true patches.
    mask: (B, N), 1 on removed patches (the only ones L_reg scores).
    z_student: (B, T, D_t) projected student tokens.
    z_teacher: (B, T, D_t) teacher tokens of the same visible patches.
    beta: weight of the feature term.
    norm_pix: normalise each target patch (eq. 10's x-bar).
    cls_student: (B, D_t) the projected student CLS output, or None.
    cls_teacher: (B, D_t) its target (`cls_prediction_target`).

  Returns:
    (total loss, {'pixel_loss': L_reg, 'feature_loss': L_pre} and
    'cls_loss' when the CLS output is supervised).
  """
  reg = pixel_loss(pred, target, mask, norm_pix)
  pre = feature_prediction_loss(z_student, z_teacher)
  terms = {'pixel_loss': reg, 'feature_loss': pre}
  total = reg + beta * pre
  if cls_student is not None:
    terms['cls_loss'] = feature_prediction_loss(cls_student[:, None],
                                                cls_teacher[:, None])
    total = total + beta * terms['cls_loss']
  return total, terms


# How a token-token relation map is formed (eq. 16's `Z_j . Z_k`), before
# the temperature:
# 'dot': the raw dot product, as the paper writes it. Final-norm tokens have
#   |z|^2 ~ width, so at any fixed tau the maps turn one-hot as width grows.
# 'scaled_dot': the dot product over the image's mean squared token norm, so
#   the self-relation is ~1 at every width.
# 'cosine': the cosine similarity of the two tokens, in [-1, 1].
# 'centered_cosine': the cosine after subtracting the image's mean token,
#   which removes the direction every token shares (it would make all
#   relations alike).
RELATION_FORMS = ('dot', 'scaled_dot', 'cosine', 'centered_cosine')


def _check_relation(form: str, tau: float, exclude_self: bool,
                    num_tokens: int) -> None:
  if form not in RELATION_FORMS:
    raise ValueError(f'relation form: expected one of {RELATION_FORMS}, got '
                     f'{form!r}')
  # A traced temperature (a swept one) is the caller's to check.
  if isinstance(tau, (int, float)) and not tau > 0:
    raise ValueError(f'relation temperature must be positive, got {tau!r}')
  if exclude_self and num_tokens < 2:
    raise ValueError('relations without the self-relation need at least 2 '
                     f'tokens, got {num_tokens}')


def relation_logits(z: jax.Array, tau: float, form: str = 'centered_cosine',
                    exclude_self: bool = True) -> jax.Array:
  """(B, N, D) tokens -> (B, N, N) relation logits `r(Z_j, Z_k) / tau`.

  `r` is given by `form` (RELATION_FORMS). With `exclude_self`, the diagonal
  is -inf: a token's relation to itself is the largest under every form and
  says nothing of the image, and left in it dominates the map. Channels that
  are zero in every token (a subnet's padding) change nothing.
  """
  _check_relation(form, tau, exclude_self, z.shape[1])
  # float32 and full-precision products whatever the input dtype: the
  # logits rank candidates that differ slightly.
  z = z.astype(jnp.float32)
  if form == 'centered_cosine':
    z = z - z.mean(1, keepdims=True)
  if form in ('cosine', 'centered_cosine'):
    z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, -1, keepdims=True),
                                      1e-12))
  gram = jnp.einsum('bjd,bkd->bjk', z, z, precision=jax.lax.Precision.HIGHEST)
  if form == 'scaled_dot':
    mean_sq = jnp.mean(jnp.diagonal(gram, axis1=1, axis2=2), -1)
    gram = gram / jnp.maximum(mean_sq, 1e-12)[:, None, None]
  logits = gram / tau
  if exclude_self:
    logits = jnp.where(jnp.eye(z.shape[1], dtype=bool), -jnp.inf, logits)
  return logits


def relation_entropy(z: jax.Array, tau: float, form: str = 'centered_cosine',
                     exclude_self: bool = True) -> jax.Array:
  """(B, N, D) -> (B,) mean row entropy of the relation maps, as a fraction
  of its maximum log(K) (K = N, or N - 1 without the self-relation): 0 for
  one-hot rows, 1 for uniform ones. Near 0 or 1 the maps carry little of
  the image's structure."""
  logits = relation_logits(z, tau, form, exclude_self)
  log_h = jax.nn.log_softmax(logits, axis=-1)
  terms = jnp.where(jnp.isneginf(logits), 0.0, jnp.exp(log_h) * log_h)
  k = z.shape[1] - int(exclude_self)
  return -jnp.mean(jnp.sum(terms, axis=-1), axis=-1) / np.log(k)


def relation_consistency(z_teacher: jax.Array, z_student: jax.Array,
                         tau: float, *, form: str = 'centered_cosine',
                         student_tau: float | None = None,
                         exclude_self: bool = True) -> jax.Array:
  """Per-image fitness from token-token relation maps (paper eq. 13-16).

  For each image, the relation map of features Z (N, D) is
  `h[j, k] = softmax_k(r(Z_j, Z_k) / tau)` (`relation_logits`; the paper's
  `r` is the raw dot product, `form='dot'`, which is calibrated at no
  width, see RELATION_FORMS). The fitness is minus the cross-entropy from
  the teacher's map to the student's, averaged over rows:
  `(1/N) sum_j sum_k h_t[j, k] log h_s[j, k]`. The paper writes N_m in the
  denominator and `-log` around h; both are typos (the tokens are the N_v
  visible ones, and the quantity is a cross-entropy). Since it equals
  `-KL(h_t || h_s) - H(h_t)` row by row, it is at most minus the teacher's
  entropy, reached when the student's map equals the teacher's. Widths may
  differ: only N x N maps are compared.

  Args:
    z_teacher: (B, N, D_t) teacher tokens of the visible patches (no CLS).
    z_student: (B, N, D_s) student tokens of the same patches (no CLS).
    tau: temperature of the teacher's softmax (> 0).
    form: how relations are measured (RELATION_FORMS).
    student_tau: temperature of the student's softmax; None: `tau`.
    exclude_self: leave out each token's relation to itself (k = j).

  Returns:
    (B,) float32 fitness, higher is more consistent.
  """
  if z_teacher.shape[:2] != z_student.shape[:2]:
    raise ValueError(
        f'relation_consistency: teacher tokens {z_teacher.shape} and student '
        f'tokens {z_student.shape} differ in batch or token count')
  student_tau = tau if student_tau is None else student_tau
  logits_t = relation_logits(z_teacher, tau, form, exclude_self)
  h_t = jax.nn.softmax(logits_t, axis=-1)
  # log_softmax keeps large logits finite where log(softmax) would give -inf.
  log_h_s = jax.nn.log_softmax(
      relation_logits(z_student, student_tau, form, exclude_self), axis=-1)
  # 0 * -inf on an excluded diagonal is 0, not NaN.
  terms = jnp.where(jnp.isneginf(logits_t), 0.0, h_t * log_h_s)
  return jnp.mean(jnp.sum(terms, axis=-1), axis=-1)


@dataclasses.dataclass(frozen=True)
class Relation:
  """One choice of relation map for the search's fitness (eq. 13-16):
  `form` (RELATION_FORMS), the teacher's temperature `tau`, the student's
  `student_tau` (None: `tau`) and whether the self-relation is left out."""

  form: str = 'centered_cosine'
  tau: float = 0.1
  student_tau: float | None = None
  exclude_self: bool = True

  def __post_init__(self):
    if self.student_tau is None:
      object.__setattr__(self, 'student_tau', self.tau)

  def fitness(self, z_teacher: jax.Array, z_student: jax.Array) -> jax.Array:
    """(B, N, D_t), (B, N, D_s) -> (B,) `relation_consistency`."""
    return relation_consistency(z_teacher, z_student, self.tau,
                                form=self.form, student_tau=self.student_tau,
                                exclude_self=self.exclude_self)

  def teacher_entropy(self, z_teacher: jax.Array) -> jax.Array:
    """(B, N, D) -> (B,) `relation_entropy` at the teacher's temperature."""
    return relation_entropy(z_teacher, self.tau, self.form, self.exclude_self)

  def student_entropy(self, z_student: jax.Array) -> jax.Array:
    """(B, N, D) -> (B,) `relation_entropy` at the student's temperature:
    the teacher-free control of the fitness."""
    return relation_entropy(z_student, self.student_tau, self.form,
                            self.exclude_self)
