"""hostmem: with glibc's malloc told to keep freed memory, a jitted step's
scratch block is reused from one call to the next instead of being mapped
(and page-faulted in) again."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

_THP = pathlib.Path('/sys/kernel/mm/transparent_hugepage/enabled')

# A process that runs one jitted function with a large scratch block 12
# times and reports the minor page faults of each call.
_PROBE = """
import json, resource, sys
from masktas_jax import hostmem
applied = hostmem.reuse_freed_memory() if sys.argv[1] == 'reuse' else False
import jax, jax.numpy as jnp

@jax.jit
def step(x, w):
  # Four (4096, 1024) float32 products alive at once: ~68 MB of scratch in
  # one block, over glibc's largest mmap threshold (32 MB).
  a, b, c, d = (jnp.tanh(x @ (w * k)) for k in (1.0, 2.0, 3.0, 4.0))
  return sum((t @ w).sum() for t in (a, b, c, d)) + (a * b * c * d).sum()

x = jnp.ones((4096, 1024)) * 0.01
w = jnp.ones((1024, 1024)) * 0.01
temp = step.lower(x, w).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(12):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'applied': applied, 'temp': temp, 'faults': faults}))
"""


def _probe(mode):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  # One host device: the fake devices the tests use would split nothing here.
  env['XLA_FLAGS'] = ''
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], env=env,
                       capture_output=True, text=True, check=True, timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason='mallopt is glibc\'s')
@pytest.mark.skipif(
    _THP.exists() and '[always]' in _THP.read_text(),
    reason='with transparent huge pages always on, a fresh mapping faults '
    'once per 2 MiB: the page counts below do not apply')
def test_a_steps_scratch_is_reused_not_mapped_again():
  default, reuse = _probe('default'), _probe('reuse')
  assert reuse['applied'] and not default['applied']
  pages = reuse['temp'] // 4096
  assert reuse['temp'] > 32 * 2**20, reuse  # Above any mmap threshold.
  faulting = {mode: sum(f > pages // 2 for f in run['faults'][2:])
              for mode, run in (('default', default), ('reuse', reuse))}
  # By default the block is mapped afresh on every call, and each page
  # faults in again (were XLA to keep its buffers itself, hostmem would be
  # unnecessary, and this would fail).
  assert faulting['default'] == 10, (default, pages)
  # Kept in the heap, the block is reused. Not every time: a small block
  # taken from a freed scratch block in between makes the next call grow the
  # heap, until the heap holds a few free blocks (2-3 here).
  assert faulting['reuse'] <= 5, (reuse, pages)
  assert sum(reuse['faults'][2:]) < sum(default['faults'][2:]) / 2
