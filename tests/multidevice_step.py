"""One train step of the tiny config on all devices of all processes; process 0 writes loss and new params.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice_step DATA_ROOT OUT.npz
    DEIM_COORDINATOR=localhost:PORT DEIM_NUM_PROCESSES=2 DEIM_PROCESS_ID=i python -m tests.multidevice_step ...
"""

import sys

import jax
import numpy as np


def main(root, out):
    from deim_jax import data as data_lib
    from deim_jax import losses, models
    from deim_jax.train import optimizer, sharding
    from deim_jax.train.train_step import create_state, make_train_step
    from tests.train_helpers import tiny_config

    sharding.maybe_initialize_distributed()
    cfg = tiny_config(root, batch_size=8)
    mesh = sharding.make_mesh()
    model, criterion = models.build(cfg), losses.build(cfg, mesh)
    variables = jax.device_get(models.init(model, cfg, jax.random.PRNGKey(0)))
    tx = optimizer.build_optimizer(cfg, variables["params"], iters_per_epoch=1, epochs=1)
    state = sharding.replicate(create_state(variables, tx, jax.random.PRNGKey(1)), mesh)
    # The same global batch in every run: read it whole, keep this process's slice.
    full = next(data_lib.build_train_iterator(cfg.data, seed=0))
    n = cfg.batch_size // jax.process_count()
    lo = jax.process_index() * n
    local = {k: full[k][lo:lo + n] for k in ("image", "boxes", "labels", "mask")}
    batch = sharding.global_batch(local, mesh)
    repl, shard = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    step = jax.jit(make_train_step(model, criterion, tx, cfg), in_shardings=(repl, shard), out_shardings=(repl, repl))
    state, metrics = step(state, batch)
    def host(x):  # replicated: every process holds the whole value
        return np.asarray(x.addressable_data(0))

    flat = {jax.tree_util.keystr(p): host(v) for p, v in jax.tree_util.tree_leaves_with_path(
        {"params": state.params, "batch_stats": state.batch_stats})}
    if jax.process_index() == 0:
        np.savez(out, loss=host(metrics["loss"]), devices=len(jax.devices()), **flat)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
