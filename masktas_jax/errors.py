"""The error every stage raises for input it cannot use.

`main` catches `MaskTASError` alone, prints its message as one line and
exits with code 2; whatever the workdir held stays intact. Each stage's
error subclasses it (and ValueError, or RuntimeError for a diverged run), so
a new stage needs no change to `main`.
"""

from __future__ import annotations


class MaskTASError(Exception):
  """Bad input or a run that cannot go on, with a one-line message naming
  the field or file."""


class Preempted(Exception):
  """A run stopped on SIGTERM (a preemptible VM, SLURM's time limit) after
  saving a checkpoint: not an error; the same command resumes it."""


class ConfigError(MaskTASError, ValueError):
  """A config field holds a value the run cannot use."""


class DataError(MaskTASError, ValueError):
  """A data source that cannot be read as configured."""


class TeacherError(MaskTASError, ValueError):
  """A teacher directory that cannot be used with this config."""


class SupernetError(MaskTASError, ValueError):
  """A trained-supernet directory that cannot be used with this config."""


class FinetuneError(MaskTASError, ValueError):
  """An Arch or dataset that cannot be fine-tuned as configured."""


class SearchError(MaskTASError, ValueError):
  """The search cannot run as configured (window, state or scores)."""
