"""The fine-tuning recipe (configs/finetune_dfine.py): its phases, warm-ups and learning rates
scaled to a run on a 200-image set."""

import math

import numpy as np
import pytest

from deim_jax import configs
from deim_jax import data as data_lib
from deim_jax.data import demo
from deim_jax.data import census
from deim_jax.train import ema as ema_lib
from deim_jax.train import loop, schedule

from configs import dfine, finetune_dfine


@pytest.fixture(scope="module")
def set_200(tmp_path_factory):
    return demo.generate(str(tmp_path_factory.mktemp("ft")), num_train=200, num_val=4)


def _config(name, paths):
    c = configs.get_config(name)
    c.unlock()
    c.data.train.images, c.data.train.annotations = paths["train_images"], paths["train_annotations"]
    c.data.val.images, c.data.val.annotations = paths["val_images"], paths["val_annotations"]
    return c


def test_names_and_epoch_argument():
    assert configs.get_config("finetune_dfine_l").epochs == finetune_dfine.DEFAULT_EPOCHS
    c = configs.get_config("configs/finetune_dfine.py:m,epochs=30")
    assert (c.epochs, c.model.backbone.variant, c.data.stop_epoch) == (30, "B2", 30 - c.schedule.no_aug_epoch)
    assert configs.get_config("finetune_dfine_s_e120").epochs == 120
    with pytest.raises(ValueError, match="epochs=N"):
        configs.get_config("configs/finetune_dfine.py:s,epochs=ten")


@pytest.mark.parametrize("size", finetune_dfine.NAMES)
def test_phases_keep_the_recipes_fractions(size):
    t = dfine._SIZES["n" if size == "demo" else size]
    for epochs in (20, 80, 300):
        p = finetune_dfine.scaled_phases(size, epochs)
        start, mosaic_end, stop = p["policy_epochs"]
        assert 1 <= start <= mosaic_end <= stop == epochs - p["no_aug_epoch"] < epochs
        assert p["stop_epoch"] == stop and p["mixup_epochs"] == (start, mosaic_end)
        assert abs(p["no_aug_epoch"] / epochs - t["no_aug_epoch"] / t["epochs"]) <= 0.5 / epochs + 1e-9 or p["no_aug_epoch"] == 1
        assert abs(mosaic_end / epochs - t["policy_epochs"][1] / t["epochs"]) <= 0.5 / epochs + 1e-9
        if t["flat_epoch"] < t["epochs"]:
            assert p["flat_epoch"] == mosaic_end
        else:  # N: flat lr for the whole run, as its recipe
            assert p["flat_epoch"] > epochs


def test_schedule_on_a_200_image_set(set_200):
    c = _config("finetune_dfine_s", set_200)
    assert (c.num_classes, c.data.max_boxes) == (0, 0)  # from the data set
    records, _ = loop.load_records(c)
    most = int(census.boxes_per_image(records).max())
    assert c.num_classes == 4 and c.data.max_boxes == min(8 * most, c.model.decoder.num_queries)
    spe = data_lib.steps_per_epoch(c.data, records)
    assert spe == 200 // 16
    epochs, total = c.epochs, c.epochs * spe
    lr0 = c.optimizer.lr
    lr = np.array([float(schedule.lr_used_at_step(t, lr0, c.schedule, spe, epochs)) for t in range(total)])
    # warm-up: one epoch, whatever the set size (the COCO recipe's 2,000 steps would be 2.5x this run)
    assert lr[spe] < lr0 and lr[spe + 2] == pytest.approx(lr0)
    flat_end = c.schedule.flat_epoch * spe
    assert np.allclose(lr[spe + 2:flat_end], lr0)
    decay = lr[flat_end + 2:total - c.schedule.no_aug_epoch * spe]
    assert np.all(np.diff(decay) <= 1e-12) and decay[0] < lr0 and decay[-1] > lr0 * c.schedule.lr_gamma
    assert np.allclose(lr[-c.schedule.no_aug_epoch * spe + 1:], lr0 * c.schedule.lr_gamma)
    # Mosaic/MixUp in the first half, no augmentation and stage 2 in the last no_aug epochs
    assert c.data.policy_epochs[1] == c.schedule.flat_epoch
    assert c.data.stop_epoch == epochs - c.schedule.no_aug_epoch and c.stage2_reload
    # EMA: warm-up of E/5 epochs, so the averaging window at the end is e^5 ~ 150 updates
    warm = ema_lib.warmup_updates(c.ema, spe)
    assert warm == pytest.approx(epochs / 5 * spe)
    window = 1.0 / (1.0 - float(ema_lib.ema_decay(total, c.ema.decay, warm)))
    assert 100 < window < 200 and window == pytest.approx(math.exp(5), rel=0.1)
    coco_window = 1.0 / (1.0 - float(ema_lib.ema_decay(total, c.ema.decay, c.ema.warmups)))
    assert coco_window < 5  # the COCO warm-up (1,000 updates) would hardly average at all


@pytest.mark.parametrize("size,ratio", [("n", 0.5), ("s", 0.5), ("m", 0.1), ("l", 0.05), ("x", 0.01)])
def test_learning_rates_of_the_official_finetuning_recipes(size, ratio):
    c = configs.get_config(f"finetune_dfine_{size}")
    assert (c.optimizer.lr, c.optimizer.weight_decay) == (1e-4, 1e-4)
    backbone = [g for g in c.optimizer.groups if "(?=.*backbone)" in g["regex"]]
    assert backbone and all(g["lr"] == pytest.approx(1e-4 * ratio) for g in backbone)
    recipe = {g["regex"]: g for g in configs.get_config(f"dfine_{size}").optimizer.groups}
    for g in c.optimizer.groups:
        assert (g["weight_decay"] == 0.0) == (recipe[g["regex"]]["weight_decay"] == 0.0)


def test_coco_recipe_epochs_override_warns(caplog):
    c = configs.get_config("dfine_s")
    c.unlock()
    c.epochs = 30
    with caplog.at_level("WARNING"):
        schedule.warn_on_phases_past_the_end(c)
    assert "config.data.stop_epoch=120 >= config.epochs=30" in caplog.text
    caplog.clear()
    schedule.warn_on_phases_past_the_end(configs.get_config("configs/finetune_dfine.py:s,epochs=30"))
    assert not caplog.text


def test_init_from_warns_when_the_same_classes_come_in_another_order(caplog):
    from deim_jax.data.classes import Classes
    from deim_jax.train.init_from import warn_if_permuted

    def classes(*names):
        return Classes(dict(enumerate(names)), {i: i for i in range(len(names))})

    demo_order = classes("square", "circle", "triangle", "cross")
    with caplog.at_level("WARNING"):
        assert warn_if_permuted("runs/demo", demo_order, classes("circle", "cross", "square", "triangle"))
    assert "labels are permuted" in caplog.text and "voc_classes=square,circle,triangle,cross" in caplog.text
    assert not warn_if_permuted("runs/demo", demo_order, demo_order)
    assert not warn_if_permuted("runs/demo", demo_order, classes("cat", "dog", "bird", "fish"))  # new classes
    assert not warn_if_permuted("x.pth", None, demo_order)
