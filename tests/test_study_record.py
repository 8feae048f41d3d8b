"""benchmarks/study_record.py: what a multi-session study keeps in the
repository must read back as written, tell two trainings' bits apart, and
refuse runs of another study."""

import sys

import numpy as np
import pytest

import helpers
from masktas_jax import config_lib

sys.path.insert(0, str(helpers.ROOT / 'benchmarks'))
import study_record  # pylint: disable=g-import-not-at-top,wrong-import-position


def _tree(rng):
  return {'encoder': {'w': rng.normal(size=(3, 4)).astype(np.float32),
                      'b': np.zeros(4, np.float32)},
          'head': rng.normal(size=(4, 2)).astype(np.float32)}


def test_fingerprint_tells_bits_apart_and_ignores_key_order():
  tree = _tree(np.random.default_rng(0))
  base = study_record.fingerprint(tree)
  # Same arrays, keys inserted in another order: the same supernet.
  reordered = {'head': tree['head'].copy(),
               'encoder': {'b': tree['encoder']['b'].copy(),
                           'w': tree['encoder']['w'].copy()}}
  assert study_record.fingerprint(reordered) == base
  # One element one ulp away: another training's bits.
  nudged = _tree(np.random.default_rng(0))
  nudged['encoder']['w'][1, 2] = np.nextafter(nudged['encoder']['w'][1, 2],
                                              np.float32(np.inf))
  assert study_record.fingerprint(nudged) != base
  # The same values in another dtype, or moved to another leaf, differ too.
  as64 = _tree(np.random.default_rng(0))
  as64['head'] = as64['head'].astype(np.float64)
  assert study_record.fingerprint(as64) != base
  # Memory layout (a transposed copy's strides) is not identity.
  strided = {'encoder': tree['encoder'], 'head': tree['head'].T.copy().T}
  assert study_record.fingerprint(strided) == base
  moved = {'encoder': {'w': tree['head'], 'b': tree['encoder']['b']},
           'head': tree['encoder']['w']}
  assert study_record.fingerprint(moved) != base


def test_record_reads_back_what_it_wrote(tmp_path):
  record = study_record.Record(tmp_path / 'study') / 'seed0'
  run = record / '1500steps' / 'abc' / 'ft0.json'
  assert run.get() is None
  run.put({'validation': 0.875, 'test': 0.8712, 'arch': {'depth': 3}})
  assert run.get() == {'validation': 0.875, 'test': 0.8712,
                       'arch': {'depth': 3}}
  # Written atomically: no scratch file is left beside it to be committed.
  assert sorted(p.name for p in run.path.parent.iterdir()) == ['ft0.json']


def test_bind_refuses_another_studys_config(tmp_path):
  config = config_lib.base_config()
  record = study_record.Record(tmp_path / 'study')
  record.bind(config, supernet='f00d')
  record.bind(config, supernet='f00d')  # The same study: fine.
  # Where the teacher lies is the machine's business, not the study's.
  moved = config.copy_and_resolve_references()
  moved.teacher.checkpoint = '/elsewhere/teacher'
  record.bind(moved, supernet='f00d')
  smoke = config.copy_and_resolve_references()
  smoke.supernet.steps = config.supernet.steps + 1
  with pytest.raises(SystemExit, match='supernet.steps'):
    record.bind(smoke, supernet='f00d')
  with pytest.raises(SystemExit, match='supernet'):
    record.bind(config, supernet='beef')


def test_versions_name_what_decides_the_bits():
  versions = study_record.versions()
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'cpu', 'XLA_FLAGS'):
    assert name in versions
  assert versions['cpu']
