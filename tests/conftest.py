"""Test set-up: 8 fake CPU devices, set before JAX starts."""

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
