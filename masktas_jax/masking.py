"""MAE-style patchify / unpatchify and per-image random masking."""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) images -> (B, N, p*p*C) patch vectors.

  Patches are in raster order (row-major over the grid) and each vector is
  ordered (row in patch, column in patch, channel), MAE's order, which is also
  the order of a conv kernel in HWIO layout flattened over its first three
  axes.
  """
  return einops.rearrange(images, 'b (h p) (w q) c -> b (h w) (p q c)',
                          p=patch_size, q=patch_size)


def unpatchify(patches: jax.Array, patch_size: int,
               channels: int = 3) -> jax.Array:
  """(B, N, p*p*C) -> (B, H, W, C); the inverse of `patchify` (square grid)."""
  n = patches.shape[1]
  side = int(round(n**0.5))
  if side * side != n:
    raise ValueError(f'unpatchify: {n} patches do not form a square grid')
  return einops.rearrange(patches, 'b (h w) (p q c) -> b (h p) (w q) c',
                          h=side, p=patch_size, q=patch_size, c=channels)


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """Patches kept per image, `int(N * (1 - mask_ratio))` as in MAE."""
  return int(num_patches * (1 - mask_ratio))


def random_masking(rng: jax.Array, batch: int, num_patches: int,
                   mask_ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-image random masking by argsort of uniform noise (MAE).

  Returns:
    ids_keep:    (B, K) int32 indices of the kept patches, K = num_visible.
    mask:        (B, N) float32, 0 for kept and 1 for removed patches, in the
                 original patch order.
    ids_restore: (B, N) int32, the inverse permutation: gathering
                 `concat([kept, removed])` with it restores the patch order.
  """
  keep = num_visible(num_patches, mask_ratio)
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :keep]
  mask = jnp.ones((batch, num_patches), jnp.float32).at[:, :keep].set(0)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_keep, mask, ids_restore


def gather_tokens(tokens: jax.Array, ids: jax.Array) -> jax.Array:
  """(B, N, D) tokens, (B, K) indices -> (B, K, D) tokens at those indices."""
  return jnp.take_along_axis(tokens, ids[..., None], axis=1)
