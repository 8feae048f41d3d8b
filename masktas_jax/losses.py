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
