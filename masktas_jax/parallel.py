"""Device mesh, shardings, and the multi-host start-up.

One data-parallel mesh over every device of every process. Multi-host runs
start `jax.distributed` before anything touches a device: from explicit
flags, or from what the cluster says about itself (Cloud TPU VM pods, SLURM
jobs, `JAX_COORDINATOR_ADDRESS`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from masktas_jax.errors import ConfigError

DATA = 'data'
# How long a process waits for its peers at start-up: the coordination
# service's connection (JAX's default is 300 s) and the barrier before the
# CPU collectives' first use. Processes started together on a loaded host, or
# a late pod slice, can be minutes apart.
STARTUP_TIMEOUT_S = 600


def _cluster_detected() -> bool:
  """True where `jax.distributed.initialize()` can find its peers alone."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if 'SLURM_JOB_ID' in os.environ and int(
      os.environ.get('SLURM_NTASKS', '1')) > 1:
    return True
  if os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',') or os.environ.get(
      'MEGASCALE_COORDINATOR_ADDRESS'):
    return True
  try:  # A Cloud TPU VM: the worker list comes from its metadata server.
    from jax._src.clusters import cloud_tpu_cluster  # pylint: disable=g-import-not-at-top
    return bool(cloud_tpu_cluster.running_in_cloud_tpu_vm)
  except (ImportError, AttributeError):
    return False


def initialize_distributed(coordinator_address: str = '',
                           num_processes: int = 0,
                           process_id: int = -1) -> None:
  """Starts `jax.distributed` when this is one process of several.

  With any argument given, all three are required (flags
  `--coordinator_address`, `--num_processes`, `--process_id`); with none,
  the cluster is auto-detected, and a lone process starts nothing. Must run
  before the first use of a device.
  """
  if coordinator_address or num_processes or process_id >= 0:
    missing = [k for k, unset in (
        ('--coordinator_address', not coordinator_address),
        ('--num_processes', num_processes <= 0),
        ('--process_id', process_id < 0)) if unset]
    if missing and num_processes != 1:
      raise ConfigError(f'{missing[0]}: needed with the other multi-host '
                        'flags (--coordinator_address, --num_processes, '
                        '--process_id)')
    if num_processes == 1:
      return
    if not 0 <= process_id < num_processes:
      raise ConfigError(f'--process_id: {process_id} is not in 0..'
                        f'{num_processes - 1}')
    jax.distributed.initialize(coordinator_address, num_processes,
                               process_id,
                               initialization_timeout=STARTUP_TIMEOUT_S)
  elif _cluster_detected():
    jax.distributed.initialize(initialization_timeout=STARTUP_TIMEOUT_S)
  else:
    return
  _connect_cpu_collectives()


def _connect_cpu_collectives() -> None:
  """Builds the CPU collectives' connection between all devices now, with
  every process at the same point.

  Gloo (JAX's CPU collectives) connects a set of devices the first time a
  program reduces over them, and waits only 30 s (a fixed timeout of gloo's
  key-value rendezvous) for the other processes to get there. Left to the
  first training step, a process still compiling it 30 s after another
  finished fails the run with `DEADLINE_EXCEEDED: GetKeyValue() timed out`.
  Here the processes first meet at a coordination-service barrier (timeout
  STARTUP_TIMEOUT_S), then reduce one number over every device, so the
  connection every later all-devices reduction reuses is made while they
  are milliseconds apart; a reduction itself waits for its peers much
  longer. Accelerators' collectives (ICI, NCCL) need none of this.
  """
  if jax.process_count() == 1 or jax.default_backend() != 'cpu':
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier(
      'masktas_cpu_collectives', STARTUP_TIMEOUT_S * 1000)
  mesh = make_mesh()
  ones = jax.make_array_from_process_local_data(
      batch_sharded(mesh), np.ones(jax.local_device_count(), np.float32))
  total = jax.jit(jnp.sum, out_shardings=replicated(mesh))(ones)
  if int(total) != jax.device_count():
    raise RuntimeError(f'CPU collectives: the sum of one per device is '
                       f'{int(total)}, not {jax.device_count()}')


def log(message: str) -> None:
  """Prints a progress line from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh, axis 'data', over `devices` (default: all devices of all
  processes; e.g. one device for a benchmark, or a compile-only topology's
  devices)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices),
              (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the 'data' axis."""
  return NamedSharding(mesh, P(DATA))


def check_batch_size(global_batch: int, field: str) -> int:
  """The per-process batch; raises ConfigError naming `field` if it won't split."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch % devices:
    raise ConfigError(f'config.{field}: {global_batch} is not divisible by '
                      f'the {devices} devices')
  return global_batch // processes


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """This process's share of a batch -> global arrays sharded over 'data'."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}
