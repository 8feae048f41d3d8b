"""A study's record: its results (and the models they came from) as files
kept in the repository, because no machine outlives a study of many hours.

Free of side effects on import (unlike `common`), so tests import it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
from typing import Any, Iterator

import jax
import numpy as np
from etils import epath

from flax import nnx

from masktas_jax.storage import artifacts, model_dirs

# Where studies keep their results in the repository (`Record`).
RECORDS = pathlib.Path(__file__).resolve().parent / 'records'


# Config fields that name places on one machine, not what a study measures.
_PLACES = ('teacher.checkpoint', 'search.supernet')


class Record:
  """A study's results as small JSON files kept in the repository (under
  `RECORDS`), apart from its workdir (checkpoints, which a fresh machine
  retrains): machines do not outlive a study of many hours, commits do.

  `Record(path) / 'seed0' / 'x.json'` names a file; `get` reads one (None
  if absent), `put` writes one atomically; `bind` ties the whole record to
  one study's config.
  """

  def __init__(self, path: epath.PathLike):
    self.path = epath.Path(path)

  def __truediv__(self, name: str) -> 'Record':
    return Record(self.path / name)

  def get(self) -> Any:
    return json.loads(self.path.read_text()) if self.path.exists() else None

  def put(self, value: Any) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(self.path, value)

  def bind(self, config, **identity: Any) -> None:
    """Records `config` (less the machine's paths, `_PLACES`) and
    `identity` (e.g. a supernet's fingerprint) in `study.json` the first
    time; later, exits with one line naming the fields that differ, so
    that a smoke run with other settings never mixes its runs into a
    study's record."""
    flat = dict(_flatten(config.to_dict()), **identity)
    for place in _PLACES:
      flat.pop(place, None)
    mine = json.loads(json.dumps(flat))  # Tuples as the file has them.
    theirs = (self / 'study.json').get()
    if theirs is None:
      (self / 'study.json').put(mine)
      return
    differ = sorted(k for k in mine.keys() | theirs.keys()
                    if mine.get(k) != theirs.get(k))
    if differ:
      raise SystemExit(
          f'{self.path}: recorded for another study; ' + ', '.join(
              f'{k} {theirs.get(k)!r} there, {mine.get(k)!r} here'
              for k in differ[:3]) + (' ...' if len(differ) > 3 else '') +
          '; use another --record')


def run_record(record: Record, steps: int, arch, name: str) -> Record:
  """Where a seed's `record` keeps run `name` ('ft0', 'scratch0', ...) of
  `arch` (a `masktas_jax.space.Arch`) at `steps` fine-tuning steps."""
  return (record / f'{steps}steps' / artifacts.arch_key(arch.to_json()) /
          f'{name}.json')


def _flatten(tree: dict, prefix: str = '') -> Iterator[tuple[str, Any]]:
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def fingerprint(tree: Any) -> str:
  """sha256 of a pytree's arrays (leaves in path order, dtype, shape and
  bytes): equal exactly when two trainings made the same bits."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.asarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}{leaf.dtype}{leaf.shape}'
                  .encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def versions() -> dict[str, str]:
  """The versions of what decides a training's bits: Python, the
  libraries, XLA's CPU flags, and the CPU."""
  cpu = platform.machine()
  info = pathlib.Path('/proc/cpuinfo')
  if info.exists():
    cpu = next((line.split(':', 1)[1].strip() for line in
                info.read_text().splitlines()
                if line.startswith('model name')), cpu)
  out = {'python': platform.python_version(), 'cpu': cpu,
         'XLA_FLAGS': os.environ.get('XLA_FLAGS', '')}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain',
               'numpy'):
    out[name] = importlib.metadata.version(name)
  return out


def supernet_fingerprint(model_dir: epath.PathLike) -> str:
  """`fingerprint` of the parameters of the supernet saved in `model_dir`."""
  student = model_dirs.load_student(model_dir)
  return fingerprint(nnx.to_pure_dict(nnx.state(student, nnx.Param)))
