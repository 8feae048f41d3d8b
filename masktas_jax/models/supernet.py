"""Weight-sharing ViT supernet driven by runtime Arch arrays.

The supernet holds max-size weights (stacked over layers, so the encoder is a
`lax.scan`). A subnet uses the first `embed_dim` channels everywhere, the
first `num_heads[i]` heads and first `mlp_dims[i]` MLP channels of layer i,
and the first `depth` layers: exactly the weights `extract(arch)` slices out.

Two execution paths take the same `SearchSpace.encode(arch)` arrays, compile
once for every Arch, and return the same tokens as the extracted dense ViT
(padded channels exactly zero):

* `'switch'` (training): one `lax.scan` over layers whose body switches on
  the embed-dim choice (or a skip branch for layers past `depth`), and
  within it on the attention's head count and the MLP ratio (apart when
  compiled for an accelerator, as a pair for a CPU).
  Each branch runs on static slices, so a step costs the subnet's FLOPs,
  not the supernet's; tokens travel between layers at the max width, zero
  past the Arch's.
* `'mask'`: everything at max width with channel, head, MLP and layer masks;
  LayerNorm statistics use only active channels. Branch-free, so it `vmap`s
  over a stack of Archs (population scoring) at max-width cost.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from masktas_jax.masking import gather_tokens, patchify
from masktas_jax.models import switch, vit
from masktas_jax.space import Arch, HEAD_DIM, mlp_width, SearchSpace

Mode = Literal['switch', 'mask']
ArchArrays = dict[str, jax.Array]

_LAYER_KEYS = ('ln1_scale', 'ln1_bias', 'wq', 'bq', 'wk', 'bk', 'wv', 'bv',
               'wo', 'bo', 'ln2_scale', 'ln2_bias', 'w1', 'b1', 'w2', 'b2')
_ATTN_KEYS = _LAYER_KEYS[:10]
_MLP_KEYS = _LAYER_KEYS[10:]


def _ln(x, scale, bias):
  mean = x.mean(-1, keepdims=True)
  xc = x - mean
  var = (xc * xc).mean(-1, keepdims=True)
  return xc * jax.lax.rsqrt(var + vit.LN_EPS) * scale + bias


def _masked_ln(x, scale, bias, mask, count):
  """LayerNorm over the channels where `mask` is 1; zero elsewhere.

  `x` is zero on inactive channels (the supernet's invariant), so its plain
  sum is the sum over active channels.
  """
  mean = x.sum(-1, keepdims=True) / count
  xc = (x - mean) * mask
  var = (xc * xc).sum(-1, keepdims=True) / count
  return xc * jax.lax.rsqrt(var + vit.LN_EPS) * scale + bias * mask


def _attention(h, p, heads: int, e: int, head_mask=None):
  """h (B, N, E_h) normed tokens -> attention output (B, N, e).

  Tokens are flattened to rows so every projection and its weight gradient is
  a plain 2-D GEMM (XLA:CPU runs contractions over two axes ~2x slower).
  """
  b, n, e_in = h.shape
  rows = h.reshape(b * n, e_in)
  q, k, v = (vit.rows_linear(rows, p[w][:e_in, :heads], p[bias][:heads]
                             ).reshape(b, n, heads, HEAD_DIM)
             for w, bias in (('wq', 'bq'), ('wk', 'bk'), ('wv', 'bv')))
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) * HEAD_DIM**-0.5
  o = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, -1), v)
  if head_mask is not None:
    o = o * head_mask[:heads, None]
  o = o.reshape(b * n, heads * HEAD_DIM)
  return vit.rows_linear(o, p['wo'][:heads, :, :e], p['bo'][:e]).reshape(
      b, n, e)


def _mlp(h, p, mlp: int, e: int, mlp_mask=None):
  """h (B, N, E_h) normed tokens -> MLP output (B, N, e); 2-D GEMMs."""
  b, n, e_in = h.shape
  a = vit.gelu(vit.rows_linear(h.reshape(b * n, e_in), p['w1'][:e_in, :mlp],
                               p['b1'][:mlp]))
  if mlp_mask is not None:
    a = a * mlp_mask[:mlp]
  return vit.rows_linear(a, p['w2'][:mlp, :e], p['b2'][:e]).reshape(b, n, e)


def _attention_branch(x, p, *, heads: int):
  """Pre-norm attention residual at static widths: x (B, N, E) -> same."""
  e = x.shape[-1]
  return _attention(_ln(x, p['ln1_scale'][:e], p['ln1_bias'][:e]), p, heads, e)


def _mlp_branch(x, p, *, mlp: int):
  """Pre-norm MLP residual at static widths: x (B, N, E) -> same."""
  e = x.shape[-1]
  return _mlp(_ln(x, p['ln2_scale'][:e], p['ln2_bias'][:e]), p, mlp, e)


def _pair_branch(x, p, *, attention, mlp):
  """A whole block from an `_attention_branch` and an `_mlp_branch`."""
  x = x + attention(x, p)
  return x + mlp(x, p)


def _masked_block(x, p, head_mask, mlp_mask, active, embed_mask, count):
  """One block under masks: x (B, N, E) zero-padded, E the max width or a
  narrower static one (the first E channels of every weight)."""
  e, heads, mlp = x.shape[-1], head_mask.shape[-1], mlp_mask.shape[-1]
  h = _masked_ln(x, p['ln1_scale'][:e], p['ln1_bias'][:e], embed_mask, count)
  y = _attention(h, p, heads, e, head_mask)
  x = x + jnp.where(active > 0, y, 0) * embed_mask
  h = _masked_ln(x, p['ln2_scale'][:e], p['ln2_bias'][:e], embed_mask, count)
  y = _mlp(h, p, mlp, e, mlp_mask)
  # where, not a product: a skipped layer's inf/NaN must not leak through.
  return x + jnp.where(active > 0, y, 0) * embed_mask


class Supernet(nnx.Module):
  """Max-size ViT classifier of `space`, with an encoder usable alone.

  Weights (L = max depth, E = max embed, H = max heads, M = max MLP width,
  P = p*p*C, N = patches):
    patch_kernel (P, E), patch_bias (E,), cls_token (E,), pos_embed (N+1, E),
    per layer stacked on a leading L axis: ln1/ln2 scale & bias (L, E),
    wq/wk/wv (L, E, H, 64), bq/bk/bv (L, H, 64), wo (L, H, 64, E), bo (L, E),
    w1 (L, E, M), b1 (L, M), w2 (L, M, E), b2 (L, E);
    norm_scale/norm_bias (E,), head_kernel (E, C), head_bias (C,).
  """

  def __init__(self, space: SearchSpace, *, rngs: nnx.Rngs,
               remat: bool = True, split_switch: bool | None = None):
    """`split_switch`: the 'switch' path switches on heads and MLP ratio
    apart (True) or on their pair (False); None: apart unless compiled for
    a CPU. The same values either way.

    `remat` picks how the 'switch' path differentiates a layer.

    True: each layer branch is rematerialised, so its residuals are its
    inputs (the same shapes in every branch) and the backward pass recomputes
    the forward; on XLA:CPU this is faster than reading stored activations.
    False: `switch.switch` keeps the taken branch's residuals in one shared
    buffer; no recomputation, for accelerators where FLOPs are the limit.
    """
    self.space = space
    self.remat = remat
    self.split_switch = split_switch
    e, l, h, m = space.max_embed, space.max_depth, space.max_heads, space.max_mlp
    init = functools.partial(nnx.initializers.xavier_uniform, batch_axis=0)
    key = rngs.params
    self.patch_kernel = nnx.Param(vit._dense_init(key(), (space.patch_dim, e)))
    self.patch_bias = nnx.Param(jnp.zeros((e,)))
    self.cls_token = nnx.Param(vit._token_init(key(), (e,)))
    self.pos_embed = nnx.Param(
        vit._token_init(key(), (space.num_patches + 1, e)))
    layers = {
        'ln1_scale': jnp.ones((l, e)), 'ln1_bias': jnp.zeros((l, e)),
        'ln2_scale': jnp.ones((l, e)), 'ln2_bias': jnp.zeros((l, e)),
        'bo': jnp.zeros((l, e)), 'b1': jnp.zeros((l, m)),
        'b2': jnp.zeros((l, e)),
        'w1': init(in_axis=1, out_axis=2)(key(), (l, e, m)),
        'w2': init(in_axis=1, out_axis=2)(key(), (l, m, e)),
        'wo': init(in_axis=(1, 2), out_axis=3)(key(), (l, h, HEAD_DIM, e)),
    }
    for w, b in (('wq', 'bq'), ('wk', 'bk'), ('wv', 'bv')):
      layers[w] = init(in_axis=1, out_axis=(2, 3))(key(), (l, e, h, HEAD_DIM))
      layers[b] = jnp.zeros((l, h, HEAD_DIM))
    self.layers = nnx.Dict({k: nnx.Param(layers[k]) for k in _LAYER_KEYS})
    self.norm_scale = nnx.Param(jnp.ones((e,)))
    self.norm_bias = nnx.Param(jnp.zeros((e,)))
    c = space.num_classes
    # No head at all without classes (the student): Orbax cannot save the
    # zero-size arrays an empty head would be.
    self.head_kernel = nnx.Param(vit._dense_init(key(), (e, c))) if c else None
    self.head_bias = nnx.Param(jnp.zeros((c,))) if c else None

  # -- forward --------------------------------------------------------------

  def _params(self) -> dict[str, jax.Array]:
    """All weights as a plain dict of arrays (per-layer ones under 'layers')."""
    names = ('patch_kernel', 'patch_bias', 'cls_token', 'pos_embed',
             'norm_scale', 'norm_bias')
    p = {k: getattr(self, k)[...] for k in names}
    p['layers'] = {k: self.layers[k][...] for k in _LAYER_KEYS}
    return p

  def _embed(self, p, images, ids_keep, e: int):
    """Tokens (B, 1 + K, e) from the first e channels of the embeddings."""
    patches = patchify(images, self.space.patch_size)
    if ids_keep is not None:
      patches = gather_tokens(patches, ids_keep)
    pos = p['pos_embed'][:, :e]
    x = patches @ p['patch_kernel'][:, :e] + p['patch_bias'][:e]
    x = x + (pos[1:][None] if ids_keep is None else pos[1:][ids_keep])
    cls = jnp.broadcast_to(p['cls_token'][:e] + pos[0], (x.shape[0], 1, e))
    return jnp.concatenate([cls, x], axis=1)

  def _encode_switch(self, images, arch: ArchArrays, ids_keep):
    space, e_max = self.space, self.space.max_embed
    heads, ratios = space.num_heads, space.mlp_ratios
    # `switch.switch` keeps one shared residual buffer (remat=False); under
    # remat only the layer's input is kept, so a plain switch is enough.
    choose = jax.lax.switch if self.remat else switch.switch
    # Under remat each branch is rematerialised too: differentiating a
    # switch otherwise gives every branch its own residual outputs, all
    # written in the backward pass; these branches' residuals are their
    # operands, the same in every branch.
    remat = jax.checkpoint if self.remat else (lambda f: f)

    def block_at_width(e: int):
      attn_fns = [functools.partial(_attention_branch, heads=h) for h in heads]
      mlp_fns = [functools.partial(_mlp_branch, mlp=mlp_width(e, r))
                 for r in ratios]
      split_attn = [remat(f) for f in attn_fns]
      split_mlp = [remat(f) for f in mlp_fns]
      # In `layer_choices` order, as `layer_branch` numbers them.
      pair_fns = [remat(functools.partial(_pair_branch, attention=a, mlp=m))
                  for a in attn_fns for m in mlp_fns]

      def split(h, p, branch):
        # Each half gets only its own weights: a switch's backward returns
        # a cotangent for every operand, in every branch.
        h = h + choose(branch // len(ratios), split_attn, h,
                       {k: p[k] for k in _ATTN_KEYS})
        return h + choose(branch % len(ratios), split_mlp, h,
                          {k: p[k] for k in _MLP_KEYS})

      def paired(h, p, branch):
        return choose(branch, pair_fns, h, p)

      def block(x, p, branch):
        # Tokens travel at the max width, zero past e; the block runs on
        # static slices, so it costs the subnet's FLOPs. Compiled for an
        # accelerator, attention and MLP are switched apart: len(heads) +
        # len(ratios) bodies instead of their product, for the code
        # generation that is most of XLA:TPU's compile time. XLA:CPU pays
        # per conditional run (~7% on the demo's small encoder), so there
        # one switch over the pairs.
        if self.split_switch is None:
          h = jax.lax.platform_dependent(x[..., :e], p, branch, cpu=paired,
                                         default=split)
        else:
          h = (split if self.split_switch else paired)(x[..., :e], p, branch)
        return jnp.pad(h, ((0, 0), (0, 0), (0, e_max - e)))

      return remat(block)

    # The embed width is switched per layer, inside one scan, not around
    # the whole encoder: one scan, embedding and final norm in the program
    # instead of one per width (most of the step's compile time).
    block_fns = [block_at_width(e) for e in space.embed_dims]
    block_fns.append(lambda x, p, branch: x)  # skip: layers past the depth
    skip_index = len(space.embed_dims)
    embed_index = arch['embed_index']

    # Weights are operands, not closed over, so any switch implementation
    # (custom VJPs included) sees everything it must differentiate.
    def layer(x, inputs):
      p, branch = inputs
      index = jnp.where(branch >= len(space.layer_choices), skip_index,
                        embed_index)
      return choose(index, block_fns, x, p, branch), None

    p = self._params()
    x = self._embed(p, images, ids_keep, e_max)
    # In the compute dtype: a float32 mask would promote every layer.
    embed_mask = arch['embed_mask'].astype(x.dtype)
    count = arch['embed_mask'].sum().astype(x.dtype)
    x = x * embed_mask
    x, _ = jax.lax.scan(layer, x, (p['layers'], arch['layer_branch']))
    return _masked_ln(x, p['norm_scale'], p['norm_bias'], embed_mask, count)

  def _encode_mask(self, images, arch: ArchArrays, ids_keep,
                   width: int | None = None):
    space = self.space
    e = width or space.max_embed
    # The widest MLP of an Arch of embed dim <= e.
    m = mlp_width(e, max(space.mlp_ratios)) if width else space.max_mlp
    embed_mask = arch['embed_mask'][:e]
    count = embed_mask.sum()
    p = self._params()
    x = self._embed(p, images, ids_keep, e) * embed_mask

    def layer(x, inputs):
      p, head_mask, mlp_mask, active = inputs
      return _masked_block(x, p, head_mask, mlp_mask, active, embed_mask,
                           count), None

    x, _ = jax.lax.scan(layer, x, (p['layers'], arch['head_mask'],
                                   arch['mlp_mask'][:, :m],
                                   arch['layer_mask']))
    x = _masked_ln(x, p['norm_scale'][:e], p['norm_bias'][:e], embed_mask,
                   count)
    return jnp.pad(x, ((0, 0), (0, 0), (0, space.max_embed - e)))

  def encode(self, images: jax.Array, arch: ArchArrays,
             ids_keep: jax.Array | None = None,
             mode: Mode = 'switch', width: int | None = None) -> jax.Array:
    """Final-normed tokens of the subnet `arch` (from `space.encode`).

    Args:
      images: (B, H, W, C) normalised images.
      arch: `SearchSpace.encode(arch)` arrays (unbatched).
      ids_keep: optional (B, K) indices of visible patches (MAE masking).
      mode: 'switch' (subnet FLOPs) or 'mask' (max width, vmap-friendly).
      width: 'mask' only: run at this static embed width instead of the
        max (for Archs of embed dim <= width: candidates bucketed by width
        cost their own width's FLOPs, not the widest's).

    Returns:
      (B, 1 + K, max_embed) tokens, CLS first; channels past the Arch's
      embed_dim are exactly zero.
    """
    if mode == 'switch':
      return self._encode_switch(images, arch, ids_keep)
    if mode == 'mask':
      return self._encode_mask(images, arch, ids_keep, width)
    raise ValueError(f"mode: expected 'switch' or 'mask', got {mode!r}")

  def __call__(self, images: jax.Array, arch: ArchArrays,
               mode: Mode = 'switch') -> jax.Array:
    """(B, H, W, C) -> logits (B, num_classes) from the CLS token."""
    if self.head_kernel is None:
      raise ValueError('this supernet has no classification head '
                       '(num_classes=0)')
    cls = self.encode(images, arch, mode=mode)[:, 0]
    return cls @ self.head_kernel[...] + self.head_bias[...]

  # -- extraction -----------------------------------------------------------

  def extract(self, arch: Arch) -> vit.VisionTransformer:
    """A dense `VisionTransformer` for `arch` holding the inherited weights."""
    space = self.space
    space.validate(arch)
    e = arch.embed_dim
    model = nnx.eval_shape(lambda: vit.VisionTransformer(
        embed_dim=e, num_heads=arch.num_heads, mlp_dims=arch.mlp_dims,
        image_size=space.image_size, patch_size=space.patch_size,
        num_classes=space.num_classes, in_chans=space.in_chans,
        rngs=nnx.Rngs(0)))
    model.patch_embed.proj.kernel.set_value(self.patch_kernel[...][:, :e])
    model.patch_embed.proj.bias.set_value(self.patch_bias[...][:e])
    model.cls_token.set_value(self.cls_token[...][:e])
    model.pos_embed.set_value(self.pos_embed[...][:, :e])
    p = self._params()['layers']
    for i, (block, heads, mlp) in enumerate(
        zip(model.blocks, arch.num_heads, arch.mlp_dims)):
      block.norm1.scale.set_value(p['ln1_scale'][i, :e])
      block.norm1.bias.set_value(p['ln1_bias'][i, :e])
      for name, w, b in (('query', 'wq', 'bq'), ('key', 'wk', 'bk'),
                         ('value', 'wv', 'bv')):
        lin = getattr(block.attn, name)
        lin.kernel.set_value(p[w][i, :e, :heads])
        lin.bias.set_value(p[b][i, :heads])
      block.attn.out.kernel.set_value(p['wo'][i, :heads, :, :e])
      block.attn.out.bias.set_value(p['bo'][i, :e])
      block.norm2.scale.set_value(p['ln2_scale'][i, :e])
      block.norm2.bias.set_value(p['ln2_bias'][i, :e])
      block.mlp.fc1.kernel.set_value(p['w1'][i, :e, :mlp])
      block.mlp.fc1.bias.set_value(p['b1'][i, :mlp])
      block.mlp.fc2.kernel.set_value(p['w2'][i, :mlp, :e])
      block.mlp.fc2.bias.set_value(p['b2'][i, :e])
    model.norm.scale.set_value(self.norm_scale[...][:e])
    model.norm.bias.set_value(self.norm_bias[...][:e])
    if self.head_kernel is not None:
      model.head.kernel.set_value(self.head_kernel[...][:e])
      model.head.bias.set_value(self.head_bias[...])
    return model
