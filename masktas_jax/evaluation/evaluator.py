"""One way to run a jitted function over a split's batches on the mesh.

Population scoring, feature extraction and fine-tuning evaluation all do
the same: replicate some inputs (weights, encoded Archs), turn each of this
process's batches into global arrays split over the mesh's 'data' axis, call
one compiled function per batch and reduce or gather its outputs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

from masktas_jax import data, parallel
from masktas_jax.errors import DataError


class Evaluator:
  """`fn(inputs, batch, rng) -> outputs`, jitted once, over many batches.

  `inputs` is replicated; `batch` a dict of arrays (b, ...) split over the
  mesh's 'data' axis (this process's numpy share, or global arrays already
  placed), its uint8 images normalised on device (`data.prepare`); `rng`
  is `fold_in(key(seed), i)` for the i-th batch, for functions that draw
  (e.g. masks). Outputs are replicated, or split over 'data' like the
  batch with `sharded_outputs` (to keep them on device for later calls).
  """

  def __init__(self, fn: Callable[[Any, dict[str, jax.Array], jax.Array],
                                  Any], mesh=None,
               sharded_outputs: bool = False):
    self.mesh = mesh or parallel.make_mesh()
    rep = parallel.replicated(self.mesh)
    sharded = parallel.batch_sharded(self.mesh)
    self.traces = 0

    def counted(inputs, batch, rng):
      self.traces += 1
      return fn(inputs, data.prepare(batch), rng)

    self.fn = jax.jit(counted, in_shardings=(rep, sharded, rep),
                      out_shardings=sharded if sharded_outputs else rep)
    self._rep = rep

  def place(self, inputs: Any) -> Any:
    """`inputs` replicated over the mesh, once, for repeated calls."""
    return jax.device_put(inputs, self._rep)

  def map(self, batches: Iterable[dict[str, Any]], inputs: Any,
          seed: int = 0) -> Iterator[Any]:
    """The outputs of each batch, on device (nothing waits for them)."""
    root = jax.random.key(seed)
    for i, batch in enumerate(batches):
      if not all(isinstance(v, jax.Array) for v in batch.values()):
        batch = parallel.global_batch(batch, self.mesh)
      yield self.fn(inputs, batch, jax.random.fold_in(root, i))

  def sum(self, batches: Iterable[dict[str, Any]], inputs: Any,
          seed: int = 0) -> Any:
    """The outputs summed over the batches, on the host (numpy): one sync
    at the end."""
    total = None
    for out in self.map(batches, inputs, seed):
      total = out if total is None else jax.tree.map(lambda a, b: a + b,
                                                     total, out)
    if total is None:
      raise DataError('nothing to evaluate: the split gave no batches (fewer '
                      'images than processes?)')
    return jax.tree.map(np.asarray, jax.device_get(total))
