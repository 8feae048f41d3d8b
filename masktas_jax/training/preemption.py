"""Whether a training loop should stop after a step because its job got
SIGTERM (a preemptible VM, SLURM's time limit): the trainer then saves that
step and stops, and the same command resumes."""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
  """Whether to stop after a step because the job got SIGTERM.

  One process: a signal handler sets a flag (installed for the run, the
  previous handler restored after). Several processes: JAX's preemption
  sync point, so that every process stops after the same step.
  """

  def __init__(self):
    self.signalled = False
    self.previous = None
    if jax.process_count() == 1 and (
        threading.current_thread() is threading.main_thread()):
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, *_):
    self.signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signalled

  def close(self) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
      self.previous = None
