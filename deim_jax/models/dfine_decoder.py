"""D-FINE decoder (DFINETransformer) with Fine-grained Distribution Refinement, LQE and
contrastive denoising (deim_dfine.md §5).

Inputs are NHWC feature maps (finest first); boxes are normalized cxcywh. Flax submodules are
named after the PyTorch attributes (``decoder/layers_0/cross_attn/...``), so
``convert.raw_variables(state_dict)['params']['decoder']`` feeds this module directly. The shared
scaffolding (input projection, query selection, denoising queries, output dicts) is
:class:`~deim_jax.models.decoder_common.QueryDecoder`; here are the FDR layer loop, LQE, the
gated layer and the pre-head.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deim_jax.ops.fdr import distance2bbox, integral, weighting_function
from deim_jax.models.decoder_common import Queries, QueryDecoder
from deim_jax.models.decoder_layer import DecoderLayer, LayerStack
from deim_jax.models.deformable_attention import split_heads
from deim_jax.models.layers import MLP, inverse_sigmoid

QUERY_POS_CLAMP = 10.0


class LQE(nn.Module):
    """Localization quality estimate: scalar from the top-k bin probabilities added to every logit.

    ``scores`` [B, Q, C], ``corners`` [B, Q, 4 * (reg_max + 1)] -> [B, Q, C].
    """

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


class DFINETransformer(QueryDecoder):
    """D-FINE decoder.

    ``__call__(feats, *, train, dn_group=None, return_debug=False)``: ``feats`` list of NHWC maps
    [B, H_l, W_l, C_l] (finest first). ``dn_group`` (train only) is the dict of
    ``denoising.make_contrastive_group``; its D_max slots are prepended to the Q matching queries.
    Eval returns ``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4], ``enc_topk_indices`` [B, Q];
    train additionally ``pred_corners`` [B, Q, 4 (R+1)], ``ref_points`` [B, Q, 4], ``up``,
    ``reg_scale``, ``aux_outputs``, ``pre_outputs``, ``enc_aux_outputs`` and, with a group,
    ``dn_outputs``, ``dn_pre_outputs``, ``dn_meta`` (``num_group``, ``max_gt``, ``valid`` and,
    when the group has them, ``positive`` [B, D_max] / ``target_index`` [B, D_max]). Every layer
    dict also has ``teacher_corners`` / ``teacher_logits`` (the last layer's). Anchors are
    generated from the actual feature sizes (at the eval size they equal the official precomputed
    buffers up to one float32 ulp of the log). ``return_debug=True`` adds ``debug`` (see
    ``QueryDecoder._outputs``).
    """

    reg_max: int = 32
    reg_scale: float = 4.0
    layer_scale: int = 1

    identity_input_proj = True

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], *, train: bool, dn_group: Optional[Mapping[str, Any]] = None,
                 return_debug: bool = False) -> Dict[str, Any]:
        if self.layer_scale != 1:
            raise NotImplementedError("layer_scale != 1 is not supported")
        eval_idx = self._check(feats)
        up = jax.lax.stop_gradient(self.param("up", lambda *_: jnp.full((1,), 0.5, jnp.float32)))
        reg_scale = jax.lax.stop_gradient(
            self.param("reg_scale", lambda *_: jnp.full((1,), self.reg_scale, jnp.float32))
        ).astype(jnp.float32)
        memory, shapes = self._flatten_inputs(feats, train)
        sel, content = self._select_queries(memory, shapes)
        q = self._queries(content, sel, dn_group, train)
        full = train or self.is_initializing()
        layers, pre = self._decode(q, split_heads(memory, self.nhead), shapes, up, reg_scale,
                                   self.num_layers - 1 if full else eval_idx, full)
        return self._outputs(layers, eval_idx, sel, q, train, dn_group, return_debug,
                             teacher=("pred_corners", "pred_logits"), per_query={"pre_outputs": pre},
                             constants={"up": up, "reg_scale": reg_scale})

    def _decode(self, q: Queries, value, shapes, up, reg_scale, last_layer: int, record_all: bool):
        """FDR layer loop (§5.7) over layers 0..``last_layer``; ``value`` [B, S, nH, hd].

        Layer 0's pre-head gives the reference boxes ``ref0`` every layer decodes its corner
        distances from; each layer refines the previous corners (residual on the logits).
        Returns per-layer dicts (None where not recorded; ``record_all`` records every layer,
        otherwise only ``last_layer``) and the pre-head dict.
        """
        d, R = self.hidden_dim, self.reg_max
        pos_head, score_heads, bbox_heads = self._heads(4 * (R + 1))
        pre_bbox_head = MLP(d, 4, 3, act=self.mlp_act, last_zero=True, name="pre_bbox_head")
        make_layer = functools.partial(DecoderLayer, d, self.nhead, self.dim_feedforward, tuple(self.num_points),
                                       self.activation, gated=True, use_projections=False)
        make_lqe = functools.partial(LQE, 4, 64, R, self.activation)
        dec = LayerStack(make_layer, self.num_layers, make_lqe, name="decoder")
        project = weighting_function(R, up, reg_scale)
        out = q.content
        out_prev = jnp.zeros_like(out)
        corners_prev = jnp.zeros(out.shape[:-1] + (4 * (R + 1),), out.dtype)
        ref_det = jax.nn.sigmoid(q.ref_unact)
        layers, pre, ref0 = [], None, None
        for i in range(last_layer + 1):
            pos = jnp.clip(pos_head(ref_det), -QUERY_POS_CLAMP, QUERY_POS_CLAMP)
            out = dec.layers[i](out, ref_det, value, shapes, q.attn_mask, pos)
            if i == 0:
                pre_boxes = jax.nn.sigmoid(pre_bbox_head(out) + inverse_sigmoid(ref_det))
                pre = {"pred_logits": score_heads[0](out), "pred_boxes": pre_boxes}
                ref0 = jax.lax.stop_gradient(pre_boxes)
            corners = bbox_heads[i](out + out_prev) + corners_prev
            boxes = distance2bbox(ref0, integral(corners, project, R), reg_scale)
            layers.append(None)
            if record_all or i == last_layer:
                logits = dec.lqe_layers[i](score_heads[i](out), corners)
                layers[i] = {"pred_logits": logits, "pred_boxes": boxes, "pred_corners": corners, "ref_points": ref0}
            corners_prev = corners
            ref_det = jax.lax.stop_gradient(boxes)
            out_prev = jax.lax.stop_gradient(out)
        return layers, pre
