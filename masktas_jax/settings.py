"""The typed settings the libraries take from a run's config, where no
model's own config class holds them (`models.mae.MAEConfig`,
`models.student.StudentConfig`): `config_lib` makes them. Light on
purpose: reading a config loads no training code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from masktas_jax.losses import Relation
from masktas_jax.space import SearchSpace

# How one scoring call runs the population (search.scoring besides 'auto';
# `evaluation.fitness`): 'vmap' over the candidates on the supernet's mask
# path, or 'map' each at its own widths on the switch path.
SCORING_STRATEGIES = ('vmap', 'map')


@dataclasses.dataclass(frozen=True)
class Scoring:
  """How the search scores candidates, from a run's config
  (`config_lib.scoring`): on `images` evaluation views of `split` of
  `data` (config.data) at `space`'s size, in global batches of
  `batch_size`, each masked at `mask_ratio`; signals by `relation`, rated
  by `fitness`, run by `strategy`; the pixel target normalised per patch
  with `norm_pix`; images and masks drawn from `seed`. The models: the
  teacher at `teacher` and the supernet at `supernet` ('' for each: the
  workdir's)."""

  data: Any
  space: SearchSpace
  split: str
  images: int
  batch_size: int
  mask_ratio: float
  relation: Relation
  fitness: str
  strategy: str
  norm_pix: bool
  seed: int
  teacher: str = ''
  supernet: str = ''


@dataclasses.dataclass(frozen=True)
class FinetuneSetup:
  """What fine-tuning reads of a run (`config_lib.finetune_setup`): the
  recipe (config.finetune), the data (config.data), the space, the run's
  seed, the supernet whose weights it inherits ('' = the workdir's) and
  the loop's logging and checkpoint settings (`trainer.LoopConfig`'s
  keywords)."""

  recipe: Any
  data: Any
  space: SearchSpace
  seed: int
  supernet: str = ''
  loop: Mapping[str, int] = dataclasses.field(default_factory=dict)
