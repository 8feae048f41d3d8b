"""Analytic model FLOPs: what a step must compute, counted from the shapes.

Matrix products only (2 FLOPs per multiply-accumulate), with the formula
of `SearchSpace.count_macs` (`space.encoder_macs`): no elementwise work, no
remat recomputation, no padding. XLA's own counts are no substitute: its
cost analysis counts one iteration of the encoder's layer `scan` and one
`switch` branch.
"""

from __future__ import annotations

from masktas_jax.masking import num_visible
from masktas_jax.models.mae import MAEConfig
from masktas_jax.models.student import StudentConfig
from masktas_jax.space import Arch, encoder_macs, HEAD_DIM


def vit_macs(embed: int, depth: int, visible: int, patch_dim: int,
             mlp_ratio: float = 4.0) -> int:
  """Multiply-accumulates of a plain ViT encoder (heads spanning its
  width, one MLP ratio: the MAE teacher's) over `visible` patches and CLS,
  one image."""
  return encoder_macs(embed, [embed] * depth,
                      [int(embed * mlp_ratio)] * depth, visible + 1, visible,
                      patch_dim)


def _decoder_macs(dim: int, depth: int, mlp_ratio: float, num_patches: int,
                  patch_dim: int) -> int:
  """A MAE-style pixel decoder's blocks over all N patches + CLS, then its
  pixel head (it predicts CLS too and drops it); its input projection,
  which depends on the encoder's width, left out."""
  return encoder_macs(dim, [dim] * depth, [int(dim * mlp_ratio)] * depth,
                      num_patches + 1, 0, 0) + (num_patches + 1) * dim * (
                          patch_dim)


class SupernetStep:
  """Model FLOPs of one supernet training step (`stages.supernet`), for any
  Arch of the student's space: the teacher's forward on the visible
  tokens, and forward + backward (3x the forward) of the student at the
  subnet's own widths: encoder, pixel decoder, projector."""

  def __init__(self, student: StudentConfig, teacher: MAEConfig,
               mask_ratio: float):
    space = student.space
    n, k = space.num_patches, num_visible(space.num_patches, mask_ratio)
    self.space, self.visible = space, k
    self.teacher_dim = student.teacher_dim
    self.teacher_macs = vit_macs(teacher.embed_dim, teacher.depth, k,
                                 space.patch_dim, teacher.mlp_ratio)
    self.decoder_dim = d = student.decoder_embed_dim
    # The student's decoder blocks have 4x MLPs (models.mae.PixelDecoder's
    # default).
    self.decoder_macs = _decoder_macs(d, student.decoder_depth, 4.0, n,
                                      space.patch_dim)

  def parts(self, arch: Arch, batch: int) -> dict[str, int]:
    """FLOPs of one step of `batch` images by part: 'teacher', 'encoder',
    'decoder', 'projector'."""
    e, k, dt = arch.embed_dim, self.visible, self.teacher_dim
    encoder = encoder_macs(e, [h * HEAD_DIM for h in arch.num_heads],
                           arch.mlp_dims, k + 1, k, self.space.patch_dim)
    decoder = (k + 1) * e * self.decoder_dim + self.decoder_macs
    projector = k * (e * dt + dt * dt)
    return {'teacher': 2 * batch * self.teacher_macs,
            'encoder': 6 * batch * encoder, 'decoder': 6 * batch * decoder,
            'projector': 6 * batch * projector}

  def __call__(self, arch: Arch, batch: int) -> int:
    return sum(self.parts(arch, batch).values())


def mae_step(teacher: MAEConfig, mask_ratio: float, batch: int) -> int:
  """Model FLOPs of one MAE pre-training step of `teacher` at `mask_ratio`
  (`stages.teacher`): forward + backward (3x the forward) of its encoder on
  the visible patches and its decoder over all patches."""
  n = teacher.num_patches
  patch_dim = teacher.patch_size**2 * teacher.in_chans
  e, d = teacher.embed_dim, teacher.decoder_embed_dim
  k = num_visible(n, mask_ratio)
  encoder = vit_macs(e, teacher.depth, k, patch_dim, teacher.mlp_ratio)
  decoder = (k + 1) * e * d + _decoder_macs(
      d, teacher.decoder_depth, teacher.mlp_ratio, n, patch_dim)
  return 6 * batch * (encoder + decoder)


def finetune_step(space, arch: Arch, batch: int) -> int:
  """Model FLOPs of one fine-tuning step of `arch`'s classifier: forward +
  backward of every patch through the encoder and the head."""
  return 6 * batch * space.count_macs(arch)


def scoring_call(space, archs, batch: int, visible: int, strategy: str,
                 width: int | None = None) -> int:
  """Model FLOPs of one population-scoring call (`fitness.population_fn`):
  each of `archs` encodes `batch` images' `visible` patches and forms its
  relation maps (K x K products of its tokens). 'vmap' runs every candidate
  at the max depth, heads and MLP ratio of the space, at embed `width`
  (None: the max; masks cost what they hide); 'map' runs each at its own
  widths."""
  k = visible
  widest = space.max_arch()
  total = 0
  for arch in archs:
    run = arch if strategy == 'map' else Arch(
        width or widest.embed_dim, widest.depth, widest.num_heads,
        widest.mlp_ratios)
    total += encoder_macs(
        run.embed_dim, [h * HEAD_DIM for h in run.num_heads], run.mlp_dims,
        k + 1, k, space.patch_dim) + k * k * run.embed_dim
  return 2 * batch * total
