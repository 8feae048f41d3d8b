"""Masked supernet == extracted dense subnet, compiled once for every Arch."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from masktas_jax.masking import random_masking
from masktas_jax.models import vit
from masktas_jax.models.supernet import Supernet
from masktas_jax.space import Arch, SearchSpace

from helpers import assert_close, tree_scale

# AutoFormer's tiny space on a small image (4 patches) to keep tests fast;
# the widths, heads, MLP ratios and depths are the real ones.
TINY = SearchSpace((192, 216, 240), (12, 13, 14), (3, 4), (3.5, 4.0),
                   image_size=32, patch_size=16, num_classes=10)
SMALL = SearchSpace((32, 48, 64), (2, 3), (1, 2), (2.0, 3.0), image_size=16,
                    patch_size=4, num_classes=5)


def _perturbed(space, seed=0, remat=True, split_switch=None):
  """A supernet whose LayerNorm scales and all biases are random too."""
  model = Supernet(space, rngs=nnx.Rngs(seed), remat=remat,
                   split_switch=split_switch)
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  # At the scale of the initialisation, so no layer blows up float32 error.
  leaves = [x + 0.02 * jax.random.normal(k, x.shape)
            for x, k in zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def test_gelu_and_its_gradient_against_float64():
  """The exact GELU, x * Phi(x), not the tanh approximation, over fp32's
  useful range; its gradient is Phi(x) + x * phi(x)."""
  x = np.linspace(-12, 12, 4801).astype(np.float32)
  x64 = x.astype(np.float64)
  phi = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x64])
  density = np.exp(-x64**2 / 2) / math.sqrt(2 * math.pi)
  got = np.asarray(jax.jit(vit.gelu)(x), np.float64)
  grad = np.asarray(jax.jit(jax.vmap(jax.grad(vit.gelu)))(x), np.float64)
  np.testing.assert_allclose(got, x64 * phi, rtol=0, atol=2e-6)
  np.testing.assert_allclose(grad, phi + x64 * density, rtol=0, atol=1e-6)


@pytest.fixture(scope='module')
def tiny():
  model = _perturbed(TINY)
  graphdef, state = nnx.split(model)

  @functools.partial(jax.jit, static_argnums=4)
  def encode(state, images, arch, ids_keep, width):
    m = nnx.merge(graphdef, state)
    out = {mode: m.encode(images, arch, ids_keep, mode=mode)
           for mode in ('switch', 'mask')}
    # The mask path at the Arch's own (static) width: population scoring's
    # buckets.
    out['mask at its width'] = m.encode(images, arch, ids_keep, mode='mask',
                                        width=width[0])
    # ...and at a wider one, as a call of several widths runs its narrower
    # members.
    out['mask at a wider width'] = m.encode(images, arch, ids_keep,
                                            mode='mask', width=width[1])
    return out

  return model, state, encode


def _tiny_archs():
  rng = np.random.default_rng(0)
  # The extremes and a sample: the dense references run eagerly, so each
  # Arch costs seconds.
  return [TINY.min_arch(), TINY.max_arch()] + [TINY.sample(rng)
                                               for _ in range(8)]


@pytest.mark.parametrize('masked', [False, True])
def test_supernet_equals_extracted_subnet(tiny, masked):
  model, state, encode = tiny
  images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  ids_keep = (random_masking(jax.random.key(1), 3, TINY.num_patches, 0.5)[0]
              if masked else None)
  for arch in _tiny_archs():
    dense = model.extract(arch)
    assert vit.count_params(dense) == TINY.count_params(arch)
    want = np.asarray(dense.encode(images, ids_keep))
    wider = min([e for e in TINY.embed_dims if e > arch.embed_dim] or
                [arch.embed_dim])
    got = encode(state, images, TINY.encode(arch), ids_keep,
                 (arch.embed_dim, wider))
    for mode, out in got.items():
      out = np.asarray(out)
      assert out.shape == (3, 1 + (2 if masked else 4), 240)
      np.testing.assert_allclose(out[..., :arch.embed_dim], want, rtol=0,
                                 atol=1e-5, err_msg=f'{mode} {arch}')
      assert np.all(out[..., arch.embed_dim:] == 0), f'{mode} {arch}'


def test_supernet_logits_equal_extracted_classifier(tiny):
  model, _, _ = tiny
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  for arch in _tiny_archs()[:4]:
    want = model.extract(arch)(images)
    for mode in ('switch', 'mask'):
      np.testing.assert_allclose(model(images, TINY.encode(arch), mode=mode),
                                 want, atol=1e-5)


def _check_subnet_gradient(g, want, arch, err_msg, zeros=True):
  """Supernet gradient `g` against the dense subnet's `want` on the subnet's
  slices (to 1e-5 of the largest gradient entry: what float32 sums of
  terms that size can promise), and, with `zeros`, exactly zero outside."""
  scale = tree_scale(want)
  e, last = arch.embed_dim, arch.depth - 1
  h, m = arch.num_heads[0], arch.mlp_dims[0]
  layers, l0 = g['layers'], want['blocks'][0]
  assert_close(layers['w1'][...][0, :e, :m], l0['mlp']['fc1']['kernel'][...],
               scale, err_msg=f'{err_msg} fc1')
  assert_close(layers['wq'][...][0, :e, :h],
               l0['attn']['query']['kernel'][...], scale,
               err_msg=f'{err_msg} query')
  assert_close(g['patch_kernel'][...][:, :e],
               want['patch_embed']['proj']['kernel'][...], scale,
               err_msg=f'{err_msg} patch embedding')
  assert_close(layers['w2'][...][last, :arch.mlp_dims[last], :e],
               want['blocks'][last]['mlp']['fc2']['kernel'][...], scale,
               err_msg=f'{err_msg} fc2')
  if zeros:  # Nothing outside the subnet moves.
    assert np.all(layers['w1'][...][0, :, m:] == 0)
    assert np.all(layers['wq'][...][0, :, h:] == 0)
    assert np.all(g['patch_kernel'][...][:, e:] == 0)
    assert np.all(layers['w1'][...][arch.depth:] == 0)


def test_supernet_gradients_are_the_subnet_gradients_zero_elsewhere():
  """Weight sharing: d loss / d supernet weights, sliced, is the subnet's;
  every path (remat, switch layouts, masks) gives the same gradient; and the
  comparison still catches a dropped mask or a slice off by one."""
  model = _perturbed(SMALL, seed=3)
  graphdef, state = nnx.split(model)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  ids_keep = random_masking(jax.random.key(1), 2, SMALL.num_patches, 0.5)[0]

  def loss(tokens):
    return jnp.sum(jnp.sin(tokens) * jnp.arange(tokens.shape[-1]))

  grad_fns, graphdefs = {}, {}
  # split_switch True: the accelerators' layout (heads and MLP ratio switched
  # apart), which a CPU would not otherwise compile.
  for remat, split, mode in [(True, None, 'switch'), (False, None, 'switch'),
                             (True, True, 'switch'), (False, True, 'switch'),
                             (True, None, 'mask')]:
    gd = graphdefs[remat, split] = nnx.split(
        _perturbed(SMALL, seed=3, remat=remat, split_switch=split))[0]
    grad_fns[remat, split, mode] = jax.jit(jax.grad(
        lambda s, a, gd=gd, mode=mode: loss(nnx.merge(gd, s).encode(
            images, a, ids_keep, mode=mode))))
  split_forward = jax.jit(lambda s, a: nnx.merge(
      graphdefs[True, True], s).encode(images, a, ids_keep))
  rng = np.random.default_rng(5)
  # The extremes and one sample: each dense reference gradient runs eagerly.
  for arch in [SMALL.max_arch(), SMALL.min_arch(), SMALL.sample(rng)]:
    dense = model.extract(arch)
    dg, ds = nnx.split(dense)
    want = jax.grad(lambda s: loss(nnx.merge(dg, s).encode(images, ids_keep))
                    )(ds)
    e, grads = arch.embed_dim, {}
    tokens = split_forward(state, SMALL.encode(arch))
    dense_tokens = dense.encode(images, ids_keep)
    assert_close(tokens[..., :e], dense_tokens, tree_scale(dense_tokens),
                 err_msg='tokens')
    assert np.all(tokens[..., e:] == 0)
    for key, fn in grad_fns.items():
      grads[key] = fn(state, SMALL.encode(arch))
      _check_subnet_gradient(grads[key], want, arch, str(key))
    # Every path gives the same full gradient, to the scale of the tree.
    ref = grads[True, None, 'mask']
    scale = tree_scale(ref)
    for key, g in grads.items():
      for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g),
                              jax.tree.leaves(ref)):
        assert_close(a, b, scale,
                     err_msg=f'{key} {jax.tree_util.keystr(path)}')

  # The same comparisons fail on what a real error would give. A slice off
  # by one:
  arch = SMALL.min_arch()
  dense = model.extract(arch)
  dg, ds = nnx.split(dense)
  want = jax.grad(lambda s: loss(nnx.merge(dg, s).encode(images, ids_keep)))(
      ds)
  e, m = arch.embed_dim, arch.mlp_dims[0]
  g = grad_fns[True, None, 'mask'](state, SMALL.encode(arch))
  for shifted in (g['layers']['w1'][...][0, :e, 1:m + 1],
                  g['layers']['w1'][...][0, 1:e + 1, :m]):
    with pytest.raises(AssertionError, match='elements differ'):
      assert_close(shifted, want['blocks'][0]['mlp']['fc1']['kernel'][...],
                   tree_scale(want))
  # The first layer's MLP mask dropped (its inactive channels switched on):
  dropped = dict(SMALL.encode(arch))
  dropped['mlp_mask'] = np.array(dropped['mlp_mask'])
  dropped['mlp_mask'][0] = 1
  with pytest.raises(AssertionError, match='elements differ'):
    _check_subnet_gradient(grad_fns[True, None, 'mask'](state, dropped), want,
                           arch, 'mask dropped', zeros=False)


@pytest.mark.parametrize('mode, remat', [('switch', True), ('switch', False),
                                         ('mask', True)])
def test_forward_and_gradient_step_trace_once_across_50_archs(mode, remat):
  # chex counts traces per function code, shared by the parametrisations.
  chex.clear_trace_counter()
  model = Supernet(SMALL, rngs=nnx.Rngs(0), remat=remat)
  graphdef, state = nnx.split(model)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(state, arch):
    return nnx.merge(graphdef, state).encode(images, arch, mode=mode)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, arch):
    loss_fn = lambda s: jnp.mean(nnx.merge(graphdef, s)(images, arch,
                                                         mode=mode)**2)
    loss, grads = jax.value_and_grad(loss_fn)(state)
    return loss, jax.tree.map(lambda p, g: p - 0.1 * g, state, grads)

  rng = np.random.default_rng(0)
  archs = {SMALL.sample(rng) for _ in range(200)}
  archs = sorted(archs, key=lambda a: a.to_json())[:50]
  assert len(archs) == 50
  losses = []
  for arch in archs:
    forward(state, SMALL.encode(arch))
    loss, _ = step(state, SMALL.encode(arch))
    losses.append(float(loss))
  assert len(set(losses)) > 40  # Different Archs really ran.


def test_mask_mode_vmaps_over_a_population():
  model = _perturbed(SMALL, seed=7)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  rng = np.random.default_rng(1)
  archs = [SMALL.sample(rng) for _ in range(6)]
  batched = jax.vmap(lambda a: model.encode(images, a, mode='mask'))(
      SMALL.encode_batch(archs))
  for i, arch in enumerate(archs):
    want = model.extract(arch).encode(images)
    np.testing.assert_allclose(batched[i, ..., :arch.embed_dim], want,
                               atol=1e-5)


def test_extract_rejects_an_arch_outside_the_space():
  model = Supernet(SMALL, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'Arch\.embed_dim'):
    model.extract(Arch(80, 2, (1, 1), (2.0, 2.0)))
  with pytest.raises(ValueError, match='mode'):
    model.encode(jnp.zeros((1, 16, 16, 3)), SMALL.encode(SMALL.min_arch()),
                 mode='slice')


def test_student_equals_its_extracted_dense_student():
  """Pixels and projected features of the supernet student at an Arch equal
  those of `Student.extract(arch)`, whose decoder and projector read only
  the subnet's channels."""
  # pylint: disable=g-import-not-at-top
  from masktas_jax.models.student import Student, StudentConfig
  student = Student(StudentConfig(SMALL, teacher_dim=24, decoder_embed_dim=16,
                                  decoder_depth=1, decoder_num_heads=2),
                    rngs=nnx.Rngs(0), remat=False)
  graphdef, state = nnx.split(student)
  # Random biases too, so a wrongly cut input row cannot hide behind zeros.
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  student = nnx.merge(graphdef, jax.tree.unflatten(tree, [
      x + 0.02 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
  images = jax.random.normal(jax.random.key(2), (3, 16, 16, 3))
  ids_keep, _, ids_restore = random_masking(jax.random.key(3), 3,
                                            SMALL.num_patches, 0.5)
  rng = np.random.default_rng(0)
  for arch in [SMALL.min_arch(), SMALL.max_arch(), SMALL.sample(rng)]:
    pixels, features = student(images, SMALL.encode(arch), ids_keep,
                               ids_restore)
    dense = student.extract(arch)
    assert dense.proj1.in_features == arch.embed_dim
    want_pixels, want_features = dense(images, ids_keep, ids_restore)
    np.testing.assert_allclose(pixels, want_pixels, atol=2e-5)
    np.testing.assert_allclose(features, want_features, atol=2e-5)
