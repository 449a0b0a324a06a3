"""What both parts of the parity tool share: query alignment, tensor comparison, the table."""

from __future__ import annotations

from typing import Dict

import numpy as np


def align(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sort the query axis of a [B, Q, ...] array by anchor index."""
    p = np.argsort(idx, axis=1, kind="stable")
    return np.stack([a[b][p[b]] for b in range(a.shape[0])])


def compare(mine, ref, tol: float, kind: str = "abs") -> Dict:
    mine = np.asarray(mine, np.float64)
    ref = np.asarray(ref, np.float64)
    if mine.shape != ref.shape:
        return {"shape": list(ref.shape), "mine_shape": list(mine.shape), "ok": False, "tol": tol,
                "max_abs": None, "max_rel": None}
    diff = np.abs(mine - ref)
    both_inf = ~np.isfinite(ref) & (mine == ref)
    diff = np.where(both_inf, 0.0, diff)
    max_abs = float(np.max(diff)) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    max_rel = float(np.max(rel)) if rel.size else 0.0
    err = max_rel if kind == "rel" else max_abs
    return {"shape": list(ref.shape), "max_abs": max_abs, "max_rel": max_rel, "tol": tol, "tol_kind": kind,
            "ok": bool(np.isfinite(err) and err <= tol)}


def format_table(report: Dict[str, Dict[str, Dict]]) -> str:
    lines = [f"{'fixture':<14} {'tensor':<44} {'max_abs':>10} {'max_rel':>10} {'tol':>8}  ok"]
    for fx, rows in report.items():
        for name, r in rows.items():
            def f(x):
                return "-" if x is None else f"{x:.2e}"
            lines.append(f"{fx:<14} {name:<44} {f(r.get('max_abs')):>10} {f(r.get('max_rel')):>10} "
                         f"{f(r.get('tol')):>8}  {'yes' if r['ok'] else 'NO'}"
                         + (f"  ({r['note']})" if r.get("note") else ""))
    return "\n".join(lines)
