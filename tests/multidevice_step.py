"""One train step of the tiny config on all devices of all processes; process 0 writes loss and new params.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice_step DATA_ROOT OUT.npz
    DEIM_COORDINATOR=localhost:PORT DEIM_NUM_PROCESSES=2 DEIM_PROCESS_ID=i python -m tests.multidevice_step ...
"""

import sys

import jax
import numpy as np


def main(root, out):
    from deim_jax import data as data_lib
    from deim_jax import models
    from deim_jax.train import setup as setup_lib
    from deim_jax.train import sharding
    from tests.train_helpers import tiny_config

    sharding.maybe_initialize_distributed()
    cfg = tiny_config(root, batch_size=8)
    s = setup_lib.setup(cfg, sharding.make_mesh(), steps_per_epoch=1)
    state = setup_lib.init_state(s, models.init(s.model, cfg, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    # The same global batch in every run: read it whole, keep this process's slice.
    full = next(data_lib.build_train_iterator(cfg.data, seed=0))
    n = cfg.batch_size // jax.process_count()
    lo = jax.process_index() * n
    local = {k: full[k][lo:lo + n] for k in ("image", "boxes", "labels", "mask")}
    state, metrics = s.train_step(state, sharding.global_batch(local, s.mesh))

    def host(x):  # replicated: every process holds the whole value
        return np.asarray(x.addressable_data(0))

    flat = {jax.tree_util.keystr(p): host(v) for p, v in jax.tree_util.tree_leaves_with_path(
        {"params": state.params, "batch_stats": state.batch_stats})}
    if jax.process_index() == 0:
        # the largest lr of the first step over all parameter groups
        lr0 = max([cfg.optimizer.lr] + [g["lr"] for g in cfg.optimizer.groups]) / cfg.schedule.first_step_divisor
        np.savez(out, loss=host(metrics["loss"]), grad_norm=host(metrics["grad_norm"]), devices=len(jax.devices()),
                 lr0=lr0, **flat)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
