"""models.switch.switch against jax.lax.switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from masktas_jax.models import switch

from helpers import assert_close, tree_scale


def _branches():
  # Different residual shapes per branch, an integer operand used for
  # indexing, pytree operands and outputs.
  def a(p, ids):
    return {'y': jnp.tanh(p['x'] @ p['w'][:, :3]).sum(-1) * p['s'],
            'n': ids.sum()}

  def b(p, ids):
    h = jax.nn.gelu(p['x'] @ p['w'])[:, ids[:2]]
    return {'y': (h**2).sum(-1) + p['s'], 'n': ids.max()}

  def c(p, ids):
    return {'y': p['x'].sum(-1) * 0.0 + p['s'], 'n': jnp.int32(0)}

  return [a, b, c]


def _operands(seed=0):
  rng = np.random.default_rng(seed)
  return ({'x': jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
           'w': jnp.asarray(rng.normal(size=(5, 6)), jnp.float32),
           's': jnp.float32(1.5)}, jnp.asarray([3, 1, 4], jnp.int32))


@pytest.mark.parametrize('index', [0, 1, 2])
def test_values_and_gradients_match_lax_switch(index):
  p, ids = _operands()

  def loss(fn, p, i):
    out = fn(i, _branches(), p, ids)
    return jnp.sum(jnp.sin(out['y'])), out['n']

  for i in (index, jnp.int32(index)):
    want = jax.value_and_grad(loss, argnums=1, has_aux=True)(jax.lax.switch,
                                                             p, i)
    got = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True),
                  static_argnums=0)(switch.switch, p, i)
    scale = tree_scale(want)
    jax.tree.map(lambda x, y: assert_close(x, y, scale), got, want)


def test_inside_scan_under_grad_and_vmap_without_leaks():
  p, ids = _operands(1)
  stacked = {'x': jnp.stack([p['x']] * 3), 'w': jnp.stack([p['w']] * 3) *
             jnp.arange(1.0, 4.0)[:, None, None], 's': jnp.arange(3.0)}

  def loss(fn, stacked, branch):

    def body(carry, inputs):
      layer, i = inputs
      return carry + fn(i, _branches(), layer, ids)['y'].sum(), None

    total, _ = jax.lax.scan(body, 0.0, (stacked, branch))
    return total

  branch = jnp.asarray([1, 0, 2], jnp.int32)
  want = jax.grad(loss, argnums=1)(jax.lax.switch, stacked, branch)
  with jax.checking_leaks():
    got = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)(
        switch.switch, stacked, branch)
  # Gradients to the scale of the whole tree (terms summed in another order).
  jax.tree.map(lambda x, y, s=tree_scale(want): assert_close(x, y, s), got,
               want)
  # A batch of branch indices: vmap turns the switch into a select.
  batched = jnp.asarray([[1, 0, 2], [2, 2, 0]], jnp.int32)
  got = jax.vmap(lambda b: jax.grad(loss, argnums=1)(switch.switch, stacked,
                                                     b))(batched)
  for k, b in enumerate(batched):
    want = jax.grad(loss, argnums=1)(jax.lax.switch, stacked, b)
    jax.tree.map(lambda x, y, k=k, s=tree_scale(want): assert_close(x[k], y, s),
                 got, want)
