"""End-to-end parity with the official PyTorch outputs through the parity tool (eval mode)."""

import json
import os
import shutil

import pytest

from deim_jax.tools import parity
from tests.parity_utils import fixture_dir


def _relocated(tmp_path, name):
    """The fixture set laid out elsewhere (files linked): the tool must find its synth_weights.py there."""
    src = fixture_dir(name)
    dst = tmp_path / "fixtures" / name
    dst.mkdir(parents=True)
    for f in os.listdir(src):
        os.symlink(os.path.join(src, f), dst / f)
    shutil.copy(os.path.join(os.path.dirname(src), "synth_weights.py"), tmp_path / "fixtures")
    return str(dst)


@pytest.mark.parametrize("name", ["n", "s", "l", "rtdetrv2_r18", "rtdetrv2_r50"])
def test_eval_parity(tmp_path, name, capsys):
    fx = _relocated(tmp_path, name) if name == "n" else fixture_dir(name)
    report_path = tmp_path / "report.json"
    code = parity.main([fx, "--report", str(report_path)])
    out = capsys.readouterr().out
    report = json.load(open(report_path))[name]
    failed = {k: v for k, v in report.items() if not v["ok"]}
    assert code == 0 and not failed, f"{failed}\n{out}"
    for key in ("eval/pred_logits", "eval/pred_boxes", "eval/enc_topk_set", "eval/post/scores"):
        assert key in report, key
    assert report["eval/pred_logits"]["max_abs"] <= 1e-4
    assert report["eval/pred_boxes"]["max_abs"] <= 1e-5


def test_tool_rejects_a_folder_that_is_not_a_fixture(tmp_path, capsys):
    assert parity.main([str(tmp_path)]) == 2
    assert "not a fixture directory" in capsys.readouterr().err


def test_config_names_map():
    assert parity.config_name_for("deim_hgnetv2_x_coco") == "dfine_x"
    assert parity.config_name_for("deim_r18vd_120e_coco") == "rtdetrv2_r18"
    with pytest.raises(ValueError, match="does not map"):
        parity.config_name_for("yolo")


def test_train_parity_n(tmp_path, capsys):
    """Train mode through the tool: outputs, every matching and every loss term of n (both variants)."""
    report_path = tmp_path / "report.json"
    code = parity.main([fixture_dir("n"), "--modes", "train", "--report", str(report_path)])
    out = capsys.readouterr().out
    report = json.load(open(report_path))["n"]
    failed = {k: v for k, v in report.items() if not v["ok"]}
    assert code == 0 and not failed, f"{failed}\n{out}"
    assert report["train/dn/loss_total"]["max_rel"] <= 1e-3
    assert report["train/nodn/matcher/union_go"]["max_abs"] == 0
    assert sum(k.startswith("train/dn/loss/") for k in report) == 37
