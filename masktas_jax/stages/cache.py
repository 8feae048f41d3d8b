"""mode=cache: the pre-resized copies of the training and evaluation splits
that `data.cache` reads instead of the source (`data.cache`).

  python -m masktas_jax.main --config=configs/small.py --workdir=DIR \\
      --config.mode=cache --config.data.cache=/fast/disk/imagenet_256

Writes `data.cache/<split>/` for every split the config reads (training,
evaluation, and fine-tuning's and the search's evaluation splits where
set), then later stages run with the
same `--config.data.cache`. A split whose cache exists is skipped; one
built from another source or at another size is refused.
"""

from __future__ import annotations

from typing import Any

from etils import epath

from masktas_jax import data
from masktas_jax.data import cache
from masktas_jax.errors import DataError
from masktas_jax.stage import Stage


def splits(config) -> tuple[str, ...]:
  """Every split a run of `config` reads: training, evaluation, and the
  fine-tuning's and search's own evaluation splits where set."""
  return tuple(dict.fromkeys(s for s in (
      config.data.train_split, config.data.eval_split,
      config.finetune.get('eval_split', ''),
      config.search.get('eval_split', '')) if s))


def check(config, workdir: epath.Path, earlier: frozenset[str]) -> None:
  """DataError without data.cache, for a cache built from something else
  or being written; the sources must open."""
  del workdir, earlier
  if not config.data.cache:
    raise DataError('config.data.cache: mode=cache writes the pre-resized '
                    'splits there; give a folder')
  for split in splits(config):
    if cache.check(config.data, split, config.space.image_size) is None:
      data.original_source(config.data, split)


def run(config, workdir: epath.Path) -> dict[str, Any]:
  """Builds each split's cache (or reads back the one there); returns
  {split: cache.json}."""
  del workdir  # The cache lives where data.cache says, for every run.
  return {split: cache.build(data.original_source(config.data, split),
                             config.data, split, config.space.image_size,
                             config.data.threads)
          for split in splits(config)}


# Not in the pipeline: a run reads its cache once one is built.
STAGE = Stage('cache', run, check)
