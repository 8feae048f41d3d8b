"""Losses: masked pixel regression (more come with the supernet and search)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def student_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
                 z_student: jax.Array, z_teacher: jax.Array, beta: float,
                 norm_pix: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Paper eq. 9-11: L_reg(P~, X_m) + beta * L_pre(Z~_s, Z_t).

  Args:
    pred: (B, N, P) student decoder pixels.
    target: (B, N, P) true patches.
    mask: (B, N), 1 on removed patches (the only ones L_reg scores).
    z_student: (B, T, D_t) projected student tokens.
    z_teacher: (B, T, D_t) teacher tokens of the same visible patches.
    beta: weight of the feature term.
    norm_pix: normalise each target patch (eq. 10's x-bar).

  Returns:
    (total loss, {'pixel_loss': L_reg, 'feature_loss': L_pre}).
  """
  reg = pixel_loss(pred, target, mask, norm_pix)
  pre = feature_prediction_loss(z_student, z_teacher)
  return reg + beta * pre, {'pixel_loss': reg, 'feature_loss': pre}


def relation_consistency(z_teacher: jax.Array, z_student: jax.Array,
                         tau: float) -> jax.Array:
  """Per-image fitness from token-token relation maps (paper eq. 13-16).

  For each image, the relation map of features Z (N, D) is
  `h[j, k] = softmax_k(Z_j . Z_k / tau)`. The fitness is minus the
  cross-entropy from the teacher's map to the student's, averaged over rows:
  `(1/N) sum_j sum_k h_t[j, k] log h_s[j, k]`. The paper writes N_m in the
  denominator and `-log` around h; both are typos (the tokens are the N_v
  visible ones, and the quantity is a cross-entropy). Since it equals
  `-KL(h_t || h_s) - H(h_t)` row by row, it is at most minus the teacher's
  entropy, reached when the student's map equals the teacher's. Widths may
  differ: only N x N maps are compared.

  Args:
    z_teacher: (B, N, D_t) teacher tokens of the visible patches (no CLS).
    z_student: (B, N, D_s) student tokens of the same patches (no CLS).
    tau: temperature of both softmaxes (> 0).

  Returns:
    (B,) float32 fitness, higher is more consistent.
  """
  if z_teacher.shape[:2] != z_student.shape[:2]:
    raise ValueError(
        f'relation_consistency: teacher tokens {z_teacher.shape} and student '
        f'tokens {z_student.shape} differ in batch or token count')

  def logits(z):
    # float32 and full-precision products whatever the input dtype: the
    # logits scale with |Z|^2 / tau and rank candidates that differ slightly.
    z = z.astype(jnp.float32)
    return jnp.einsum('bjd,bkd->bjk', z, z,
                      precision=jax.lax.Precision.HIGHEST) / tau

  h_t = jax.nn.softmax(logits(z_teacher), axis=-1)
  # log_softmax keeps large logits finite where log(softmax) would give -inf.
  log_h_s = jax.nn.log_softmax(logits(z_student), axis=-1)
  return jnp.mean(jnp.sum(h_t * log_h_s, axis=-1), axis=-1)
