"""Train-mode part of the parity tool: outputs, matchings and every loss term vs ``train.npz``.

Variants (parity/README.md "train.npz"): ``nodn`` (no denoising) and ``dn`` (fed the
fixture's recorded denoising group). Train mode is chaotic with random weights and
batch-of-2 BatchNorm statistics, so elementwise output checks are made only where
the README calls them meaningful (D-FINE n/s/m, RT-DETRv2 r18/r34); losses are compared
everywhere with relative tolerances; matchings are compared as sets of
(image, anchor index, target index).
"""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from deim_jax.tools.parity_compare import align, compare

# config name -> (elementwise tolerances or None, loss relative tolerance). parity/README.md.
_TOL = {
    "dfine_n": ({"pred_logits": 3e-2, "pred_boxes": 1e-3, "pred_corners": 3e-2}, 1e-3),
    "dfine_s": ({"pred_logits": 3e-2, "pred_boxes": 1e-3, "pred_corners": 3e-2}, 1e-3),
    "dfine_m": ({"pred_logits": 3e-2, "pred_boxes": 1e-3, "pred_corners": 3e-2}, 1e-3),
    "dfine_l": (None, 1e-2),
    "dfine_x": (None, 1e-2),
    "rtdetrv2_r18": ({"pred_logits": 3e-2, "pred_boxes": 1e-3}, 1e-4),
    "rtdetrv2_r34": ({"pred_logits": 1e-1, "pred_boxes": 5e-3}, 1e-3),
    "rtdetrv2_r50": (None, 2e-2),
    "rtdetrv2_r50m": (None, 2e-2),
    "rtdetrv2_r101": (None, 2e-2),
}


def fixture_targets(t) -> Dict[str, np.ndarray]:
    """train.npz targets -> padded {'boxes', 'labels', 'mask'}."""
    n_img = len({k.split("/")[1] for k in t.files if k.startswith("targets/")})
    labels = [t[f"targets/{b}/labels"] for b in range(n_img)]
    boxes = [t[f"targets/{b}/boxes"] for b in range(n_img)]
    m = max(1, max(len(x) for x in labels))
    out = {"boxes": np.zeros((n_img, m, 4), np.float32), "labels": np.zeros((n_img, m), np.int32),
           "mask": np.zeros((n_img, m), bool)}
    for b in range(n_img):
        k = len(labels[b])
        out["boxes"][b, :k] = boxes[b]
        out["labels"][b, :k] = labels[b]
        out["mask"][b, :k] = True
    return out


def fixture_dn_group(t, targets) -> Dict[str, np.ndarray]:
    n_dn = t["dn/dn_group/input_query_class"].shape[1]
    return {
        "query_class": t["dn/dn_group/input_query_class"].astype(np.int32),
        "query_bbox_unact": t["dn/dn_group/input_query_bbox_unact"].astype(np.float32),
        "attn_mask": t["dn/dn_group/attn_mask"].astype(bool),
        "num_group": np.int32(t["dn/dn_group/dn_meta/dn_num_group"]),
        "max_gt": np.int32(targets["mask"].sum(1).max()),
        "valid": np.ones((n_dn,), bool),
    }


def _pairs(idx: np.ndarray, query_ids: np.ndarray) -> set:
    """[B, Q] matched target per query (-1 none) -> {(b, query id, target)}."""
    out = set()
    for b, q in zip(*np.nonzero(idx >= 0)):
        out.add((int(b), int(query_ids[b, q]), int(idx[b, q])))
    return out


def _ref_pairs(t, var: str, name: str, query_ids: np.ndarray) -> set:
    out = set()
    b = 0
    while f"{var}/matcher/{name}/{b}/src" in t.files:
        for s, g in zip(t[f"{var}/matcher/{name}/{b}/src"], t[f"{var}/matcher/{name}/{b}/tgt"]):
            out.add((b, int(query_ids[b, int(s)]), int(g)))
        b += 1
    return out


def _output_rows(mine, ref_prefix, t, tol, my_idx, ref_idx, keys) -> Dict[str, Dict]:
    rows = {}
    for k in keys:
        if k in tol and f"{ref_prefix}/{k}" in t.files:
            a, r = np.asarray(mine[k]), t[f"{ref_prefix}/{k}"]
            if my_idx is not None:
                a, r = align(a, my_idx), align(r, ref_idx)
            rows[k] = compare(a, r, tol[k])
    return rows


def run_train(fixture_dir: str, cfg, variables) -> Dict[str, Dict]:
    import jax

    from deim_jax import losses, models

    t = np.load(os.path.join(fixture_dir, "train.npz"))
    ev = np.load(os.path.join(fixture_dir, "eval.npz"))
    images = np.transpose(ev["images"], (0, 2, 3, 1)).astype(np.float32)
    targets = fixture_targets(t)
    elem_tol, loss_tol = _TOL.get(cfg.name, (None, 1e-2))
    model = models.build(cfg)
    criterion = losses.build(cfg)

    @jax.jit
    def forward(v, x, group, tg):
        out, _ = model.apply(v, x, train=True, dn_group=group, mutable=["batch_stats"])
        return out, criterion(out, tg), criterion.match(out, tg)

    rep: Dict[str, Dict] = {}
    for var in ("nodn", "dn"):
        if f"{var}/loss_total" not in t.files:
            continue
        group = fixture_dn_group(t, targets) if var == "dn" else None
        out, loss, matches = forward(variables, images, group, targets)
        out = jax.tree_util.tree_map(np.asarray, out)
        my_idx, ref_idx = np.asarray(out["enc_topk_indices"]), t[f"{var}/enc_topk_indices"]
        n_diff = sum(len(set(my_idx[b].tolist()) ^ set(ref_idx[b].tolist())) for b in range(len(ref_idx)))
        same = n_diff == 0
        row = {"shape": list(ref_idx.shape), "max_abs": 0.0 if same else None, "max_rel": None, "tol": 0, "ok": same}
        if not same and elem_tol is None:
            # Chaotic configs (below): their train-mode encoder-score noise reaches the 300th/301st margin
            # (l: 1.1e-3 against a 6.9e-4 margin on an Intel Xeon, machine-dependent), so the set may flip.
            row["ok"] = True
            row["note"] = f"{n_diff} anchors differ (chaotic train mode: informational, losses are the check)"
        rep[f"{var}/enc_topk_set"] = row
        if elem_tol is not None and same:
            keys = ("pred_logits", "pred_boxes", "pred_corners")
            for k, r in _output_rows(out, f"{var}/out", t, elem_tol, my_idx, ref_idx, keys).items():
                rep[f"{var}/out/{k}"] = r
            for i, aux in enumerate(out.get("aux_outputs", [])):
                for k, r in _output_rows(aux, f"{var}/out/aux_outputs/{i}", t, elem_tol, my_idx, ref_idx, keys).items():
                    rep[f"{var}/out/aux_outputs/{i}/{k}"] = r
            for i, dn in enumerate(out.get("dn_outputs", [])):
                for k, r in _output_rows(dn, f"{var}/out/dn_outputs/{i}", t, elem_tol, None, None, keys).items():
                    rep[f"{var}/out/dn_outputs/{i}/{k}"] = r
        # Matchings as sets of (image, anchor, target); denoising slots keep their fixed order.
        slots = None
        for name, idx in matches.items():
            idx = np.asarray(idx)
            if f"{var}/matcher/{name}/0/src" not in t.files:
                continue
            if name == "dn":
                slots = slots if slots is not None else np.tile(np.arange(idx.shape[1]), (idx.shape[0], 1))
                mine_p, ref_p = _pairs(idx, slots), _ref_pairs(t, var, name, slots)
            else:
                mine_p, ref_p = _pairs(idx, my_idx), _ref_pairs(t, var, name, ref_idx)
            diff = len(mine_p ^ ref_p)
            row = {"shape": [len(ref_p)], "max_abs": float(diff), "max_rel": None, "tol": 0, "ok": diff == 0}
            if diff and elem_tol is None:
                # parity/README.md: train mode of l/x/r50/r101 is chaotic in float32 (rounding noise of the
                # output layers exceeds cost gaps); their check is the losses. Reported, not failed.
                row["ok"] = True
                row["note"] = f"{diff} pairs differ (chaotic train mode: informational, losses are the check)"
            elif name == "union_go" and diff:
                row["note"] = "union-set tie-breaking differs from the reference's (implementation-defined)"
            rep[f"{var}/matcher/{name}"] = row
        names: List[str] = sorted(k.split("/", 2)[2] for k in t.files if k.startswith(f"{var}/loss/"))
        missing = sorted(set(names) - set(loss))
        extra = sorted(set(loss) - set(names))
        rep[f"{var}/loss_names"] = {"shape": [len(names)], "max_abs": float(len(missing) + len(extra)),
                                    "max_rel": None, "tol": 0, "ok": not missing and not extra,
                                    "missing": missing, "extra": extra}
        for name in names:
            if name in loss:
                rep[f"{var}/loss/{name}"] = compare(np.asarray(loss[name]), t[f"{var}/loss/{name}"], loss_tol, "rel")
        total = sum(float(np.asarray(v)) for v in loss.values())
        rep[f"{var}/loss_total"] = compare(np.float64(total), t[f"{var}/loss_total"], loss_tol, "rel")
    return rep
