"""What a compiled program needs of a chip, and how fast it could run there.

From XLA's memory and cost analyses of an executable compiled for a target
(`stages.compile`) and the analytic model FLOPs of its step (`flops`),
against the chip table (`chips`): memory per device, and a roofline step time
max(FLOPs / peak, bytes / bandwidth). Compiler figures, not measurements.
"""

from __future__ import annotations

import os
from typing import Any

from masktas_jax.compilation import chips


def memory_sizes(compiled) -> dict[str, int]:
  """XLA's memory analysis of `compiled`, bytes per device: argument,
  output, alias, temp, generated_code, and their total."""
  memory = compiled.memory_analysis()
  sizes = {name: int(getattr(memory, f'{name}_size_in_bytes', 0) or 0)
           for name in ('argument', 'output', 'alias', 'temp',
                        'generated_code')}
  # Donated arguments are reused for outputs: counted once.
  sizes['total'] = (sizes['argument'] + sizes['output'] - sizes['alias'] +
                    sizes['temp'] + sizes['generated_code'])
  return sizes


def figures(compiled, target: chips.Target, model_flops: float, dtype: str,
            batch: int) -> dict[str, Any]:
  """A report row's figures for `compiled` (one step of `batch` global
  images, `model_flops` over all devices, matmuls in `dtype`): sizes in
  bytes per device, FLOPs, seconds."""
  sizes = memory_sizes(compiled)
  total = sizes.pop('total')
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):  # Older JAX: one dict per device program.
    cost = cost[0] if cost else {}
  per_device = model_flops / target.count
  # A lower bound of the HBM traffic: every argument read and every output
  # written once. XLA's 'bytes accessed' is no bound either way: it covers
  # one loop iteration, yet came to 24 GB per device and step for
  # supernet-T (v5e:2x2, 64 images per chip, 0.5 GB of arguments); it is
  # reported beside, not used.
  moved = sizes['argument'] + sizes['output']
  peak = target.chip.peak(dtype)
  compute_s, memory_s = per_device / peak, moved / target.chip.bandwidth
  step_s = max(compute_s, memory_s)
  usable = usable_memory(target)
  return {
      'bytes': {**sizes, 'total': total},
      'chip_memory': target.chip.memory, 'usable_memory': usable,
      'fits': total <= usable,
      'model_flops_per_step': model_flops,
      'model_flops_per_device': per_device,
      'xla_flops_per_device_one_iteration': float(cost.get('flops', 0.0)),
      'xla_bytes_accessed_per_device': float(cost.get('bytes accessed', 0.0)),
      'roofline_bytes_per_device': moved,
      'compute_dtype': dtype, 'peak_flops': peak,
      'roofline': {'compute_s': compute_s, 'memory_s': memory_s,
                   'step_s': step_s,
                   'bound': 'compute' if compute_s >= memory_s else 'memory'},
      'images_per_s_per_chip': batch / target.count / step_s,
  }


def usable_memory(target: chips.Target) -> int:
  """Bytes a JAX process may use of one chip: all of a TPU's (XLA:TPU
  enforces its own limit when it compiles); on GPUs the share JAX
  preallocates, XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.75)."""
  if target.platform != 'cuda':
    return target.chip.memory
  fraction = float(os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', 0.75))
  return int(target.chip.memory * fraction)


def _xla_flops(row: dict[str, Any]) -> str:
  flops_ = row['xla_flops_per_device_one_iteration']
  # XLA:GPU's compile-only executables report no cost analysis.
  return f'{flops_ / 1e9:,.1f}' if flops_ else 'n/a'


def table(rows: list[dict[str, Any]], target: chips.Target) -> str:
  """Report rows (`stages.compile.compile_program`) as a Markdown table."""
  gib = chips.GIB
  lines = [
      f'compile for {target.topology} ({target.count} x {target.chip.name}, '
      f'{target.chip.memory / gib:.0f} GiB each): compiler figures, not runs',
      '| stage | program | batch/device | args / out / temp / code (GiB) | '
      'total / chip | model GFLOPs/device | XLA GFLOPs (1 iteration) | '
      'roofline ms | images/s/chip | compile s |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    if 'error' in r:
      lines.append(f"| {r['stage']} | {r['program']} | "
                   f"{r['batch_per_device']:g} | does not fit: {r['error']} "
                   f"| | | | | | {r['compile_s']:.1f} |")
      continue
    b = r['bytes']
    lines.append(
        f"| {r['stage']} | {r['program']} | {r['batch_per_device']:g} | "
        f"{b['argument'] / gib:.2f} / {b['output'] / gib:.2f} / "
        f"{b['temp'] / gib:.2f} / {b['generated_code'] / gib:.2f} | "
        f"{b['total'] / r['chip_memory']:.0%} | "
        f"{r['model_flops_per_device'] / 1e9:,.1f} | "
        f"{_xla_flops(r)} | "
        f"{r['roofline']['step_s'] * 1e3:.2f} ({r['roofline']['bound']}) | "
        f"{r['images_per_s_per_chip']:,.0f} | {r['compile_s']:.1f} |")
  return '\n'.join(lines)
