"""TensorBoard scalars, written beside each stage's metrics.jsonl.

`tensorboard --logdir=WORKDIR` shows every stage as a run: the training
stages' losses, learning rate, norms and images/s, the search's progress per
generation, and the fine-tuned top-1/top-5. Only process 0 writes.

Event files are written with tensorboardX, which needs no TensorFlow (flax's
and clu's writers do, a dependency of some 600 MB we otherwise lack).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import jax
from etils import epath


class ScalarWriter:
  """Scalars of `directory`'s run; a no-op on processes other than 0."""

  def __init__(self, directory: epath.PathLike):
    self._writer = None
    if jax.process_index() == 0:
      # pylint: disable=g-import-not-at-top
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(logdir=str(directory), flush_secs=30)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is not None:
      for name, value in scalars.items():
        self._writer.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> 'ScalarWriter':
    return self

  def __exit__(self, *_) -> None:
    self.close()


def write_series(directory: epath.PathLike,
                 rows: Iterable[tuple[int, Mapping[str, float]]]) -> None:
  """(step, scalars) rows as one event file of `directory`'s run."""
  with ScalarWriter(directory) as writer:
    for step, scalars in rows:
      writer.write(step, scalars)
