"""DEIM criterion (deim_dfine.md §6): the official ``loss_map`` as a table name -> loss function.

``criterion = losses.build(cfg)``; ``criterion(outputs, targets)`` returns a dict of weighted
loss terms with the official names (``loss_mal``, ``loss_bbox``, ``loss_giou``, ``loss_fgl``,
``loss_ddf`` + ``_aux_i``, ``_pre``, ``_enc_0``, ``_dn_i``, ``_dn_pre``). Targets::

    targets = {'boxes': [B, M, 4] normalized cxcywh, 'labels': [B, M] int, 'mask': [B, M] bool}

with the real targets packed first (mask True). Everything has static shapes; all losses are
computed in float32 and every weighted term is ``nan_to_num``'ed like the reference. Outputs of
the same shapes (the decoder layers; the denoising layers) form one stack that a single vmapped
graph evaluates, to keep compile time low.

Differences from the reference that do not change values: DDF terms are always present for
outputs that carry teacher corners (the reference omits them while the corners equal the
teacher's exactly, e.g. at initialization; here they are then 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from deim_jax.errors import ConfigError
from deim_jax.losses import matcher, matching, terms

Array = Any
Terms = Dict[str, Array]


class Matched(NamedTuple):
    """The matchings one output's losses use: [B, Q] int32 each (-1 unmatched)."""
    cls: Array  # classification loss (the output's own matching, or the DN matching)
    box: Array  # box and local losses (the union set when use_uni_set, or the DN matching)


class Shared(NamedTuple):
    """What every output of a stack shares: targets, normalizers and FDR constants."""
    labels: Array            # [B, M] int32
    boxes: Array             # [B, M, 4] float32 cxcywh
    n_cls: Array             # normalizer of the classification loss
    n_box: Array             # normalizer of the box / local losses
    query_valid: Optional[Array]  # [Q] bool (DN slots in use) or None
    up: Optional[Array]
    reg_scale: Optional[Array]
    ddf_norm: Tuple[Array, Array]  # (N_pos, N_neg) of the union set


# ----------------------------------------------------------------------------------------------
# The loss table. Each entry maps one output's stacked arrays ``o`` (pred_logits, pred_boxes and,
# for outputs with local losses, pred_corners, ref_points, teacher_corners, teacher_logits), its
# matchings and the shared values to unweighted terms named like the weights.
# ----------------------------------------------------------------------------------------------

def _mal(c: "Criterion", o, m: Matched, s: Shared) -> Terms:
    return {"loss_mal": terms.loss_mal(
        logits=o["pred_logits"], boxes=o["pred_boxes"], idx=m.cls, tgt_labels=s.labels,
        tgt_boxes=s.boxes, num_boxes=s.n_cls, gamma=c.gamma, alpha=c.mal_alpha,
        query_valid=s.query_valid)}


def _vfl(c: "Criterion", o, m: Matched, s: Shared) -> Terms:
    return {"loss_vfl": terms.loss_vfl(
        logits=o["pred_logits"], boxes=o["pred_boxes"], idx=m.cls, tgt_labels=s.labels,
        tgt_boxes=s.boxes, num_boxes=s.n_cls, gamma=c.gamma, alpha=c.alpha,
        query_valid=s.query_valid)}


def _focal(c: "Criterion", o, m: Matched, s: Shared) -> Terms:
    return {"loss_focal": terms.loss_focal(
        logits=o["pred_logits"], idx=m.cls, tgt_labels=s.labels, num_boxes=s.n_cls,
        gamma=c.gamma, alpha=c.alpha, query_valid=s.query_valid)}


def _boxes(c: "Criterion", o, m: Matched, s: Shared) -> Terms:
    l1, giou = terms.loss_boxes(boxes=o["pred_boxes"], idx=m.box, tgt_boxes=s.boxes,
                                num_boxes=s.n_box)
    return {"loss_bbox": l1, "loss_giou": giou}


def _local(c: "Criterion", o, m: Matched, s: Shared) -> Terms:
    if "pred_corners" not in o:  # outputs without distributions (pre, encoder, DN pre)
        return {}
    r = {"loss_fgl": terms.loss_fgl(
        corners=o["pred_corners"], boxes=o["pred_boxes"], ref_points=o["ref_points"], idx=m.box,
        tgt_boxes=s.boxes, num_boxes=s.n_box, up=s.up, reg_scale=s.reg_scale, reg_max=c.reg_max)}
    if "teacher_corners" in o:
        r["loss_ddf"] = terms.loss_ddf(
            corners=o["pred_corners"], teacher_corners=o["teacher_corners"],
            teacher_logits=o["teacher_logits"], boxes=o["pred_boxes"], idx=m.box,
            tgt_boxes=s.boxes, reg_max=c.reg_max, temperature=c.distill_temperature,
            num_pos=s.ddf_norm[0], num_neg=s.ddf_norm[1], query_valid=s.query_valid)
    return r


LOSS_MAP: Dict[str, Callable[..., Terms]] = {
    "mal": _mal, "vfl": _vfl, "focal": _focal, "boxes": _boxes, "local": _local}
# The weighted terms each loss produces (each needs its weight).
LOSS_TERMS: Dict[str, Tuple[str, ...]] = {
    "mal": ("loss_mal",), "vfl": ("loss_vfl",), "focal": ("loss_focal",),
    "boxes": ("loss_bbox", "loss_giou"), "local": ("loss_fgl", "loss_ddf")}


class Stack(NamedTuple):
    """Same-shaped outputs evaluated by one vmapped graph."""
    outputs: List[Dict[str, Any]]
    suffixes: List[str]   # key suffix of each output ('', '_aux_0', '_dn_1', ...)
    cls: List[Array]      # Matched.cls of each output
    box: List[Array]      # Matched.box of each output
    local: bool           # the local losses (FGL, DDF) apply
    ddf: Sequence[bool]   # per output: it gets a DDF term


def _stack_arrays(st: Stack) -> Dict[str, Array]:
    """The arrays the losses read, stacked over the outputs of ``st`` (float32)."""
    keys = ["pred_logits", "pred_boxes"] + (["pred_corners", "ref_points"] if st.local else [])
    arrays = {k: jnp.stack([jnp.asarray(o[k], jnp.float32) for o in st.outputs]) for k in keys}
    if st.local and any(st.ddf):  # outputs without a teacher are their own (terms not emitted)
        for k, own in (("teacher_corners", "pred_corners"), ("teacher_logits", "pred_logits")):
            arrays[k] = jnp.stack([jnp.asarray(o.get(k, o[own]), jnp.float32) for o in st.outputs])
    return arrays


def _weighted(value, weight):
    return jnp.nan_to_num(value * weight, nan=0.0)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """DEIMCriterion. ``criterion(outputs, targets)`` -> dict of weighted loss terms.

    losses: subset / order of ('mal' | 'vfl' | 'focal', 'boxes', 'local') (keys of LOSS_MAP).
    weights: term name -> weight, e.g. {'loss_mal': 1.0, ...} (stored as sorted pairs so the
      criterion stays hashable); every term of an active loss (LOSS_TERMS) needs one.
    gamma / alpha: MAL / VFL / focal parameters; mal_alpha: MAL negative scale (None officially).
    use_uni_set: boxes / local losses of non-DN outputs use the union of all matchings.
    reg_max, distill_temperature: FGL bins and DDF temperature T.
    matcher_weights (class, bbox, giou), matcher_alpha, matcher_gamma, matcher_method: Hungarian.
    axis_name: if set (inside pmap / shard_map), num_boxes is the device-average GT count.
    mesh: data-parallel mesh: the matcher then solves each device's shard where it lives.
    """
    num_classes: int
    losses: Tuple[str, ...]
    weights: Any
    gamma: float
    alpha: float
    mal_alpha: Optional[float]
    use_uni_set: bool
    reg_max: int
    distill_temperature: float
    matcher_weights: Tuple[float, float, float]
    matcher_alpha: float
    matcher_gamma: float
    matcher_method: str
    axis_name: Optional[str] = None
    mesh: Any = None

    def __post_init__(self):
        object.__setattr__(self, "losses", tuple(self.losses))
        object.__setattr__(self, "weights", tuple(sorted(dict(self.weights).items())))
        unknown = [n for n in self.losses if n not in LOSS_MAP]
        if unknown:
            raise ConfigError(f"cfg.loss.losses: unknown losses {unknown}; expected some of {sorted(LOSS_MAP)}")
        w = dict(self.weights)
        missing = [t for n in self.losses for t in LOSS_TERMS[n] if t not in w]
        if missing:
            raise ConfigError(f"cfg.loss.weights: no weight for the active loss term(s) {missing} "
                              f"(losses={self.losses})")
        if self.matcher_method not in matcher.METHODS:
            raise ConfigError(f"cfg.loss.matcher.method={self.matcher_method!r}: not one of {list(matcher.METHODS)}")

    def match(self, outputs, targets) -> Dict[str, Array]:
        """All matchings of a step: {'final', 'aux_i', 'pre', 'enc_i', 'union_go', ['dn']} -> [B, Q]."""
        out = matching.hungarian_all(outputs, targets, cost_weights=self.matcher_weights,
                                     alpha=self.matcher_alpha, gamma=self.matcher_gamma,
                                     method=self.matcher_method, mesh=self.mesh)
        if outputs.get("dn_outputs"):
            out["dn"] = matching.denoising_matching(outputs, targets)
        return out

    def _avg_count(self, n):
        n = jnp.asarray(n, jnp.float32)
        if self.axis_name is not None:
            n = jax.lax.psum(n, self.axis_name) / jax.lax.psum(1.0, self.axis_name)
        return jnp.maximum(n, 1.0)

    def _output_terms(self, o, m: Matched, s: Shared) -> Terms:
        """Unweighted terms of one output: the active losses looked up in LOSS_MAP."""
        r: Terms = {}
        for name in self.losses:
            r.update(LOSS_MAP[name](self, o, m, s))
        return r

    def _evaluate(self, st: Stack, shared: Shared) -> Tuple[Terms, Terms]:
        """Weighted terms of one stack: (non-DDF terms, DDF terms), keys with suffixes."""
        matched = Matched(jnp.stack([jnp.asarray(i, jnp.int32) for i in st.cls]),
                          jnp.stack([jnp.asarray(i, jnp.int32) for i in st.box]))
        r = jax.vmap(self._output_terms, in_axes=(0, 0, None))(_stack_arrays(st), matched, shared)
        w = dict(self.weights)
        main = {n + suf: _weighted(r[n][k], w[n])
                for k, suf in enumerate(st.suffixes) for n in r if n != "loss_ddf"}
        ddf = {"loss_ddf" + suf: _weighted(r["loss_ddf"][k], w["loss_ddf"])
               for k, suf in enumerate(st.suffixes) if "loss_ddf" in r and st.ddf[k]}
        return main, ddf

    def _plain_stacks(self, outputs, matchings, go) -> List[Stack]:
        """Non-DN stacks: decoder layers (final + aux), pre, encoder outputs (§6.1 table)."""
        uni = self.use_uni_set
        dec = [outputs] + list(outputs.get("aux_outputs", []) or [])
        own = [matchings["final"]] + [matchings[f"aux_{i}"] for i in range(len(dec) - 1)]
        local = "local" in self.losses and outputs.get("pred_corners") is not None
        stacks = [Stack(dec, [""] + [f"_aux_{i}" for i in range(len(dec) - 1)], own,
                        [go] * len(dec) if uni else own, local,
                        [k > 0 and o.get("teacher_corners") is not None for k, o in enumerate(dec)])]
        single = ([("_pre", outputs["pre_outputs"], matchings["pre"])]
                  if outputs.get("pre_outputs") is not None else [])
        single += [(f"_enc_{i}", a, matchings[f"enc_{i}"])
                   for i, a in enumerate(outputs.get("enc_aux_outputs", []) or [])]
        stacks += [Stack([a], [suf], [m], [go if uni else m], False, [False])
                   for suf, a, m in single]
        return stacks

    def _dn_stacks(self, outputs, matchings, ddf_active: bool) -> List[Stack]:
        """Denoising stacks: DN layers (DDF for all but the last) and DN pre, fixed matching."""
        dn = list(outputs["dn_outputs"])
        L = len(dn)
        idx = jnp.asarray(matchings["dn"], jnp.int32)
        local = ("local" in self.losses and outputs.get("pred_corners") is not None
                 and dn[0].get("pred_corners") is not None)
        stacks = [Stack(dn, [f"_dn_{i}" for i in range(L)], [idx] * L, [idx] * L, local,
                        [ddf_active and i < L - 1 and o.get("teacher_corners") is not None
                         for i, o in enumerate(dn)])]
        if outputs.get("dn_pre_outputs") is not None:
            stacks.append(Stack([outputs["dn_pre_outputs"]], ["_dn_pre"], [idx], [idx], False,
                                [False]))
        return stacks

    def __call__(self, outputs, targets, matchings: Optional[Dict[str, Array]] = None) -> Terms:
        """outputs: model dict (§5.8 layout); targets: {'boxes', 'labels', 'mask'}.

        matchings: optional precomputed dict as returned by :meth:`match` (e.g. to feed fixed
        matchings in tests); computed here when None.
        """
        if outputs["pred_logits"].shape[-1] != self.num_classes:
            raise ValueError(f"pred_logits have {outputs['pred_logits'].shape[-1]} classes, "
                             f"the criterion {self.num_classes}")
        if matchings is None:
            matchings = self.match(outputs, targets)
        go = jnp.asarray(matchings["union_go"], jnp.int32)
        num_boxes = self._avg_count(jnp.sum(jnp.asarray(targets["mask"], bool)))
        shared = Shared(labels=jnp.asarray(targets["labels"], jnp.int32),
                        boxes=jnp.asarray(targets["boxes"], jnp.float32), n_cls=num_boxes,
                        n_box=self._avg_count(jnp.sum(go >= 0)) if self.use_uni_set else num_boxes,
                        query_valid=None, up=outputs.get("up"), reg_scale=outputs.get("reg_scale"),
                        ddf_norm=terms.ddf_normalizers(go))
        parts = [self._evaluate(st, shared) for st in self._plain_stacks(outputs, matchings, go)]
        if outputs.get("dn_outputs"):
            meta = outputs["dn_meta"]
            n_dn = num_boxes * jnp.asarray(meta["num_group"], jnp.float32)
            dn_shared = shared._replace(n_cls=n_dn, n_box=n_dn,
                                        query_valid=jnp.asarray(meta["valid"], bool))
            parts += [self._evaluate(st, dn_shared)
                      for st in self._dn_stacks(outputs, matchings, bool(parts[0][1]))]
        # official order: every non-DDF term, then the DDF terms (decoder layers, then DN)
        return {k: v for i in (0, 1) for part in parts for k, v in part[i].items()}


# Fields of cfg.loss and cfg.loss.matcher that build() reads; anything else is an error.
_LOSS_FIELDS = ("losses", "weights", "gamma", "alpha", "mal_alpha", "use_uni_set", "reg_max",
                "distill_temperature", "matcher")
_MATCHER_FIELDS = ("cost_class", "cost_bbox", "cost_giou", "alpha", "gamma", "method")


def _check_fields(c, fields, where):
    unknown = sorted(set(c.keys()) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {list(fields)}")


def build(cfg, mesh=None) -> Criterion:
    """Criterion from an experiment config: reads ``cfg.num_classes``, ``cfg.loss.*`` and
    ``cfg.loss.matcher.*`` (all required; a missing or unknown field is an error). ``mesh``: the
    data-parallel mesh of the train step (the Hungarian solves then stay on each shard)."""
    loss, m = cfg.loss, cfg.loss.matcher
    _check_fields(loss, _LOSS_FIELDS, "cfg.loss")
    _check_fields(m, _MATCHER_FIELDS, "cfg.loss.matcher")
    return Criterion(
        num_classes=int(cfg.num_classes),
        losses=tuple(loss.losses),
        weights={k: float(v) for k, v in dict(loss.weights).items()},
        gamma=float(loss.gamma),
        alpha=float(loss.alpha),
        mal_alpha=None if loss.mal_alpha is None else float(loss.mal_alpha),
        use_uni_set=bool(loss.use_uni_set),
        reg_max=int(loss.reg_max),
        distill_temperature=float(loss.distill_temperature),
        matcher_weights=(float(m.cost_class), float(m.cost_bbox), float(m.cost_giou)),
        matcher_alpha=float(m.alpha),
        matcher_gamma=float(m.gamma),
        matcher_method=str(m.method),
        mesh=mesh,
    )
