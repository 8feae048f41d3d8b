"""The workdir layout and the model-directory format."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from etils import epath

from masktas_jax.errors import SupernetError, TeacherError
from masktas_jax.storage import artifacts


def test_model_dir_round_trip(tmp_path):
  arrays = {'a': np.arange(6, dtype=np.float32).reshape(2, 3),
            'b': {'c': np.array([1, -2], np.int32)}}
  path = artifacts.save_model(tmp_path / 'm', 'thing', {'width': 3}, arrays)
  assert artifacts.is_model_dir(path, 'thing')
  assert not artifacts.is_model_dir(path, 'other')
  assert artifacts.read_meta(path, 'thing') == {'width': 3}
  back = artifacts.load_arrays(path, 'thing', arrays)
  np.testing.assert_array_equal(back['a'], arrays['a'])
  np.testing.assert_array_equal(back['b']['c'], arrays['b']['c'])
  # Written atomically: no scratch directory left beside it.
  assert sorted(p.name for p in epath.Path(tmp_path).iterdir()) == ['m']
  with pytest.raises(FileExistsError):
    artifacts.save_model(path, 'thing', {}, arrays)


def test_model_dir_errors_name_the_directory(tmp_path):
  with pytest.raises(SupernetError, match=(
      r'nowhere: not a trained supernet directory \(no student.json\); run '
      'it first')):
    artifacts.read_meta(tmp_path / 'nowhere', 'student', SupernetError,
                        what='trained supernet', missing='run it first')
  arrays = {'a': np.zeros((2, 3), np.float32)}
  path = artifacts.save_model(tmp_path / 'm', 'thing', {}, arrays)
  with pytest.raises(TeacherError, match='parameters do not match thing.json'):
    artifacts.load_arrays(path, 'thing', {'a': np.zeros((4,), np.float32)},
                          TeacherError)
  (path / 'thing.json').write_text('{not json')
  with pytest.raises(TeacherError, match='thing.json: unreadable'):
    artifacts.read_meta(path, 'thing', TeacherError)


def test_where_stages_find_their_inputs(tmp_path):
  config = ml_collections.ConfigDict({'teacher': {'checkpoint': ''},
                                      'search': {'supernet': ''}})
  with pytest.raises(TeacherError, match='run --config.mode=teacher first'):
    artifacts.teacher_model(config, tmp_path)
  artifacts.save_model(tmp_path / 'teacher' / 'model', 'teacher', {},
                       {'a': np.zeros(1, np.float32)})
  assert artifacts.teacher_model(config, tmp_path) == (
      tmp_path / 'teacher' / 'model')
  assert artifacts.supernet_model(config, tmp_path) == (
      tmp_path / 'supernet' / 'model')
  config.teacher.checkpoint = '/elsewhere/teacher'
  config.search.supernet = '/elsewhere/supernet'
  assert str(artifacts.teacher_model(config, tmp_path)) == '/elsewhere/teacher'
  assert str(artifacts.supernet_model(config, tmp_path)) == (
      '/elsewhere/supernet')
  a = artifacts.rank_finetune_dir(tmp_path, 100, '{"embed_dim": 64}')
  assert a.parent == tmp_path / 'rank' / 'finetune' / '100steps'
  assert a != artifacts.rank_finetune_dir(tmp_path, 100, '{"embed_dim": 96}')
