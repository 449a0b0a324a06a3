"""experiments/official_ab: the official trainer's YAML is the demo recipe; ids are remapped; logs parse."""

import importlib.util
import json
import os

import yaml

from deim_jax import configs

_spec = importlib.util.spec_from_file_location(
    "official_ab", os.path.join(configs.REPO_ROOT, "experiments", "official_ab", "run.py"))
ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ab)


def test_official_yaml_is_the_demo_recipe():
    c = configs.get_config("demo")
    y = yaml.safe_load(ab.official_yaml(c, "/src/DEIM", "/d", "/ann", "/out"))
    assert y["__include__"] == ["/src/DEIM/configs/deim_dfine/deim_hgnetv2_n_coco.yml"]
    assert (y["num_classes"], y["remap_mscoco_category"], y["eval_spatial_size"]) == (4, False, [256, 256])
    dec = y["DFINETransformer"]
    assert (dec["hidden_dim"], dec["num_queries"], dec["num_denoising"], dec["feat_channels"]) == (64, 60, 30, [64, 64])
    assert y["HybridEncoder"] == {"hidden_dim": 64, "dim_feedforward": 256} and y["HGNetv2"] == {"pretrained": False}
    assert (y["epoches"], y["flat_epoch"], y["no_aug_epoch"], y["lr_gamma"], y["warmup_iter"]) == (16, 10, 2, 0.1, 50)
    assert y["optimizer"]["lr"] == 1e-3 and [g["lr"] for g in y["optimizer"]["params"]] == [1e-3] * 3
    assert [g["weight_decay"] for g in y["optimizer"]["params"]] == [1e-4, 0.0, 0.0]
    assert y["ema"]["decay"] == 0.999 and y["ema"]["warmups"] == 100
    train = y["train_dataloader"]
    assert train["dataset"]["transforms"]["policy"]["epoch"] == [3, 8, 14]
    assert train["dataset"]["transforms"]["ops"][0]["output_size"] == 128
    assert train["collate_fn"]["mixup_epochs"] == [3, 8] and train["collate_fn"]["stop_epoch"] == 14
    assert train["total_batch_size"] == 8 and train["dataset"]["ann_file"] == "/ann/instances_train.json"


def test_category_ids_renumbered_and_logs_parsed(tmp_path):
    src = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
           "categories": [{"id": 5, "name": "cross"}, {"id": 1, "name": "square"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}]}
    (tmp_path / "in.json").write_text(json.dumps(src))
    ab.remap_categories(str(tmp_path / "in.json"), str(tmp_path / "out.json"))
    out = json.loads((tmp_path / "out.json").read_text())
    assert {c["name"]: c["id"] for c in out["categories"]} == {"square": 0, "cross": 1}
    assert out["annotations"][0]["category_id"] == 1

    runs = tmp_path / "runs"
    for seed, aps in ((0, (0.1, 0.3)), (1, (0.2, 0.4))):
        off, jx = runs / "official" / f"seed{seed}", runs / "deim_jax" / f"seed{seed}"
        off.mkdir(parents=True), jx.mkdir(parents=True)
        (off / "log.txt").write_text("".join(json.dumps({"epoch": e, "test_coco_eval_bbox": [ap, ap + 0.2] + [0] * 10})
                                             + "\n" for e, ap in enumerate(aps)))
        (jx / "eval.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "AP": ap + 0.05, "AP50": ap}) + "\n"
                                               for e, ap in enumerate(aps)))
    results = ab.collect(str(runs), epochs=2)
    assert results["official"]["1"]["AP"] == [0.2, 0.4] and results["official"]["0"]["AP50"] == [0.3, 0.5]
    assert results["deim_jax"]["0"]["epochs"] == [1, 2] and results["deim_jax"]["1"]["AP"] == [0.25, 0.45]
    table = ab.summary_table(results, epochs=2)
    assert "| 1 | 0.150 [0.100, 0.200] | 0.200 [0.150, 0.250] | yes |" in table
    assert ab.collect(str(runs), epochs=3) == {}  # unfinished runs are left out
