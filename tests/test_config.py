"""Configs: paper settings, locking, documented fields, validation."""

import pathlib
import re

import numpy as np
import pytest

from masktas_jax import config_lib, defaults, registry

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / 'configs'
NAMES = ('demo', 'tiny', 'small', 'base')


def load(name, arg=''):
  """`configs/<name>.py[:arg]`, unvalidated."""
  return config_lib.load_config(f'{CONFIGS / name}.py' + (f':{arg}' if arg
                                                           else ''),
                                check=False)


@pytest.mark.parametrize('name', NAMES)
def test_config_is_valid_locked_and_documented(name):
  config = load(name)
  config_lib.validate(config)
  # The keys other tools rely on.
  for key in ('mode', 'seed', 'data.name', 'teacher.checkpoint',
              'supernet.steps', 'search.population', 'search.generations',
              'finetune.steps'):
    section, _, field = key.rpartition('.')
    assert field in (config[section] if section else config), key
  with pytest.raises(AttributeError):
    config.search.populaton = 3  # Locked: a typo cannot add a field.
  text = (CONFIGS / f'{name}.py').read_text()
  assert f'python -m masktas_jax.main --config=configs/{name}.py' in text
  assert config.mode == 'pipeline'
  # The demo pre-trains its teacher; the paper's configs are given the
  # released one, and their commands show how.
  assert config.teacher.pretrain == (name == 'demo')
  if name != 'demo':
    assert '--config.teacher.checkpoint=/tmp/teacher_vit_b' in text
    assert 'python -m masktas_jax.convert_mae' in text


@pytest.mark.parametrize('name, space', [
    ('tiny', ((192, 216, 240), (12, 13, 14), (3, 4), (3.5, 4.0))),
    ('small', ((320, 384, 448), (12, 13, 14), (5, 6, 7), (3.0, 3.5, 4.0))),
    ('base', ((528, 576, 624), (14, 15, 16), (9, 10), (3.0, 3.5, 4.0))),
])
def test_paper_configs(name, space):
  c = load(name)
  # configs/paper.py:NAME and configs/NAME.py are one config.
  assert load('paper', name).to_dict() == c.to_dict()
  s = c.space
  assert (tuple(s.embed_dims), tuple(s.depths), tuple(s.num_heads),
          tuple(s.mlp_ratios)) == space
  assert (s.image_size, s.patch_size) == (224, 16)
  assert c.data.name == 'imagenet2012'
  assert c.supernet.mask_ratio == 0.9
  assert (c.supernet.epochs, c.supernet.warmup_epochs) == (100, 20)
  assert c.supernet.weight_decay == 0.05
  assert (c.search.population, c.search.generations) == (50, 20)
  space_obj = config_lib.space_from_config(c)
  lo, hi = c.search.min_params_m * 1e6, c.search.max_params_m * 1e6
  # Random Archs land in the parameter window often enough to search it.
  rng = np.random.default_rng(0)
  inside = sum(lo <= space_obj.count_params(space_obj.sample(rng)) <= hi
               for _ in range(2000))
  assert inside >= 20, inside


def test_demo_is_small_enough_for_a_cpu():
  c = load('demo')
  space = config_lib.space_from_config(c)
  assert c.data.name == 'digits'
  assert space.count_params(space.max_arch()) < 2e6
  assert space.num_patches <= 64


def test_fashion_reads_debian_idx_files_and_never_chooses_on_test():
  c = load('fashion')
  config_lib.validate(c)
  with pytest.raises(AttributeError):
    c.search.populaton = 3
  assert ('python -m masktas_jax.main --config=configs/fashion.py'
          in (CONFIGS / 'fashion.py').read_text())
  assert (c.data.name, c.data.data_dir) == ('idx', '')
  assert c.teacher.pretrain and not c.teacher.checkpoint
  # Train and validation are disjoint parts of Fashion-MNIST's train set;
  # the search and the training read those, the test split is the report.
  assert (c.data.train_split, c.data.eval_split) == ('train[:50000]',
                                                      'train[50000:]')
  assert c.search.eval_split == c.data.eval_split
  assert c.finetune.eval_split == 'test'
  # A window that holds every embed width at some depth.
  space = config_lib.space_from_config(c)
  assert space.num_patches == 49
  rng = np.random.default_rng(0)
  inside = {a.embed_dim for a in (space.sample(rng) for _ in range(3000))
            if c.search.min_params_m <= space.count_params(a) / 1e6
            <= c.search.max_params_m}
  assert inside == set(space.embed_dims)


def test_demo_wide_is_the_search_signal_setting():
  demo, wide = load('demo'), load('demo', 'wide')
  space = config_lib.space_from_config(wide)
  assert min(space.embed_dims) == 32 and min(space.depths) == 1
  assert len(space.mlp_ratios) > len(demo.space.mlp_ratios)
  assert wide.supernet.steps > demo.supernet.steps
  assert wide.rank.yardstick == 'finetune'
  assert wide.rank.finetune_steps < demo.finetune.steps
  # Loaded by path and argument, with overrides, as --config takes it.
  same = config_lib.load_config(f'{CONFIGS}/demo.py:wide',
                                **{'search.tau': 0.5, 'seed': 3})
  assert (same.search.tau, same.seed) == (0.5, 3)
  assert same.space.embed_dims == wide.space.embed_dims
  with pytest.raises(ValueError, match="takes no argument or 'wide'"):
    load('demo', 'wid')


def test_paper_config_names_its_spaces():
  with pytest.raises(ValueError, match='takes one of tiny, small, base, got '
                     "'huge'"):
    load('paper', 'huge')
  with pytest.raises(ValueError, match='got None'):
    load('paper')


def test_the_default_relation_is_the_losses_default():
  from masktas_jax import losses
  config = config_lib.base_config()
  assert config_lib.relation_from_config(config.search) == losses.Relation()


def test_every_field_has_a_comment_above_it():
  """Each assignment in base_config sits under a comment (maybe shared)."""
  source = pathlib.Path(defaults.__file__).read_text().splitlines()
  start = next(i for i, l in enumerate(source) if 'def base_config' in l)
  end = next(i for i, l in enumerate(source) if 'return c' in l and i > start)
  lines = source[start:end]
  assign = re.compile(r'^\s+c\.\w+(\.\w+)? = (?!ml_collections)')
  for i, line in enumerate(lines):
    if assign.match(line):
      j = i - 1
      while assign.match(lines[j]):
        j -= 1
      assert lines[j].strip().startswith('#'), line


@pytest.mark.parametrize('override, field', [
    (('mode', 'serch'), 'mode'),
    (('data.name', ''), 'data.name'),
    (('space.patch_size', 5), 'space.image_size'),
    (('space.embed_dims', ()), 'space.embed_dims'),
    (('supernet.mask_ratio', 1.0), 'supernet.mask_ratio'),
    (('teacher.num_heads', 5), 'teacher.num_heads'),
    (('supernet.batch_size', 0), 'supernet.batch_size'),
    (('search.parents', 100), 'search.parents'),
    (('search.layer_mutation_prob', 1.5), 'search.layer_mutation_prob'),
    (('search.max_params_m', 1.0), 'search.max_params_m'),
    (('finetune.drop_path', 1.0), 'finetune.drop_path'),
    (('search.tau', 0.0), 'search.tau'),
    (('search.tau', -0.1), 'search.tau'),
    (('search.student_tau_ratio', 0.0), 'search.student_tau_ratio'),
    (('search.relation', 'dots'), 'search.relation'),
    (('rank.yardstick', 'probe'), 'rank.yardstick'),
    (('rank.finetune_steps', 0), 'rank.finetune_steps'),
    (('profile_steps', -1), 'profile_steps'),
    (('data.workers', -1), 'data.workers'),
    (('data.threads', -2), 'data.threads'),
    (('data.eval_crop_fraction', 0.0), 'data.eval_crop_fraction'),
    (('data.eval_crop_fraction', 1.5), 'data.eval_crop_fraction'),
    (('supernet.cls_target', 'cls'), 'supernet.cls_target'),
    (('supernet.views_per_image', 0), 'supernet.views_per_image'),
    (('supernet.views_per_image', 3), 'supernet.views_per_image'),
    (('finetune.probe_images', 0), 'finetune.probe_images'),
    (('finetune.lr', 0.0), 'finetune.lr'),
    (('finetune.weight_decay', -0.1), 'finetune.weight_decay'),
    (('finetune.warmup_epochs', -1.0), 'finetune.warmup_epochs'),
    (('finetune.head_init', 'linear'), 'finetune.head_init'),
    (('finetune.compute_dtype', 'float16'), 'finetune.compute_dtype'),
    (('search.fitness', 'relations'), 'search.fitness'),
])
def test_invalid_config_errors_name_the_field(override, field):
  config = load('small')
  key, value = override
  section, _, name = key.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(f'config.{field}')):
    registry.validate(config)  # The mode, then config_lib.validate.
