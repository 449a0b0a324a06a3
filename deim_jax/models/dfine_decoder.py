"""D-FINE decoder (DFINETransformer) with Fine-grained Distribution Refinement, LQE and
contrastive denoising (deim_dfine.md §5).

Inputs are NHWC feature maps (finest first); boxes are normalized cxcywh. Flax submodules are
named after the PyTorch attributes (``decoder/layers_0/cross_attn/...``), so
``convert.raw_variables(state_dict)['params']['decoder']`` feeds this module directly.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deim_jax.ops.anchors import generate_anchors
from deim_jax.ops.fdr import distance2bbox, integral, weighting_function
from deim_jax.models.deformable_attention import MSDeformableAttention, split_heads
from deim_jax.models.layers import (
    BatchNorm,
    Conv,
    LayerNorm,
    MLP,
    MultiheadAttention,
    bias_init_with_prob,
    get_activation,
    inverse_sigmoid,
    torch_kernel_init,
)
from deim_jax.models.layers import xavier_uniform as xavier


class Gate(nn.Module):
    """``LN(g1 * x1 + g2 * x2)`` with ``[g1, g2] = sigmoid(Linear(cat[x1, x2]))`` (zero init)."""

    d_model: int

    @nn.compact
    def __call__(self, x1, x2):
        g = jax.nn.sigmoid(
            nn.Dense(2 * self.d_model, kernel_init=nn.initializers.zeros, name="gate")(jnp.concatenate([x1, x2], -1))
        )
        g1, g2 = jnp.split(g, 2, axis=-1)
        return LayerNorm(name="norm")(g1 * x1 + g2 * x2)


class LQE(nn.Module):
    """Localization quality estimate: scalar from the top-k bin probabilities added to every logit."""

    k: int = 4
    hidden_dim: int = 64
    reg_max: int = 32
    act: str = "silu"

    @nn.compact
    def __call__(self, scores, corners):
        p = jax.nn.softmax(corners.reshape(corners.shape[:-1] + (4, self.reg_max + 1)), axis=-1)
        top, _ = jax.lax.top_k(p, self.k)
        stat = jnp.concatenate([top, jnp.mean(top, -1, keepdims=True)], -1)
        stat = stat.reshape(corners.shape[:-1] + (4 * (self.k + 1),))
        q = MLP(self.hidden_dim, 1, 2, act=self.act, last_zero=True, name="reg_conf")(stat)
        return scores + q


class TransformerDecoderLayer(nn.Module):
    """Self-attention (post-norm) -> deformable cross-attention fused by a gate -> FFN."""

    d_model: int
    nhead: int
    dim_feedforward: int
    num_points: Tuple[int, ...]
    activation: str = "silu"

    @nn.compact
    def __call__(self, tgt, ref, value, spatial_shapes, attn_mask, pos):
        q = tgt + pos
        mask = None if attn_mask is None else attn_mask[None, None]
        t2 = MultiheadAttention(self.nhead, name="self_attn")(q, q, tgt, mask)
        tgt = LayerNorm(name="norm1")(tgt + t2)
        t2 = MSDeformableAttention(self.d_model, self.nhead, self.num_points, name="cross_attn")(
            tgt + pos, ref, value, spatial_shapes
        )
        tgt = Gate(self.d_model, name="gateway")(tgt, t2)
        f = nn.Dense(self.dim_feedforward, kernel_init=xavier, name="linear1")(tgt)
        f = nn.Dense(self.d_model, kernel_init=xavier, name="linear2")(get_activation(self.activation)(f))
        return LayerNorm(name="norm3")(jnp.clip(tgt + f, -65504.0, 65504.0))


class TransformerDecoder(nn.Module):
    """Holds ``layers_i`` and ``lqe_layers_i`` (torch ``decoder.decoder``)."""

    hidden_dim: int
    nhead: int
    dim_feedforward: int
    num_points: Tuple[int, ...]
    num_layers: int
    activation: str
    mlp_act: str
    reg_max: int

    def setup(self):
        self.layers = [
            TransformerDecoderLayer(
                self.hidden_dim, self.nhead, self.dim_feedforward, self.num_points, self.activation
            )
            for i in range(self.num_layers)
        ]
        self.lqe_layers = [
            LQE(4, 64, self.reg_max, self.activation) for i in range(self.num_layers)
        ]

    def __call__(self, *args, **kwargs):  # pragma: no cover - used through the layer lists
        raise NotImplementedError


class DFINETransformer(nn.Module):
    """D-FINE decoder.

    ``__call__(feats, train, dn_group=None, return_debug=False)``: ``feats`` list of NHWC maps
    [B, H_l, W_l, C_l] (finest first). ``dn_group`` (train only) is the dict of
    ``denoising.make_contrastive_group``; its D_max slots are prepended to the Q matching queries.
    Eval returns ``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4], ``enc_topk_indices`` [B, Q];
    train additionally ``pred_corners``, ``ref_points``, ``up``, ``reg_scale``, ``aux_outputs``,
    ``pre_outputs``, ``enc_aux_outputs``, ``enc_meta`` and, with a group, ``dn_outputs``,
    ``dn_pre_outputs``, ``dn_meta`` (``num_group``, ``max_gt``, ``valid`` and, when the group has
    them, ``positive`` [B, D_max] / ``target_index`` [B, D_max]). Anchors are generated from the
    actual feature sizes (at the eval size they equal the official precomputed buffers up to one
    float32 ulp of the log). ``return_debug=True`` adds ``debug`` = {enc_scores [B, S],
    dec_init_content [B, Q, d], dec_init_ref_unact [B, Q, 4]} for the matching queries.
    """

    num_classes: int = 80
    feat_channels: Tuple[int, ...] = (256, 256, 256)
    feat_strides: Tuple[int, ...] = (8, 16, 32)
    hidden_dim: int = 256
    num_levels: int = 3
    num_points: Tuple[int, ...] = (3, 6, 3)
    num_layers: int = 6
    nhead: int = 8
    dim_feedforward: int = 1024
    num_queries: int = 300
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    reg_max: int = 32
    reg_scale: float = 4.0
    eval_idx: int = -1
    activation: str = "silu"
    mlp_act: str = "silu"
    layer_scale: int = 1
    dropout: float = 0.0
    eval_spatial_size: Optional[Tuple[int, int]] = (640, 640)

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool, dn_group: Optional[Mapping[str, Any]] = None,
                 return_debug: bool = False) -> Dict[str, Any]:
        if self.layer_scale != 1:
            raise NotImplementedError("layer_scale != 1 is not supported")
        if self.dropout != 0.0:
            raise NotImplementedError("dropout > 0 is not supported (DEIM uses 0)")
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(feats)}")
        d = self.hidden_dim
        n_layers = self.num_layers
        eval_idx = self.eval_idx if self.eval_idx >= 0 else n_layers + self.eval_idx
        R = self.reg_max

        up = jax.lax.stop_gradient(self.param("up", lambda *_: jnp.full((1,), 0.5, jnp.float32)))
        reg_scale = jax.lax.stop_gradient(
            self.param("reg_scale", lambda *_: jnp.full((1,), self.reg_scale, jnp.float32))
        ).astype(jnp.float32)

        # 5.1 input projection and flattening
        mem, shapes = [], []
        for l, f in enumerate(feats):
            if self.feat_channels[l] != d:
                f = _InputProj(d, name=f"input_proj_{l}")(f, train)
            b, h, w, _ = f.shape
            shapes.append((h, w))
            mem.append(f.reshape(b, h * w, d))
        memory = jnp.concatenate(mem, axis=1)
        b = memory.shape[0]

        # 5.2/5.3 anchors and query selection
        anchors_np, valid_np = generate_anchors(shapes)
        anchors = jnp.asarray(anchors_np)
        valid = jnp.asarray(valid_np)
        masked = memory * valid.astype(memory.dtype)
        out_mem = _EncOutput(d, name="enc_output")(masked)
        score_bias = bias_init_with_prob(0.01)
        enc_logits = nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                              bias_init=nn.initializers.constant(score_bias), name="enc_score_head")(out_mem)
        enc_scores = jnp.max(enc_logits, axis=-1)
        _, topk_ind = jax.lax.top_k(enc_scores, self.num_queries)
        topk_mem = jnp.take_along_axis(out_mem, topk_ind[..., None], axis=1)
        topk_anchors = jnp.take(anchors[0], topk_ind, axis=0)
        enc_bbox_head = MLP(d, 4, 3, act=self.mlp_act, last_zero=True, name="enc_bbox_head")
        topk_unact = enc_bbox_head(topk_mem) + topk_anchors
        content = jax.lax.stop_gradient(topk_mem)
        ref_unact = jax.lax.stop_gradient(topk_unact)

        embed = nn.Embed(self.num_classes + 1, d, embedding_init=_dn_embed_init(self.num_classes),
                         name="denoising_class_embed")
        attn_mask = None
        n_dn = 0
        if dn_group is not None and train:
            cls = dn_group["query_class"]
            dn_content = embed(cls) * (cls != self.num_classes)[..., None].astype(memory.dtype)
            n_dn = cls.shape[1]
            content = jnp.concatenate([dn_content.astype(content.dtype), content], axis=1)
            ref_unact = jnp.concatenate([dn_group["query_bbox_unact"].astype(ref_unact.dtype), ref_unact], axis=1)
            attn_mask = dn_group["attn_mask"]
        elif self.is_initializing():
            embed(jnp.zeros((1, 1), jnp.int32))

        # heads
        query_pos_head = MLP(2 * d, d, 2, act=self.mlp_act, xavier_layers=(0, 1), name="query_pos_head")
        pre_bbox_head = MLP(d, 4, 3, act=self.mlp_act, last_zero=True, name="pre_bbox_head")
        score_heads = [
            nn.Dense(self.num_classes, kernel_init=torch_kernel_init, bias_init=nn.initializers.constant(score_bias),
                     name=f"dec_score_head_{i}")
            for i in range(n_layers)
        ]
        bbox_heads = [
            MLP(d, 4 * (R + 1), 3, act=self.mlp_act, last_zero=True, name=f"dec_bbox_head_{i}")
            for i in range(n_layers)
        ]
        dec = TransformerDecoder(d, self.nhead, self.dim_feedforward, tuple(self.num_points), n_layers,
                                 self.activation, self.mlp_act, R, name="decoder")

        # 5.7 layer loop
        value = split_heads(memory, self.nhead)
        project = weighting_function(R, up, reg_scale)
        out = content
        out_prev = jnp.zeros_like(content)
        corners_prev = jnp.zeros(content.shape[:-1] + (4 * (R + 1),), content.dtype)
        ref_det = jax.nn.sigmoid(ref_unact)
        recs = []
        last_layer = n_layers - 1 if (train or self.is_initializing()) else eval_idx
        pre_boxes = pre_logits = ref0 = None
        for i in range(last_layer + 1):
            pos = jnp.clip(query_pos_head(ref_det), -10.0, 10.0)
            out = dec.layers[i](out, ref_det, value, shapes, attn_mask, pos)
            if i == 0:
                pre_boxes = jax.nn.sigmoid(pre_bbox_head(out) + inverse_sigmoid(ref_det))
                pre_logits = score_heads[0](out)
                ref0 = jax.lax.stop_gradient(pre_boxes)
            corners = bbox_heads[i](out + out_prev) + corners_prev
            boxes = distance2bbox(ref0, integral(corners, project, R), reg_scale)
            if train or i == eval_idx or self.is_initializing():
                logits = dec.lqe_layers[i](score_heads[i](out), corners)
                recs.append((logits, boxes, corners, ref0))
            corners_prev = corners
            ref_det = jax.lax.stop_gradient(boxes)
            out_prev = jax.lax.stop_gradient(out)

        logits, boxes, corners, refs = recs[-1]
        if not train:
            res = {"pred_logits": logits[:, n_dn:], "pred_boxes": boxes[:, n_dn:], "enc_topk_indices": topk_ind}
            if return_debug:
                res["debug"] = {"enc_scores": enc_scores, "dec_init_content": content[:, n_dn:],
                                "dec_init_ref_unact": ref_unact[:, n_dn:]}
            return res

        def split(x):
            return x[:, :n_dn], x[:, n_dn:]

        def layer_dicts(sel):
            t_logits, t_corners = sel(recs[-1][0]), sel(recs[-1][2])
            return [
                {"pred_logits": sel(lg), "pred_boxes": sel(bx), "pred_corners": sel(cr), "ref_points": sel(rf),
                 "teacher_corners": t_corners, "teacher_logits": t_logits}
                for (lg, bx, cr, rf) in recs
            ]

        main = lambda x: split(x)[1]
        res = {
            "pred_logits": main(logits),
            "pred_boxes": main(boxes),
            "pred_corners": main(corners),
            "ref_points": main(refs),
            "up": up,
            "reg_scale": reg_scale,
            "aux_outputs": layer_dicts(main)[:-1],
            "pre_outputs": {"pred_logits": main(pre_logits), "pred_boxes": main(pre_boxes)},
            "enc_aux_outputs": [{"pred_logits": jnp.take_along_axis(enc_logits, topk_ind[..., None], axis=1),
                                 "pred_boxes": jax.nn.sigmoid(topk_unact)}],
            "enc_meta": {"class_agnostic": False},
            "enc_topk_indices": topk_ind,
        }
        if n_dn:
            dn = lambda x: split(x)[0]
            res["dn_outputs"] = layer_dicts(dn)
            res["dn_pre_outputs"] = {"pred_logits": dn(pre_logits), "pred_boxes": dn(pre_boxes)}
            res["dn_meta"] = {k: dn_group[k] for k in ("num_group", "max_gt", "valid", "positive", "target_index")
                              if k in dn_group}
        if return_debug:
            res["debug"] = {"enc_scores": enc_scores, "dec_init_content": content[:, n_dn:],
                            "dec_init_ref_unact": ref_unact[:, n_dn:]}
        return res


def _dn_embed_init(num_classes: int):
    def init(key, shape, dtype=jnp.float32):
        w = jax.random.normal(key, shape, dtype)
        return w.at[num_classes].set(0.0)

    return init


class _EncOutput(nn.Module):
    """``enc_output``: Linear (``proj``, xavier) + LayerNorm (``norm``)."""

    d: int

    @nn.compact
    def __call__(self, x):
        return LayerNorm(name="norm")(nn.Dense(self.d, kernel_init=xavier, name="proj")(x))


class _InputProj(nn.Module):
    """``input_proj.{l}``: 1x1 conv (no bias, xavier) + BatchNorm (``conv`` / ``norm``)."""

    d: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = Conv(self.d, 1, name="conv", kernel_init=xavier)(x)
        return BatchNorm(name="norm")(x, train)
