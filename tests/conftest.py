"""Test set-up: 8 fake CPU devices, set before JAX starts; shared fixtures."""

import os
import pathlib

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flag = '--xla_force_host_platform_device_count=8'
if _flag not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             _flag).strip()

# Tests (and the CLI subprocesses they start) compile many identical
# programs: a resumed run recompiles what the first run compiled. JAX's
# persistent cache turns those into loads; it keys on the program and the
# JAX version, so a stale entry cannot be picked up.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    str(pathlib.Path(__file__).resolve().parent.parent / '.pytest_cache' /
        'jax'))

import jax  # noqa: E402  pylint: disable=g-import-not-at-top

# Equalities are checked at full float32; XLA:CPU computes that anyway, and
# on accelerators the default (TF32/bf16 passes) would need looser bounds.
jax.config.update('jax_default_matmul_precision', 'highest')


import pytest  # noqa: E402  pylint: disable=g-import-not-at-top
from etils import epath  # noqa: E402  pylint: disable=g-import-not-at-top
from flax import nnx  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  """A randomly initialised teacher of helpers.demo_config's size, saved."""
  # pylint: disable=g-import-not-at-top
  from helpers import demo_config
  from masktas_jax import config_lib
  from masktas_jax.models.mae import MAE
  from masktas_jax.storage import model_dirs
  model = MAE(config_lib.mae_config(demo_config('')), rngs=nnx.Rngs(0))
  return str(model_dirs.save_teacher(model, tmp_path_factory.mktemp('t') / 'm'))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir holding a teacher and a (randomly initialised) supernet of
  helpers.SMALL's space; one per test module."""
  # pylint: disable=g-import-not-at-top
  from helpers import search_config
  from masktas_jax import config_lib
  from masktas_jax.models.mae import MAE
  from masktas_jax.models.student import Student
  from masktas_jax.storage import artifacts, model_dirs
  root = tmp_path_factory.mktemp('search')
  config = search_config()
  model = MAE(config_lib.mae_config(config), rngs=nnx.Rngs(0))
  model_dirs.save_teacher(model, artifacts.model_dir(root, 'teacher'))
  student_config = config_lib.student_config(config, config.teacher.embed_dim)
  _, params, fixed = nnx.split(Student(student_config, rngs=nnx.Rngs(1)),
                               nnx.Param, ...)
  state = {'params': nnx.to_pure_dict(params),
           'fixed': nnx.to_pure_dict(fixed)}
  model_dirs.save_student(state, student_config,
                          artifacts.model_dir(epath.Path(root), 'supernet'))
  return root
