"""Official PyTorch state dicts <-> deim_jax variables.

The mapping is generic because Flax modules are named after the PyTorch
attributes they mirror (see ``deim_jax.models.layers``):

  PyTorch key                                  Flax (collection, path)
  backbone.stages.0.blocks.1.conv.weight  ->   params      backbone/stages_0/blocks_1/conv/kernel
  ...bn.running_mean                      ->   batch_stats .../bn/mean
  ...self_attn.in_proj_weight             ->   params      .../self_attn/in_proj_kernel (transposed)
  decoder.denoising_class_embed.weight    ->   params      decoder/denoising_class_embed/embedding

Layouts: conv ``[O, I/g, kh, kw] -> [kh, kw, I/g, O]``; linear ``[O, I] -> [I, O]``.

Entries that the model recomputes (``decoder.anchors``, ``decoder.valid_mask``,
``...cross_attn.num_points_scale``) are checked against the configuration and
regenerated on export; the shared duplicates ``decoder.decoder.up`` /
``decoder.decoder.reg_scale`` must equal ``decoder.up`` / ``decoder.reg_scale``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np
from flax import traverse_util

Array = np.ndarray

# Keys whose values are derived from the configuration, not stored as variables.
_DERIVED = re.compile(r"^decoder\.(anchors|valid_mask|decoder\.layers\.\d+\.cross_attn\.num_points_scale)$")
# Shared duplicates of decoder.up / decoder.reg_scale.
_ALIASES = {"decoder.decoder.up": "decoder.up", "decoder.decoder.reg_scale": "decoder.reg_scale"}
# PyTorch attribute names that themselves end in "_<digit>" (PResNet stem convs).
_LITERAL_NAMES = re.compile(r"^conv\d+_\d+$")
_EMBEDDINGS = re.compile(r"(^|\.)denoising_class_embed\.weight$")


class StateDictMismatch(ValueError):
    """Raised when a state dict does not fit the configured model."""


def _module_path(parts):
    """['stages', '0', 'blocks', '1', 'conv'] -> ('stages_0', 'blocks_1', 'conv')."""
    out = []
    for p in parts:
        if p.isdigit():
            if not out:
                raise ValueError(f"key component {p!r} has no parent name")
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(p)
    return tuple(out)


def torch_key_to_flax(key: str, ndim: int) -> Tuple[str, Tuple[str, ...]]:
    """Collection and Flax path of a PyTorch state-dict key (``ndim`` = tensor rank)."""
    parts = key.split(".")
    leaf = parts[-1]
    mod = _module_path(parts[:-1])
    if leaf in ("running_mean", "running_var", "num_batches_tracked"):
        name = {"running_mean": "mean", "running_var": "var"}.get(leaf, leaf)
        return "batch_stats", mod + (name,)
    if leaf == "in_proj_weight":
        return "params", mod + ("in_proj_kernel",)
    if leaf == "in_proj_bias":
        return "params", mod + ("in_proj_bias",)
    if leaf == "weight":
        if _EMBEDDINGS.search(key):
            return "params", mod + ("embedding",)
        return "params", mod + ("kernel" if ndim >= 2 else "scale",)
    if leaf in ("bias", "scale"):  # norm/linear bias, LearnableAffineBlock scale/bias
        return "params", mod + (leaf,)
    if leaf in ("up", "reg_scale"):
        return "params", mod + (leaf,)
    raise StateDictMismatch(f"{key}: no Flax counterpart for a leaf named {leaf!r}")


def flax_to_torch_key(collection: str, path: Tuple[str, ...]) -> str:
    """Inverse of :func:`torch_key_to_flax` (names only)."""
    *mod, leaf = path
    if collection == "batch_stats":
        leaf = {"mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
    elif leaf in ("kernel", "scale") and not (leaf == "scale" and mod and mod[-1] == "lab"):
        leaf = "weight"
    elif leaf == "embedding":
        leaf = "weight"
    elif leaf == "in_proj_kernel":
        leaf = "in_proj_weight"
    parts = []
    for m in mod:
        if _LITERAL_NAMES.match(m):
            parts.append(m)
        else:
            parts.extend(re.sub(r"_(\d+)(?=(_\d+)*$)", r".\1", m).split("."))
    return ".".join(parts + [leaf])


def torch_param_name(path: Tuple[str, ...]) -> str:
    """PyTorch ``named_parameters()`` name of a Flax ``params`` leaf."""
    return flax_to_torch_key("params", tuple(path))


def _to_flax_layout(key: str, value: Array, path: Tuple[str, ...]) -> Array:
    leaf = path[-1]
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if leaf in ("kernel", "in_proj_kernel") and value.ndim == 2:
        return np.transpose(value)
    return value


def _to_torch_layout(path: Tuple[str, ...], value: Array) -> Array:
    leaf = path[-1]
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    if leaf in ("kernel", "in_proj_kernel") and value.ndim == 2:
        return np.transpose(value)
    return value


def _abstract_variables(cfg) -> Dict[str, Any]:
    import jax

    from deim_jax import models

    model = models.build(cfg)
    return jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), models.init_shapes(model, cfg))


def _derived_values(cfg) -> Dict[str, Array]:
    """Derived buffers; anchor logits use PyTorch's float32 log when it is installed (bit-identical)."""
    from deim_jax import models

    try:
        import torch
    except ImportError:
        return models.derived_constants(cfg)
    return models.derived_constants(cfg, log=lambda x: torch.log(torch.from_numpy(np.ascontiguousarray(x))).numpy())


def strip_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Array]:
    """Drop a DDP ``module.`` prefix and convert values to numpy."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module.") :]
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        out[k] = np.asarray(v)
    return out


def raw_variables(state_dict: Mapping[str, Any]) -> Dict[str, Dict]:
    """Map every stored key generically, without checking it against a model.

    Derived entries and shared aliases are skipped. Useful to feed a single
    submodule (``raw['params']['backbone']``) in tests and tools.
    """
    flat: Dict[str, Dict] = {"params": {}, "batch_stats": {}}
    for key, value in strip_prefix(state_dict).items():
        if key in _ALIASES or _DERIVED.match(key):
            continue
        coll, path = torch_key_to_flax(key, np.ndim(value))
        flat[coll][path] = _to_flax_layout(key, np.asarray(value), path)
    return {c: traverse_util.unflatten_dict(f) for c, f in flat.items()}


def from_torch_state_dict(state_dict: Mapping[str, Any], cfg) -> Dict[str, Dict]:
    """PyTorch state dict (name -> array) -> ``{'params', 'batch_stats'}`` for ``models.build(cfg)``.

    Every key must be consumed and every model variable provided; otherwise a
    :class:`StateDictMismatch` lists the missing, unexpected and mis-shaped keys.
    """
    sd = strip_prefix(state_dict)
    template = _abstract_variables(cfg)
    expected = {}
    for coll, tree in template.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            expected[flax_to_torch_key(coll, path)] = (coll, path, leaf)
    derived = _derived_values(cfg)

    flat: Dict[str, Dict] = {c: {} for c in template}
    unexpected, bad_shape, bad_value = [], [], []
    for key, value in sd.items():
        if key in _ALIASES:
            main = _ALIASES[key]
            if main not in sd or not np.allclose(np.asarray(sd[main], np.float64), np.asarray(value, np.float64)):
                bad_value.append(f"{key} (must equal {main})")
            continue
        if _DERIVED.match(key):
            if key not in derived:
                unexpected.append(key)
            elif derived[key].shape != value.shape:
                bad_shape.append(f"{key}: checkpoint {tuple(value.shape)}, model {tuple(derived[key].shape)}")
            elif not _same_derived(derived[key], value):
                bad_value.append(f"{key} (differs from the value computed for this config; check eval_spatial_size)")
            continue
        if key not in expected:
            unexpected.append(key)
            continue
        coll, path, leaf = expected.pop(key)
        arr = _to_flax_layout(key, np.asarray(value), path)
        if arr.shape != leaf.shape:
            bad_shape.append(f"{key}: checkpoint {tuple(value.shape)} -> {arr.shape}, model {leaf.shape}")
            continue
        flat[coll][path] = arr.astype(leaf.dtype)
    missing = sorted(expected)
    missing_derived = sorted(k for k in derived if k not in sd)
    if missing or unexpected or bad_shape or bad_value or missing_derived:
        lines = []
        for title, items in (
            ("missing keys", missing + missing_derived),
            ("unexpected keys", sorted(unexpected)),
            ("shape mismatches", bad_shape),
            ("value mismatches", bad_value),
        ):
            if items:
                shown = items[:40] + ([f"... and {len(items) - 40} more"] if len(items) > 40 else [])
                lines.append(f"{title} ({len(items)}):\n  " + "\n  ".join(shown))
        raise StateDictMismatch(f"state dict does not fit config {cfg.name!r}:\n" + "\n".join(lines))
    return {c: traverse_util.unflatten_dict(f) for c, f in flat.items()}


def _same_derived(mine: Array, theirs: Array) -> bool:
    mine = np.asarray(mine)
    theirs = np.asarray(theirs)
    if mine.dtype == bool or theirs.dtype == bool:
        return np.array_equal(mine.astype(bool), theirs.astype(bool))
    fin = np.isfinite(mine)
    return np.array_equal(fin, np.isfinite(theirs)) and np.allclose(mine[fin], theirs[fin], rtol=0, atol=1e-5)


def to_torch_state_dict(variables: Mapping[str, Mapping], cfg) -> Dict[str, Array]:
    """Inverse of :func:`from_torch_state_dict` (numpy arrays, PyTorch layouts and names)."""
    out: Dict[str, Array] = {}
    for coll in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(variables.get(coll, {})).items():
            key = flax_to_torch_key(coll, path)
            arr = _to_torch_layout(path, np.asarray(leaf))
            if path[-1] == "num_batches_tracked":
                arr = arr.astype(np.int64)
            if key == "decoder.reg_scale":
                arr = np.rint(arr).astype(np.int64)
            out[key] = arr
    for alias, main in _ALIASES.items():
        if main in out:
            out[alias] = out[main].copy()
    out.update({k: np.asarray(v) for k, v in _derived_values(cfg).items()})
    return out


def load_pth(path: str) -> Dict[str, Array]:
    """Read an official checkpoint (.pth) without executing pickled code.

    Accepts a plain state dict or a training checkpoint; prefers ``ema.module``
    (what the official tools evaluate and release), then ``model``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("reading .pth files needs PyTorch: pip install -e '.[torch]'") from e
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a loadable weights-only PyTorch checkpoint ({e})") from e
    if isinstance(ckpt, Mapping) and "ema" in ckpt and isinstance(ckpt["ema"], Mapping) and "module" in ckpt["ema"]:
        ckpt = ckpt["ema"]["module"]
    elif isinstance(ckpt, Mapping) and "model" in ckpt and isinstance(ckpt["model"], Mapping):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, Mapping) or not all(hasattr(v, "shape") for v in ckpt.values()):
        raise ValueError(f"{path}: expected a state dict (or a checkpoint with 'ema'/'model'), got {type(ckpt).__name__}")
    return strip_prefix(ckpt)
