"""mode=finetune: the found subnet, with its inherited weights, as a classifier.

The Arch is the search's `best_arch.json`, or one given in
`config.finetune.arch`; `finetuning.fine_tune` does the work and writes
`finetune/` (checkpoints, metrics.jsonl, loss.png, metrics.json and the
exported classifier `model/`).
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from masktas_jax import config_lib
from masktas_jax.errors import FinetuneError
from masktas_jax.space import Arch, SearchSpace
from masktas_jax.stage import Stage, SUPERNET
from masktas_jax.storage import artifacts
from masktas_jax.training import finetuning


def resolve_arch(config, workdir: epath.Path, space: SearchSpace) -> Arch:
  """`config.finetune.arch` (a JSON file or inline JSON, an Arch or a
  best_arch.json), or the search's best_arch.json in the workdir."""
  spec = config.finetune.arch.strip()
  if spec.startswith('{'):
    text, where = spec, 'config.finetune.arch'
  else:
    path = epath.Path(spec) if spec else artifacts.best_arch(workdir)
    if not path.exists():
      raise FinetuneError(
          f'config.finetune.arch: {path} does not exist' if spec else
          f'config.finetune.arch: empty and no search result at {path}; run '
          '--config.mode=search first or give an Arch JSON')
    text, where = path.read_text(), str(path)
  try:
    value = json.loads(text)
    return space.validate(Arch.from_dict(value.get('arch', value)))
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise FinetuneError(f'{where}: not an Arch of this space ({e})') from e


def check(config, workdir: epath.Path, earlier: frozenset[str]) -> None:
  """FinetuneError for an Arch that cannot be read, unless this run's
  search writes it first."""
  if 'search' not in earlier:
    resolve_arch(config, workdir, config_lib.space_from_config(config))


def run(config, workdir: epath.Path) -> dict[str, Any]:
  """Fine-tunes (or resumes), exports and evaluates the Arch; returns
  metrics.json's content."""
  done = finetuning.finished(workdir)
  if done is not None:
    return done
  arch = resolve_arch(config, workdir, config_lib.space_from_config(config))
  return finetuning.fine_tune(config_lib.finetune_setup(config), workdir,
                              arch)


STAGE = Stage('finetune', run, check, reads=(SUPERNET,),
                    data=True, batch='finetune', pipeline=True)
