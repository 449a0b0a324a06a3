"""Deploy-mode weights: BatchNorm folded into the conv before it, RepVGG blocks re-parameterized
into one 3x3 conv (the official ``deploy()`` / ``convert_to_deploy``).

``fold(variables)`` -> new variables for the *same* model (``models.build``): the modules see a
folded tree and run the folded form (``layers.is_folded``, ``VGGBlock``). In eval mode the outputs
are those of the unfolded weights up to float rounding; folded weights cannot be trained (no
BatchNorm statistics). By default every BatchNorm is folded; ``norms_in=OFFICIAL_DEPLOY`` folds
those the official ``deploy()`` folds (its parameter counts for RT-DETRv2; for D-FINE the official
one also drops the decoder heads that evaluation does not use, which this model keeps).

Folding, per output channel c: ``k = scale / sqrt(var + eps)``; ``kernel[..., c] *= k``;
``bias = beta - mean * k``. A RepVGG block's 1x1 branch becomes the centre tap of the 3x3 kernel
and the two biases add. HGNetv2's learnable affine blocks follow a ReLU, and the padded 3x3 and
depthwise convs after them see zeros at the border where the affine map gives its bias, so they are
not folded (their cost is one multiply-add per element).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

import jax
import numpy as np

from deim_jax.models.batch_norm import BatchNorm

EPS = BatchNorm.epsilon
NORM_NAMES = ("norm", "bn")
# fold(norms_in=...): the official deploy() folds the encoder's ConvNormLayer(_fuse) norms, not its
# input projections (nor the backbone's or the decoder's)
OFFICIAL_DEPLOY = r"^encoder/(?!input_proj_)"


def _norm_of(params: Dict, stats: Dict):
    """The name of a BatchNorm that follows ``params['conv']``, or None."""
    if "kernel" not in params.get("conv", {}):
        return None
    for name in NORM_NAMES:
        if "scale" in params.get(name, {}) and "mean" in stats.get(name, {}):
            return name
    return None


def _fold_conv_norm(params: Dict, stats: Dict, norm: str):
    """(params, stats) of a conv + BatchNorm scope with the norm folded into ``conv`` (kernel, bias)."""
    bn, st = params[norm], stats[norm]
    k = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(st["var"], np.float64) + EPS)
    conv = params["conv"]
    kernel = np.asarray(conv["kernel"], np.float64) * k  # [kh, kw, in/g, out]: scales the output channels
    conv_bias = np.asarray(conv.get("bias", 0.0), np.float64)
    bias = np.asarray(bn["bias"], np.float64) + (conv_bias - np.asarray(st["mean"], np.float64)) * k
    params = {n: v for n, v in params.items() if n != norm}
    params["conv"] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    stats = {n: v for n, v in stats.items() if n != norm}
    return params, stats


def _is_repvgg(params: Dict, stats: Dict) -> bool:
    if set(params) != {"conv1", "conv2"}:
        return False
    p1, p2 = params["conv1"], params["conv2"]
    k1, k2 = np.shape(p1.get("conv", {}).get("kernel", ())), np.shape(p2.get("conv", {}).get("kernel", ()))
    return (len(k1) == 4 and len(k2) == 4 and k1[:2] == (3, 3) and k2[:2] == (1, 1) and k1[2:] == k2[2:]
            and _norm_of(p1, stats.get("conv1", {})) == "norm" and _norm_of(p2, stats.get("conv2", {})) == "norm")


def _reparameterize(params: Dict, stats: Dict):
    """A RepVGG block's conv1 (3x3 + BN) and conv2 (1x1 + BN) as one 3x3 conv ``conv`` with bias."""
    a, _ = _fold_conv_norm(params["conv1"], stats["conv1"], "norm")
    b, _ = _fold_conv_norm(params["conv2"], stats["conv2"], "norm")
    kernel = a["conv"]["kernel"].copy()
    kernel[1:2, 1:2] += b["conv"]["kernel"]
    return {"conv": {"kernel": kernel, "bias": a["conv"]["bias"] + b["conv"]["bias"]}}, {}


def fold(variables: Dict[str, Any], norms_in: Optional[str] = None) -> Dict[str, Any]:
    """Deploy-mode ``{'params', 'batch_stats'}`` of ``variables`` (module docstring); host arrays.
    RepVGG blocks are always re-parameterized; BatchNorms are folded in every module
    (``norms_in=None``) or in those whose path (``encoder/lateral_convs_0``) matches the regex
    ``norms_in`` (``OFFICIAL_DEPLOY``: the ones the official ``deploy()`` folds)."""

    def walk(params: Dict, stats: Dict, path: str):
        if _is_repvgg(params, stats):
            return _reparameterize(params, stats)
        norm = _norm_of(params, stats)
        if norm and (norms_in is None or re.match(norms_in, path)):
            params, stats = _fold_conv_norm(params, stats, norm)
        out_p, out_s = {}, {}
        for name, child in params.items():
            if isinstance(child, dict):
                out_p[name], sub = walk(child, stats.get(name, {}), f"{path}/{name}" if path else name)
                if sub:
                    out_s[name] = sub
            else:
                out_p[name] = child
                if name in stats:
                    out_s[name] = stats[name]
        for name, child in stats.items():  # statistics of scopes without params
            if name not in params:
                out_s[name] = child
        return out_p, out_s

    host = jax.tree_util.tree_map(np.asarray, {"params": variables["params"],
                                               "batch_stats": variables.get("batch_stats", {})})
    params, stats = walk(_as_dict(host["params"]), _as_dict(host["batch_stats"]), "")
    return {"params": params, "batch_stats": stats}


def _as_dict(tree):
    return {k: _as_dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree
