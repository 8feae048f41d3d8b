"""The student of supernet training (paper eq. 7-8): supernet encoder, a
light pixel decoder and a projector to the teacher's feature width."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
from flax import nnx

from masktas_jax.models import vit
from masktas_jax.models.mae import PixelDecoder
from masktas_jax.models.supernet import ArchArrays, Supernet
from masktas_jax.space import Arch, SearchSpace

# What the CLS output learns to predict in supernet training
# (`supernet.cls_target`): 'none' (the paper: nothing; the decoder reads it
# only as context), the teacher's CLS output ('teacher_cls'), or the mean of
# the teacher's visible patch tokens ('teacher_mean', the feature MAE's own
# fine-tuning pools). Ours, so that a classifier reading CLS starts from a
# token supernet training shaped.
CLS_TARGETS = ('none', 'teacher_cls', 'teacher_mean')


def scored_pools(cls_target: str = 'none') -> tuple[str, ...]:
  """The classifier poolings (vit.POOLS) whose tokens supernet training
  scores: the feature loss compares each visible patch token's projection
  with the teacher's and the decoder predicts each patch's pixels ('mean'),
  and the CLS output only under a `cls_target` other than 'none'. A subnet
  fine-tuned from inherited weights through another pooling starts from a
  token supernet training barely shaped."""
  if cls_target not in CLS_TARGETS:
    raise ValueError(f'cls_target: expected one of {CLS_TARGETS}, got '
                     f'{cls_target!r}')
  return ('mean',) if cls_target == 'none' else ('mean', 'cls')


@dataclasses.dataclass(frozen=True)
class StudentConfig:
  """What a supernet student is built from, as `MAEConfig` is for the
  teacher: the search space, the teacher's feature width D_teacher its
  projector predicts, and its pixel decoder's width, depth and heads (the
  model directory's `student.json`)."""

  space: SearchSpace
  teacher_dim: int
  decoder_embed_dim: int
  decoder_depth: int
  decoder_num_heads: int

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), 'space': self.space.to_dict()}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'StudentConfig':
    return cls(**{**d, 'space': SearchSpace(**d['space'])})


class Student(nnx.Module):
  """Weight-sharing encoder + decoder `S_d` + projector `M` (2-layer MLP).

  The encoder is the space's supernet without a classifier head (fine-tuning
  adds one); decoder and projector read its max-width tokens, whose channels
  past the sampled embed dim are zero.
  """

  def __init__(self, config: StudentConfig, *, rngs: nnx.Rngs,
               remat: bool = True):
    space, teacher_dim = config.space, config.teacher_dim
    self.encoder = Supernet(dataclasses.replace(space, num_classes=0),
                            rngs=rngs, remat=remat)
    e = space.max_embed
    self.decoder = PixelDecoder(
        in_dim=e, embed_dim=config.decoder_embed_dim,
        depth=config.decoder_depth, num_heads=config.decoder_num_heads,
        patch_size=space.patch_size, in_chans=space.in_chans,
        grid_size=space.image_size // space.patch_size, rngs=rngs)
    self.proj1 = nnx.Linear(e, teacher_dim, kernel_init=vit._dense_init,
                            rngs=rngs)
    self.proj2 = nnx.Linear(teacher_dim, teacher_dim,
                            kernel_init=vit._dense_init, rngs=rngs)

  def __call__(self, images: jax.Array, arch: ArchArrays, ids_keep: jax.Array,
               ids_restore: jax.Array, cls: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    """Pixels (B, N, p*p*C) for every patch and projected features
    (B, K, D_teacher) of the K visible patches (CLS left out), or with
    `cls` (B, 1 + K, D_teacher), the CLS output's projection first."""
    tokens = self.encoder.encode(images, arch, ids_keep, mode='switch')
    pixels = self.decoder(tokens, ids_restore)
    return pixels, self.project(tokens if cls else tokens[:, 1:])

  def project(self, tokens: jax.Array) -> jax.Array:
    """The projector M: (B, T, max_embed) tokens -> (B, T, D_teacher)."""
    return self.proj2(vit.gelu(self.proj1(tokens)))

  def extract(self, arch: Arch) -> 'DenseStudent':
    """The dense student of `arch`, holding this student's weights: the
    extracted ViT (`Supernet.extract`), the decoder and projector reading
    its `embed_dim` channels (the first rows of their input kernels, where
    the supernet's tokens are non-zero), so both compute the same outputs.
    """
    e = arch.embed_dim
    decoder = self.decoder
    decoder_embed = nnx.Linear(e, decoder.decoder_embed.out_features,
                               rngs=nnx.Rngs(0))
    decoder_embed.kernel[...] = decoder.decoder_embed.kernel[...][:e]
    decoder_embed.bias[...] = decoder.decoder_embed.bias[...]
    dense_decoder = nnx.clone(decoder)
    dense_decoder.decoder_embed = decoder_embed
    proj1 = nnx.Linear(e, self.proj1.out_features, rngs=nnx.Rngs(0))
    proj1.kernel[...] = self.proj1.kernel[...][:e]
    proj1.bias[...] = self.proj1.bias[...]
    return DenseStudent(self.encoder.extract(arch), dense_decoder, proj1,
                        nnx.clone(self.proj2))


class DenseStudent(nnx.Module):
  """A `Student` of one Arch as dense modules (no masks, no switch): the
  reference a supernet step is measured and checked against."""

  def __init__(self, encoder: vit.VisionTransformer, decoder: PixelDecoder,
               proj1: nnx.Linear, proj2: nnx.Linear):
    self.encoder, self.decoder = encoder, decoder
    self.proj1, self.proj2 = proj1, proj2

  def __call__(self, images: jax.Array, ids_keep: jax.Array,
               ids_restore: jax.Array, cls: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    """As `Student.__call__`, for its one Arch: pixels (B, N, p*p*C) and
    features (B, K, D_teacher), or (B, 1 + K, D_teacher) with `cls`."""
    tokens = self.encoder.encode(images, ids_keep)
    pixels = self.decoder(tokens, ids_restore)
    features = self.proj2(vit.gelu(self.proj1(tokens if cls else
                                              tokens[:, 1:])))
    return pixels, features
