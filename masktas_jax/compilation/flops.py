"""Analytic model FLOPs: what a step must compute, counted from the shapes.

Matrix products only (2 FLOPs per multiply-accumulate), with the formula
of `SearchSpace.count_macs` (`space.encoder_macs`): no elementwise work, no
remat recomputation, no padding. XLA's own counts are no substitute: its
cost analysis counts one iteration of the encoder's layer `scan` and one
`switch` branch.
"""

from __future__ import annotations

from masktas_jax import config_lib
from masktas_jax.masking import num_visible
from masktas_jax.space import Arch, encoder_macs, HEAD_DIM


def vit_macs(embed: int, depth: int, visible: int, patch_dim: int) -> int:
  """Multiply-accumulates of a plain ViT encoder (heads spanning its
  width, 4x MLP: the MAE teacher's) over `visible` patches and CLS, one
  image."""
  return encoder_macs(embed, [embed] * depth, [4 * embed] * depth,
                      visible + 1, visible, patch_dim)


class SupernetStep:
  """Model FLOPs of one supernet training step (`stages.supernet`), for any
  Arch of the config's space: the teacher's forward on the visible tokens,
  and forward + backward (3x the forward) of the student at the subnet's
  own widths: encoder, pixel decoder, projector."""

  def __init__(self, config):
    t, s = config.teacher, config.supernet
    space = config_lib.space_from_config(config)
    n, k = space.num_patches, num_visible(space.num_patches, s.mask_ratio)
    self.space, self.visible, self.teacher_dim = space, k, t.embed_dim
    self.teacher_macs = vit_macs(t.embed_dim, t.depth, k, space.patch_dim)
    d = s.decoder_embed_dim
    # Decoder blocks over all N patches + CLS, then the pixel head (MAE's
    # decoder predicts CLS too and drops it); its input projection depends
    # on the subnet's width and is added per Arch.
    self.decoder_macs = encoder_macs(d, [d] * s.decoder_depth,
                                     [4 * d] * s.decoder_depth, n + 1, 0,
                                     0) + (n + 1) * d * space.patch_dim
    self.decoder_dim = d

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


def mae_step(config, batch: int) -> int:
  """Model FLOPs of one MAE pre-training step of the teacher (`teacher`):
  forward + backward (3x the forward) of its encoder on the visible patches
  and its decoder over all patches."""
  t = config.teacher
  space = config_lib.space_from_config(config)
  n, e, d = space.num_patches, t.embed_dim, t.decoder_embed_dim
  k = num_visible(n, t.mask_ratio)
  encoder = vit_macs(e, t.depth, k, space.patch_dim)
  decoder = (k + 1) * e * d + encoder_macs(
      d, [d] * t.decoder_depth, [4 * d] * t.decoder_depth, n + 1, 0, 0) + (
          (n + 1) * d * space.patch_dim)
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
