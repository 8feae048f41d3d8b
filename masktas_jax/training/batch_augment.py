"""Augmentation of a whole batch on the device, inside the jitted step:
Mixup / CutMix and random erasing, as DeiT's fine-tuning recipe uses them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mix(rng: jax.Array, images: jax.Array, targets: jax.Array, mixup: float,
        cutmix: float) -> tuple[jax.Array, jax.Array]:
  """Mixup (alpha `mixup`) or CutMix (alpha `cutmix`), one of them per batch
  at random when both are on, pairing each image with its neighbour in the
  batch. images (B, S, S, C), targets (B, K) soft labels."""
  if not mixup and not cutmix:
    return images, targets
  pick, beta_key, box_key = jax.random.split(rng, 3)
  use_cutmix = (jax.random.bernoulli(pick) if mixup and cutmix else
                jnp.asarray(bool(cutmix)))
  alpha = jnp.where(use_cutmix, cutmix or 1.0, mixup or 1.0)
  lam = jax.random.beta(beta_key, alpha, alpha)
  other_images, other_targets = (jnp.roll(images, 1, 0),
                                 jnp.roll(targets, 1, 0))
  size = images.shape[1]
  # CutMix box of area (1 - lam), clipped; lam is then the kept area.
  cut = jnp.sqrt(1 - lam) * size
  cy, cx = jax.random.uniform(box_key, (2,), maxval=size)
  y0, y1 = jnp.clip(cy - cut / 2, 0, size), jnp.clip(cy + cut / 2, 0, size)
  x0, x1 = jnp.clip(cx - cut / 2, 0, size), jnp.clip(cx + cut / 2, 0, size)
  grid = jnp.arange(size) + 0.5
  inside = ((grid[:, None] > y0) & (grid[:, None] < y1) &
            (grid[None, :] > x0) & (grid[None, :] < x1))
  box_lam = 1 - jnp.mean(inside)
  mixed = jnp.where(use_cutmix,
                    jnp.where(inside[None, :, :, None], other_images, images),
                    lam * images + (1 - lam) * other_images)
  weight = jnp.where(use_cutmix, box_lam, lam)
  return mixed, weight * targets + (1 - weight) * other_targets


def erase(rng: jax.Array, images: jax.Array, prob: float, *,
          area: tuple[float, float] = (0.02, 1 / 3), min_aspect: float = 0.3,
          attempts: int = 10) -> jax.Array:
  """Random erasing as DeiT uses it (timm's RandomErasing, mode 'pixel', one
  box): with probability `prob` per image, a box of `area` (a fraction of the
  image, uniform) and aspect ratio h / w (log-uniform in [min_aspect,
  1 / min_aspect]) is filled with N(0, 1) noise, per pixel and channel.
  Up to `attempts` boxes are drawn and the first that fits is used; an image
  none fits is left alone. images (B, H, W, C), normalised -> same."""
  b, h, w, c = images.shape
  keys = jax.random.split(rng, 6)
  target = jax.random.uniform(keys[0], (b, attempts), minval=area[0],
                              maxval=area[1]) * (h * w)
  log_aspect = np.log(min_aspect)
  aspect = jnp.exp(jax.random.uniform(keys[1], (b, attempts),
                                      minval=log_aspect, maxval=-log_aspect))
  box_h = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (box_h < h) & (box_w < w)
  first = jnp.argmax(fits, axis=1)[:, None]
  box_h, box_w = (jnp.take_along_axis(x, first, 1)[:, 0]
                  for x in (box_h, box_w))
  # Top-left corner uniform over the positions where the box fits.
  top = jnp.floor(jax.random.uniform(keys[2], (b,)) *
                  (h - box_h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(keys[3], (b,)) *
                   (w - box_w + 1)).astype(jnp.int32)
  rows, cols = jnp.arange(h)[None], jnp.arange(w)[None]
  inside = (((rows >= top[:, None]) & (rows < (top + box_h)[:, None]))
            [:, :, None] &
            ((cols >= left[:, None]) & (cols < (left + box_w)[:, None]))
            [:, None, :])
  erased = (jax.random.uniform(keys[4], (b,)) < prob) & fits.any(axis=1)
  noise = jax.random.normal(keys[5], images.shape, images.dtype)
  return jnp.where((inside & erased[:, None, None])[..., None], noise, images)
