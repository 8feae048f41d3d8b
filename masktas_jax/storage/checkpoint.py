"""Orbax checkpoint helpers shared by the stages."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def barrier(name: str) -> None:
  """Waits for every process (a no-op for one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def save_pytree(path: epath.PathLike, tree: Any) -> None:
  """Writes a pytree of arrays as an Orbax checkpoint at `path` (must not exist)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(epath.Path(path).resolve(), tree)
  checkpointer.wait_until_finished()


def restore_pytree(path: epath.PathLike, abstract: Any) -> Any:
  """Reads the checkpoint at `path` into the structure of `abstract`.

  `abstract` holds arrays or `jax.ShapeDtypeStruct`s in the saved
  structure; leaves without a sharding are restored replicated over every
  device (of every process), whatever topology wrote them.
  """
  everywhere = NamedSharding(Mesh(np.asarray(jax.devices()), ('d',)), P())

  def target(leaf):
    sharding = getattr(leaf, 'sharding', None)
    if not isinstance(leaf, jax.ShapeDtypeStruct) or sharding is None:
      sharding = everywhere
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  return ocp.StandardCheckpointer().restore(epath.Path(path).resolve(),
                                            jax.tree.map(target, abstract))


@contextlib.contextmanager
def atomic_directory(path: epath.PathLike,
                     overwrite: bool = False) -> Iterator[epath.Path]:
  """Yields a scratch directory that becomes `path` only if the body succeeds.

  An existing `path` is never half-overwritten: without `overwrite` it is an
  error (FileExistsError), with it the old directory is replaced only after
  the new one is complete. On failure the scratch directory is removed.

  Multi-host: every process enters with the same `path` and gets the same
  scratch directory (Orbax saves into it collectively); process 0 creates
  and renames it, between barriers. The body should write plain files from
  process 0 only.
  """
  path = epath.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f'{path}: already exists; not overwriting it')
  # The same name on every process; a crashed earlier attempt's leftovers
  # are cleared.
  scratch = path.parent / f'.{path.name}.tmp'
  main = jax.process_index() == 0
  if main:
    path.parent.mkdir(parents=True, exist_ok=True)
    if scratch.exists():
      scratch.rmtree()
    scratch.mkdir()
  barrier(f'atomic_directory start {path}')
  try:
    yield scratch
  except BaseException:
    if main and scratch.exists():
      scratch.rmtree()
    raise
  barrier(f'atomic_directory written {path}')
  if main:
    if path.exists():
      old = path.parent / f'.{path.name}.old-{uuid.uuid4().hex[:8]}'
      path.rename(old)
      scratch.rename(path)
      old.rmtree()
    else:
      scratch.rename(path)
  barrier(f'atomic_directory done {path}')
