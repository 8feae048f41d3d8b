"""`lax.switch` whose reverse pass keeps one shared set of residuals.

Differentiating `lax.switch` gives every branch its own residual outputs
(JAX only merges residuals of identical shape). Inside a `lax.scan` over
layers, each of those becomes a stacked buffer written at every step, so with
many branches of different widths the backward pass spends more time moving
empty residuals than computing. Here the taken branch's VJP residuals are
packed into one flat buffer per dtype, padded to the largest branch, so the
cost is that of the branch actually taken plus one copy of its residuals.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _is_diff(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def switch(index: jax.Array, branches: Sequence[Callable[..., Any]],
           *operands: Any) -> Any:
  """`jax.lax.switch(index, branches, *operands)`, cheaper to differentiate.

  Operands are pytrees; gradients flow to their floating-point leaves (the
  others get none). All branches must return outputs of the same structure,
  shapes and dtypes, as for `lax.switch`. Unlike `lax.switch`: reverse mode
  only (it is a `custom_vjp`: no `jvp`/`jacfwd`), and branches must not close
  over values being differentiated; pass those as operands.
  """
  branches = tuple(branches)
  leaves, tree = jax.tree.flatten(operands)
  num_leaves = len(leaves)
  diff_pos = [i for i, x in enumerate(leaves) if _is_diff(x)]
  const_pos = [i for i, x in enumerate(leaves) if not _is_diff(x)]
  diff_in = tuple(leaves[i] for i in diff_pos)
  const_in = tuple(leaves[i] for i in const_pos)
  # The rules below outlive this call inside jaxprs (the custom_vjp's
  # forward thunk); holding the operands would leak their tracers.
  del leaves, operands

  def call(branch, diff_leaves, const_leaves):
    merged = [None] * num_leaves
    for i, x in zip(diff_pos, diff_leaves):
      merged[i] = x
    for i, x in zip(const_pos, const_leaves):
      merged[i] = x
    return branch(*jax.tree.unflatten(tree, merged))

  @jax.custom_vjp
  def run(index, diff_leaves, const_leaves):
    return jax.lax.switch(
        index, [lambda d, c, b=b: call(b, d, c) for b in branches],
        diff_leaves, const_leaves)

  def residual_layout(diff_leaves, const_leaves):
    """Per branch: (treedef, [(dtype, shape)]) of its VJP residuals."""
    layouts = []
    for branch in branches:
      box = {}

      def residuals(d, b=branch, box=box):
        _, vjp_fn = jax.vjp(lambda *d: call(b, d, const_leaves), *d)
        res, box['tree'] = jax.tree.flatten(vjp_fn)
        return res

      shapes = jax.eval_shape(residuals, diff_leaves)
      layouts.append((box['tree'], [(s.dtype, s.shape) for s in shapes]))
    return layouts

  def fwd(index, diff_leaves, const_leaves):
    layouts = residual_layout(diff_leaves, const_leaves)
    dtypes = sorted({np.dtype(d) for _, lay in layouts for d, _ in lay},
                    key=str)
    sizes = {
        d: max(sum(int(np.prod(s)) for dt, s in lay if np.dtype(dt) == d)
               for _, lay in layouts) for d in dtypes
    }

    def packed_branch(branch):

      def f(d, c):
        out, vjp_fn = jax.vjp(lambda *d: call(branch, d, c), *d)
        res = jax.tree.leaves(vjp_fn)
        buffers = []
        for dtype in dtypes:
          parts = [r.ravel() for r in res if r.dtype == dtype]
          flat = (jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype))
          buffers.append(jnp.pad(flat, (0, sizes[dtype] - flat.shape[0])))
        return out, buffers

      return f

    out, buffers = jax.lax.switch(index,
                                  [packed_branch(b) for b in branches],
                                  diff_leaves, const_leaves)

    def unpacked_bwd(layout):
      treedef, lay = layout

      def f(buffers, g):
        offsets = {dtype: 0 for dtype in dtypes}
        res = []
        for dtype, shape in lay:
          k = dtypes.index(np.dtype(dtype))
          n = int(np.prod(shape))
          res.append(buffers[k][offsets[np.dtype(dtype)]:][:n].reshape(shape))
          offsets[np.dtype(dtype)] += n
        return jax.tree.unflatten(treedef, res)(g)

      return f

    bwd_branches = [unpacked_bwd(layout) for layout in layouts]
    return out, (index, buffers, bwd_branches)

  def fwd_rule(index, diff_leaves, const_leaves):
    out, (index, buffers, bwd_branches) = fwd(index, diff_leaves,
                                              const_leaves)
    bwd_box.append(bwd_branches)
    return out, (index, buffers)

  def bwd_rule(res, g):
    index, buffers = res
    grads = jax.lax.switch(index, bwd_box[-1], buffers, g)
    return None, tuple(grads), None

  bwd_box: list = []
  run.defvjp(fwd_rule, bwd_rule)
  return run(index, diff_in, const_in)
