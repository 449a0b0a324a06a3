"""One train step of the tiny config on all local devices; writes loss and new params to an npz.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice_step DATA_ROOT OUT.npz
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

    cfg = tiny_config(root, batch_size=8)
    mesh = sharding.make_mesh()
    model, criterion = models.build(cfg), losses.build(cfg)
    variables = jax.device_get(models.init(model, cfg, jax.random.PRNGKey(0)))
    tx = optimizer.build_optimizer(cfg, variables["params"], iters_per_epoch=1, epochs=1)
    state = sharding.replicate(create_state(variables, tx, jax.random.PRNGKey(1)), mesh)
    local = next(data_lib.build_train_iterator(cfg, seed=0))
    batch = sharding.global_batch({k: local[k] for k in ("image", "boxes", "labels", "mask")}, mesh)
    repl, shard = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    step = jax.jit(make_train_step(model, criterion, tx, cfg), in_shardings=(repl, shard), out_shardings=(repl, repl))
    state, metrics = step(state, batch)
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(
        {"params": state.params, "batch_stats": state.batch_stats})}
    np.savez(out, loss=np.asarray(metrics["loss"]), devices=len(jax.devices()), **flat)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
