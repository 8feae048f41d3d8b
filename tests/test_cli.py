"""The command line: overrides, the space stage, one-line errors."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from masktas_jax.space import Arch, SearchSpace
from helpers import ROOT, run

def test_space_stage_writes_description_and_plot(tmp_path):
  workdir = tmp_path / 'wd'
  result = run(f'--config={ROOT}/configs/demo.py', f'--workdir={workdir}',
               '--config.mode=space', '--config.space.depths=(3,4)',
               cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  info = json.loads((workdir / 'space.json').read_text())
  assert info['space']['depths'] == [3, 4]
  space = SearchSpace(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in info['space'].items()})
  hi = Arch.from_dict({k: info['max_arch'][k] for k in
                       ('embed_dim', 'depth', 'num_heads', 'mlp_ratios')})
  assert info['max_arch']['params'] == space.count_params(hi)
  assert (workdir / 'space.png').read_bytes()[:4] == b'\x89PNG'
  config = json.loads((workdir / 'config.json').read_text())
  assert config['space']['depths'] == [3, 4]


def test_a_stage_without_its_input_writes_nothing(tmp_path):
  (tmp_path / 'config.json').write_text('{"old": true}')
  result = run('--config=configs/demo.py', f'--workdir={tmp_path}',
               '--config.mode=finetune')
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('masktas_jax: error: config.finetune.arch: empty '
                         'and no search result at'), last
  assert (tmp_path / 'config.json').read_text() == '{"old": true}'
  assert [p.name for p in tmp_path.iterdir()] == ['config.json']


@pytest.mark.parametrize('args, expected', [
    (['--config.search.populaton=5'], "no field 'populaton'"),
    (['--config.seed=abc'], '--config.seed=abc'),
    (['--config.space.patch_size=5'], 'config.space.image_size'),
    (['--config.mode=serch'], 'config.mode'),
    (['--config.mode=rank', '--config.rank.yardstick=knnn'],
     "config.rank.yardstick: expected one of ('knn', 'linear', 'finetune'), "
     "got 'knnn'"),
    (['--config.search.tau=0'], 'config.search.tau: must be positive'),
    (['--config.search.student_tau_ratio=-1'],
     'config.search.student_tau_ratio: must be positive'),
    (['--config.search.relation=cosin'], 'config.search.relation'),
    (['--config.finetune.random_erase=1.5'],
     'config.finetune.random_erase: expected a probability, 0 <= p <= 1'),
    (['--config.finetune.randaugment=12'],
     'config.finetune.randaugment: expected a magnitude 0..10 (0: off), '
     'got 12'),
    (['--config.finetune.randaugment_std=inf'],
     'config.finetune.randaugment_std: must be finite and >= 0, got inf'),
    (['--config.finetune.pool=max'],
     "config.finetune.pool: expected one of ('cls', 'mean'), got 'max'"),
])
def test_bad_input_is_one_line_and_leaves_the_workdir_alone(
    tmp_path, args, expected):
  keep = tmp_path / 'supernet' / 'checkpoint'
  keep.parent.mkdir()
  keep.write_text('precious')
  result = run('--config=configs/demo.py', f'--workdir={tmp_path}', *args)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('masktas_jax: error:')
  assert expected in lines[0]
  assert keep.read_text() == 'precious'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['supernet']


def _unlabelled_folder(root, count):
  """`root/images` holding `count` small PNGs and no class folders."""
  images = root / 'images'
  images.mkdir()
  for i in range(count):
    Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(
        images / f'{i}.png')
  return images


def test_rank_on_unlabelled_images_is_one_line_before_any_work(tmp_path):
  images = _unlabelled_folder(tmp_path, 3)
  workdir = tmp_path / 'wd'
  for yardstick in ('knn', 'linear', 'finetune'):
    result = run('--config=configs/demo.py', f'--workdir={workdir}',
                 '--config.mode=rank', '--config.data.name=folder',
                 f'--config.data.data_dir={images}',
                 f'--config.rank.yardstick={yardstick}')
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"masktas_jax: error: config.rank.yardstick: '{yardstick}' needs "
        "labelled images, and 'folder' split 'train' (config.data.train_split)"
        ' has none']
    assert not workdir.exists()


def test_missing_config_file_is_one_line(tmp_path):
  result = run('--config=configs/nope.py', f'--workdir={tmp_path}/wd')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "masktas_jax: error: --config: cannot load the config file: [Errno 2] "
      "No such file or directory: 'configs/nope.py'"]
  assert not (tmp_path / 'wd').exists()


# The teacher stage reads its data first: bad data fails before any model.
TEACHER = ('--config=configs/demo.py', '--config.mode=teacher',
           '--config.teacher.steps=2')


def _data_case(tmp_path, case):
  """(extra flags, env, expected start of the message) for one bad input."""
  folder = ['--config.data.name=folder']
  if case == 'missing folder':
    return folder + [f'--config.data.data_dir={tmp_path}/nope'], {}, (
        f"config.data.data_dir: image folder '{tmp_path}/nope' does not exist")
  if case == 'empty folder':
    (tmp_path / 'empty').mkdir()
    return folder + [f'--config.data.data_dir={tmp_path}/empty'], {}, (
        f'config.data.data_dir: {tmp_path}/empty contains no JPEG or PNG')
  if case == 'unknown tfds name':
    return ['--config.data.name=cifar1O', f'--config.data.data_dir={tmp_path}'
           ], {}, "config.data.name: no tfds dataset 'cifar1O'"
  assert case == 'batch not divisible'
  return ['--config.teacher.batch_size=6'], {
      'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}, (
          'config.teacher.batch_size: 6 is not divisible by the 4 devices')


@pytest.mark.parametrize('case', ['missing folder', 'empty folder',
                                  'unknown tfds name', 'batch not divisible'])
def test_bad_data_is_one_line_before_any_training(tmp_path, case):
  workdir = tmp_path / 'wd'
  keep = workdir / 'supernet' / 'checkpoint'
  keep.parent.mkdir(parents=True)
  keep.write_text('precious')
  (workdir / 'config.json').write_text('{"old": true}')
  flags, env, expected = _data_case(tmp_path, case)
  result = run(*TEACHER, f'--workdir={workdir}', *flags, env=env)
  assert result.returncode == 2, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('masktas_jax: error: ' + expected), last
  assert keep.read_text() == 'precious'
  assert (workdir / 'config.json').read_text() == '{"old": true}'
  assert not (workdir / 'teacher').exists()


def test_unreadable_image_is_one_line_naming_the_file(tmp_path):
  images = _unlabelled_folder(tmp_path, 2)
  (images / 'junk.png').write_bytes(b'not a png at all')
  # A tiny teacher: the error comes with the first batch, after its init.
  result = run(*TEACHER, f'--workdir={tmp_path}/wd',
               '--config.data.name=folder', f'--config.data.data_dir={images}',
               '--config.teacher.batch_size=8', '--config.teacher.embed_dim=64',
               '--config.teacher.num_heads=1', '--config.teacher.depth=1',
               '--config.teacher.decoder_embed_dim=32',
               '--config.teacher.decoder_depth=1',
               '--config.teacher.decoder_num_heads=1')
  assert result.returncode == 2, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'masktas_jax: error: {images}/junk.png: unreadable '
                         'image (cannot identify image file'), last
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('config', ['configs/tiny.py', 'configs/paper.py:base'])
def test_paper_configs_need_a_teacher_checkpoint_or_an_opt_in(tmp_path,
                                                               config):
  """The paper distils from the released MAE: its configs refuse to start a
  400-epoch pre-training nobody asked for, and say how to get the teacher."""
  workdir = tmp_path / 'wd'
  result = run(f'--config={config}', f'--workdir={workdir}',
               f'--config.data.data_dir={tmp_path}')
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(
      'masktas_jax: error: config.teacher.checkpoint: this config distils '
      'from a converted MAE teacher'), lines[0]
  for part in ('mae_pretrain_vit_base.pth', 'masktas_jax.convert_mae',
               '--config.teacher.checkpoint=DIR',
               '--config.teacher.pretrain=True (400 epochs)'):
    assert part in lines[0]
  assert not workdir.exists()
  # Opting into pre-training passes this check; the next one (no ImageNet
  # in this data_dir) stops the run instead.
  result = run(f'--config={config}', f'--workdir={workdir}',
               f'--config.data.data_dir={tmp_path}',
               '--config.teacher.pretrain=True')
  assert result.returncode == 2, result.stderr
  assert 'teacher' not in result.stderr and 'imagenet2012' in result.stderr
  assert not workdir.exists()
  # A resumed run whose teacher was pre-trained here (with the opt-in) is
  # not stopped for want of it either.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from masktas_jax.storage import model_dirs  # pylint: disable=g-import-not-at-top
  from masktas_jax.models.mae import MAE, MAEConfig  # pylint: disable=g-import-not-at-top
  model_dirs.save_teacher(MAE(MAEConfig(embed_dim=64, depth=1, num_heads=1,
                                        decoder_depth=0), rngs=nnx.Rngs(0)),
                          workdir / 'teacher' / 'model')
  result = run(f'--config={config}', f'--workdir={workdir}',
               f'--config.data.data_dir={tmp_path}')
  assert result.returncode == 2, result.stderr
  assert 'teacher' not in result.stderr and 'imagenet2012' in result.stderr


def test_compiled_steps_are_cached_in_the_workdir(tmp_path):
  """config.compilation_cache: a run's compiled steps land in
  WORKDIR/jax_cache, and a rerun that trains again loads its step from
  there instead of compiling it."""
  # '' leaves the cache to the config (the test session sets its own).
  env = {'JAX_COMPILATION_CACHE_DIR': '',
         'JAX_DEBUG_LOG_MODULES': 'jax._src.compiler'}
  args = (*TEACHER, '--config.teacher.batch_size=8', f'--workdir={tmp_path}')
  first = run(*args, env=env)
  assert first.returncode == 0, first.stderr[-2000:]
  assert any((tmp_path / 'jax_cache').iterdir())
  shutil.rmtree(tmp_path / 'teacher')  # Train again, from scratch.
  second = run(*args, env=env)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "Persistent compilation cache hit for 'jit_step'" in second.stderr
  assert "Persistent compilation cache hit for 'jit_step'" not in first.stderr
  off = run(*args, '--config.compilation_cache=False',
            f'--workdir={tmp_path}/off', env=env)
  assert off.returncode == 0, off.stderr[-2000:]
  assert not (tmp_path / 'off/jax_cache').exists()
