"""Config resolution by name, path and override; the official values that other code relies on."""

import subprocess
import sys

import pytest

from deim_jax import configs


def test_every_available_name_resolves():
    names = configs.available()
    for size in "nsmlx":
        assert f"dfine_{size}" in names and f"dfine_{size}_baseline" in names
    for size in ("r18", "r34", "r50m", "r50", "r101"):
        assert f"rtdetrv2_{size}" in names and f"rtdetrv2_{size}_baseline" in names
    for name in names:
        cfg = configs.get_config(name)
        assert cfg.num_classes == (4 if name.startswith("demo") else 0 if name.startswith("finetune") else 80), name
        assert cfg.model.family in ("dfine", "rtdetrv2")


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="dfine_l_baseline"):
        configs.get_config("dfine_q")


def test_deim_and_baseline_recipes_differ_where_official_ones_do():
    deim, base = configs.get_config("dfine_l"), configs.get_config("dfine_l_baseline")
    assert deim.model.decoder.activation == deim.model.decoder.mlp_act == "silu"
    assert base.model.decoder.activation == base.model.decoder.mlp_act == "relu"
    assert deim.loss.losses[0] == "mal" and base.loss.losses[0] == "vfl"
    assert (deim.model.backbone.freeze_norm, base.model.backbone.freeze_norm) == (False, True)
    assert deim.data.mosaic_prob == 0.5 and base.data.mosaic_prob == 0.0
    assert deim.epochs == 58 and base.epochs == 80


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_demo_baseline_is_the_demo_model_and_data_with_the_baseline_recipe():
    deim, base = (_flat(configs.get_config(n).to_dict()) for n in ("demo", "demo_baseline"))
    differ = {k for k in deim.keys() | base.keys() if deim.get(k) != base.get(k)}
    assert differ == {"name", "recipe", "loss.losses", "loss.gamma", "schedule.name", "optimizer.groups",
                      "data.policy_epochs", "data.mixup_epochs", "data.mosaic_prob", "data.mixup_prob"}
    assert base["loss.losses"][0] == "vfl" and base["schedule.name"] == "linear_warmup"
    assert base["data.policy_epochs"] == (0, 0, deim["data.stop_epoch"]) and base["data.mixup_prob"] == 0.0


def test_path_form_and_multiscale_settings():
    cfg = configs.get_config(configs.CONFIG_DIR + "/dfine.py:s")
    assert cfg.name == "dfine_s"
    # deim_dfine.md §1.3 / §8.5: base_size_repeat N None, S 20, M 6, L 4, X 3.
    repeats = {s: configs.get_config(f"dfine_{s}").data.base_size_repeat for s in "nsmlx"}
    assert repeats == {"n": None, "s": 20, "m": 6, "l": 4, "x": 3}


def test_batch_size_is_one_field():
    cfg = configs.get_config("dfine_l")
    cfg.batch_size = 8
    assert cfg.data.batch_size == 8


def test_cli_rejects_unknown_config_with_clear_message():
    r = subprocess.run([sys.executable, "-m", "deim_jax.main", "--config=nope"], capture_output=True, text=True,
                       cwd=configs.REPO_ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown config 'nope'") and "dfine_n" in r.stderr
