"""The host allocator setting that keeps XLA:CPU's step buffers mapped.

XLA:CPU takes each execution's scratch space (160-360 MB for the demo's
train steps) from malloc in one block and frees it when the step ends.
glibc hands out blocks above its mmap threshold (32 MB at most) as fresh
mappings and unmaps them on free, so every step maps its scratch anew and
the kernel zero-fills each 4 KiB page on first touch: ~90,000 page faults
and ~185 ms of kernel time per ~340 ms fine-tuning step of the demo on a
2-core host. Serving every block from the heap and never trimming it makes
each step after the first reuse the previous step's memory.

The price: freed memory stays with the process (its resident size stays
near its peak, as with tcmalloc or jemalloc; the heap may hold a few spare
scratch blocks, when small allocations split a freed one), and all threads
share one malloc arena (a thread's own arena cannot hold blocks over
64 MB). On GPU and TPU hosts it concerns only host memory: input batches,
checkpoint copies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Largest value M_TRIM_THRESHOLD takes (an int): 2 GiB, never reached by a
# free at the top of the heap in practice.
_NO_TRIM = 2**31 - 1


def reuse_freed_memory() -> bool:
  """Makes glibc's malloc keep freed blocks for reuse; returns whether it
  did (False off glibc: macOS, musl, Windows).

  Call it before JAX starts a back end: threads that have allocated
  already keep their own arenas, and XLA:CPU's threads start with the back
  end.
  """
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return False
  libc = ctypes.CDLL(ctypes.util.find_library('c'))
  # One arena: blocks over 64 MB in a thread's own arena would be mapped
  # anyway. No mappings, and no trimming: freed blocks stay in the heap.
  return all(libc.mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NO_TRIM)))
