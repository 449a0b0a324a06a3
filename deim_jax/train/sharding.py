"""Data-parallel sharding over a ``jax.sharding.Mesh`` (one axis, ``data``).

The train state is replicated; every batch array is sharded along its leading
axis. Each process feeds only its own slice of the global batch
(``global_batch``), so the same code runs on one CPU, one GPU, many devices
and many hosts. Reductions over the batch inside ``jit`` (BatchNorm
statistics, the loss normalizer) are therefore global: SyncBN semantics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
log = logging.getLogger(__name__)


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
    (Cloud TPU, SLURM, Open MPI). Timeouts in seconds: ``DEIM_HEARTBEAT_TIMEOUT_S`` (default
    100: a process silent that long counts as dead and the others stop with an error),
    ``DEIM_INIT_TIMEOUT_S`` (300: waiting for all processes to join) and
    ``DEIM_SHUTDOWN_TIMEOUT_S`` (60: waiting for the others at exit).
    """
    if jax.distributed.is_initialized():
        return
    timeouts = dict(heartbeat_timeout_seconds=int(os.environ.get("DEIM_HEARTBEAT_TIMEOUT_S", 100)),
                    initialization_timeout=int(os.environ.get("DEIM_INIT_TIMEOUT_S", 300)),
                    shutdown_timeout_seconds=int(os.environ.get("DEIM_SHUTDOWN_TIMEOUT_S", 60)))
    if os.environ.get("DEIM_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["DEIM_COORDINATOR"],
            num_processes=int(os.environ["DEIM_NUM_PROCESSES"]),
            process_id=int(os.environ["DEIM_PROCESS_ID"]),
            **timeouts,
        )
    elif os.environ.get("DEIM_DISTRIBUTED") == "1":
        jax.distributed.initialize(**timeouts)


@contextlib.contextmanager
def fail_fast_across_processes():
    """In a run of several processes, an exception logs its traceback and ends this process at once
    with status 1, instead of waiting in JAX's shutdown barrier for processes that may be dead (a
    failed collective usually means another process died). One process: exceptions pass through."""
    try:
        yield
    except Exception:
        if jax.process_count() == 1:
            raise
        log.exception("process %d of %d failed and exits (a failed collective means another process of "
                      "the run died or was killed: see its log)", jax.process_index(), jax.process_count())
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
