"""Write a PNG grid of augmented training samples with their boxes drawn.

``python -m deim_jax.tools.show_data --config=demo --out=docs/demo_data.png [--config.batch_size=16]``

``--config`` (default ``demo``) and ``--config.a.b=value`` overrides as for ``deim_jax.main``; the
demo set is generated if missing (``data.generate_demo``). One batch of ``batch_size`` samples is
drawn; ``--epoch`` picks the epoch whose augmentation policy is shown (default: the first
augmented epoch, with Mosaic/MixUp), ``--config.seed`` the random stream.
"""

from __future__ import annotations

import os

from absl import flags

from deim_jax import cli

_CONFIG = cli.define_config_flag()
_OUT = flags.DEFINE_string("out", None, "PNG file to write.", required=True)
_EPOCH = flags.DEFINE_integer("epoch", None, "Epoch whose augmentation policy is shown.")


def main(argv):
    del argv
    from deim_jax import data
    from deim_jax.data import prepare

    config = cli.require_config(_CONFIG)
    prepare.check_or_generate(config.data)
    config.data.base_size_repeat = None  # show every sample at the same size
    records = data.load_split(config.data, "train")
    epoch = _EPOCH.value if _EPOCH.value is not None else int(config.data.policy_epochs[0])
    it = data.build_train_iterator(config.data, seed=config.seed, state=dict(epoch=epoch, pos=0, step_in_epoch=0),
                                   records=records)
    batch = next(it)
    for _ in range(10):  # prefer a batch with MixUp when the epoch has it
        if batch["mixup"][0] or int(batch["epoch"][0]) >= int(config.data.mixup_epochs[1]):
            break
        batch = next(it)
    from deim_jax.evaluate.visualize import draw_batch

    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    draw_batch(batch, records.category_names).save(_OUT.value)
    print(f"wrote {_OUT.value} (epoch {epoch}, mixup {bool(batch['mixup'][0])}, {int(batch['mask'].sum())} boxes)")


if __name__ == "__main__":
    cli.run(main, default_config="demo")
