"""Dense ViT pieces: patch embedding, pre-norm blocks, encoder, classifier.

Conventions shared with the MAE checkpoints and AutoFormer: head dim 64 with
separate q/k/v kernels of shape (D, H, 64), LayerNorm eps 1e-6, exact (erf)
GELU, a CLS token prepended after the positional embedding is added (and,
when masking, after the visible patches are gathered).
"""

from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from masktas_jax.masking import gather_tokens, patchify
from masktas_jax.space import HEAD_DIM

LN_EPS = 1e-6
_SQRT_HALF = float(np.sqrt(0.5))

# Xavier-uniform over (inputs, outputs) as MAE does; LinearGeneral applies it
# to its kernel flattened to 2-D, so multi-axis kernels get the right fans.
_dense_init = nnx.initializers.xavier_uniform()
_token_init = nnx.initializers.truncated_normal(stddev=0.02)


class FixedEmbedding(nnx.Variable):
  """A non-trainable table (MAE's sin-cos positions, the feature statistics
  of a standardised head): not an nnx.Param, so optimisers and parameter
  counts skip it, while checkpoints keep it."""


def sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
  """MAE's fixed 2-D sin-cos table, (1 + G*G, D) float32, CLS row zeros.

  The first D/2 channels encode the column (w) coordinate, the last D/2 the
  row; each half is [sin | cos] of position * omega with
  omega_k = 1 / 10000 ** (k / (D/4)), k < D/4.
  """
  if embed_dim % 4:
    raise ValueError(f'sin-cos embedding needs embed_dim % 4 == 0, got '
                     f'{embed_dim}')
  quarter = embed_dim // 4
  omega = 1.0 / 10000**(np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64),
                           np.arange(grid_size, dtype=np.float64),
                           indexing='ij')

  def encode(pos):
    angles = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  table = np.concatenate([encode(cols), encode(rows)], axis=1)
  return np.concatenate([np.zeros((1, embed_dim)), table]).astype(np.float32)


def layer_norm(num_features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the last axis, eps 1e-6 (MAE, AutoFormer)."""
  # Two-pass variance, as PyTorch computes it, for checkpoint parity.
  return nnx.LayerNorm(num_features, epsilon=LN_EPS, use_fast_variance=False,
                       rngs=rngs)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), elementwise; Flax's default is the tanh
  approximation.

  Written with erf rather than `jax.nn.gelu`'s erfc: XLA:CPU expands erfc into
  exponentials and selects, a third of a small ViT's elementwise time, while
  erf is one polynomial. Both are within ~1e-6 of float64 everywhere; erf's
  relative error exceeds 1e-5 only for x < -2.4, where |GELU(x)| < 0.02.
  """
  return 0.5 * x * (1 + jax.lax.erf(x * _SQRT_HALF))


def rows_linear(rows: jax.Array, kernel: jax.Array,
                bias: jax.Array) -> jax.Array:
  """rows (R, I) @ kernel (I, *out) + bias (*out) as one 2-D GEMM and a
  row-wise bias add: -> (R, prod(out)).

  The bias is added to the 2-D product because, added per (head, channel),
  its gradient is a reduction over a 4-D array, which XLA:CPU runs as a
  windowed reduction 5-10x slower than the row sum.
  """
  return rows @ kernel.reshape(rows.shape[-1], -1) + bias.reshape(-1)


def project(lin: nnx.LinearGeneral, rows: jax.Array) -> jax.Array:
  """`lin` applied to rows (R, D_in): -> (R, D_out), D_in and D_out the
  products of its input and output axes (`rows_linear`)."""
  return rows_linear(rows, lin.kernel[...], lin.bias[...])


class PatchEmbed(nnx.Module):
  """Linear map of flattened patches (B, N, p*p*C) -> (B, N, D).

  Equal to a stride-p conv whose HWIO kernel is reshaped to (p*p*C, D).
  """

  def __init__(self, patch_dim: int, embed_dim: int, *, rngs: nnx.Rngs):
    self.proj = nnx.Linear(patch_dim, embed_dim, kernel_init=_dense_init,
                           rngs=rngs)

  def __call__(self, patches: jax.Array) -> jax.Array:
    return self.proj(patches)


class Attention(nnx.Module):
  """Multi-head self-attention, `num_heads` heads of `head_dim` (64: ViT-B/L
  and the search spaces; MAE's decoder uses 32, ViT-H 80)."""

  def __init__(self, embed_dim: int, num_heads: int, *, rngs: nnx.Rngs,
               head_dim: int = HEAD_DIM):
    self.head_dim = head_dim
    qkv = dict(in_features=embed_dim, out_features=(num_heads, head_dim),
               kernel_init=_dense_init, rngs=rngs)
    self.query = nnx.LinearGeneral(**qkv)
    self.key = nnx.LinearGeneral(**qkv)
    self.value = nnx.LinearGeneral(**qkv)
    self.out = nnx.LinearGeneral((num_heads, head_dim), embed_dim,
                                 axis=(-2, -1), kernel_init=_dense_init,
                                 rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, N, D) -> (B, N, D)."""
    b, n, _ = x.shape
    # Projections on (B*N, D) rows: plain GEMMs, whose weight gradients
    # XLA:CPU computes ~2x faster than contractions over (B, N).
    rows = x.reshape(b * n, -1)
    q, k, v = (project(f, rows).reshape(b, n, -1, self.head_dim)
               for f in (self.query, self.key, self.value))  # (B, N, H, hd)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) * self.head_dim**-0.5
    weights = jax.nn.softmax(scores, axis=-1)
    o = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    return project(self.out, o.reshape(b * n, -1)).reshape(b, n, -1)


class Mlp(nnx.Module):
  """Two-layer MLP with exact GELU: (..., D) -> (..., hidden) -> (..., D)."""

  def __init__(self, embed_dim: int, hidden_dim: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(embed_dim, hidden_dim, kernel_init=_dense_init,
                          rngs=rngs)
    self.fc2 = nnx.Linear(hidden_dim, embed_dim, kernel_init=_dense_init,
                          rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, N, D) -> (B, N, D)."""
    rows = x.reshape(-1, x.shape[-1])  # 2-D GEMMs, as in Attention
    return self.fc2(gelu(self.fc1(rows))).reshape(*x.shape[:-1], -1)


def drop_path(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Stochastic depth on a residual branch (B, ...): each example's branch is
  dropped with probability `rate` and the kept ones scaled by 1 / (1 - rate).
  Identity without `rng` (evaluation) or at rate 0."""
  if rng is None or rate == 0:
    return x
  keep = jax.random.bernoulli(rng, 1 - rate, (x.shape[0],) + (1,) *
                              (x.ndim - 1))
  return jnp.where(keep, x / (1 - rate), 0).astype(x.dtype)


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x)), each
  branch under drop path at `drop_rate` when called with an `rng`."""

  def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int, *,
               rngs: nnx.Rngs, head_dim: int = HEAD_DIM,
               drop_rate: float = 0.0):
    self.norm1 = layer_norm(embed_dim, rngs)
    self.attn = Attention(embed_dim, num_heads, rngs=rngs, head_dim=head_dim)
    self.norm2 = layer_norm(embed_dim, rngs)
    self.mlp = Mlp(embed_dim, mlp_dim, rngs=rngs)
    self.drop_rate = drop_rate

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """(B, N, D) -> (B, N, D); `rng` turns drop path on (training)."""
    keys = (None, None) if rng is None else jax.random.split(rng)
    x = x + drop_path(self.attn(self.norm1(x)), self.drop_rate, keys[0])
    return x + drop_path(self.mlp(self.norm2(x)), self.drop_rate, keys[1])


def _call_block(block: Block, x: jax.Array,
                key: jax.Array | None) -> jax.Array:
  return block(x, key)


def run_blocks(blocks: Sequence[Block], x: jax.Array,
               keys: Sequence[jax.Array | None], remat: bool) -> jax.Array:
  """`blocks` in turn on x (B, N, D), one drop-path key (or None) each.

  With `remat` only each block's input is kept for the backward pass,
  which recomputes the block's activations (the MLP's hidden (B, N, 4D)
  ones dominate) one block at a time: a fraction of their memory for one
  more forward of the blocks.
  """
  call = nnx.remat(_call_block) if remat else _call_block
  for block, key in zip(blocks, keys):
    x = call(block, x, key)
  return x


# What the classification head reads: the CLS token (DeiT, the paper), or
# the mean of the final-normed patch tokens (AutoFormer's --gp).
POOLS = ('cls', 'mean')


class VisionTransformer(nnx.Module):
  """Dense ViT encoder with an optional classification head on the CLS token
  or the mean patch token (`pool`).

  Per-layer `num_heads` and `mlp_dims` let it hold any subnet of the search
  space. The positional embedding is an (N + 1, D) table, row 0 for CLS:
  learned (`pos_embed='learned'`, AutoFormer's subnets) or MAE's fixed 2-D
  sin-cos (`'sincos'`, a FixedEmbedding that training leaves alone).
  """

  def __init__(self, *, embed_dim: int, num_heads: Sequence[int],
               mlp_dims: Sequence[int], image_size: int, patch_size: int,
               num_classes: int = 0, in_chans: int = 3, rngs: nnx.Rngs,
               head_dim: int = HEAD_DIM,
               pos_embed: Literal['learned', 'sincos'] = 'learned',
               drop_path_rate: float = 0.0,
               pool: Literal['cls', 'mean'] = 'cls',
               standardize: bool = False):
    """`standardize`: the head reads (pooled - feature_mean) *
    feature_scale, two fixed (D,) vectors (identity until set), the
    non-affine normalisation a linear probe is fitted behind (LP-FT)."""
    if len(num_heads) != len(mlp_dims):
      raise ValueError('num_heads and mlp_dims need one value per layer, got '
                       f'{len(num_heads)} and {len(mlp_dims)}')
    if pool not in POOLS:
      raise ValueError(f'pool: expected one of {POOLS}, got {pool!r}')
    self.patch_size = patch_size
    self.embed_dim = embed_dim
    self.pool = pool
    num_patches = (image_size // patch_size)**2
    self.patch_embed = PatchEmbed(patch_size * patch_size * in_chans,
                                  embed_dim, rngs=rngs)
    self.cls_token = nnx.Param(_token_init(rngs.params(), (embed_dim,)))
    if pos_embed == 'learned':
      self.pos_embed = nnx.Param(
          _token_init(rngs.params(), (num_patches + 1, embed_dim)))
    elif pos_embed == 'sincos':
      self.pos_embed = FixedEmbedding(jnp.asarray(sincos_pos_embed(
          embed_dim, image_size // patch_size)))
    else:
      raise ValueError(f"pos_embed: expected 'learned' or 'sincos', got "
                       f'{pos_embed!r}')
    # Stochastic depth rising linearly to `drop_path_rate` at the last block.
    rates = np.linspace(0, drop_path_rate, len(num_heads)) if len(
        num_heads) > 1 else [drop_path_rate] * len(num_heads)
    self.blocks = nnx.List([
        Block(embed_dim, h, m, rngs=rngs, head_dim=head_dim,
              drop_rate=float(r))
        for h, m, r in zip(num_heads, mlp_dims, rates)
    ])
    self.norm = layer_norm(embed_dim, rngs)
    self.head = (nnx.Linear(embed_dim, num_classes, kernel_init=_dense_init,
                            rngs=rngs) if num_classes else None)
    if standardize:
      self.feature_mean = FixedEmbedding(jnp.zeros((embed_dim,)))
      self.feature_scale = FixedEmbedding(jnp.ones((embed_dim,)))
    self.standardize = standardize

  @property
  def depth(self) -> int:
    return len(self.blocks)

  def embed(self, images: jax.Array,
            ids_keep: jax.Array | None = None) -> jax.Array:
    """(B, H, W, C) images -> (B, 1 + K, D) tokens, CLS first.

    With `ids_keep` (B, K) only those patches are embedded (MAE masking);
    without it all N patches are, in raster order.
    """
    patches = patchify(images, self.patch_size)
    pos = self.pos_embed[...]
    tokens = self.patch_embed(patches if ids_keep is None else
                              gather_tokens(patches, ids_keep))
    patch_pos = pos[1:][None] if ids_keep is None else pos[1:][ids_keep]
    tokens = tokens + patch_pos
    cls = jnp.broadcast_to(self.cls_token[...] + pos[0],
                           (tokens.shape[0], 1, self.embed_dim))
    return jnp.concatenate([cls.astype(tokens.dtype), tokens], axis=1)

  def encode(self, images: jax.Array, ids_keep: jax.Array | None = None,
             rng: jax.Array | None = None, remat: bool = False) -> jax.Array:
    """(B, H, W, C) -> final-normed tokens (B, 1 + K, D), CLS first.

    `rng` turns drop path on (training); without it the pass is
    deterministic. `remat` recomputes each block's activations in the
    backward pass instead of keeping them (`run_blocks`).
    """
    x = self.embed(images, ids_keep)
    keys = ([None] * self.depth if rng is None else
            jax.random.split(rng, self.depth))
    return self.norm(run_blocks(self.blocks, x, keys, remat))

  def __call__(self, images: jax.Array,
               rng: jax.Array | None = None) -> jax.Array:
    """(B, H, W, C) -> logits (B, num_classes) from the CLS token
    (`pool='cls'`) or the mean of the final-normed patch tokens ('mean')."""
    if self.head is None:
      raise ValueError('this VisionTransformer has no classification head '
                       '(num_classes=0)')
    features = self.features(images, rng)
    if self.standardize:
      features = ((features - self.feature_mean[...]) *
                  self.feature_scale[...])
    return self.head(features)

  def features(self, images: jax.Array,
               rng: jax.Array | None = None) -> jax.Array:
    """(B, H, W, C) -> (B, D): what the head reads, the CLS token or the
    mean final-normed patch token (`pool`), before any standardisation."""
    tokens = self.encode(images, rng=rng)
    return tokens[:, 0] if self.pool == 'cls' else tokens[:, 1:].mean(axis=1)


def count_params(module: nnx.Module) -> int:
  """Number of trainable parameters (nnx.Param leaves) in `module`."""
  state = nnx.state(module, nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(state))
