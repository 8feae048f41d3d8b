"""Loading, validating and reading configs; helpers for `configs/*.py`.

Every config file starts from `base_config()` (its fields and defaults live
in `masktas_jax.defaults`), overrides what it needs and returns
`lock(config)`: a locked ConfigDict, so a mistyped `--config.KEY=VALUE`
override fails instead of being silently ignored. `validate` names the first
field that cannot work; the typed views (`space_from_config`, `scoring`,
`finetune_setup`, ...) are what the stages read.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from masktas_jax import defaults, settings
from masktas_jax.compilation import chips
from masktas_jax.errors import ConfigError
from masktas_jax.evaluation.signals import FITNESSES
from masktas_jax.losses import Relation, RELATION_FORMS
from masktas_jax.models.mae import MAEConfig
from masktas_jax.models.student import CLS_TARGETS, StudentConfig
from masktas_jax.models.vit import POOLS
from masktas_jax.space import ArchError, SearchSpace

# Config files build their configs from these (defaults.py's).
base_config = defaults.base_config
paper_config = defaults.paper_config
AUTOFORMER_SPACES = defaults.AUTOFORMER_SPACES

COMPUTE_DTYPES = ('float32', 'bfloat16')
# mode=rank's supervised yardsticks (masktas_jax.stages.rank).
YARDSTICKS = ('knn', 'linear', 'finetune')
# finetune.head_init's choices.
HEAD_INITS = ('random', 'probe')
# data.cache_encoding's choices (masktas_jax.data.cache).
CACHE_ENCODINGS = ('raw', 'jpeg')


def load_config(spec: str, *, check: bool = True,
                **overrides: Any) -> ml_collections.ConfigDict:
  """The config of `spec` ('configs/demo.py' or 'configs/demo.py:wide', as
  --config takes it) with `overrides` given as **{'search.tau': 0.2, ...}
  (dotted keys as in --config.KEY=VALUE); validated unless `check` is
  False (for tests that build a config in steps)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('config_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for key, value in overrides.items():
    section, _, name = key.rpartition('.')
    target = config
    for part in section.split('.') if section else ():
      target = target[part]
    target[name] = value
  return validate(config) if check else config


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.lock()
  return config


def space_from_config(config: ml_collections.ConfigDict) -> SearchSpace:
  """The SearchSpace of `config.space`; errors name the config field."""
  s = config.space
  try:
    return SearchSpace(
        embed_dims=tuple(s.embed_dims), depths=tuple(s.depths),
        num_heads=tuple(s.num_heads), mlp_ratios=tuple(s.mlp_ratios),
        image_size=s.image_size, patch_size=s.patch_size,
        num_classes=s.num_classes, in_chans=s.in_chans)
  except (ArchError, TypeError) as e:
    raise ConfigError(str(e).replace('SearchSpace.', 'config.space.')) from e


def mae_config(config: ml_collections.ConfigDict) -> MAEConfig:
  """The MAEConfig that `config.teacher` and `config.space` describe."""
  t, s = config.teacher, config.space
  return MAEConfig(
      image_size=s.image_size, patch_size=s.patch_size, in_chans=s.in_chans,
      embed_dim=t.embed_dim, depth=t.depth, num_heads=t.num_heads,
      decoder_embed_dim=t.decoder_embed_dim, decoder_depth=t.decoder_depth,
      decoder_num_heads=t.decoder_num_heads, norm_pix_loss=t.norm_pix_loss)


def student_config(config: ml_collections.ConfigDict,
                   teacher_dim: int) -> StudentConfig:
  """The StudentConfig of `config.space` and `config.supernet`'s decoder,
  distilling a teacher of width `teacher_dim`."""
  s = config.supernet
  return StudentConfig(
      space=space_from_config(config), teacher_dim=teacher_dim,
      decoder_embed_dim=s.decoder_embed_dim, decoder_depth=s.decoder_depth,
      decoder_num_heads=s.decoder_num_heads)


def relation_from_config(search_config: ml_collections.ConfigDict
                         ) -> Relation:
  """The `losses.Relation` of `config.search`."""
  s = search_config
  return Relation(form=s.relation, tau=s.tau,
                  student_tau=s.tau * s.student_tau_ratio,
                  exclude_self=s.exclude_self)


def scoring(config: ml_collections.ConfigDict) -> settings.Scoring:
  """How the search scores candidates: `config.search`'s images, fitness
  and relation, the supernet's mask ratio, the teacher's pixel target."""
  s = config.search
  return settings.Scoring(
      data=config.data, space=space_from_config(config),
      split=s.eval_split or config.data.train_split, images=s.eval_images,
      batch_size=s.batch_size, mask_ratio=config.supernet.mask_ratio,
      relation=relation_from_config(s), fitness=s.fitness,
      strategy=s.scoring, norm_pix=config.teacher.norm_pix_loss,
      seed=config.seed, teacher=config.teacher.checkpoint,
      supernet=s.supernet)


def finetune_setup(config: ml_collections.ConfigDict
                   ) -> settings.FinetuneSetup:
  """What fine-tuning reads of a run: `config.finetune`'s recipe, the
  data, the space, the seed, the supernet and the loop's settings."""
  return settings.FinetuneSetup(
      recipe=config.finetune, data=config.data,
      space=space_from_config(config), seed=config.seed,
      supernet=config.search.supernet, loop=loop_settings(config))


def loop_settings(config: ml_collections.ConfigDict) -> dict[str, int]:
  """The run-wide logging, checkpoint and profiling settings, as
  `trainer.LoopConfig`'s keywords."""
  return {k: config[k] for k in ('checkpoint_every', 'keep_checkpoints',
                                 'log_every', 'profile_steps')}


def _check(ok: bool, field: str, message: str, value: Any) -> None:
  if not ok:
    raise ConfigError(f'config.{field}: {message}, got {value!r}')


# Fields whose None means "derived at run time", not "required".
_DERIVED = ('data.workers',)


def _unset(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Dotted names of the required fields left None
  (`config_dict.placeholder`)."""
  names = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      names += _unset(value, f'{prefix}{key}.')
    elif value is None and prefix + key not in _DERIVED:
      names.append(prefix + key)
  return names


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError naming the first field that cannot work."""
  unset = _unset(config)
  if unset:
    # A config marks what it cannot guess (a path to an existing model)
    # with a placeholder.
    raise ConfigError(
        ', '.join(f'config.{u}' for u in unset) + ': this config needs '
        + ('them; set ' if len(unset) > 1 else 'it; set ')
        + ' '.join(f'--config.{u}=...' for u in unset))
  _check(bool(config.data.name), 'data.name', 'must not be empty',
         config.data.name)
  for field in ('checkpoint_every', 'keep_checkpoints', 'log_every'):
    _check(config[field] > 0, field, 'must be positive', config[field])
  _check(config.profile_steps >= 0, 'profile_steps', 'must be >= 0',
         config.profile_steps)
  workers = config.data.get('workers')
  _check(workers is None or workers >= 0, 'data.workers', 'must be >= 0 '
         '(0: no worker processes; None: derived from the cores, the memory '
         'and the source)', workers)
  _check(config.data.threads >= 0, 'data.threads', 'must be >= 0 (0: the '
         'CPU cores shared among the workers)', config.data.threads)
  _check(0 < config.data.eval_crop_fraction <= 1, 'data.eval_crop_fraction',
         'expected 0 < fraction <= 1', config.data.eval_crop_fraction)
  _check(config.data.prefetch >= 1, 'data.prefetch', 'must be >= 1',
         config.data.prefetch)
  side = config.data.cache_short_side
  _check(side == 0 or side >= config.space.image_size,
         'data.cache_short_side', f'expected 0 (space.image_size / '
         f'data.eval_crop_fraction) or >= space.image_size '
         f'({config.space.image_size})', side)
  _check('://' not in config.data.cache, 'data.cache', 'must be a local '
         'folder (the cache is written and read with local file calls)',
         config.data.cache)
  _check(config.data.cache_encoding in CACHE_ENCODINGS, 'data.cache_encoding',
         f'expected one of {CACHE_ENCODINGS}', config.data.cache_encoding)
  _check(1 <= config.data.cache_quality <= 100, 'data.cache_quality',
         'expected 1..100', config.data.cache_quality)
  space_from_config(config)
  for stage in ('teacher', 'supernet'):
    ratio = config[stage].mask_ratio
    _check(0 < ratio < 1, f'{stage}.mask_ratio', 'expected 0 < ratio < 1',
           ratio)
  for stage in ('teacher', 'supernet', 'finetune'):
    sec = config[stage]
    for field in ('epochs', 'steps', 'warmup_epochs'):
      _check(sec[field] >= 0, f'{stage}.{field}', 'must be >= 0', sec[field])
    _check(sec.batch_size > 0, f'{stage}.batch_size', 'must be positive',
           sec.batch_size)
    _check(sec.epochs > 0 or sec.steps > 0, f'{stage}.steps',
           'epochs and steps are both 0: nothing to train', sec.steps)
  _check(config.supernet.grad_clip >= 0, 'supernet.grad_clip', 'must be >= 0',
         config.supernet.grad_clip)
  _check(config.supernet.beta >= 0, 'supernet.beta', 'must be >= 0',
         config.supernet.beta)
  views = config.supernet.views_per_image
  _check(isinstance(views, int) and views >= 1, 'supernet.views_per_image',
         'expected an integer >= 1', views)
  _check(config.supernet.batch_size % views == 0, 'supernet.views_per_image',
         f'must divide supernet.batch_size ({config.supernet.batch_size})',
         views)
  _check(config.supernet.cls_target in CLS_TARGETS,
         'supernet.cls_target', f'expected one of {CLS_TARGETS}',
         config.supernet.cls_target)
  _check(config.supernet.compute_dtype in COMPUTE_DTYPES,
         'supernet.compute_dtype', f'expected one of {COMPUTE_DTYPES}',
         config.supernet.compute_dtype)
  t = config.teacher
  _check(t.embed_dim == t.num_heads * 64, 'teacher.num_heads',
         f'embed_dim {t.embed_dim} must equal num_heads * 64', t.num_heads)
  s = config.search
  for field in ('population', 'generations', 'parents', 'eval_images',
                'batch_size'):
    _check(s[field] > 0, f'search.{field}', 'must be positive', s[field])
  _check(s.parents <= s.population, 'search.parents',
         f'cannot exceed search.population ({s.population})', s.parents)
  for field in ('layer_mutation_prob', 'depth_mutation_prob',
                'embed_mutation_prob'):
    _check(0 <= s[field] <= 1, f'search.{field}', 'expected a probability',
           s[field])
  for lo, hi in (('min_params_m', 'max_params_m'), ('min_gmacs', 'max_gmacs')):
    _check(s[lo] >= 0, f'search.{lo}', 'must be >= 0', s[lo])
    _check(s[hi] == 0 or s[hi] >= s[lo], f'search.{hi}',
           f'must be 0 (unbounded) or >= search.{lo} ({s[lo]})', s[hi])
  for field in ('tau', 'student_tau_ratio'):
    _check(s[field] > 0, f'search.{field}', 'must be positive', s[field])
  _check(s.fitness in FITNESSES, 'search.fitness',
         f'expected one of {FITNESSES}', s.fitness)
  _check(s.relation in RELATION_FORMS, 'search.relation',
         f'expected one of {RELATION_FORMS}', s.relation)
  strategies = ('auto',) + settings.SCORING_STRATEGIES
  _check(s.scoring in strategies, 'search.scoring',
         f'expected one of {strategies}', s.scoring)
  _check(not s.eval_split.startswith('test'), 'search.eval_split',
         'the search never looks at the test split', s.eval_split)
  _check(config.rank.yardstick in YARDSTICKS, 'rank.yardstick',
         f'expected one of {YARDSTICKS}', config.rank.yardstick)
  for field in ('num_archs', 'knn_k', 'finetune_steps', 'train_images',
                'eval_images'):
    _check(config.rank[field] > 0, f'rank.{field}', 'must be positive',
           config.rank[field])
  f = config.finetune
  _check(f.lr > 0, 'finetune.lr', 'must be positive', f.lr)
  _check(f.weight_decay >= 0, 'finetune.weight_decay', 'must be >= 0',
         f.weight_decay)
  _check(0 <= f.drop_path < 1, 'finetune.drop_path', 'expected 0 <= rate < 1',
         f.drop_path)
  _check(0 < f.layer_decay <= 1, 'finetune.layer_decay',
         'expected 0 < decay <= 1', f.layer_decay)
  _check(0 <= f.label_smoothing < 1, 'finetune.label_smoothing',
         'expected 0 <= value < 1', f.label_smoothing)
  for field in ('mixup', 'cutmix'):
    _check(f[field] >= 0, f'finetune.{field}', 'must be >= 0 (0: off)',
           f[field])
  _check(0 < f.crop_min_scale <= 1, 'finetune.crop_min_scale',
         'expected 0 < scale <= 1', f.crop_min_scale)
  _check(0 <= f.random_erase <= 1, 'finetune.random_erase',
         'expected a probability, 0 <= p <= 1', f.random_erase)
  _check(0 <= f.randaugment <= 10, 'finetune.randaugment',
         'expected a magnitude 0..10 (0: off)', f.randaugment)
  _check(0 <= f.randaugment_std < float('inf'), 'finetune.randaugment_std',
         'must be finite and >= 0', f.randaugment_std)
  _check(0 <= f.ema < 1, 'finetune.ema', 'expected 0 <= decay < 1 (0: off)',
         f.ema)
  _check(f.pool in POOLS, 'finetune.pool', f'expected one of {POOLS}',
         f.pool)
  _check(f.head_init in HEAD_INITS, 'finetune.head_init',
         f'expected one of {HEAD_INITS}', f.head_init)
  _check(not (f.head_init == 'probe' and f.from_scratch),
         'finetune.head_init', "'probe' needs inherited weights "
         '(finetune.from_scratch=False)', f.head_init)
  _check(f.compute_dtype in COMPUTE_DTYPES, 'finetune.compute_dtype',
         f'expected one of {COMPUTE_DTYPES}', f.compute_dtype)
  _check(f.probe_images >= 1, 'finetune.probe_images', 'must be >= 1',
         f.probe_images)
  chips.parse_target(config.compile.platform, config.compile.topology)
  return config
