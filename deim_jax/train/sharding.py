"""Data-parallel sharding over a ``jax.sharding.Mesh`` (one axis, ``data``).

The train state is replicated; every batch array is sharded along its leading
axis. Each process feeds only its own slice of the global batch
(``global_batch``), so the same code runs on one CPU, one GPU, many devices
and many hosts. Reductions over the batch inside ``jit`` (BatchNorm
statistics, the loss normalizer) are therefore global: SyncBN semantics.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Per-process batch size; the global batch must split evenly over devices and processes."""
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise ValueError(f"config.batch_size={global_batch} is not divisible by the {n_dev} devices of the mesh")
    return global_batch // jax.process_count()


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Host-local numpy batch (this process's slice) -> global jax.Arrays sharded over ``data``."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when launched as one of several processes.

    Triggered by ``DEIM_COORDINATOR`` (address:port) with ``DEIM_NUM_PROCESSES`` and
    ``DEIM_PROCESS_ID``, or by ``DEIM_DISTRIBUTED=1`` on clusters JAX auto-detects
    (Cloud TPU, SLURM, Open MPI).
    """
    if os.environ.get("DEIM_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["DEIM_COORDINATOR"],
            num_processes=int(os.environ["DEIM_NUM_PROCESSES"]),
            process_id=int(os.environ["DEIM_PROCESS_ID"]),
        )
    elif os.environ.get("DEIM_DISTRIBUTED") == "1":
        jax.distributed.initialize()
