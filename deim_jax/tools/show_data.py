"""Write a PNG grid of augmented training samples with their boxes drawn.

``python -m deim_jax.tools.show_data --config=demo --out=docs/demo_data.png``
``--config`` is a config name/path for ``deim_jax.configs.get_config`` or ``demo`` (the
generated demo set under ``--demo-root``, created if missing). ``--epoch`` picks the epoch
whose augmentation policy is shown (mosaic/mixup are on in the default demo epoch).
"""

from __future__ import annotations

import argparse
import os


from deim_jax.evaluate.visualize import draw_batch

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--out", required=True)
    p.add_argument("--demo-root", default="/tmp/deim_demo_data")
    p.add_argument("--epoch", type=int, default=None)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from deim_jax import configs, data
    if a.config == "demo":
        if not os.path.isfile(os.path.join(a.demo_root, "annotations", "instances_train.json")):
            from deim_jax.data import demo
            demo.generate(a.demo_root)
        defaults = configs.module("defaults")
        config = defaults.run("demo", "deim", epochs=16, batch_size=a.num, num_classes=4, eval_size=256)
        config.data = defaults.demo_data(config, a.demo_root)
        config.remap_mscoco_category = False
    else:
        config = configs.get_config(a.config)
    config.data.base_size_repeat = None     # show every sample at the same size
    records = data.load_split(config.data, "train")
    epoch = a.epoch if a.epoch is not None else int(config.data.policy_epochs[0])
    it = data.build_train_iterator(config.data, seed=a.seed, state=dict(epoch=epoch, pos=0, step_in_epoch=0),
                                   records=records)
    batch = next(it)
    for _ in range(10):           # prefer a batch with MixUp when the epoch has it
        if batch["mixup"][0] or int(batch["epoch"][0]) >= int(config.data.mixup_epochs[1]):
            break
        batch = next(it)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    draw_batch(batch, records.category_names).save(a.out)
    print(f"wrote {a.out} (epoch {epoch}, mixup {bool(batch['mixup'][0])}, "
          f"{int(batch['mask'].sum())} boxes)")


if __name__ == "__main__":
    main()
