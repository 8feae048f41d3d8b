"""configs/transfer.py: tfds sources of the four targets, and the pipeline
that searches an existing supernet on one and fine-tunes there."""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from etils import epath
from flax import nnx

from masktas_jax import config_lib, data, main
from masktas_jax.storage import artifacts, model_dirs
from helpers import ROOT, SMALL, run
from tfds_fixture import example, make_tfds_dataset


def _transfer(arg):
  spec = importlib.util.spec_from_file_location('transfer',
                                                ROOT / 'configs/transfer.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'oxford_iiit_pet',
                                  'oxford_flowers102'])
def test_transfer_config_builds_its_tfds_source(tmp_path, name):
  module, config = _transfer(name)
  classes, train_split, eval_split, _ = module.DATASETS[name]
  # The two ImageNet models have no default: the config says so.
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config.search.supernet, config.teacher.checkpoint'
                     r': this config needs them; set --config.search.supernet'
                     r'=... --config.teacher.checkpoint=...$'):
    config_lib.validate(config)
  config.teacher.checkpoint = config.search.supernet = '/imagenet/run'
  config.data.data_dir = make_tfds_dataset(
      tmp_path, name, num_train=4, num_test=3, num_validation=2,
      num_classes=classes)
  config_lib.validate(config)
  assert config.space.num_classes == classes
  assert (config.space.embed_dims, config.search.min_params_m) == (
      (320, 384, 448), 18.0)  # supernet-S and its window.
  train = data.get_source(config.data, config.data.train_split)
  # Flowers trains on train + validation, in that order.
  names = ['train'] * 4 + ['validation'] * 2 * ('validation' in train_split)
  assert (len(train), train.num_classes) == (len(names), classes)
  for i, split in enumerate(names):
    want = example(split, i - 4 * (split == 'validation'), 32, classes)
    assert train[i]['label'] == want['label']
    assert train[i]['image'].shape == (32, 32, 3)
    if name.startswith('cifar'):  # PNG; the others store lossy JPEG.
      np.testing.assert_array_equal(train[i]['image'], want['image'])
  assert len(data.get_source(config.data, eval_split)) == 3


def test_transfer_config_rejects_unknown_targets():
  with pytest.raises(ValueError, match='expected one of cifar10, cifar100'):
    _transfer('imagenette')
  with pytest.raises(ValueError, match="tiny, small, base, got 'huge'"):
    _transfer('cifar10,huge')
  assert _transfer('cifar100,tiny')[1].space.embed_dims == (192, 216, 240)


def test_transfer_pipeline_searches_the_given_supernet_and_fine_tunes(
    workdir, tmp_path, capsys):  # noqa: F811
  _, config = _transfer('cifar10')
  given = artifacts.model_dir(epath.Path(workdir), 'supernet')
  config.teacher.checkpoint = str(epath.Path(workdir) / 'teacher' / 'model')
  config.search.supernet = str(given)
  config.data.data_dir = make_tfds_dataset(tmp_path / 'tfds', 'cifar10',
                                           num_train=24, num_test=8)
  # The fixture's supernet: the test space at 32 px, and a few steps.
  settings = {**SMALL, 'space.image_size': 32, 'space.patch_size': 4,
              'search.min_params_m': 0.0, 'search.max_params_m': 0.0,
              'search.eval_images': 24, 'search.batch_size': 8,
              'search.generations': 2, 'finetune.steps': 3,
              'finetune.batch_size': 8, 'finetune.warmup_epochs': 0}
  for key, value in settings.items():
    section, _, field = key.rpartition('.')
    config[section][field] = value
  def files():
    return {str(p): p.stat().st_mtime_ns
            for p in pathlib.Path(given).rglob('*') if p.is_file()}
  before = files()

  out = epath.Path(tmp_path / 'wd')
  main.run(config, str(out))
  log = capsys.readouterr().out
  # No teacher or supernet trained here: the given ones are used.
  assert f'teacher: using {config.teacher.checkpoint}' in log
  assert f'supernet: using {given}; not training' in log
  assert not (out / 'teacher').exists() and not (out / 'supernet').exists()
  assert files() == before
  # The search scored the target's training images.
  assert "search: 24 images of 'train'" in log
  tuned = json.loads((out / 'finetune/metrics.json').read_text())
  best = json.loads((out / 'search/best_arch.json').read_text())
  assert tuned['arch'] == best['arch'] and tuned['images'] == 8
  assert tuned['split'] == 'test' and tuned['steps'] == 3
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['finetune']['top1'] == tuned['top1']
  # `params` counts the classifier as exported, with a 10-class head.
  classifier = model_dirs.load_classifier(out / 'finetune/model')
  assert classifier.head.kernel.shape[-1] == 10
  assert summary['params'] == sum(
      int(np.prod(x.shape))
      for x in jax.tree.leaves(nnx.state(classifier, nnx.Param)))


@pytest.mark.parametrize('arg, expected', [
    ('cifar11', "--config: the config file raised ValueError: "
     "configs/transfer.py:DATASET: expected one of cifar10, cifar100, "
     "oxford_iiit_pet, oxford_flowers102, got 'cifar11'"),
    ('cifar10', 'config.search.supernet, config.teacher.checkpoint: this '
     'config needs them'),
])
def test_transfer_command_line_errors_are_one_line(tmp_path, arg, expected):
  result = run(f'--config=configs/transfer.py:{arg}',
               f'--workdir={tmp_path}/wd')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f'masktas_jax: error: {expected}'), result.stderr
  assert not (tmp_path / 'wd').exists()
