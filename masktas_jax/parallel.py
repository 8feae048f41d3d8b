"""Device mesh and shardings: one data-parallel mesh over every device."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from masktas_jax.config_lib import ConfigError

DATA = 'data'


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes, axis 'data'."""
  return Mesh(np.asarray(jax.devices()), (DATA,))


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
