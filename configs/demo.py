"""A small DEIM-D-FINE trained on the generated demo set (coloured shapes, 4 classes, 256 px).

    python -m deim_jax.main --config=demo --workdir=runs/demo

Same code path as the COCO recipes (Dense O2O augmentation with Mosaic and MixUp, MAL,
union matching, FGL/DDF, denoising, EMA, flat-cosine lr); the model is DEIM-D-FINE-N with
a narrower encoder/decoder, 60 queries and 256-px inputs so that it trains in minutes on a
2-core CPU. The demo set is generated into ``data/demo`` on first use.
"""

from configs import defaults, dfine


def small_inputs(c):
    """256-px inputs, 60 queries (30 denoising) and the data block's sizes to match."""
    c.eval_spatial_size = (256, 256)
    c.num_top_queries = 60
    c.model.decoder.num_queries = 60
    c.model.decoder.num_denoising = 30
    if "data" in c:
        c.data.image_size = c.data.eval_size = 256
        c.data.mosaic_size = 128


def narrow_dfine(c):
    """DEIM-D-FINE-N with a 64-wide encoder and decoder (the demo model, 2.4 M parameters)."""
    enc = c.model.encoder
    enc.hidden_dim = 64
    enc.dim_feedforward = 256
    dec = c.model.decoder
    dec.feat_channels = (64, 64)
    dec.hidden_dim = 64
    dec.dim_feedforward = 256


def demo_recipe(c, epochs: int = 16):
    """Shared demo settings: 4 classes, 256 px, 60 queries, short schedule, the demo data set."""
    c.num_classes = 4
    c.remap_mscoco_category = False
    small_inputs(c)

    c.epochs = epochs
    c.batch_size = 8
    c.eval_every_epochs = 4
    c.log_every_steps = 16
    c.keep_checkpoints = 2
    c.optimizer.lr = 1e-3
    c.optimizer.groups = [dict(g, lr=1e-3) for g in c.optimizer.groups]
    c.schedule.warmup_iter = 50
    c.schedule.flat_epoch = 10
    c.schedule.no_aug_epoch = 2
    c.schedule.lr_gamma = 0.1
    c.ema.decay = 0.999
    c.ema.warmups = 100

    c.data = defaults.demo_data(c, root="data/demo", epochs=(3, 8, 14))
    c.data.generate_demo = True  # write the demo set into data/demo if it is missing
    return c


def get_config(arg=None):
    c = dfine.get_config("n")
    c.name = "demo"
    narrow_dfine(c)
    return demo_recipe(c)
