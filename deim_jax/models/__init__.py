"""Model zoo: ``build(cfg)`` returns the Flax module of a config."""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from deim_jax.models.deim import DEIM


def _tuples(section) -> dict:
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(section).items()}


def build(cfg) -> DEIM:
    """The detector described by ``cfg.model`` (and ``cfg.num_classes``, ``cfg.eval_spatial_size``).

    Families: ``dfine`` (HGNetv2 + D-FINE hybrid encoder + D-FINE decoder) and ``rtdetrv2``
    (PResNet-vd + RT-DETRv2 hybrid encoder + RT-DETRv2 decoder).
    """
    from deim_jax.models.hybrid_encoder import HybridEncoder

    family = cfg.model.family
    eval_size = tuple(cfg.eval_spatial_size)
    b = _tuples(cfg.model.backbone)
    b.pop("name", None)
    if family == "dfine":
        from deim_jax.models.dfine_decoder import DFINETransformer as Decoder
        from deim_jax.models.hgnetv2 import HGNetv2

        backbone = HGNetv2(name_variant=b.pop("variant"), **b)
    elif family == "rtdetrv2":
        from deim_jax.models.presnet import PResNet
        from deim_jax.models.rtdetrv2_decoder import RTDETRTransformerv2 as Decoder

        backbone = PResNet(**b)
    else:
        raise ValueError(f"unknown model family {family!r} (config field model.family); known: 'dfine', 'rtdetrv2'")
    encoder = HybridEncoder(**_tuples(cfg.model.encoder), eval_spatial_size=eval_size)
    decoder = Decoder(num_classes=cfg.num_classes, **_tuples(cfg.model.decoder), eval_spatial_size=eval_size)
    return DEIM(backbone=backbone, encoder=encoder, decoder=decoder)


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

    ``log``: the float32 logarithm used for the anchor logits (see ``anchors.generate_anchors``).
    """
    from deim_jax.ops.anchors import generate_anchors

    d = cfg.model.decoder
    h, w = cfg.eval_spatial_size
    shapes = [(int(np.ceil(h / s)), int(np.ceil(w / s))) for s in d.feat_strides]
    anchors, valid = generate_anchors(shapes, log=log)
    out = {"decoder.anchors": np.asarray(anchors, np.float32), "decoder.valid_mask": np.asarray(valid, bool)}
    scale = np.concatenate([np.full((n,), 1.0 / n, np.float32) for n in d.num_points]).astype(np.float32)
    for i in range(d.num_layers):
        out[f"decoder.decoder.layers.{i}.cross_attn.num_points_scale"] = scale
    return out
