"""Compare deim_jax against golden outputs of the official PyTorch model.

    python -m deim_jax.tools.parity FIXTURE_DIR... [--report=out.json] [--modes=eval,train]

Each fixture directory (format: shared/parity/README.md) names its config and
weight seed in ``summary.json``; weights come from the ``synth_weights.py`` in
the fixture directory's parent folder. The tool converts them with
``deim_jax.convert``, runs the model, aligns the query order by anchor index,
prints a table and writes ``{fixture: {tensor: {max_abs, max_rel, shape, tol, ok}}}``.
Exit status 1 when any tensor is over its tolerance.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import app, flags

from deim_jax.tools import parity_train
from deim_jax.tools.parity_compare import align, compare, format_table

_MODES = flags.DEFINE_list("modes", ["eval"], "Comma-separated: eval,train.")
_REPORT = flags.DEFINE_string("report", None, "Write the JSON report here.")

# Tolerances (float32 vs the official float32 outputs; parity/README.md).
EVAL_TOL = {"maps": 1e-4, "pred_logits": 1e-4, "pred_boxes": 1e-5, "post_scores": 1e-5, "post_boxes": 1e-2}


def config_name_for(official: str) -> str:
    """Official config name from summary.json -> deim_jax config name."""
    m = re.fullmatch(r"deim_hgnetv2_([nsmlx])_coco", official)
    if m:
        return f"dfine_{m.group(1)}"
    m = re.fullmatch(r"deim_r(\d+)vd(_m)?_\d+e_coco", official)
    if m:
        return f"rtdetrv2_r{m.group(1)}{'m' if m.group(2) else ''}"
    raise ValueError(f"summary.json names config {official!r}, which deim_jax does not map")


def load_synth_weights(fixture_dir: str):
    """The fixture's state dict, from ``../synth_weights.py`` + manifest + fixed.npz, checksum-verified."""
    parent = os.path.dirname(os.path.abspath(fixture_dir))
    gen = os.path.join(parent, "synth_weights.py")
    if not os.path.isfile(gen):
        raise FileNotFoundError(f"{gen}: the weight generator must sit in the fixture directory's parent folder")
    spec = importlib.util.spec_from_file_location("_deim_synth_weights", gen)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary = json.load(open(os.path.join(fixture_dir, "summary.json")))
    sw = summary["synthetic_weights"]
    manifest = mod.load_manifest(os.path.join(fixture_dir, "manifest.json"))
    sd = mod.synth_state_dict(manifest, seed=int(sw["seed"]), fixed=mod.load_fixed(os.path.join(fixture_dir, "fixed.npz")))
    digest = mod.state_dict_sha256(sd)
    if digest != sw["sha256"]:
        raise RuntimeError(
            f"{fixture_dir}: synthetic weights checksum {digest} != {sw['sha256']} "
            f"(numpy {np.__version__} vs {sw.get('numpy_version')}: random streams differ)"
        )
    return sd, summary


def _nhwc(x):
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


def run_eval(fixture_dir: str, cfg, variables) -> Dict[str, Dict]:
    import jax

    from deim_jax import models

    ev = np.load(os.path.join(fixture_dir, "eval.npz"))
    model = models.build(cfg)
    images = _nhwc(ev["images"]).astype(np.float32)

    def forward(m, x):
        feats = m.backbone(x, train=False)
        enc = m.encoder(feats, train=False)
        return feats, enc, m.decoder(enc, train=False)

    feats, enc, out = jax.jit(lambda v, x: model.apply(v, x, method=forward))(variables, images)
    rep: Dict[str, Dict] = {}
    for name, maps in (("backbone", feats), ("encoder", enc)):
        for i, fm in enumerate(maps):
            key = f"{name}/{i}"
            if key in ev.files:
                rep[key] = compare(np.asarray(fm), _nhwc(ev[key]), EVAL_TOL["maps"])
    my_idx = np.asarray(out["enc_topk_indices"])
    ref_idx = ev["enc_topk_indices"]
    same_set = all(set(my_idx[b].tolist()) == set(ref_idx[b].tolist()) for b in range(ref_idx.shape[0]))
    rep["enc_topk_set"] = {"shape": list(ref_idx.shape), "max_abs": 0.0 if same_set else None, "max_rel": None,
                           "tol": 0, "ok": same_set}
    if same_set:
        for key, tol in (("pred_logits", EVAL_TOL["pred_logits"]), ("pred_boxes", EVAL_TOL["pred_boxes"])):
            rep[key] = compare(align(np.asarray(out[key]), my_idx), align(ev[key], ref_idx), tol)
    rep.update(_compare_postprocess(cfg, out, ev))
    return rep


def _compare_postprocess(cfg, out, ev) -> Dict[str, Dict]:
    try:
        from deim_jax.evaluate import postprocess as pp
    except ImportError:
        return {}
    sizes = ev["post/orig_target_sizes"]
    res = pp.postprocess(out["pred_logits"], out["pred_boxes"], sizes, num_top_queries=cfg.num_top_queries,
                         remap_mscoco_category=cfg.remap_mscoco_category)
    scores = np.asarray(res["scores"])
    rep = {"post/scores": compare(scores, ev["post/scores"], EVAL_TOL["post_scores"])}
    # Rows are sorted by score; where neighbouring scores are closer than the noise the order may
    # differ, so match each reference row to a row of ours with the same label and a close score.
    boxes = np.asarray(res["boxes"])
    labels = np.asarray(res["labels"])
    worst, unmatched = 0.0, 0
    for b in range(scores.shape[0]):
        used = np.zeros(scores.shape[1], bool)
        for r in range(scores.shape[1]):
            cand = np.where(~used & (labels[b] == ev["post/labels"][b, r])
                            & (np.abs(scores[b] - ev["post/scores"][b, r]) <= 10 * EVAL_TOL["post_scores"]))[0]
            if cand.size == 0:
                unmatched += 1
                continue
            d = np.abs(boxes[b, cand] - ev["post/boxes"][b, r]).max(axis=1)
            j = cand[np.argmin(d)]
            used[j] = True
            worst = max(worst, float(d.min()))
    rep["post/boxes"] = {"shape": list(ev["post/boxes"].shape), "max_abs": worst, "max_rel": None,
                         "tol": EVAL_TOL["post_boxes"], "unmatched_rows": unmatched,
                         "ok": unmatched == 0 and worst <= EVAL_TOL["post_boxes"]}
    return rep


def check_fixture(fixture_dir: str, modes=("eval",)) -> Dict[str, Dict]:
    from deim_jax import configs, convert

    sd, summary = load_synth_weights(fixture_dir)
    cfg = configs.get_config(config_name_for(summary["config"]))
    variables = convert.from_torch_state_dict(sd, cfg)
    rep: Dict[str, Dict] = {}
    if "eval" in modes:
        rep.update({f"eval/{k}": v for k, v in run_eval(fixture_dir, cfg, variables).items()})
    if "train" in modes:
        rep.update({f"train/{k}": v for k, v in parity_train.run_train(fixture_dir, cfg, variables).items()})
    return rep


def run(fixtures: Sequence[str], modes: Sequence[str] = ("eval",), report_path: Optional[str] = None) -> int:
    """Check every fixture directory; print the table; 0 = all within tolerance, 1 = not, 2 = bad input."""
    report = {}
    for fx in fixtures:
        if not os.path.isfile(os.path.join(fx, "summary.json")):
            print(f"error: {fx} is not a fixture directory (no summary.json)", file=sys.stderr)
            return 2
        report[os.path.basename(os.path.normpath(fx))] = check_fixture(fx, tuple(modes))
    print(format_table(report))
    if report_path:
        with open(report_path, "w") as f:
            json.dump(report, f, indent=1)
    ok = all(r["ok"] for rows in report.values() for r in rows.values())
    print("parity: PASS" if ok else "parity: FAIL")
    return 0 if ok else 1


def _app_main(argv: Sequence[str]) -> int:
    """``argv`` after absl parsed the flags: [program, FIXTURE_DIR...]."""
    if len(argv) < 2:
        print("usage: python -m deim_jax.tools.parity FIXTURE_DIR... [--modes=eval,train] [--report=FILE]",
              file=sys.stderr)
        return 2
    return run(argv[1:], [m.strip() for m in _MODES.value if m.strip()], _REPORT.value)


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` (the arguments after the program name; default ``sys.argv[1:]``) and ``run``."""
    for f in (_MODES, _REPORT):  # a fresh parse (the tests call main repeatedly in one process)
        flags.FLAGS[f.name].unparse()
    return _app_main(flags.FLAGS(["parity", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    app.run(_app_main)
