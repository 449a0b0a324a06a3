"""A tiny training config on a tiny generated data set, shared by the training tests."""

import os
import socket

from deim_jax import configs
from deim_jax.data import demo


def tiny_dataset(root: str, num_train: int = 8, num_val: int = 4) -> str:
    if not os.path.isfile(os.path.join(root, "annotations", "instances_val.json")):
        demo.write_split(root, "train", num_train, 0, 1)
        demo.write_split(root, "val", num_val, 0, 100001)
    return root


def tiny_config(root: str, epochs: int = 1, batch_size: int = 4):
    """DEIM-D-FINE with a B0 backbone, narrow encoder/decoder, 96-px images, 30 queries."""
    c = configs.get_config("demo")
    c.data.train.images = f"{root}/train"
    c.data.train.annotations = f"{root}/annotations/instances_train.json"
    c.data.val.images = f"{root}/val"
    c.data.val.annotations = f"{root}/annotations/instances_val.json"
    c.data.generate_demo = False
    c.data.image_size = c.data.eval_size = 96
    c.data.mosaic_size = 48
    c.data.max_boxes = 16
    c.data.num_parallel_calls = 1
    c.data.policy_epochs = (0, 1, 2)
    c.data.mixup_epochs = (0, 1)
    c.eval_spatial_size = (96, 96)
    c.num_top_queries = 30
    enc, dec = c.model.encoder, c.model.decoder
    enc.hidden_dim, enc.dim_feedforward = 32, 64
    dec.feat_channels, dec.hidden_dim, dec.dim_feedforward = (32, 32), 32, 64
    dec.num_layers, dec.num_queries, dec.num_denoising = 2, 30, 10
    dec.num_points = (2, 2)
    c.epochs = epochs
    c.batch_size = batch_size
    c.data.eval_batch_size = batch_size
    c.eval_every_epochs = 1
    c.log_every_steps = 1
    c.schedule.warmup_iter = 2
    c.ema.warmups = 2
    return c


def free_port() -> int:
    """A TCP port free on localhost now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
