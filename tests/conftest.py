"""Test set-up: 8 fake CPU devices, set before JAX starts."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flag = '--xla_force_host_platform_device_count=8'
if _flag not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             _flag).strip()

import jax  # noqa: E402  pylint: disable=g-import-not-at-top

# Equalities are checked at full float32; XLA:CPU computes that anyway, and
# on accelerators the default (TF32/bf16 passes) would need looser bounds.
jax.config.update('jax_default_matmul_precision', 'highest')
