"""Data parallelism over a device mesh, and multi-host start-up.

Batches are sharded over the mesh's `'data'` axis and parameters replicated
(jit + `NamedSharding`). In a multi-host job every process feeds only its own
slice of the global batch (`global_batch`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmzoo.errors import InputError

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout_seconds: int = 30) -> None:
  """Calls `jax.distributed.initialize` when a multi-process job is asked for.

  Explicit arguments win; otherwise JAX's cluster detection reads the
  environment (SLURM, Open MPI, TPU pods, ...) when `JAX_COORDINATOR_ADDRESS`
  or a known cluster is present. A single process with no coordinator needs no
  initialisation. A process whose peer dies is stopped by the coordination
  service within about `heartbeat_timeout_seconds`.
  """
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  in_cluster = any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                                             "OMPI_COMM_WORLD_SIZE"))
  if not explicit and not in_cluster:
    return
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
      initialization_timeout=120, shutdown_timeout_seconds=30)
  logging.info("process %d of %d; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh() -> Mesh:
  """A one-axis mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `'data'`."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's numpy batch into one array sharded over `'data'`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def check_batch_size(global_batch_size: int, what: str = "batch size") -> None:
  """Data parallelism needs the global batch to split evenly over devices."""
  if global_batch_size % jax.device_count():
    raise InputError(f"{what} {global_batch_size} is not divisible by the "
                     f"{jax.device_count()} devices")
