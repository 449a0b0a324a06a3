"""RT-DETRv2 decoder (``RTDETRTransformerv2``) of DEIM-RT-DETRv2 (rtdetrv2.md §5).

Inputs are the encoder's NHWC maps (finest first); boxes are normalized cxcywh. Submodules carry
the PyTorch attribute names (``input_proj_0/{conv,norm}``, ``decoder/layers_0/{self_attn,
cross_attn,norm1..3,linear1,linear2}``, ``query_pos_head/layers_i``, ``enc_output/{proj,norm}``,
``enc_score_head``, ``enc_bbox_head``, ``dec_score_head_i``, ``dec_bbox_head_i``,
``denoising_class_embed``), so ``convert.raw_variables(sd)['params']['decoder']`` (and
``['batch_stats']['decoder']``) feed :class:`RTDETRTransformerv2` directly.

Differences from the D-FINE decoder (the shared scaffolding is
:class:`~deim_jax.models.decoder_common.QueryDecoder`): conv+BN input projection on every level,
``enc_bbox_head`` on every token before the top-k gather, post-norm layer with a plain residual
(no gate, no clamp), deformable attention with ``value_proj`` / ``output_proj``, plain iterative
box refinement (``sigmoid(delta + logit(ref))``) with look-forward-twice training boxes, no
FDR/LQE/pre-head, unclamped query-position head with two variants.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax

from deim_jax.models.decoder_common import Queries, QueryDecoder
from deim_jax.models.decoder_layer import DecoderLayer, LayerStack
from deim_jax.models.layers import inverse_sigmoid


class RTDETRTransformerv2(QueryDecoder):
    """RT-DETRv2 decoder.

    ``__call__(feats, *, train, dn_group=None, return_debug=False)``: ``feats`` list of NHWC maps
    [B, H_l, W_l, C_l] (finest first, ``C_l = feat_channels[l]``). ``dn_group`` (train only) is the
    dict of ``denoising.make_contrastive_group``; its D slots are prepended to the Q queries and
    split back off.

    Eval returns ``pred_logits`` [B, Q, C] and ``pred_boxes`` [B, Q, 4] of layer ``eval_idx`` and
    ``enc_topk_indices`` [B, Q]. Train returns the last layer's ``pred_logits`` / ``pred_boxes``,
    ``aux_outputs`` (layers 0..L-2), ``enc_aux_outputs`` (one dict), ``enc_topk_indices`` and,
    with a group, ``dn_outputs`` (L dicts) and ``dn_meta``.

    DEIM recipe: ``activation='silu', mlp_act='silu', query_pos_method='as_reg'`` (query-position
    head 4 -> d -> d -> d); RT-DETRv2 baselines: ``'relu', 'relu', 'default'`` (4 -> 2d -> d).
    Anchors and the valid mask are generated from the actual feature sizes (at the eval size they
    equal the official buffers). ``cross_attn_method='discrete'`` (unused by the configs) samples
    the nearest pixel; the optimizer must then keep ``sampling_offsets`` frozen, as the official
    code does.
    """

    num_points: Tuple[int, ...] = (4, 4, 4)
    query_pos_method: str = "as_reg"
    cross_attn_method: str = "default"
    query_select_method: str = "default"
    learn_query_content: bool = False

    bbox_head_on_all_tokens = True

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], *, train: bool, dn_group: Optional[Mapping[str, Any]] = None,
                 return_debug: bool = False) -> Dict[str, Any]:
        if self.query_select_method != "default" or self.learn_query_content:
            raise NotImplementedError("only query_select_method='default' without learned content is implemented")
        eval_idx = self._check(feats)
        memory, shapes = self._flatten_inputs(feats, train)
        sel, content = self._select_queries(memory, shapes)
        q = self._queries(content, sel, dn_group, train)
        full = train or self.is_initializing()
        layers = self._decode(q, memory, shapes, self.num_layers - 1 if full else eval_idx, full)
        return self._outputs(layers, eval_idx, sel, q, train, dn_group, return_debug)

    def _decode(self, q: Queries, memory, shapes, last_layer: int, record_all: bool):
        """Iterative refinement (§5.7) over layers 0..``last_layer``; ``memory`` [B, S, d].

        ``record_all`` (train/init) records every layer with the look-forward-twice box: for
        layer i > 0 ``sigmoid(delta_i + logit(box_{i-1}))`` with the previous box *not* detached
        (sampling and the query position use the detached one). Otherwise only ``last_layer`` is
        recorded, with its plain refined box. Returns per-layer dicts (None where not recorded).
        """
        pos_head, score_heads, bbox_heads = self._heads(4, self.query_pos_method)
        make_layer = functools.partial(DecoderLayer, self.hidden_dim, self.nhead, self.dim_feedforward,
                                       tuple(self.num_points), self.activation, gated=False, use_projections=True,
                                       cross_attn_method=self.cross_attn_method)
        dec = LayerStack(make_layer, self.num_layers, name="decoder")
        out = q.content
        ref_det = jax.nn.sigmoid(q.ref_unact)
        prev_inter = None
        layers = []
        for i in range(last_layer + 1):
            out = dec.layers[i](out, ref_det, memory, shapes, q.attn_mask, pos_head(ref_det))
            delta = bbox_heads[i](out)
            inter = jax.nn.sigmoid(delta + inverse_sigmoid(ref_det))
            layers.append(None)
            if record_all:
                box = inter if i == 0 else jax.nn.sigmoid(delta + inverse_sigmoid(prev_inter))
                layers[i] = {"pred_logits": score_heads[i](out), "pred_boxes": box}
            elif i == last_layer:
                layers[i] = {"pred_logits": score_heads[i](out), "pred_boxes": inter}
            prev_inter = inter
            ref_det = jax.lax.stop_gradient(inter)
        return layers
