"""The student of supernet training (paper eq. 7-8): supernet encoder, a
light pixel decoder and a projector to the teacher's feature width."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from masktas_jax.models import vit
from masktas_jax.models.mae import PixelDecoder
from masktas_jax.models.supernet import ArchArrays, Supernet
from masktas_jax.space import SearchSpace


class Student(nnx.Module):
  """Weight-sharing encoder + decoder `S_d` + projector `M` (2-layer MLP).

  The encoder is the space's supernet without a classifier head (fine-tuning
  adds one); decoder and projector read its max-width tokens, whose channels
  past the sampled embed dim are zero.
  """

  def __init__(self, space: SearchSpace, *, teacher_dim: int,
               decoder_dim: int, decoder_depth: int, decoder_heads: int,
               rngs: nnx.Rngs, remat: bool = True):
    self.encoder = Supernet(dataclasses.replace(space, num_classes=0),
                            rngs=rngs, remat=remat)
    e = space.max_embed
    self.decoder = PixelDecoder(
        in_dim=e, embed_dim=decoder_dim, depth=decoder_depth,
        num_heads=decoder_heads, patch_size=space.patch_size,
        in_chans=space.in_chans,
        grid_size=space.image_size // space.patch_size, rngs=rngs)
    self.proj1 = nnx.Linear(e, teacher_dim, kernel_init=vit._dense_init,
                            rngs=rngs)
    self.proj2 = nnx.Linear(teacher_dim, teacher_dim,
                            kernel_init=vit._dense_init, rngs=rngs)

  def __call__(self, images: jax.Array, arch: ArchArrays, ids_keep: jax.Array,
               ids_restore: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pixels (B, N, p*p*C) for every patch and projected features
    (B, K, D_teacher) of the K visible patches (CLS left out)."""
    tokens = self.encoder.encode(images, arch, ids_keep, mode='switch')
    pixels = self.decoder(tokens, ids_restore)
    features = self.proj2(vit.gelu(self.proj1(tokens[:, 1:])))
    return pixels, features
