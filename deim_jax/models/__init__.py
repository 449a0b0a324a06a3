"""Model zoo: ``build(cfg)`` returns the Flax module of a config; ``frozen_filter(cfg)`` says which
of its parameters the optimizer must leave alone.

Families (``cfg.model.family``): ``dfine`` (HGNetv2 + D-FINE hybrid encoder + D-FINE decoder) and
``rtdetrv2`` (PResNet-vd + RT-DETRv2 hybrid encoder + RT-DETRv2 decoder). Images are NHWC float32
RGB in [0, 1]; boxes normalized cxcywh.

``build`` checks the config before anything is traced: an unknown field, a field value outside
``CHOICES`` or mismatched channels raise ``deim_jax.errors.ConfigError`` naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deim_jax.errors import ConfigError
from deim_jax.models import hgnetv2, presnet
from deim_jax.models.decoder_common import QUERY_POS_METHODS
from deim_jax.models.deformable_attention import CROSS_ATTN_METHODS, num_points_scale
from deim_jax.models.deim import DEIM
from deim_jax.models.dfine_decoder import DFINETransformer
from deim_jax.models.hgnetv2 import HGNetv2
from deim_jax.models.hybrid_encoder import VERSIONS, HybridEncoder
from deim_jax.models.activations import ACTIVATIONS
from deim_jax.models.presnet import PResNet
from deim_jax.models.rtdetrv2_decoder import RTDETRTransformerv2
from deim_jax.ops.anchors import generate_anchors


class _Family(NamedTuple):
    backbone_name: str  # the value ``cfg.model.backbone.name`` must have
    backbone: type
    decoder: type


FAMILIES = {
    "dfine": _Family("HGNetv2", HGNetv2, DFINETransformer),
    "rtdetrv2": _Family("PResNet", PResNet, RTDETRTransformerv2),
}


_ACTIVATIONS = tuple(sorted(k for k in ACTIVATIONS if k))

# Module fields that select a code path, with their valid values: build() checks them, so a bad
# value is a ConfigError at start-up, not a traceback from inside jit tracing.
CHOICES = {
    HGNetv2: dict(variant=tuple(sorted(hgnetv2.ARCH_CONFIGS))),
    PResNet: dict(variant=("d",), depth=tuple(sorted(presnet.ARCH)), act=_ACTIVATIONS),
    HybridEncoder: dict(version=VERSIONS, act=_ACTIVATIONS, enc_act=_ACTIVATIONS),
    DFINETransformer: dict(activation=_ACTIVATIONS, mlp_act=_ACTIVATIONS),
    RTDETRTransformerv2: dict(activation=_ACTIVATIONS, mlp_act=_ACTIVATIONS, query_pos_method=QUERY_POS_METHODS,
                              cross_attn_method=CROSS_ATTN_METHODS, query_select_method=("default",)),
}


def _family(cfg) -> _Family:
    family = cfg.model.family
    if family not in FAMILIES:
        raise ConfigError(f"cfg.model.family={family!r}: unknown model family; known: {sorted(FAMILIES)}")
    return FAMILIES[family]


def _kwargs(section, module_cls: type, where: str, skip: Tuple[str, ...] = ()) -> dict:
    """Config section -> constructor arguments (lists become tuples); an unknown field or a value
    outside ``CHOICES`` is a ConfigError."""
    known = {f.name for f in dataclasses.fields(module_cls)} - {"parent", "name"}
    kw = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in section.items() if k not in skip}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for {module_cls.__name__}; known: {sorted(known)}")
    for field, valid in CHOICES.get(module_cls, {}).items():
        if field in kw and kw[field] not in valid:
            raise ConfigError(f"{where}.{field}={kw[field]!r}: not one of {list(valid)}")
    return kw


def build_backbone(cfg) -> nn.Module:
    """The backbone of ``cfg.model.backbone`` (``name`` must match the family's backbone)."""
    fam = _family(cfg)
    section = cfg.model.backbone
    if section.name != fam.backbone_name:
        raise ConfigError(f"cfg.model.backbone.name {section.name!r}: family {cfg.model.family!r} uses "
                         f"{fam.backbone_name!r}")
    return fam.backbone(**_kwargs(section, fam.backbone, "cfg.model.backbone", skip=("name",)))


def build(cfg) -> DEIM:
    """The detector described by ``cfg.model`` (and ``cfg.num_classes``, ``cfg.eval_spatial_size``).

    Every field of ``cfg.model.{backbone,encoder,decoder}`` is a constructor argument of that
    module (unknown fields raise); the encoder's ``in_channels`` must be the backbone's
    ``out_channels``.
    """
    fam = _family(cfg)
    if int(cfg.num_classes) <= 0:
        raise ConfigError(f"cfg.num_classes={cfg.num_classes}: 0 (from the data set) is resolved only when a "
                          "run loads its data; set --config.num_classes=K to build the model without it")
    backbone = build_backbone(cfg)
    encoder = HybridEncoder(**_kwargs(cfg.model.encoder, HybridEncoder, "cfg.model.encoder"),
                            eval_spatial_size=tuple(cfg.eval_spatial_size))
    if tuple(encoder.in_channels) != backbone.out_channels:
        raise ConfigError(f"cfg.model.encoder.in_channels {tuple(encoder.in_channels)} differ from the "
                         f"backbone's output channels {backbone.out_channels}")
    decoder = fam.decoder(num_classes=cfg.num_classes,
                          **_kwargs(cfg.model.decoder, fam.decoder, "cfg.model.decoder"))
    return DEIM(backbone=backbone, encoder=encoder, decoder=decoder)


def frozen_filter(cfg) -> Optional[Callable[[Tuple], bool]]:
    """Predicate over FULL params paths (``('backbone', 'stem', 'stem1', 'conv', 'kernel')``, keys as
    strings or ``DictKey``): True for a parameter the optimizer must not train, by the backbone's
    ``freeze_at`` / ``freeze_norm`` rules (``frozen_param_filter`` of HGNetv2 / PResNet); paths
    outside ``backbone`` are never frozen. None when nothing is frozen."""
    pred = build_backbone(cfg).frozen_param_filter()
    if pred is None:
        return None

    def is_frozen(path) -> bool:
        keys = tuple(str(getattr(p, "key", p)) for p in path)
        return len(keys) > 1 and keys[0] == "backbone" and pred(keys[1:])

    return is_frozen


def init_shapes(model: DEIM, cfg) -> Dict:
    """Abstract variables (shapes/dtypes only; nothing is computed) at the eval size."""
    h, w = cfg.eval_spatial_size
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    return jax.eval_shape(lambda im: model.init(jax.random.PRNGKey(0), im, train=False), x)


def init(model: DEIM, cfg, rng: jax.Array, image_size=None) -> Dict:
    """Freshly initialized variables (``params``, ``batch_stats``)."""
    h, w = image_size or cfg.eval_spatial_size
    return jax.jit(lambda r: model.init(r, jnp.zeros((1, h, w, 3), jnp.float32), train=False))(rng)


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def derived_constants(cfg, log=np.log) -> Dict[str, np.ndarray]:
    """Values the official state dict stores but the model recomputes (anchors, valid mask, point scales).

    ``log``: the float32 logarithm used for the anchor logits (see ``ops.anchors.generate_anchors``).
    """
    d = cfg.model.decoder
    h, w = cfg.eval_spatial_size
    shapes = [(int(np.ceil(h / s)), int(np.ceil(w / s))) for s in d.feat_strides]
    anchors, valid = generate_anchors(shapes, log=log)
    out = {"decoder.anchors": np.asarray(anchors, np.float32), "decoder.valid_mask": np.asarray(valid, bool)}
    scale = num_points_scale(d.num_points)
    for i in range(d.num_layers):
        out[f"decoder.decoder.layers.{i}.cross_attn.num_points_scale"] = scale
    return out
