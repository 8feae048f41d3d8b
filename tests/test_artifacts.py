"""The workdir layout and the model-directory format."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
from etils import epath
from flax import nnx

from masktas_jax.errors import SupernetError, TeacherError
from masktas_jax.models.student import Student, StudentConfig
from masktas_jax.space import SearchSpace
from masktas_jax.storage import artifacts, model_dirs


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


def test_write_json_never_leaves_half_a_file(tmp_path, monkeypatch):
  """A write killed part-way leaves the previous file whole (the marker a
  rerun or another process reads), and a finished one no scratch file."""
  path = epath.Path(tmp_path) / 'metrics.json'
  artifacts.write_json(path, {'top1': 0.5})
  assert json.loads(path.read_text()) == {'top1': 0.5}
  assert [p.name for p in epath.Path(tmp_path).iterdir()] == ['metrics.json']
  write_text = type(path).write_text

  def killed(self, text, *args, **kwargs):
    write_text(self, text[:len(text) // 2], *args, **kwargs)
    raise KeyboardInterrupt  # The kill, half-way through the bytes.

  monkeypatch.setattr(type(path), 'write_text', killed)
  with pytest.raises(KeyboardInterrupt):
    artifacts.write_json(path, {'top1': 0.75, 'top5': 0.9})
  assert json.loads(path.read_text()) == {'top1': 0.5}


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
  with pytest.raises(TeacherError, match='run --config.mode=teacher first'):
    artifacts.teacher_model('', tmp_path)
  artifacts.save_model(tmp_path / 'teacher' / 'model', 'teacher', {},
                       {'a': np.zeros(1, np.float32)})
  assert artifacts.teacher_model('', tmp_path) == (
      tmp_path / 'teacher' / 'model')
  assert artifacts.supernet_model('', tmp_path) == (
      tmp_path / 'supernet' / 'model')
  assert str(artifacts.teacher_model('/elsewhere/teacher', tmp_path)) == (
      '/elsewhere/teacher')
  assert str(artifacts.supernet_model('/elsewhere/supernet', tmp_path)) == (
      '/elsewhere/supernet')
  a = artifacts.rank_finetune_dir(tmp_path, 100, '{"embed_dim": 64}')
  assert a.parent == tmp_path / 'rank' / 'finetune' / '100steps'
  assert a != artifacts.rank_finetune_dir(tmp_path, 100, '{"embed_dim": 96}')


def test_a_student_directory_holds_its_student_config(tmp_path):
  """save_student writes the StudentConfig; load_student builds that
  student from it alone (no run config), and a run's space is checked."""
  space = SearchSpace((16, 32), (1, 2), (1, 2), (2.0, 4.0), image_size=8,
                      patch_size=4, num_classes=3)
  cfg = StudentConfig(space, teacher_dim=24, decoder_embed_dim=16,
                      decoder_depth=1, decoder_num_heads=2)
  assert StudentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == (
      cfg)
  student = Student(cfg, rngs=nnx.Rngs(0))
  _, params, fixed = nnx.split(student, nnx.Param, ...)
  path = tmp_path / 'supernet' / 'model'
  model_dirs.save_student({'params': nnx.to_pure_dict(params),
                           'fixed': nnx.to_pure_dict(fixed)}, cfg, path)
  assert model_dirs.read_student_config(path) == cfg
  loaded = model_dirs.load_student(path)
  np.testing.assert_array_equal(loaded.proj2.kernel[...],
                                student.proj2.kernel[...])
  # Another number of classes is the same supernet; another space is not.
  model_dirs.read_student_config(path, dataclasses.replace(space,
                                                           num_classes=7))
  with pytest.raises(SupernetError, match=r'config\.space\.depths is \(1, 3\)'):
    model_dirs.read_student_config(path, dataclasses.replace(space,
                                                             depths=(1, 3)))
  meta = json.loads((path / 'student.json').read_text())
  del meta['teacher_dim']
  (path / 'student.json').write_text(json.dumps(meta))
  with pytest.raises(SupernetError, match='unreadable student config'):
    model_dirs.load_student(path)
  (path / 'student.json').write_text(json.dumps({'teacher_dim': 24}))
  with pytest.raises(SupernetError, match='unreadable student config'):
    model_dirs.read_student_config(path)


def test_write_json_from_concurrent_writers(tmp_path):
  """Writers of one file at once (the study scripts' workers binding a
  shared record) each replace it whole: none fails on another's scratch
  file, the file is always one writer's value, no scratch file is left."""
  path = epath.Path(tmp_path) / 'study.json'
  values = [{'writer': w, 'pad': 'x' * 4096} for w in range(6)]
  errors = []

  def write(value):
    try:
      for _ in range(150):
        artifacts.write_json(path, value)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=write, args=(v,)) for v in values]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors[:3]
  assert json.loads(path.read_text()) in values
  assert [p.name for p in epath.Path(tmp_path).iterdir()] == ['study.json']
