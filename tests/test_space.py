"""Search space: closed-form sizes, validation, sampling, encoding."""

import json
import math

import numpy as np
import pytest

from masktas_jax.space import Arch, ArchError, HEAD_DIM, SearchSpace

TINY = dict(embed_dims=(192, 216, 240), depths=(12, 13, 14), num_heads=(3, 4),
            mlp_ratios=(3.5, 4.0))
SMALL = dict(embed_dims=(320, 384, 448), depths=(12, 13, 14),
             num_heads=(5, 6, 7), mlp_ratios=(3.0, 3.5, 4.0))
BASE = dict(embed_dims=(528, 576, 624), depths=(14, 15, 16), num_heads=(9, 10),
            mlp_ratios=(3.0, 3.5, 4.0))

# AutoFormer's released subnets (experiments/subnet/AutoFormer-{T,S,B}.yaml)
# and their published sizes, which include 7,680 relative-position
# parameters per layer that our ViT does not have.
RELEASED = {
    'T': (Arch(192, 13, (3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 3, 3),
               (3.5, 3.5, 3.0, 3.5, 3.0, 3.0, 4.0, 4.0, 3.5, 4.0, 3.5, 4.0,
                3.5)), 5.87),
    'S': (Arch(384, 13, (6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7),
               (3.0, 3.5, 3.0, 3.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.5,
                4.0)), 22.89),
    'B': (Arch(576, 14, (9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10),
               (3.5, 3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 3.0, 4.0, 4.0, 3.0, 4.0,
                3.0, 3.5)), 53.69),
}


def _space(kind=TINY, **kw):
  return SearchSpace(**kind, **kw)


@pytest.mark.parametrize('name', sorted(RELEASED))
def test_count_params_reproduces_autoformer_released_sizes(name):
  arch, published_m = RELEASED[name]
  space = _space(BASE if name == 'B' else SMALL)
  ours = space.count_params(arch)
  assert round((ours + 7680 * arch.depth) / 1e6, 2) == published_m


def test_count_params_term_by_term():
  """An Arch with distinct per-layer values, counted by hand in float64."""
  space = SearchSpace((8, 16), (2,), (1, 2), (2.0, 3.0), image_size=8,
                      patch_size=4, num_classes=5)
  arch = Arch(16, 2, (1, 2), (3.0, 2.0))
  patch = 4 * 4 * 3 * 16 + 16
  tokens = 16 + 5 * 16  # CLS + (4 patches + 1) positions
  layer0 = 3 * (16 * 64 + 64) + (64 * 16 + 16) + 4 * 16 + (16 * 48 + 48) + (
      48 * 16 + 16)
  layer1 = 3 * (16 * 128 + 128) + (128 * 16 + 16) + 4 * 16 + (16 * 32 + 32) + (
      32 * 16 + 16)
  head = 2 * 16 + 16 * 5 + 5
  assert space.count_params(arch) == patch + tokens + layer0 + layer1 + head


def test_count_macs_matches_deit_tiny_and_flops_are_twice_macs():
  space = _space(SMALL)
  deit_ti = Arch(192, 12, (3,) * 12, (4.0,) * 12)
  # fvcore reports DeiT-Ti at 224 px as 1.3 G(MACs).
  assert round(space.count_macs(deit_ti) / 1e9, 1) == 1.3
  assert space.count_flops(deit_ti) == 2 * space.count_macs(deit_ti)


def test_space_ranges_match_autoformer_table():
  # REFERENCE.md's ranges include the relative-position tables.
  for kind, lo, hi in ((TINY, 5.4, 10.5), (SMALL, 13.1, 34.8),
                       (BASE, 41.7, 76.9)):
    space = _space(kind)
    a, b = space.min_arch(), space.max_arch()
    assert abs((space.count_params(a) + 7680 * a.depth) / 1e6 - lo) < 0.06
    assert abs((space.count_params(b) + 7680 * b.depth) / 1e6 - hi) < 0.06


def test_min_and_max_arch_bound_every_sample():
  space = _space()
  rng = np.random.default_rng(0)
  lo = space.count_params(space.min_arch())
  hi = space.count_params(space.max_arch())
  for _ in range(200):
    a = space.sample(rng)
    space.validate(a)
    assert lo <= space.count_params(a) <= hi
    assert space.count_macs(space.min_arch()) <= space.count_macs(a)


def test_sample_is_seeded_and_covers_choices():
  space = _space()
  a = [space.sample(np.random.default_rng(3)) for _ in range(2)]
  assert a[0] == a[1]
  rng = np.random.default_rng(0)
  samples = [space.sample(rng) for _ in range(300)]
  assert {s.embed_dim for s in samples} == set(TINY['embed_dims'])
  assert {s.depth for s in samples} == set(TINY['depths'])
  assert {h for s in samples for h in s.num_heads} == set(TINY['num_heads'])
  assert {r for s in samples for r in s.mlp_ratios} == set(TINY['mlp_ratios'])


def test_num_archs_by_enumeration():
  space = SearchSpace((8, 16), (1, 2), (1, 2), (2.0, 3.0, 4.0), image_size=8,
                      patch_size=4)
  per_layer = 2 * 3
  assert space.num_archs() == 2 * (per_layer + per_layer**2)


def test_arch_json_round_trip():
  arch = _space().sample(np.random.default_rng(1))
  assert Arch.from_json(arch.to_json()) == arch
  assert Arch.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch


@pytest.mark.parametrize('build, field', [
    (lambda: Arch(192, 3, (3, 3), (4.0, 4.0, 4.0)), r'Arch\.num_heads'),
    (lambda: Arch(192, 2, (3, 3), (4.0,)), r'Arch\.mlp_ratios'),
    (lambda: Arch(192, 0, (), ()), r'Arch\.depth'),
    (lambda: Arch(192.5, 1, (3,), (4.0,)), r'Arch\.embed_dim'),
    (lambda: Arch(192, 1, (2.5,), (4.0,)), r'Arch\.num_heads\[0\]'),
    (lambda: Arch(192, 1, 3, (4.0,)), r'Arch\.num_heads'),
    (lambda: Arch(192, 1, (3,), (float('nan'),)), r'Arch\.mlp_ratios\[0\]: must be finite'),
    (lambda: Arch(192, 1, (True,), (4.0,)), r'Arch\.num_heads\[0\]: expected a number'),
    (lambda: Arch.from_dict({'embed_dim': 192, 'depth': 1, 'num_heads': 3,
                             'mlp_ratios': [4.0]}), r'Arch\.num_heads'),
    (lambda: Arch.from_json('{"embed_dim": 192,'), 'not valid JSON'),
    (lambda: Arch.from_dict({'embed_dim': 192, 'depth': 1}), 'missing'),
    (lambda: Arch.from_dict({'embed_dim': 192, 'depth': 1, 'num_heads': [3],
                             'mlp_ratios': [4.0], 'extra': 1}), 'unknown'),
])
def test_malformed_arch_errors_name_the_field(build, field):
  with pytest.raises(ArchError, match=field):
    build()


@pytest.mark.parametrize('arch, message', [
    (Arch(200, 12, (3,) * 12, (4.0,) * 12), r'Arch\.embed_dim: 200 is not'),
    (Arch(264, 12, (3,) * 12, (4.0,) * 12), r'Arch\.embed_dim: 264 exceeds'),
    (Arch(192, 15, (3,) * 15, (4.0,) * 15), r'Arch\.depth: 15 exceeds'),
    (Arch(192, 11, (3,) * 11, (4.0,) * 11), r'Arch\.depth: 11 is not'),
    (Arch(192, 12, (3,) * 11 + (5,), (4.0,) * 12),
     r'Arch\.num_heads\[11\]: 5 heads \(320 q/k/v channels\) exceed'),
    (Arch(240, 12, (3,) * 12, (4.0,) * 5 + (4.5,) + (4.0,) * 6),
     r'Arch\.mlp_ratios\[5\]: MLP width int\(240 \* 4.5\) = 1080 exceeds'),
    (Arch(192, 12, (3,) * 12, (3.0,) + (4.0,) * 11),
     r'Arch\.mlp_ratios\[0\]: 3.0 is not a choice'),
])
def test_arch_outside_space_errors_name_the_field(arch, message):
  space = _space()
  with pytest.raises(ArchError, match=message):
    space.validate(arch)
  assert not space.contains(arch)


@pytest.mark.parametrize('kw, field', [
    (dict(image_size=30), 'image_size'),
    (dict(image_size=32.0 + 0.5), 'image_size'),
    (dict(patch_size=0), 'patch_size'),
    (dict(num_classes=-1), 'num_classes'),
    (dict(embed_dims=(64.7, 96)), r'embed_dims\[0\]: expected an integer'),
    (dict(num_heads=(1.5, 2)), r'num_heads\[0\]: expected an integer'),
    (dict(depths=(True, 2)), r'depths\[0\]: expected a number'),
    (dict(mlp_ratios=(float('inf'), 2.0)), r'mlp_ratios\[0\]: must be finite'),
])
def test_invalid_space_errors_name_the_field(kw, field):
  with pytest.raises(ArchError, match=f'SearchSpace.{field}'):
    SearchSpace(**{**TINY, **kw})
  with pytest.raises(ArchError, match='SearchSpace.embed_dims'):
    SearchSpace((), (1,), (1,), (1.0,))


def test_encode_masks_describe_the_arch():
  space = _space()
  rng = np.random.default_rng(2)
  choices = space.layer_choices
  for _ in range(20):
    a = space.sample(rng)
    enc = space.encode(a)
    assert enc['embed_mask'].shape == (240,)
    assert enc['head_mask'].shape == (14, 4)
    assert enc['mlp_mask'].shape == (14, 960)
    np.testing.assert_array_equal(enc['embed_mask'],
                                  np.arange(240) < a.embed_dim)
    np.testing.assert_array_equal(enc['layer_mask'], np.arange(14) < a.depth)
    assert enc['embed_index'] == (
        TINY['embed_dims'].index(a.embed_dim))
    for i in range(14):
      if i < a.depth:
        np.testing.assert_array_equal(enc['head_mask'][i],
                                      np.arange(4) < a.num_heads[i])
        np.testing.assert_array_equal(
            enc['mlp_mask'][i], np.arange(960) < int(a.embed_dim *
                                                     a.mlp_ratios[i]))
        assert choices[enc['layer_branch'][i]] == (a.num_heads[i],
                                                   a.mlp_ratios[i])
      else:
        assert enc['head_mask'][i].sum() == 0 and enc['mlp_mask'][i].sum() == 0
        assert enc['layer_branch'][i] == len(choices)
  batch = space.encode_batch([space.min_arch(), space.max_arch()])
  assert batch['head_mask'].shape == (2, 14, 4)
  assert space.max_mlp == 960 and space.max_heads * HEAD_DIM == 256
  assert math.isclose(np.log10(space.num_archs()),
                      space.describe()['log10_num_archs'], abs_tol=0.01)


def test_sample_encoded_on_device_is_a_valid_uniform_encoding():
  import jax  # pylint: disable=g-import-not-at-top
  space = _space()
  draw = jax.jit(space.sample_encoded)
  counts = {'embed': {}, 'depth': {}, 'heads': {}, 'ratio': {}}
  for i in range(300):
    enc = jax.tree.map(np.asarray, draw(jax.random.key(i)))
    arch = space.decode(enc)
    space.validate(arch)
    want = space.encode(arch)
    for k in want:  # Bit for bit the host encoding of the decoded Arch.
      np.testing.assert_array_equal(enc[k], want[k], err_msg=k)
    for key, values in (('embed', [arch.embed_dim]), ('depth', [arch.depth]),
                        ('heads', arch.num_heads), ('ratio', arch.mlp_ratios)):
      for v in values:
        counts[key][v] = counts[key].get(v, 0) + 1
  assert set(counts['embed']) == set(TINY['embed_dims'])
  assert set(counts['depth']) == set(TINY['depths'])
  for key in counts:  # Roughly uniform: no choice under half its share.
    total = sum(counts[key].values())
    assert min(counts[key].values()) > 0.5 * total / len(counts[key]), counts
  # Same key, same Arch: every process agrees.
  a, b = draw(jax.random.key(7)), draw(jax.random.key(7))
  assert space.decode(a) == space.decode(b)
