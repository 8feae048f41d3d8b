"""Orbax checkpoint helpers shared by the stages."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from typing import Any, Iterator

import orbax.checkpoint as ocp
from etils import epath


def save_pytree(path: epath.PathLike, tree: Any) -> None:
  """Writes a pytree of arrays as an Orbax checkpoint at `path` (must not exist)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(epath.Path(path).resolve(), tree)
  checkpointer.wait_until_finished()


def restore_pytree(path: epath.PathLike, abstract: Any) -> Any:
  """Reads the checkpoint at `path` into the structure of `abstract`.

  `abstract` holds arrays or `jax.ShapeDtypeStruct`s (shardings included) in
  the saved structure.
  """
  return ocp.StandardCheckpointer().restore(epath.Path(path).resolve(),
                                            abstract)


@contextlib.contextmanager
def atomic_directory(path: epath.PathLike,
                     overwrite: bool = False) -> Iterator[epath.Path]:
  """Yields a scratch directory that becomes `path` only if the body succeeds.

  An existing `path` is never half-overwritten: without `overwrite` it is an
  error (FileExistsError), with it the old directory is replaced only after
  the new one is complete. On failure the scratch directory is removed.
  """
  path = epath.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f'{path}: already exists; not overwriting it')
  scratch = path.parent / f'.{path.name}.tmp-{uuid.uuid4().hex[:8]}'
  path.parent.mkdir(parents=True, exist_ok=True)
  scratch.mkdir()
  try:
    yield scratch
  except BaseException:
    shutil.rmtree(scratch, ignore_errors=True)
    raise
  if path.exists():
    old = path.parent / f'.{path.name}.old-{uuid.uuid4().hex[:8]}'
    path.rename(old)
    scratch.rename(path)
    shutil.rmtree(old, ignore_errors=True)
  else:
    scratch.rename(path)
