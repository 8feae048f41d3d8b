"""Search space, architectures and their closed-form costs.

An `Arch` is one subnet of the AutoFormer-style space: one embedding width for
all layers, a depth (a prefix of the supernet's layers), and per-layer head
counts and MLP ratios. The head dimension is fixed at 64, so `num_heads[i]`
sets the q/k/v width of layer i; the MLP width is `int(embed_dim * ratio)` as
in AutoFormer.

`SearchSpace.encode(arch)` turns an Arch into a small pytree of arrays (masks
and branch indices) with shapes that depend only on the space, so one compiled
supernet function serves every Arch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from masktas_jax.errors import MaskTASError

HEAD_DIM = 64


class ArchError(MaskTASError, ValueError):
  """An Arch that is malformed or does not fit its search space."""


def mlp_width(embed_dim: int, ratio: float) -> int:
  """MLP hidden width for a layer, `int(E * ratio)` as AutoFormer slices it."""
  return int(embed_dim * ratio)


@dataclasses.dataclass(frozen=True)
class Arch:
  """One subnet: `embed_dim`, `depth`, and per-layer `num_heads`, `mlp_ratios`.

  `num_heads` and `mlp_ratios` hold exactly `depth` values (layer 0 first).
  """

  embed_dim: int
  depth: int
  num_heads: tuple[int, ...]
  mlp_ratios: tuple[float, ...]

  def __post_init__(self):
    for name in ('embed_dim', 'depth'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArchError(f'Arch.{name}: expected an integer, got {value!r}')
      if value <= 0:
        raise ArchError(f'Arch.{name}: must be positive, got {value}')
      object.__setattr__(self, name, int(value))
    for name, cast in (('num_heads', int), ('mlp_ratios', float)):
      values = getattr(self, name)
      if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ArchError(
            f'Arch.{name}: expected one value per layer, got {values!r}')
      if len(values) != self.depth:
        raise ArchError(
            f'Arch.{name}: expected {self.depth} values (one per layer, '
            f'depth={self.depth}), got {len(values)}')
      for i, v in enumerate(values):
        _check_number(f'Arch.{name}[{i}]', v, integer=cast is int)
      object.__setattr__(self, name, tuple(cast(v) for v in values))

  @property
  def mlp_dims(self) -> tuple[int, ...]:
    """Per-layer MLP hidden widths."""
    return tuple(mlp_width(self.embed_dim, r) for r in self.mlp_ratios)

  def to_dict(self) -> dict[str, Any]:
    return {
        'embed_dim': self.embed_dim,
        'depth': self.depth,
        'num_heads': list(self.num_heads),
        'mlp_ratios': list(self.mlp_ratios),
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'Arch':
    expected = {'embed_dim', 'depth', 'num_heads', 'mlp_ratios'}
    if not isinstance(d, Mapping):
      raise ArchError(f'Arch: expected a mapping, got {type(d).__name__}')
    missing, extra = expected - set(d), set(d) - expected
    if missing:
      raise ArchError(f'Arch: missing field(s) {sorted(missing)}')
    if extra:
      raise ArchError(f'Arch: unknown field(s) {sorted(extra)}')
    return cls(d['embed_dim'], d['depth'], d['num_heads'], d['mlp_ratios'])

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_json(cls, text: str) -> 'Arch':
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise ArchError(f'Arch: not valid JSON ({e})') from e
    return cls.from_dict(d)


def _check_number(field: str, v: Any, integer: bool) -> None:
  """Raises ArchError unless `v` is a positive finite number (an integer if
  `integer`); never truncates."""
  if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
    raise ArchError(f'{field}: expected a number, got {v!r}')
  if not math.isfinite(v):
    raise ArchError(f'{field}: must be finite, got {v}')
  if integer and int(v) != v:
    raise ArchError(f'{field}: expected an integer, got {v!r}')
  if v <= 0:
    raise ArchError(f'{field}: must be positive, got {v}')


def _choices(name: str, values: Sequence[Any], cast) -> tuple[Any, ...]:
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
    raise ArchError(f'SearchSpace.{name}: expected a tuple of choices, got '
                    f'{values!r}')
  if not values:
    raise ArchError(f'SearchSpace.{name}: needs at least one choice')
  for i, v in enumerate(values):
    _check_number(f'SearchSpace.{name}[{i}]', v, integer=cast is int)
  return tuple(sorted(set(cast(v) for v in values)))


def encoder_macs(embed: int, qkv_widths: Sequence[int],
                 mlp_widths: Sequence[int], tokens: int, embedded: int,
                 patch_dim: int) -> int:
  """Multiply-accumulates of a pre-norm ViT encoder's forward, one image.

  `tokens` go through the blocks (CLS included), `embedded` patches through
  the patch embedding (0: none, e.g. a decoder); layer i has q/k/v width
  `qkv_widths[i]` and MLP width `mlp_widths[i]`.
  """
  t, e = tokens, embed
  total = embedded * patch_dim * e
  for q, m in zip(qkv_widths, mlp_widths):
    total += t * e * 3 * q  # q, k, v
    total += 2 * t * t * q  # q k^T and the attention-weighted v
    total += t * q * e  # output projection
    total += 2 * t * e * m  # MLP
  return total


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """Choices per dimension plus the image geometry and classifier size.

  The supernet is as wide and deep as the largest choice of each dimension:
  `max_embed` channels, `max_depth` layers, `max_heads` heads, `max_mlp`
  MLP channels.
  """

  embed_dims: tuple[int, ...]
  depths: tuple[int, ...]
  num_heads: tuple[int, ...]
  mlp_ratios: tuple[float, ...]
  image_size: int = 224
  patch_size: int = 16
  num_classes: int = 1000
  in_chans: int = 3

  def __post_init__(self):
    object.__setattr__(self, 'embed_dims',
                       _choices('embed_dims', self.embed_dims, int))
    object.__setattr__(self, 'depths', _choices('depths', self.depths, int))
    object.__setattr__(self, 'num_heads',
                       _choices('num_heads', self.num_heads, int))
    object.__setattr__(self, 'mlp_ratios',
                       _choices('mlp_ratios', self.mlp_ratios, float))
    for name in ('image_size', 'patch_size', 'in_chans'):
      _check_number(f'SearchSpace.{name}', getattr(self, name), integer=True)
      object.__setattr__(self, name, int(getattr(self, name)))
    if self.num_classes != 0:  # 0: no classification head.
      _check_number('SearchSpace.num_classes', self.num_classes, integer=True)
    object.__setattr__(self, 'num_classes', int(self.num_classes))
    if self.image_size % self.patch_size:
      raise ArchError(
          f'SearchSpace.image_size: {self.image_size} is not divisible by '
          f'patch_size {self.patch_size}')

  # -- geometry -------------------------------------------------------------

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def patch_dim(self) -> int:
    """Length of a flattened patch vector, `p * p * C`."""
    return self.patch_size * self.patch_size * self.in_chans

  @property
  def max_embed(self) -> int:
    return self.embed_dims[-1]

  @property
  def max_depth(self) -> int:
    return self.depths[-1]

  @property
  def max_heads(self) -> int:
    return self.num_heads[-1]

  @property
  def max_mlp(self) -> int:
    return mlp_width(self.max_embed, self.mlp_ratios[-1])

  @property
  def layer_choices(self) -> tuple[tuple[int, float], ...]:
    """(heads, mlp ratio) pairs in the order `encode` numbers layer branches."""
    return tuple((h, r) for h in self.num_heads for r in self.mlp_ratios)

  # -- archs ----------------------------------------------------------------

  def max_arch(self) -> Arch:
    d = self.max_depth
    return Arch(self.max_embed, d, (self.max_heads,) * d,
                (self.mlp_ratios[-1],) * d)

  def min_arch(self) -> Arch:
    d = self.depths[0]
    return Arch(self.embed_dims[0], d, (self.num_heads[0],) * d,
                (self.mlp_ratios[0],) * d)

  def sample(self, rng: np.random.Generator) -> Arch:
    """A uniformly random Arch: each dimension and layer drawn independently."""
    depth = int(rng.choice(self.depths))
    return Arch(
        embed_dim=int(rng.choice(self.embed_dims)),
        depth=depth,
        num_heads=tuple(int(h) for h in rng.choice(self.num_heads, depth)),
        mlp_ratios=tuple(float(r) for r in rng.choice(self.mlp_ratios, depth)),
    )

  def validate(self, arch: Arch) -> Arch:
    """Returns `arch` if it is a member of this space, else raises ArchError.

    Capacity (does it fit in the supernet's weights?) is checked before
    membership so the message says what actually cannot work.
    """
    if not isinstance(arch, Arch):
      raise ArchError(f'expected an Arch, got {type(arch).__name__}')
    if arch.embed_dim > self.max_embed:
      raise ArchError(f'Arch.embed_dim: {arch.embed_dim} exceeds the '
                      f"supernet's {self.max_embed} channels")
    if arch.depth > self.max_depth:
      raise ArchError(f"Arch.depth: {arch.depth} exceeds the supernet's "
                      f'{self.max_depth} layers')
    for i, h in enumerate(arch.num_heads):
      if h > self.max_heads:
        raise ArchError(
            f'Arch.num_heads[{i}]: {h} heads ({h * HEAD_DIM} q/k/v channels) '
            f"exceed the supernet's {self.max_heads} heads "
            f'({self.max_heads * HEAD_DIM})')
    for i, m in enumerate(arch.mlp_dims):
      if m > self.max_mlp:
        raise ArchError(
            f'Arch.mlp_ratios[{i}]: MLP width int({arch.embed_dim} * '
            f"{arch.mlp_ratios[i]}) = {m} exceeds the supernet's {self.max_mlp}")
    if arch.embed_dim not in self.embed_dims:
      raise ArchError(f'Arch.embed_dim: {arch.embed_dim} is not a choice of '
                      f'the space {self.embed_dims}')
    if arch.depth not in self.depths:
      raise ArchError(
          f'Arch.depth: {arch.depth} is not a choice of the space {self.depths}')
    for i, h in enumerate(arch.num_heads):
      if h not in self.num_heads:
        raise ArchError(f'Arch.num_heads[{i}]: {h} is not a choice of the '
                        f'space {self.num_heads}')
    for i, r in enumerate(arch.mlp_ratios):
      if r not in self.mlp_ratios:
        raise ArchError(f'Arch.mlp_ratios[{i}]: {r} is not a choice of the '
                        f'space {self.mlp_ratios}')
    return arch

  def contains(self, arch: Arch) -> bool:
    try:
      self.validate(arch)
    except ArchError:
      return False
    return True

  def num_archs(self) -> int:
    """How many distinct Archs the space holds."""
    per_layer = len(self.layer_choices)
    return len(self.embed_dims) * sum(per_layer**d for d in self.depths)

  # -- closed-form costs ----------------------------------------------------

  def count_params(self, arch: Arch) -> int:
    """Parameters of the standalone classifier subnet for `arch`.

    Patch embedding, CLS token, learned positional embedding (N + 1 rows),
    the blocks, the final LayerNorm and the classification head. Arch values
    need not be choices of this space (a released subnet may lie outside it),
    only well formed.
    """
    e, p, c = arch.embed_dim, self.patch_size, self.in_chans
    total = c * p * p * e + e  # patch embedding
    total += e  # CLS token
    total += (self.num_patches + 1) * e  # positional embedding
    for h, m in zip(arch.num_heads, arch.mlp_dims):
      q = h * HEAD_DIM
      total += 3 * e * q + 3 * q  # q, k, v
      total += q * e + e  # attention output projection
      total += 4 * e  # two LayerNorms
      total += e * m + m + m * e + e  # MLP
    total += 2 * e  # final LayerNorm
    total += e * self.num_classes + self.num_classes  # head
    return total

  def count_macs(self, arch: Arch) -> int:
    """Multiply-accumulates of one full (unmasked) image through the classifier.

    Counts the matrix products only (patch embedding, q/k/v, attention scores
    and weighted sum, output projection, MLP, head), like fvcore, whose MACs
    the AutoFormer and MaskTAS papers report as "FLOPs". LayerNorm, softmax,
    GELU, biases and additions are left out.
    """
    return encoder_macs(arch.embed_dim,
                        [h * HEAD_DIM for h in arch.num_heads], arch.mlp_dims,
                        self.num_patches + 1, self.num_patches,
                        self.patch_dim) + arch.embed_dim * self.num_classes

  def count_flops(self, arch: Arch) -> int:
    """Floating-point operations, 2 per multiply-accumulate (`2 * count_macs`).

    The papers' "FLOPs" are MACs: compare their numbers with `count_macs`.
    """
    return 2 * self.count_macs(arch)

  # -- encoding into arrays -------------------------------------------------

  def encode(self, arch: Arch) -> dict[str, np.ndarray]:
    """Arrays that drive the supernet for `arch`; shapes depend on the space.

    Returns:
      embed_mask:   (max_embed,) float32, 1 on the first `embed_dim` channels.
      head_mask:    (max_depth, max_heads) float32, 1 on each layer's heads.
      mlp_mask:     (max_depth, max_mlp) float32, 1 on each layer's MLP width.
      layer_mask:   (max_depth,) float32, 1 on the first `depth` layers.
      embed_index:  () int32, index of `embed_dim` in `embed_dims`.
      layer_branch: (max_depth,) int32, index into `layer_choices` for active
                    layers and `len(layer_choices)` (skip) for inactive ones.
    """
    self.validate(arch)
    e_max, l_max = self.max_embed, self.max_depth
    embed_mask = np.zeros((e_max,), np.float32)
    embed_mask[:arch.embed_dim] = 1
    head_mask = np.zeros((l_max, self.max_heads), np.float32)
    mlp_mask = np.zeros((l_max, self.max_mlp), np.float32)
    layer_mask = np.zeros((l_max,), np.float32)
    layer_branch = np.full((l_max,), len(self.layer_choices), np.int32)
    choices = self.layer_choices
    for i, (h, r, m) in enumerate(
        zip(arch.num_heads, arch.mlp_ratios, arch.mlp_dims)):
      head_mask[i, :h] = 1
      mlp_mask[i, :m] = 1
      layer_mask[i] = 1
      layer_branch[i] = choices.index((h, r))
    return {
        'embed_mask': embed_mask,
        'head_mask': head_mask,
        'mlp_mask': mlp_mask,
        'layer_mask': layer_mask,
        'embed_index': np.asarray(self.embed_dims.index(arch.embed_dim),
                                  np.int32),
        'layer_branch': layer_branch,
    }

  def sample_encoded(self, rng: jax.Array) -> dict[str, jax.Array]:
    """A uniformly random Arch drawn on device, already `encode`d.

    Same distribution as `sample` (each dimension and layer independent and
    uniform) and the same arrays as `encode`, but traceable: a train step
    draws its subnet from its own RNG, so every process agrees on it without
    a host round-trip.
    """
    k_embed, k_depth, k_layers = jax.random.split(rng, 3)
    choices = self.layer_choices
    embed_index = jax.random.randint(k_embed, (), 0, len(self.embed_dims))
    depth = jnp.asarray(self.depths)[jax.random.randint(
        k_depth, (), 0, len(self.depths))]
    layer = jax.random.randint(k_layers, (self.max_depth,), 0, len(choices))
    active = jnp.arange(self.max_depth) < depth
    heads = jnp.asarray([h for h, _ in choices])[layer]
    # MLP width per (embed choice, layer choice), as int(E * r) on the host.
    widths = jnp.asarray([[mlp_width(e, r) for _, r in choices]
                          for e in self.embed_dims])[embed_index, layer]
    embed = jnp.asarray(self.embed_dims)[embed_index]
    f32 = jnp.float32
    return {
        'embed_mask': (jnp.arange(self.max_embed) < embed).astype(f32),
        'head_mask': ((jnp.arange(self.max_heads) < heads[:, None])
                      & active[:, None]).astype(f32),
        'mlp_mask': ((jnp.arange(self.max_mlp) < widths[:, None])
                     & active[:, None]).astype(f32),
        'layer_mask': active.astype(f32),
        'embed_index': embed_index.astype(jnp.int32),
        'layer_branch': jnp.where(active, layer, len(choices)).astype(
            jnp.int32),
    }

  def decode(self, encoded: Mapping[str, Any]) -> Arch:
    """The Arch that `encode` (or `sample_encoded`) arrays describe."""
    layer_branch = np.asarray(encoded['layer_branch'])
    depth = int(np.asarray(encoded['layer_mask']).sum())
    layers = [self.layer_choices[b] for b in layer_branch[:depth]]
    return Arch(self.embed_dims[int(encoded['embed_index'])], depth,
                tuple(h for h, _ in layers), tuple(r for _, r in layers))

  def encode_batch(self, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
    """`encode` for several Archs stacked on a new leading axis."""
    encoded = [self.encode(a) for a in archs]
    return {k: np.stack([e[k] for e in encoded]) for k in encoded[0]}

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def describe(self) -> dict[str, Any]:
    """A summary for people: sizes of the extreme Archs and the space."""
    lo, hi = self.min_arch(), self.max_arch()
    return {
        'space': self.to_dict(),
        'num_archs': self.num_archs(),
        'log10_num_archs': round(math.log10(self.num_archs()), 2),
        'min_arch': {**lo.to_dict(), 'params': self.count_params(lo),
                     'macs': self.count_macs(lo)},
        'max_arch': {**hi.to_dict(), 'params': self.count_params(hi),
                     'macs': self.count_macs(hi)},
    }
