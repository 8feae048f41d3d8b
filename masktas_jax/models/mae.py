"""Masked autoencoder (MAE) built from the dense ViT pieces: the teacher.

Layout and behaviour follow the MAE authors' models, so their checkpoints
convert one-to-one (`convert_mae.py`): fixed 2-D sin-cos positions in the
encoder and decoder, positions added before masking and CLS prepended after,
a decoder that fills the removed patches with a learned mask token and
predicts pixels in `patchify` order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from masktas_jax import losses
from masktas_jax.masking import gather_tokens, patchify, random_masking
from masktas_jax.models import vit


@dataclasses.dataclass(frozen=True)
class MAEConfig:
  """Shapes of a MAE; `decoder_depth=0` means encoder only."""

  image_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  decoder_embed_dim: int = 512
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  mlp_ratio: float = 4.0
  norm_pix_loss: bool = True

  def __post_init__(self):
    for name in ('embed_dim', 'decoder_embed_dim'):
      heads = getattr(self, name.replace('embed_dim', 'num_heads'))
      if getattr(self, name) % heads:
        raise ValueError(f'{name} {getattr(self, name)} is not divisible by '
                         f'its {heads} heads')
    if self.image_size % self.patch_size:
      raise ValueError(f'image_size {self.image_size} is not divisible by '
                       f'patch_size {self.patch_size}')

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size)**2

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'MAEConfig':
    return cls(**d)


class PixelDecoder(nnx.Module):
  """MAE's decoder: encoder tokens of the visible patches -> all patches' pixels.

  Projects to `embed_dim`, fills the removed patches with a learned mask
  token, restores patch order, adds fixed sin-cos positions, runs `depth`
  blocks and predicts p*p*C pixels per patch.
  """

  def __init__(self, *, in_dim: int, embed_dim: int, depth: int,
               num_heads: int, patch_size: int, in_chans: int, grid_size: int,
               mlp_ratio: float = 4.0, rngs: nnx.Rngs):
    self.decoder_embed = nnx.Linear(in_dim, embed_dim,
                                    kernel_init=vit._dense_init, rngs=rngs)
    self.mask_token = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (embed_dim,)))
    self.decoder_pos_embed = vit.FixedEmbedding(jnp.asarray(
        vit.sincos_pos_embed(embed_dim, grid_size)))
    self.decoder_blocks = nnx.List([
        vit.Block(embed_dim, num_heads, int(embed_dim * mlp_ratio), rngs=rngs,
                  head_dim=embed_dim // num_heads) for _ in range(depth)
    ])
    self.decoder_norm = vit.layer_norm(embed_dim, rngs)
    self.decoder_pred = nnx.Linear(embed_dim, patch_size**2 * in_chans,
                                   kernel_init=vit._dense_init, rngs=rngs)

  def __call__(self, latent: jax.Array, ids_restore: jax.Array,
               remat: bool = False) -> jax.Array:
    """Tokens (B, 1 + K, in_dim), CLS first -> pixels (B, N, p*p*C).

    `ids_restore` (B, N) puts [kept, mask tokens] back into patch order;
    `remat` as in `vit.run_blocks`.
    """
    x = self.decoder_embed(latent)
    b, n = ids_restore.shape
    fill = jnp.broadcast_to(self.mask_token[...].astype(x.dtype),
                            (b, n + 1 - x.shape[1], x.shape[-1]))
    patches = gather_tokens(jnp.concatenate([x[:, 1:], fill], axis=1),
                            ids_restore)
    x = jnp.concatenate([x[:, :1], patches], axis=1) + self.decoder_pos_embed[...]
    x = vit.run_blocks(self.decoder_blocks, x,
                       [None] * len(self.decoder_blocks), remat)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class MAE(nnx.Module):
  """MAE with a ViT encoder and (optionally) its pixel decoder."""

  def __init__(self, config: MAEConfig, *, rngs: nnx.Rngs):
    c = self.config = config
    self.encoder = vit.VisionTransformer(
        embed_dim=c.embed_dim, num_heads=(c.num_heads,) * c.depth,
        mlp_dims=(int(c.embed_dim * c.mlp_ratio),) * c.depth,
        image_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_chans,
        head_dim=c.embed_dim // c.num_heads, pos_embed='sincos', rngs=rngs)
    if c.decoder_depth:
      self.decoder = PixelDecoder(
          in_dim=c.embed_dim, embed_dim=c.decoder_embed_dim,
          depth=c.decoder_depth, num_heads=c.decoder_num_heads,
          patch_size=c.patch_size, in_chans=c.in_chans,
          grid_size=c.image_size // c.patch_size, mlp_ratio=c.mlp_ratio,
          rngs=rngs)

  @property
  def has_decoder(self) -> bool:
    return self.config.decoder_depth > 0

  def encode(self, images: jax.Array, ids_keep: jax.Array | None = None,
             remat: bool = False) -> jax.Array:
    """(B, H, W, C) normalised images -> final-normed tokens (B, 1 + K, D).

    CLS first, patches in raster order (or the `ids_keep` (B, K) subset);
    `remat` as in `vit.run_blocks`.
    """
    return self.encoder.encode(images, ids_keep, remat=remat)

  def decode(self, latent: jax.Array, ids_restore: jax.Array,
             remat: bool = False) -> jax.Array:
    """Encoder tokens (B, 1 + K, D) -> pixel predictions (B, N, p*p*C).

    `ids_restore` (B, N) puts [kept, mask tokens] back into patch order.
    """
    if not self.has_decoder:
      raise ValueError('this MAE has no decoder (an encoder-only checkpoint)')
    return self.decoder(latent, ids_restore, remat)

  def reconstruct(self, images: jax.Array, ids_keep: jax.Array,
                  ids_restore: jax.Array, remat: bool = False) -> jax.Array:
    """Pixel predictions (B, N, p*p*C) for a given mask; `remat` as in
    `vit.run_blocks`, for encoder and decoder."""
    return self.decode(self.encode(images, ids_keep, remat), ids_restore,
                       remat)

  def __call__(self, images: jax.Array, rng: jax.Array, mask_ratio: float,
               remat: bool = False
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One MAE training forward: (loss, pred (B, N, p*p*C), mask (B, N)).

    `remat` trades memory for a second forward in the backward pass
    (`vit.run_blocks`)."""
    c = self.config
    ids_keep, mask, ids_restore = random_masking(rng, images.shape[0],
                                                 c.num_patches, mask_ratio)
    pred = self.reconstruct(images, ids_keep, ids_restore, remat)
    target = patchify(images, c.patch_size)
    return losses.pixel_loss(pred, target, mask, c.norm_pix_loss), pred, mask
