"""DEIM criterion (deim_dfine.md §6): MAL / VFL, L1 + GIoU, FGL + DDF, union matching, denoising.

Everything has static shapes. Matchings are represented per output as ``[B, Q] int32`` arrays
(entry = matched target index in 0..M-1, or -1). Targets::

    targets = {'boxes': [B, M, 4] normalized cxcywh, 'labels': [B, M] int, 'mask': [B, M] bool}

with the real targets packed first (mask True). ``Criterion(...)(outputs, targets)`` returns a
dict of weighted loss terms with the official names (``loss_mal``, ``loss_bbox``, ``loss_giou``,
``loss_fgl``, ``loss_ddf`` + ``_aux_i``, ``_pre``, ``_enc_0``, ``_dn_i``, ``_dn_pre``). All
losses are computed in float32. Every term is ``nan_to_num``'ed like the reference.

Differences from the reference that do not change values: DDF terms are always present for
outputs that carry teacher corners (the reference omits them while the corners equal the
teacher's exactly, e.g. at initialization; here they are then 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp

from deim_jax.ops import fdr
from deim_jax.ops import boxes as box_ops

Array = Any


# ----------------------------------------------------------------------------------------------
# Matching helpers.
# ----------------------------------------------------------------------------------------------

def union_matching(indices: Array, num_targets: int) -> Array:
    """Union ("go") set of several matchings: [K, B, Q] int (-1 unmatched) -> [B, Q] int.

    Each query keeps the target it is matched to most often across the K matchings; ties go to
    the smallest target index (stable sort on (count desc, (query, gt) asc), deim_dfine.md §6.2).
    """
    onehot = jax.nn.one_hot(indices, num_targets, dtype=jnp.int32)  # -1 -> all zeros
    counts = jnp.sum(onehot, axis=0)  # [B, Q, M]
    best = jnp.argmax(counts, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.max(counts, axis=-1) > 0, best, -1)


def dn_matching(num_slots: int, max_gt, valid: Array, target_mask: Array) -> Array:
    """Fixed denoising matching: slot s of image b -> target j = s mod 2M if j < n_b and valid[s].

    num_slots: static D_max; max_gt: int scalar M (traced ok); valid [D_max] bool;
    target_mask [B, Mt] bool (real targets packed first). Returns [B, D_max] int32.
    """
    n = jnp.sum(target_mask.astype(jnp.int32), axis=-1)  # [B]
    s = jnp.arange(num_slots, dtype=jnp.int32)
    j = jnp.mod(s, 2 * jnp.maximum(jnp.asarray(max_gt, jnp.int32), 1))
    pos = (j[None, :] < n[:, None]) & jnp.asarray(valid, bool)[None, :]
    return jnp.where(pos, j[None, :], -1).astype(jnp.int32)


def _gather_targets(idx: Array, tgt: Array) -> Array:
    """idx [B, Q] (-1 allowed), tgt [B, M, ...] -> [B, Q, ...] (rows of -1 are target 0)."""
    safe = jnp.maximum(idx, 0)
    return jax.vmap(lambda t, i: t[i])(tgt, safe)


_DUMMY_BOX = (0.5, 0.5, 1.0, 1.0)


def _gather_boxes(idx: Array, tgt_boxes: Array) -> Array:
    """Matched target boxes [B, Q, 4]; unmatched queries get a dummy unit box so that no NaN
    (e.g. from a zero-area padding box against a degenerate prediction) can reach the gradients
    through a masked-out branch. Values of matched queries are unchanged."""
    tb = _gather_targets(idx, tgt_boxes)
    return jnp.where((idx >= 0)[..., None], tb, jnp.asarray(_DUMMY_BOX, tb.dtype))


def _matched_iou(pred_boxes: Array, tgt_boxes: Array) -> Array:
    """Detached IoU of aligned cxcywh boxes [..., 4] -> [...] (no epsilon, may be NaN)."""
    iou = box_ops.elementwise_box_iou(box_ops.cxcywh_to_xyxy(pred_boxes),
                                      box_ops.cxcywh_to_xyxy(tgt_boxes))
    return jax.lax.stop_gradient(iou)


def _bce_with_logits(x, t):
    return jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


# ----------------------------------------------------------------------------------------------
# Individual losses. Each takes one output's arrays, its matching idx [B, Q] and a normalizer.
# `query_valid` [B, Q] or [Q] bool excludes slots (unused denoising slots) from every sum.
# ----------------------------------------------------------------------------------------------

def _matched_onehot_iou(logits, boxes, idx, tgt_labels, tgt_boxes):
    """One-hot matched class t [B, Q, C] (0 for unmatched queries) and the detached IoU [B, Q] of
    each matched query's box with its target (0 when unmatched)."""
    matched = idx >= 0
    labels = _gather_targets(idx, tgt_labels)
    t = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32) * matched[..., None]
    iou = _matched_iou(boxes, _gather_boxes(idx, tgt_boxes))
    return t, jnp.where(matched, iou, 0.0)


def loss_mal(logits, boxes, idx, tgt_labels, tgt_boxes, num_boxes, gamma=1.5, alpha=None,
             query_valid=None):
    """Matchability-aware loss (§6.3): BCE(x, (IoU*onehot)^gamma) * (p^gamma (1-t) + t) / N."""
    logits = logits.astype(jnp.float32)
    t, iou = _matched_onehot_iou(logits, boxes, idx, tgt_labels, tgt_boxes)
    score = (iou[..., None] * t) ** gamma
    p = jax.lax.stop_gradient(jax.nn.sigmoid(logits))
    neg = p ** gamma * (1.0 - t)
    if alpha is not None:
        neg = alpha * neg
    w = neg + t
    loss = _bce_with_logits(logits, score) * w
    if query_valid is not None:
        loss = loss * jnp.broadcast_to(query_valid, idx.shape)[..., None]
    return jnp.sum(loss) / num_boxes


def loss_vfl(logits, boxes, idx, tgt_labels, tgt_boxes, num_boxes, gamma=2.0, alpha=0.75,
             query_valid=None):
    """Varifocal loss (§6.3, D-FINE recipe): BCE(x, IoU*t) * (alpha p^gamma (1-t) + IoU*t) / N."""
    logits = logits.astype(jnp.float32)
    t, iou = _matched_onehot_iou(logits, boxes, idx, tgt_labels, tgt_boxes)
    score = iou[..., None] * t
    p = jax.lax.stop_gradient(jax.nn.sigmoid(logits))
    w = alpha * p ** gamma * (1.0 - t) + score
    loss = _bce_with_logits(logits, score) * w
    if query_valid is not None:
        loss = loss * jnp.broadcast_to(query_valid, idx.shape)[..., None]
    return jnp.sum(loss) / num_boxes


def loss_focal(logits, idx, tgt_labels, num_boxes, gamma=2.0, alpha=0.25, query_valid=None):
    """Sigmoid focal loss on one-hot targets (implemented, not configured officially)."""
    logits = logits.astype(jnp.float32)
    C = logits.shape[-1]
    matched = idx >= 0
    t = jax.nn.one_hot(_gather_targets(idx, tgt_labels), C, dtype=jnp.float32) * matched[..., None]
    p = jax.nn.sigmoid(logits)
    ce = _bce_with_logits(logits, t)
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if query_valid is not None:
        loss = loss * jnp.broadcast_to(query_valid, idx.shape)[..., None]
    return jnp.sum(loss) / num_boxes


def loss_boxes(boxes, idx, tgt_boxes, num_boxes):
    """(L1 sum over cxcywh, sum of 1 - GIoU) over matched queries, each / N (§6.4)."""
    boxes = boxes.astype(jnp.float32)
    matched = idx >= 0
    tb = _gather_boxes(idx, tgt_boxes)
    l1 = jnp.sum(jnp.where(matched[..., None], jnp.abs(boxes - tb), 0.0)) / num_boxes
    giou = box_ops.elementwise_generalized_box_iou(box_ops.cxcywh_to_xyxy(boxes),
                                                   box_ops.cxcywh_to_xyxy(tb))
    lg = jnp.sum(jnp.where(matched, 1.0 - giou, 0.0)) / num_boxes
    return l1, lg


def _ce(logits, label):
    """Cross entropy of logits [..., K] at integer label [...] -> [...]."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    return lse - jnp.take_along_axis(logits, label[..., None], axis=-1)[..., 0]


def loss_fgl(corners, boxes, ref_points, idx, tgt_boxes, num_boxes, up, reg_scale, reg_max=32):
    """Fine-grained localization loss (§6.5) over matched queries, / N."""
    B, Q = idx.shape
    matched = idx >= 0
    tb = _gather_boxes(idx, tgt_boxes)
    index, wr, wl = fdr.bbox2distance(jax.lax.stop_gradient(ref_points.astype(jnp.float32)),
                                      box_ops.cxcywh_to_xyxy(tb), reg_max, up, reg_scale)
    index, wr, wl = (jax.lax.stop_gradient(a) for a in (index, wr, wl))
    lo = jnp.floor(index).astype(jnp.int32)
    hi = lo + 1
    logits = corners.astype(jnp.float32).reshape(B, Q, 4, reg_max + 1)
    per_edge = _ce(logits, lo) * wl + _ce(logits, hi) * wr  # [B, Q, 4]
    iou = _matched_iou(boxes, tb)
    per_edge = per_edge * iou[..., None]
    return jnp.sum(jnp.where(matched[..., None], per_edge, 0.0)) / num_boxes


def ddf_terms(corners, teacher_corners, teacher_logits, boxes, idx, tgt_boxes, reg_max=32, T=5.0,
              query_valid=None):
    """Per-edge distillation losses and the matched / unmatched masks for DDF (§6.6).

    Returns (loss_e [B, Q, 4], pos [B, Q, 4] bool, neg [B, Q, 4] bool, differs scalar bool).
    """
    B, Q = idx.shape
    matched = idx >= 0
    pred = corners.astype(jnp.float32).reshape(B, Q, 4, reg_max + 1)
    teacher = jax.lax.stop_gradient(teacher_corners.astype(jnp.float32)).reshape(B, Q, 4, reg_max + 1)
    differs = jnp.any(pred != teacher)
    wq = jnp.max(jax.nn.sigmoid(jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))), axis=-1)
    iou = _matched_iou(boxes, _gather_boxes(idx, tgt_boxes))
    wq = jax.lax.stop_gradient(jnp.where(matched, iou, wq))
    log_p = jax.nn.log_softmax(pred / T, axis=-1)
    log_t = jax.nn.log_softmax(teacher / T, axis=-1)
    kl = jnp.sum(jnp.exp(log_t) * (log_t - log_p), axis=-1)  # [B, Q, 4]
    loss_e = wq[..., None] * (T ** 2) * kl
    valid = jnp.ones((B, Q), bool) if query_valid is None else jnp.broadcast_to(query_valid, (B, Q))
    pos = jnp.broadcast_to((matched & valid)[..., None], (B, Q, 4))
    neg = jnp.broadcast_to((~matched & valid)[..., None], (B, Q, 4))
    return loss_e, pos, neg, differs


def _masked_mean(x, m):
    cnt = jnp.sum(m)
    return jnp.where(cnt > 0, jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(cnt, 1), 0.0)


def ddf_combine(loss_e, pos, neg, num_pos, num_neg, differs):
    """(mean_pos * N_pos + mean_neg * N_neg) / (N_pos + N_neg); 0 when corners equal the teacher."""
    m1 = _masked_mean(loss_e, pos)
    m2 = _masked_mean(loss_e, neg)
    val = (m1 * num_pos + m2 * num_neg) / (num_pos + num_neg)
    return jnp.where(differs, val, 0.0)


# ----------------------------------------------------------------------------------------------
# The criterion.
# ----------------------------------------------------------------------------------------------

DEFAULT_WEIGHTS = dict(loss_mal=1.0, loss_vfl=1.0, loss_focal=1.0, loss_bbox=5.0, loss_giou=2.0,
                       loss_fgl=0.15, loss_ddf=1.5)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """DEIMCriterion. ``criterion(outputs, targets)`` -> dict of weighted loss terms.

    losses: subset/order of ('mal' | 'vfl' | 'focal', 'boxes', 'local').
    weights: (name, weight) pairs or a dict overriding DEFAULT_WEIGHTS (pairs keep it hashable).
    use_uni_set: boxes/local losses of non-DN outputs use the union of all matchings.
    matcher_*: cost weights of the Hungarian matcher (class, bbox, giou), focal alpha/gamma.
    axis_name: if set (inside pmap/shard_map), num_boxes is the device-average GT count.
    """
    num_classes: int = 80
    losses: Sequence[str] = ("mal", "boxes", "local")
    weights: Any = None
    gamma: float = 1.5
    alpha: float = 0.75
    mal_alpha: Optional[float] = None
    use_uni_set: bool = True
    reg_max: int = 32
    distill_temperature: float = 5.0
    matcher_weights: Sequence[float] = (2.0, 5.0, 2.0)
    matcher_alpha: float = 0.25
    matcher_gamma: float = 2.0
    matcher_method: str = "auto"
    axis_name: Optional[str] = None
    mesh: Any = None  # data-parallel mesh: the matcher then solves each device's shard where it lives

    # -- matching --------------------------------------------------------------------------
    def _named_outputs(self, outputs):
        """Non-DN outputs to match, in the official order: final, aux_i, pre, enc_i."""
        named = [("final", outputs)]
        for i, a in enumerate(outputs.get("aux_outputs", []) or []):
            named.append((f"aux_{i}", a))
        if outputs.get("pre_outputs") is not None:
            named.append(("pre", outputs["pre_outputs"]))
        for i, a in enumerate(outputs.get("enc_aux_outputs", []) or []):
            named.append((f"enc_{i}", a))
        return named

    def match(self, outputs, targets) -> Dict[str, Array]:
        """All matchings of a step: {'final', 'aux_i', 'pre', 'enc_i', 'union_go', ['dn']} -> [B, Q]."""
        from deim_jax.losses import matcher

        named = self._named_outputs(outputs)
        logits = jnp.stack([o["pred_logits"].astype(jnp.float32) for _, o in named])
        boxes = jnp.stack([o["pred_boxes"].astype(jnp.float32) for _, o in named])
        K = logits.shape[0]
        labels = jnp.broadcast_to(targets["labels"], (K,) + targets["labels"].shape)
        tboxes = jnp.broadcast_to(targets["boxes"], (K,) + targets["boxes"].shape)
        cost = matcher.match_cost(logits, boxes, labels, tboxes, weights=tuple(self.matcher_weights),
                                  alpha=self.matcher_alpha, gamma=self.matcher_gamma)
        mask = jnp.broadcast_to(targets["mask"], (K,) + targets["mask"].shape)
        if self.mesh is not None and self.mesh.size > 1:
            idx = matcher.assign_sharded(cost, mask, self.mesh, batch_axis=1, method=self.matcher_method)
        else:
            idx = matcher.assign(cost, mask, method=self.matcher_method)
        out = {name: idx[k] for k, (name, _) in enumerate(named)}
        out["union_go"] = union_matching(idx, targets["labels"].shape[-1])
        if outputs.get("dn_outputs"):
            meta = outputs["dn_meta"]
            D = outputs["dn_outputs"][0]["pred_logits"].shape[1]
            if "positive" in meta and "target_index" in meta:
                # the group says which target each positive slot was made from (any mask order)
                out["dn"] = jnp.where(jnp.asarray(meta["positive"], bool),
                                      jnp.asarray(meta["target_index"], jnp.int32), -1)
            else:
                out["dn"] = dn_matching(D, meta["max_gt"], meta["valid"], targets["mask"])
        return out

    # -- normalizers -----------------------------------------------------------------------
    def _avg_count(self, n):
        n = jnp.asarray(n, jnp.float32)
        if self.axis_name is not None:
            n = jax.lax.psum(n, self.axis_name) / jax.lax.psum(1.0, self.axis_name)
        return jnp.maximum(n, 1.0)

    # -- losses ----------------------------------------------------------------------------
    def _stacked_terms(self, outs, idx_cls, idx_box, n_cls, n_box, tl, tb, up, reg_scale,
                       qv=None, local=False, ddf=False):
        """Unweighted terms of K same-shaped outputs at once (one vmapped graph instead of K).

        outs: list of K output dicts; idx_cls / idx_box: [K, B, Q]. Returns name -> [K] arrays;
        DDF comes as its parts ('_m_pos', '_m_neg', '_differs') to be combined by the caller.
        """
        R = self.reg_max
        keys = ["pred_logits", "pred_boxes"]
        if local:
            keys += ["pred_corners", "ref_points"]
        st = {k: jnp.stack([jnp.asarray(o[k], jnp.float32) for o in outs]) for k in keys}
        if ddf:
            st["teacher_corners"] = jnp.stack([jnp.asarray(o.get("teacher_corners", o["pred_corners"]),
                                                           jnp.float32) for o in outs])
            st["teacher_logits"] = jnp.stack([jnp.asarray(o.get("teacher_logits", o["pred_logits"]),
                                                          jnp.float32) for o in outs])

        def one(a, ic, ib):
            r = {}
            for k in self.losses:
                if k == "mal":
                    r["loss_mal"] = loss_mal(a["pred_logits"], a["pred_boxes"], ic, tl, tb, n_cls,
                                             gamma=self.gamma, alpha=self.mal_alpha, query_valid=qv)
                elif k == "vfl":
                    r["loss_vfl"] = loss_vfl(a["pred_logits"], a["pred_boxes"], ic, tl, tb, n_cls,
                                             gamma=self.gamma, alpha=self.alpha, query_valid=qv)
                elif k == "focal":
                    r["loss_focal"] = loss_focal(a["pred_logits"], ic, tl, n_cls, query_valid=qv)
                elif k == "boxes":
                    r["loss_bbox"], r["loss_giou"] = loss_boxes(a["pred_boxes"], ib, tb, n_box)
                elif k == "local" and local:
                    r["loss_fgl"] = loss_fgl(a["pred_corners"], a["pred_boxes"], a["ref_points"], ib, tb,
                                             n_box, up, reg_scale, R)
                    if ddf:
                        le, pos, neg, differs = ddf_terms(a["pred_corners"], a["teacher_corners"],
                                                          a["teacher_logits"], a["pred_boxes"], ib, tb, R,
                                                          self.distill_temperature, qv)
                        r["_m_pos"] = _masked_mean(le, pos)
                        r["_m_neg"] = _masked_mean(le, neg)
                        r["_differs"] = differs
            return r

        return jax.vmap(one)(st, idx_cls, idx_box)

    def __call__(self, outputs, targets, matchings: Optional[Dict[str, Array]] = None):
        """outputs: model dict (§5.8 layout); targets: {'boxes','labels','mask'}.

        matchings: optional precomputed dict as returned by :meth:`match` (e.g. to feed fixed
        matchings in tests); computed here when None. Same-shaped outputs (the decoder layers, the
        denoising layers) are evaluated by one vmapped graph each, to keep compile time low.
        """
        if matchings is None:
            matchings = self.match(outputs, targets)
        w = dict(DEFAULT_WEIGHTS)
        if self.weights is not None:
            w.update(dict(self.weights))
        tl = jnp.asarray(targets["labels"], jnp.int32)
        tb = jnp.asarray(targets["boxes"], jnp.float32)
        tmask = jnp.asarray(targets["mask"], bool)
        num_boxes = self._avg_count(jnp.sum(tmask))
        go = jnp.asarray(matchings["union_go"], jnp.int32)
        num_boxes_go = self._avg_count(jnp.sum(go >= 0))
        up = outputs.get("up")
        reg_scale = outputs.get("reg_scale")
        B = tl.shape[0]
        uni = self.use_uni_set
        n_go = num_boxes_go if uni else num_boxes
        has_local = "local" in self.losses and outputs.get("pred_corners") is not None
        terms: Dict[str, Array] = {}
        ddf_parts: Dict[str, Any] = {}

        def run(outs, suffixes, own, box, n_cls, n_box, qv=None, local=False, ddf_emit=None):
            """Evaluate a stack; ddf_emit[k] says whether output k gets a DDF term."""
            own = jnp.stack([jnp.asarray(i, jnp.int32) for i in own])
            box = jnp.stack([jnp.asarray(i, jnp.int32) for i in box])
            ddf = local and ddf_emit is not None and any(ddf_emit)
            r = self._stacked_terms(outs, own, box, n_cls, n_box, tl, tb, up, reg_scale, qv, local, ddf)
            for k, suf in enumerate(suffixes):
                for name, v in r.items():
                    if not name.startswith("_"):
                        terms[name + suf] = v[k]
                if ddf and ddf_emit[k]:
                    ddf_parts["loss_ddf" + suf] = (r["_m_pos"][k], r["_m_neg"][k], r["_differs"][k])

        # decoder layers: final + aux (same shapes)
        dec = [outputs] + list(outputs.get("aux_outputs", []) or [])
        dec_names = ["final"] + [f"aux_{i}" for i in range(len(dec) - 1)]
        dec_suffix = [""] + [f"_aux_{i}" for i in range(len(dec) - 1)]
        own = [matchings[n] for n in dec_names]
        run(dec, dec_suffix, own, [go] * len(dec) if uni else own, num_boxes, n_go, local=has_local,
            ddf_emit=[k > 0 and dec[k].get("teacher_corners") is not None for k in range(len(dec))])
        # matched / unmatched edge counts of the union set (the reference takes them from the last
        # non-DN output with a teacher; they are the same for every such output)
        pos_cnt = jnp.sum(go >= 0) * 4
        scale = 8.0 / B
        num_pos = jnp.sqrt(pos_cnt * scale)
        num_neg = jnp.sqrt((go.size * 4 - pos_cnt) * scale)
        ddf_ok = bool(ddf_parts)

        if outputs.get("pre_outputs") is not None:
            m = matchings["pre"]
            run([outputs["pre_outputs"]], ["_pre"], [m], [go if uni else m], num_boxes, n_go)
        for i, a in enumerate(outputs.get("enc_aux_outputs", []) or []):
            m = matchings[f"enc_{i}"]
            run([a], [f"_enc_{i}"], [m], [go if uni else m], num_boxes, n_go)

        if outputs.get("dn_outputs"):
            meta = outputs["dn_meta"]
            dn_idx = jnp.asarray(matchings["dn"], jnp.int32)
            qv = jnp.asarray(meta["valid"], bool)
            n_dn = num_boxes * jnp.asarray(meta["num_group"], jnp.float32)
            dn = list(outputs["dn_outputs"])
            L = len(dn)
            run(dn, [f"_dn_{i}" for i in range(L)], [dn_idx] * L, [dn_idx] * L, n_dn, n_dn, qv=qv,
                local=has_local and dn[0].get("pred_corners") is not None,
                ddf_emit=[ddf_ok and i < L - 1 and dn[i].get("teacher_corners") is not None
                          for i in range(L)])
            if outputs.get("dn_pre_outputs") is not None:
                run([outputs["dn_pre_outputs"]], ["_dn_pre"], [dn_idx], [dn_idx], n_dn, n_dn, qv=qv)

        for name, (m_pos, m_neg, differs) in ddf_parts.items():
            val = (m_pos * num_pos + m_neg * num_neg) / (num_pos + num_neg)
            terms[name] = jnp.where(differs, val, 0.0)

        result: Dict[str, Array] = {}
        for name, v in terms.items():
            base = name if name in w else "_".join(name.split("_")[:2])
            result[name] = jnp.nan_to_num(v * w[base], nan=0.0)
        return result


def build(cfg, mesh=None) -> Criterion:
    """Criterion from a config: either the full experiment config (uses ``cfg.loss`` and
    ``cfg.num_classes`` when present) or the ``loss`` sub-config itself. ``mesh``: the
    data-parallel mesh of the train step (the Hungarian solves then stay on each shard)."""
    loss_cfg = cfg.loss if hasattr(cfg, "loss") or (isinstance(cfg, dict) and "loss" in cfg) else cfg
    if isinstance(cfg, dict) and "loss" in cfg:
        loss_cfg = cfg["loss"]

    def get(c, k, default):
        try:
            v = c[k] if isinstance(c, dict) else getattr(c, k)
        except (KeyError, AttributeError):
            return default
        return default if v is None and default is not None else v

    num_classes = get(cfg, "num_classes", None)
    model = get(cfg, "model", None)
    if num_classes is None:
        num_classes = get(model, "num_classes", 80) if model is not None else 80
    m = get(loss_cfg, "matcher", {}) or {}
    weights = get(loss_cfg, "weights", None)
    return Criterion(
        num_classes=num_classes,
        losses=tuple(get(loss_cfg, "losses", ("mal", "boxes", "local"))),
        weights=tuple(sorted(dict(weights).items())) if weights is not None else None,  # hashable
        gamma=float(get(loss_cfg, "gamma", 1.5)),
        alpha=float(get(loss_cfg, "alpha", 0.75)),
        mal_alpha=get(loss_cfg, "mal_alpha", None),
        use_uni_set=bool(get(loss_cfg, "use_uni_set", True)),
        reg_max=int(get(loss_cfg, "reg_max", 32)),
        matcher_weights=(float(get(m, "cost_class", 2.0)), float(get(m, "cost_bbox", 5.0)),
                         float(get(m, "cost_giou", 2.0))),
        matcher_alpha=float(get(m, "alpha", 0.25)),
        matcher_gamma=float(get(m, "gamma", 2.0)),
        matcher_method=str(get(m, "method", "auto")),
        mesh=mesh,
    )
