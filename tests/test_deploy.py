"""Deployment: weights of a run / checkpoint / .pth, image and video inputs, the predict tool's
outputs, and the conversion between official .pth files and checkpoints."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from deim_jax import configs, convert, models
from deim_jax.data.classes import Classes
from deim_jax.deploy import media, weights
from deim_jax.deploy.detector import make_detect
from deim_jax.deploy.predictor import Predictor, predict
from deim_jax.errors import ConfigError, MissingDataError, UserError
from deim_jax.train import checkpoints
from tests.parity_utils import assert_same_state_dict, synth_state_dict
from tests.train_helpers import tiny_config, tiny_dataset

CLASSES = Classes({0: "circle", 1: "square", 2: "triangle", 3: "cross"}, {0: 1, 1: 2, 2: 3, 3: 5})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, random variables, a checkpoint folder of them with the demo's classes, data root)."""
    root = tiny_dataset(str(tmp_path_factory.mktemp("data")))
    cfg = tiny_config(root)
    variables = jax.tree_util.tree_map(np.asarray, models.init(models.build(cfg), cfg, jax.random.PRNGKey(0)))
    ckpt = str(tmp_path_factory.mktemp("ckpt"))
    checkpoints.save_weights(ckpt, variables, classes=CLASSES.to_json(), config=cfg)
    return cfg, variables, ckpt, root


# ------------------------------------------------------------------------------------ inputs

def test_read_rgb_handles_orientation_grey_alpha_palette_and_16_bit(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5, :, 0] = 255  # a red band at the top
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated: displayed turned 90 degrees clockwise
    im.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    shown = media.read_rgb(str(tmp_path / "rotated.jpg"))
    assert shown.shape == (30, 20, 3) and shown[:, -5:, 0].mean() > 200 and shown[:, :5, 0].mean() < 50

    Image.fromarray(np.full((4, 6), 77, np.uint8)).save(tmp_path / "grey.png")
    assert media.read_rgb(str(tmp_path / "grey.png")).tolist() == np.full((4, 6, 3), 77).tolist()

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 255  # blue, alpha 0 on the left half, 255 on the right
    rgba[:, 2:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = media.read_rgb(str(tmp_path / "alpha.png"))
    assert out[:, :2].tolist() == np.full((4, 2, 3), 255).tolist() and out[:, 2:].tolist() == [[[0, 0, 255]] * 2] * 4

    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert media.read_rgb(str(tmp_path / "palette.png"))[0, 0].tolist() == [255, 0, 0]

    deep = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert media.read_rgb(str(tmp_path / "deep.png"))[0, :, 0].tolist() == [0, 128, 255]


def test_expand_inputs_files_folders_globs_and_clear_errors(tmp_path):
    for rel in ("b.jpg", "a.png", "sub/c.mp4", "notes.txt"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = media.expand_inputs(str(tmp_path))
    assert [(s.kind, os.path.relpath(s.path, tmp_path)) for s in found] == [
        ("image", "a.png"), ("image", "b.jpg"), ("video", "sub/c.mp4")]
    assert [os.path.basename(s.path) for s in media.expand_inputs(str(tmp_path / "*.jpg"))] == ["b.jpg"]
    assert media.expand_inputs(str(tmp_path / "notes.txt"))[0].kind == "image"  # a named file is tried as one
    with pytest.raises(MissingDataError, match=r"--input=.*\*\.gif: the pattern matches no file"):
        media.expand_inputs(str(tmp_path / "*.gif"))
    with pytest.raises(MissingDataError, match="no such file or folder"):
        media.expand_inputs(str(tmp_path / "missing.jpg"))


def test_video_round_trip(tmp_path):
    frames = [np.full((48, 64, 3), v, np.uint8) for v in (0, 120, 240)]
    writer = media.VideoWriter(str(tmp_path / "v.mp4"), fps=5)
    for f in frames:
        writer.write(f)
    writer.close()
    fps, n = media.video_info(str(tmp_path / "v.mp4"))
    back = list(media.video_frames(str(tmp_path / "v.mp4")))
    assert fps == 5 and n == 3 and len(back) == 3 and back[0].shape == (48, 64, 3)
    assert [int(round(b.mean())) for b in back] == pytest.approx([0, 120, 240], abs=4)


# ----------------------------------------------------------------------------------- weights

def test_load_picks_the_best_checkpoint_of_a_run_and_checks_the_model(tiny, tmp_path):
    cfg, variables, ckpt, _ = tiny
    run = tmp_path / "run" / "checkpoints"
    worse = jax.tree_util.tree_map(lambda a: a * 0, variables)
    train = lambda v: {"params": v["params"], "batch_stats": v["batch_stats"],  # noqa: E731
                       "ema_params": v["params"], "ema_batch_stats": v["batch_stats"]}
    with checkpoints.CheckpointManager(str(run)) as mngr:
        mngr.save(1, train(variables), metrics={"AP": 0.5})
        mngr.save(2, train(worse), metrics={"AP": 0.1})
    best = weights.load(cfg, workdir=str(tmp_path / "run"))
    assert "step 1, AP 0.5000" in best.source
    np.testing.assert_array_equal(best.variables["params"]["decoder"]["pre_bbox_head"]["layers_0"]["kernel"],
                                  variables["params"]["decoder"]["pre_bbox_head"]["layers_0"]["kernel"])
    assert "step 2" in weights.load(cfg, checkpoint=str(run)).source  # a checkpoint folder: the newest

    loaded = weights.load(cfg, checkpoint=ckpt)
    assert loaded.classes == CLASSES
    with pytest.raises(UserError, match="exactly one of --workdir, --checkpoint, --weights"):
        weights.load(cfg, checkpoint=ckpt, weights="x.pth")
    with pytest.raises(MissingDataError, match="--workdir=.*no checkpoint in"):
        weights.load(cfg, workdir=str(tmp_path))
    other = cfg.copy_and_resolve_references()
    other.num_classes = 7
    with pytest.raises(ConfigError, match=r"score_head_0/bias has shape \(4,\), --config=demo needs \(7,\)"):
        weights.load(other, checkpoint=ckpt)


def test_convert_pth_to_checkpoint_and_back_is_exact(tmp_path):
    torch = pytest.importorskip("torch")
    cfg = configs.get_config("dfine_n")
    sd = synth_state_dict("n")
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, tmp_path / "n.pth")
    print(weights.pth_to_checkpoint(cfg, str(tmp_path / "n.pth"), str(tmp_path / "ckpt")))
    loaded = weights.load(cfg, checkpoint=str(tmp_path / "ckpt"))
    assert loaded.classes.names[0] == "person" and loaded.classes.label_to_category[79] == 90
    want = convert.from_torch_state_dict(sd, cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.variables, want)
    weights.checkpoint_to_pth(cfg, str(tmp_path / "back.pth"), checkpoint=str(tmp_path / "ckpt"))
    assert_same_state_dict(convert.load_pth(str(tmp_path / "back.pth")), sd)


# ----------------------------------------------------------------------------------- predict

def test_predictor_equals_the_model_and_post_processing(tiny):
    cfg, variables, _, root = tiny
    paths = sorted(os.listdir(os.path.join(root, "val")))[:3]
    rgbs = [media.read_rgb(os.path.join(root, "val", p)) for p in paths]
    got = Predictor(cfg, variables, (96, 96), batch=4, threshold=0.0)(rgbs)
    images = np.stack([media.to_model_input(r, (96, 96)) for r in rgbs])
    sizes = np.array([[r.shape[1], r.shape[0]] for r in rgbs], np.float32)
    want = jax.jit(make_detect(cfg, remap_mscoco_category=False))(variables, images, sizes)
    for i, (labels, boxes, scores) in enumerate(got):
        np.testing.assert_array_equal(labels, np.asarray(want["labels"][i]))
        np.testing.assert_allclose(boxes, np.asarray(want["boxes"][i]), atol=1e-3)
        np.testing.assert_allclose(scores, np.asarray(want["scores"][i]), atol=1e-6)


def test_predict_writes_pictures_video_and_coco_results_and_skips_unreadable_files(tiny, tmp_path, caplog):
    cfg, _, ckpt, root = tiny
    inp = tmp_path / "in"
    os.makedirs(inp / "nested")
    val = sorted(os.listdir(os.path.join(root, "val")))
    for name in val[:2]:
        Image.open(os.path.join(root, "val", name)).save(inp / name)
    Image.open(os.path.join(root, "val", val[2])).convert("L").save(inp / "nested" / "grey.png")
    Image.open(os.path.join(root, "val", val[3])).save(inp / "nested" / "grey.jpg")  # the same stem as grey.png
    (inp / "broken.jpg").write_bytes(b"not an image")
    writer = media.VideoWriter(str(inp / "clip.mp4"), fps=4)
    for name in val[:3]:
        writer.write(media.read_rgb(os.path.join(root, "val", name)))
    writer.close()

    out = str(tmp_path / "out")
    os.makedirs(out)
    loaded = weights.load(cfg, checkpoint=ckpt)
    with caplog.at_level("WARNING", logger="deim_jax.predict"):
        counts = predict(cfg, media.expand_inputs(str(inp)), out, loaded, threshold=0.0, batch=2, root=str(inp))
    assert counts == {"images": 4, "frames": 3, "detections": 7 * cfg.num_top_queries, "skipped": 1}
    assert "skipped " + str(inp / "broken.jpg") in caplog.text
    for rel in (os.path.splitext(val[0])[0] + ".jpg", "nested/grey.jpg", "nested/grey_png.jpg", "clip.mp4"):
        assert os.path.getsize(os.path.join(out, rel)) > 0, rel
    drawn = np.asarray(Image.open(os.path.join(out, os.path.splitext(val[0])[0] + ".jpg")), float)
    assert drawn.shape == media.read_rgb(str(inp / val[0])).shape
    assert np.abs(drawn - media.read_rgb(str(inp / val[0]))).max() > 100  # boxes and labels were drawn
    rows = json.load(open(os.path.join(out, "results.json")))
    assert len(rows) == counts["detections"]
    assert {r["category_id"] for r in rows} <= {1, 2, 3, 5}  # the checkpoint's category ids, not labels
    frames = sorted({r["frame"] for r in rows if "frame" in r})
    assert frames == [0, 1, 2]
    row = rows[0]
    assert set(row) == {"image_id", "category_id", "bbox", "score", "file_name"} and len(row["bbox"]) == 4


def test_predict_command_line(tiny, tmp_path):
    cfg, _, ckpt, root = tiny
    cmd = [sys.executable, "-m", "deim_jax.predict", f"--config=tests/tiny_config.py:{root}", f"--checkpoint={ckpt}",
           f"--input={root}/val", f"--out={tmp_path}/out", "--score-threshold=0.01", "--batch=4"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=configs.REPO_ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 image(s) and 0 video frame(s)" in r.stdout and os.path.isfile(f"{tmp_path}/out/results.json")
    r = subprocess.run(cmd[:4] + [f"--input={tmp_path}/nothing", f"--out={tmp_path}/o2"], capture_output=True,
                       text=True, cwd=configs.REPO_ROOT, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: --input={tmp_path}/nothing: no such file or folder"
