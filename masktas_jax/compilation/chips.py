"""Accelerator chips: peak FLOP/s, memory and bandwidth, and how to name a
compile target (`compile.platform`, `compile.topology`).

Figures are the vendors' datasheet values per chip (Google Cloud's TPU
pages; NVIDIA's H100/H200 SXM datasheets, dense, without sparsity). They
feed the roofline of `mode=compile` and the host-sizing tables of the
benchmarks; they are not measurements.
"""

from __future__ import annotations

import dataclasses
import re

from masktas_jax.errors import ConfigError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip.

  `bf16_flops`: peak dense bf16 FLOP/s. `f32_flops`: what a float32 matmul
  at JAX's default precision runs at (TPUs: one bf16 pass, the bf16 peak;
  H100/H200: TF32). `memory`: HBM bytes; `bandwidth`: HBM bytes/s;
  `per_host`: chips per host.
  """

  name: str
  bf16_flops: float
  f32_flops: float
  memory: int
  bandwidth: float
  per_host: int

  def peak(self, dtype: str) -> float:
    """Peak FLOP/s of matmuls computed in `dtype` ('bfloat16' or
    'float32')."""
    return self.bf16_flops if dtype == 'bfloat16' else self.f32_flops


CHIPS = {
    'v4': Chip('TPU v4', 275e12, 275e12, 32 * GIB, 1228e9, 4),
    'v5e': Chip('TPU v5e', 197e12, 197e12, 16 * GIB, 819e9, 4),
    'v5p': Chip('TPU v5p', 459e12, 459e12, 95 * GIB, 2765e9, 4),
    'v6e': Chip('TPU v6e', 918e12, 918e12, 32 * GIB, 1640e9, 4),
    # GPU memory as the CUDA driver reports it (80 GB and 141 GB cards).
    'h100': Chip('H100 SXM', 989.5e12, 494.5e12, 84_942_979_072, 3350e9, 8),
    'h200': Chip('H200 SXM', 989.5e12, 494.5e12, 150_754_820_096, 4800e9, 8),
}
# What XLA's GPU compiler needs to know of a GPU it cannot see (a
# `GpuTargetConfigProto`): Hopper SM 9.0, 132 SMs at 1.98 GHz, 50 MiB of L2,
# the CUDA limits of compute capability 9.0, cuDNN 9.
_GPU_NAMES = {'h100': 'NVIDIA H100 80GB HBM3', 'h200': 'NVIDIA H200'}
_HOPPER = '''gpu_device_info {{
  name: "{name}"
  cuda_compute_capability {{ major: 9 minor: 0 }}
  core_count: 132
  fpus_per_core: 128
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  threads_per_block_limit: 1024
  threads_per_warp: 32
  threads_per_core_limit: 2048
  thread_dim_limit_x: 1024
  thread_dim_limit_y: 1024
  thread_dim_limit_z: 64
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 }}
device_description_str: "{name}"
'''
PLATFORMS = ('tpu', 'cuda')
_TPU = ('v4', 'v5e', 'v5p', 'v6e')
_GPU = ('h100', 'h200')


@dataclasses.dataclass(frozen=True)
class Target:
  """What to compile for: `platform` 'tpu' or 'cuda'; `topology` as
  `compile.topology` gives it; `chip` the table's entry (`key` its name
  there); `count` chips."""

  platform: str
  topology: str
  chip: Chip
  count: int
  key: str


def parse_target(platform: str, topology: str) -> Target:
  """`compile.platform` and `compile.topology` -> Target; ConfigError naming
  the field otherwise. TPU topologies are `GEN:AxB[xC]` (`v5e:4x4`,
  `v5p:2x2x1`, `v6e:2x2`); GPUs a count and a chip (`8xh100`)."""
  if platform not in PLATFORMS:
    raise ConfigError(f'config.compile.platform: expected one of '
                      f'{PLATFORMS}, got {platform!r}')
  text = topology.strip().lower()
  if platform == 'tpu':
    match = re.fullmatch(r'(v\d+[a-z]?):(\d+(?:x\d+){1,2})', text)
    if not match or match.group(1) not in _TPU:
      raise ConfigError(
          f'config.compile.topology: expected a TPU topology GEN:AxB[xC] with '
          f'GEN one of {_TPU} (e.g. v5e:4x4, v5p:2x2x1), got {topology!r}')
    count = 1
    for side in match.group(2).split('x'):
      count *= int(side)
    return Target(platform, f'{match.group(1)}:{match.group(2)}',
                  CHIPS[match.group(1)], count, match.group(1))
  match = re.fullmatch(r'(\d+)x(h\d+)', text)
  if not match or match.group(2) not in _GPU or int(match.group(1)) < 1:
    raise ConfigError(
        f'config.compile.topology: expected COUNTxCHIP for cuda with CHIP one '
        f'of {_GPU} (e.g. 8xh100), got {topology!r}')
  count = int(match.group(1))
  gpu_topology(count)
  return Target(platform, text, CHIPS[match.group(2)], count, match.group(2))


def gpu_target_config(chip: str) -> str:
  """The text `GpuTargetConfigProto` of GPU `chip` ('h100', 'h200'), for
  compiling without one attached."""
  spec = CHIPS[chip]
  return _HOPPER.format(name=_GPU_NAMES[chip], memory=spec.memory,
                        bandwidth=int(spec.bandwidth))


def gpu_topology(count: int) -> str:
  """XLA's GPU topology shape 'partitions x hosts x devices per host' of
  `count` GPUs, 8 per host (fewer on one host)."""
  per_host = min(count, CHIPS['h100'].per_host)
  if count % per_host:
    raise ConfigError(f'config.compile.topology: {count} GPUs do not fill '
                      f'hosts of {per_host}')
  return f'1x{count // per_host}x{per_host}'
