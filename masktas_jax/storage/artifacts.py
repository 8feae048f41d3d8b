"""The workdir's layout, and the one format of a model directory.

Every path a stage reads or writes is named here, so that stages share
artifacts rather than each other's modules:

    WORKDIR/config.json, space.json, space.png, summary.json, report.png,
            jax_cache/
    WORKDIR/<stage>/checkpoints/, metrics.jsonl, loss.png, profile/
                                                          (training stages)
    WORKDIR/teacher/model/       teacher.json + params/
    WORKDIR/supernet/model/      student.json + params/
    WORKDIR/search/state.json, history.jsonl, best_arch.json, fitness.png,
                   pareto.png
    WORKDIR/rank/rank.json, scatter.png, finetune/<steps>steps/<arch hash>/
    WORKDIR/finetune/metrics.json, model/  classifier.json + params/
    WORKDIR/compile/report.json

A model directory holds `<kind>.json` (what it takes to rebuild the model)
and an Orbax checkpoint `params/` of its arrays, and is written atomically:
a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import jax
from etils import epath

from masktas_jax.errors import MaskTASError, TeacherError
from masktas_jax.storage import checkpoint

# --- the workdir ----------------------------------------------------------

CONFIG = 'config.json'
SPACE = 'space.json'
SPACE_PLOT = 'space.png'
SUMMARY = 'summary.json'
REPORT = 'report.png'
# JAX's persistent compilation cache (config.compilation_cache).
JAX_CACHE = 'jax_cache'

# In each training stage's directory (trainer.py writes them).
CHECKPOINTS = 'checkpoints'
METRICS_LOG = 'metrics.jsonl'
LOSS_PLOT = 'loss.png'
# jax.profiler traces (config.profile_steps), in the stage's directory.
PROFILE = 'profile'
# The model a stage exports, in its directory.
MODEL = 'model'

# In search/.
SEARCH_STATE = 'state.json'
SEARCH_HISTORY = 'history.jsonl'
BEST_ARCH = 'best_arch.json'
FITNESS_PLOT = 'fitness.png'
PARETO_PLOT = 'pareto.png'
# In rank/.
RANK = 'rank.json'
SCATTER_PLOT = 'scatter.png'
# In finetune/.
FINETUNE_METRICS = 'metrics.json'
# In compile/ (mode=compile).
COMPILE_REPORT = 'report.json'


def write_json(path: epath.PathLike, value: Any) -> None:
  """`value` as JSON at `path`, atomically and from process 0 only: a kill
  never leaves half a file, and a reader never sees one (the files that
  mark a stage done, which reruns and other processes read)."""
  if jax.process_index() == 0:
    path = epath.Path(path)
    # A scratch name of its own per write: writers of the same file at once
    # (a study's workers sharing a record) never move each other's.
    scratch = path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp'
    scratch.write_text(json.dumps(value, indent=2))
    scratch.replace(path)


def stage_dir(workdir: epath.PathLike, stage: str) -> epath.Path:
  """`workdir/<stage>`: 'teacher', 'supernet', 'search', 'rank', 'finetune',
  'compile'."""
  return epath.Path(workdir) / stage


def model_dir(workdir: epath.PathLike, stage: str) -> epath.Path:
  """The model directory a stage exports: `workdir/<stage>/model`."""
  return stage_dir(workdir, stage) / MODEL


def teacher_model(checkpoint: str, workdir: epath.PathLike) -> epath.Path:
  """The teacher the run uses: `checkpoint` (config.teacher.checkpoint),
  else the one the teacher stage wrote.

  Raises:
    TeacherError: neither exists.
  """
  if checkpoint:
    return epath.Path(checkpoint)
  path = model_dir(workdir, 'teacher')
  if not is_model_dir(path, 'teacher'):
    raise TeacherError(
        f'config.teacher.checkpoint: empty and no teacher at {path}; run '
        '--config.mode=teacher first or point it at a converted teacher')
  return path


def supernet_model(supernet: str, workdir: epath.PathLike) -> epath.Path:
  """The trained supernet the run searches: `supernet`
  (config.search.supernet), else the one the supernet stage wrote (which
  need not exist yet)."""
  return epath.Path(supernet or model_dir(workdir, 'supernet'))


def best_arch(workdir: epath.PathLike) -> epath.Path:
  return stage_dir(workdir, 'search') / BEST_ARCH


def finetune_metrics(workdir: epath.PathLike) -> epath.Path:
  return stage_dir(workdir, 'finetune') / FINETUNE_METRICS


def arch_key(arch_json: str) -> str:
  """A short name for an Arch (its JSON's digest), for folders of runs."""
  return hashlib.sha1(arch_json.encode()).hexdigest()[:12]


def rank_finetune_dir(workdir: epath.PathLike, steps: int,
                      arch_json: str) -> epath.Path:
  """Where mode=rank's fine-tuning yardstick runs one Arch for `steps` steps:
  a workdir of its own, so that an interrupted rank resumes per Arch."""
  return (stage_dir(workdir, 'rank') / 'finetune' / f'{steps}steps' /
          arch_key(arch_json))


# --- model directories ----------------------------------------------------

PARAMS = 'params'


def meta_file(kind: str) -> str:
  """'teacher' -> 'teacher.json': the metadata file of a model directory."""
  return f'{kind}.json'


def is_model_dir(path: epath.PathLike, kind: str) -> bool:
  return (epath.Path(path) / meta_file(kind)).exists()


def save_model(path: epath.PathLike, kind: str, meta: dict[str, Any],
               arrays: Any, overwrite: bool = False) -> epath.Path:
  """Writes `meta` as `path/<kind>.json` and the pytree `arrays` as Orbax
  `path/params/`, atomically; every process calls it alike."""
  with checkpoint.atomic_directory(path, overwrite=overwrite) as scratch:
    if jax.process_index() == 0:
      (scratch / meta_file(kind)).write_text(json.dumps(meta, indent=2))
    checkpoint.save_pytree(scratch / PARAMS, arrays)
  return epath.Path(path)


def read_meta(path: epath.PathLike, kind: str,
              error: type[MaskTASError] = MaskTASError, what: str = '',
              missing: str = '') -> dict[str, Any]:
  """`path/<kind>.json` as a dict.

  Raises:
    error: no such file ("not a <what, default kind> directory", then
      `missing`, e.g. what to run first), or one that is not JSON.
  """
  path = epath.Path(path)
  file = path / meta_file(kind)
  if not file.exists():
    raise error(f'{path}: not a {what or kind} directory (no '
                f'{meta_file(kind)})' + (f'; {missing}' if missing else ''))
  try:
    return json.loads(file.read_text())
  except ValueError as e:
    raise error(f'{file}: unreadable: {e}') from e


def load_arrays(path: epath.PathLike, kind: str, abstract: Any,
                error: type[MaskTASError] = MaskTASError) -> Any:
  """The arrays of the model directory `path`, in the structure of
  `abstract` (arrays or ShapeDtypeStructs), replicated over every device.

  Raises:
    error: arrays missing, truncated or of other shapes than `abstract`.
  """
  path = epath.Path(path)
  try:
    return checkpoint.restore_pytree(path / PARAMS, abstract)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise error(
        f'{path}: its parameters do not match {meta_file(kind)} (missing, '
        'truncated, or written by another version)') from e
