"""What a mode is: one declaration per stage module, read by `registry`.

A stage module (`stages/`, one per mode and named after it) ends with
`STAGE = Stage(...)`: its mode name, its `run`, the checks
of its inputs before anything is written, and what it reads. `main`, the
config's validation, the pre-flight checks and compile mode derive their
lists of modes from those declarations (`registry`), so adding a stage is
its module plus one line in `registry.STAGES`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from etils import epath

# The existing models a stage may read, by the config field naming them.
TEACHER_CHECKPOINT = 'teacher.checkpoint'
SUPERNET = 'search.supernet'


@dataclasses.dataclass(frozen=True)
class Stage:
  """One mode of `python -m masktas_jax.main`.

  mode: the `config.mode` value that runs it alone.
  run: `run(config, workdir)`; returns at once when its output exists.
  check: `check(config, workdir, earlier)` raises a MaskTASError for inputs
    that cannot work, before anything is written; `earlier` holds the
    modes this invocation runs before it, whose outputs do not exist yet.
  reads: the config fields (TEACHER_CHECKPOINT, SUPERNET) naming existing
    models it reads; they are checked before any stage runs.
  data: it reads the training split.
  batch: the config section whose `batch_size` is a global batch split
    over the devices (None: it has none).
  pipeline: mode=pipeline runs it (in `registry.STAGES` order).
  compile_only: it compiles for another accelerator and runs no step: one
    process on the CPU back end, no peers, and no compilation cache
    (compile-only executables cannot be loaded back from it).
  """
  mode: str
  run: Callable[[Any, epath.Path], Any]
  check: Callable[[Any, epath.Path, frozenset[str]], None] | None = None
  reads: tuple[str, ...] = ()
  data: bool = False
  batch: str | None = None
  pipeline: bool = False
  compile_only: bool = False
