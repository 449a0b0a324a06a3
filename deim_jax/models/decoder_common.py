"""Scaffolding shared by the D-FINE and RT-DETRv2 decoders (deim_dfine.md §5.1-§5.4, rtdetrv2.md §5).

:class:`QueryDecoder` holds the fields both decoders have and the steps they share: input
projection and flattening of the NHWC maps (finest first) into the memory [B, S, d]; anchors and
valid mask; the encoder output head, score head and box head with the top-k query selection;
the denoising class embedding and prepending the denoising group; the prediction heads; and
splitting the per-layer results back into the eval / train output dicts. Boxes are normalized
cxcywh; ``*_unact`` are their logits. Submodules created here carry the PyTorch attribute names
(``input_proj_l``, ``enc_output``, ``enc_score_head``, ``enc_bbox_head``,
``denoising_class_embed``, ``query_pos_head``, ``dec_score_head_i``, ``dec_bbox_head_i``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deim_jax.ops.anchors import generate_anchors
from deim_jax.models.layers import LayerNorm, MLP, bias_init_with_prob, conv_then_norm, torch_kernel_init
from deim_jax.models.layers import xavier_uniform as xavier

QUERY_POS_METHODS = ("default", "as_reg")  # the query-position heads of ``_heads``

DN_META_KEYS = ("num_group", "max_gt", "valid", "positive", "target_index")


class InputProj(nn.Module):
    """``input_proj.{l}``: 1x1 conv ``conv`` (no bias, xavier) + BatchNorm ``norm``, no activation."""

    d: int

    @nn.compact
    def __call__(self, x, train: bool):
        return conv_then_norm(self, x, train, features=self.d, kernel=1, norm_name="norm", kernel_init=xavier)


class EncOutput(nn.Module):
    """``enc_output``: Linear ``proj`` (xavier) + LayerNorm ``norm``."""

    d: int

    @nn.compact
    def __call__(self, x):
        return LayerNorm(name="norm")(nn.Dense(self.d, kernel_init=xavier, name="proj")(x))


def dn_embed_init(num_classes: int):
    """N(0, 1) rows, the padding row ``num_classes`` zero (torch ``padding_idx``)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype).at[num_classes].set(0.0)

    return init


class Selection(NamedTuple):
    """Result of the query selection: ``enc_logits`` [B, S, C], ``enc_scores`` [B, S] (max over
    classes), ``topk_ind`` [B, Q], ``topk_unact`` [B, Q, 4] (box logits of the selected queries)."""

    enc_logits: jax.Array
    enc_scores: jax.Array
    topk_ind: jax.Array
    topk_unact: jax.Array


class Queries(NamedTuple):
    """Decoder input: ``content`` [B, D + Q, d] and ``ref_unact`` [B, D + Q, 4] (gradient-stopped
    selected queries, the D denoising slots first), ``attn_mask`` [D + Q, D + Q] (True = blocked)
    or None, ``n_dn`` = D (0 without a group)."""

    content: jax.Array
    ref_unact: jax.Array
    attn_mask: Optional[jax.Array]
    n_dn: int


class QueryDecoder(nn.Module):
    """Base of the two decoders: shared fields and steps (see the module docstring).

    Subclasses set two class attributes: ``identity_input_proj`` (D-FINE: a level whose channels
    equal ``hidden_dim`` has no input projection) and ``bbox_head_on_all_tokens`` (RT-DETRv2
    applies ``enc_bbox_head`` to every token, then gathers the top k; D-FINE gathers first). The
    two orders give bit-identical outputs on the parity fixtures, but gradients of
    ``enc_bbox_head`` differ by float32 rounding (~4e-7 relative), so each family keeps its own.
    """

    num_classes: int = 80
    feat_channels: Tuple[int, ...] = (256, 256, 256)
    feat_strides: Tuple[int, ...] = (8, 16, 32)  # informational: anchors come from the actual map sizes
    hidden_dim: int = 256
    num_levels: int = 3
    num_points: Tuple[int, ...] = (3, 6, 3)
    num_layers: int = 6
    nhead: int = 8
    dim_feedforward: int = 1024
    num_queries: int = 300
    num_denoising: int = 100  # these three are read by DEIM to draw the denoising group
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    eval_idx: int = -1
    activation: str = "silu"
    mlp_act: str = "silu"
    dropout: float = 0.0

    identity_input_proj = False
    bbox_head_on_all_tokens = False

    def _check(self, feats: Sequence[jax.Array]) -> int:
        """Validate the configuration and inputs; returns ``eval_idx`` as a non-negative index."""
        if self.dropout != 0.0:
            raise NotImplementedError("dropout > 0 is not supported (DEIM uses 0)")
        if len(feats) != self.num_levels or len(self.feat_channels) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps and feat_channels, got {len(feats)}")
        if len(self.num_points) != self.num_levels:
            raise ValueError("num_points needs one entry per level")
        eval_idx = self.eval_idx if self.eval_idx >= 0 else self.num_layers + self.eval_idx
        if not 0 <= eval_idx < self.num_layers:
            raise ValueError(f"eval_idx {self.eval_idx} out of range for {self.num_layers} layers")
        return eval_idx

    def _flatten_inputs(self, feats: Sequence[jax.Array], train: bool):
        """NHWC maps -> (memory [B, S, d] with the levels concatenated row-major, [(H_l, W_l)])."""
        d = self.hidden_dim
        mem, shapes = [], []
        for lvl, f in enumerate(feats):
            if not (self.identity_input_proj and self.feat_channels[lvl] == d):
                f = InputProj(d, name=f"input_proj_{lvl}")(f, train)
            b, h, w, _ = f.shape
            shapes.append((h, w))
            mem.append(f.reshape(b, h * w, d))
        return jnp.concatenate(mem, axis=1), shapes

    def _score_head(self, name: str) -> nn.Dense:
        return nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                        bias_init=nn.initializers.constant(bias_init_with_prob(0.01)), name=name)

    def _select_queries(self, memory: jax.Array, shapes) -> Tuple[Selection, jax.Array]:
        """Anchors + valid mask for ``shapes``, ``enc_output`` on the masked memory, class scores,
        top-``num_queries`` tokens and their box logits (``enc_bbox_head`` + anchor logits).
        Returns the selection and the gradient-stopped content of the selected tokens [B, Q, d]."""
        anchors_np, valid_np = generate_anchors(shapes)
        anchors = jnp.asarray(anchors_np)
        out_mem = EncOutput(self.hidden_dim, name="enc_output")(memory * jnp.asarray(valid_np).astype(memory.dtype))
        enc_logits = self._score_head("enc_score_head")(out_mem)
        bbox_head = MLP(self.hidden_dim, 4, 3, act=self.mlp_act, last_zero=True, name="enc_bbox_head")
        if self.bbox_head_on_all_tokens:
            enc_coord = bbox_head(out_mem) + anchors
        enc_scores = jnp.max(enc_logits, axis=-1)
        _, topk_ind = jax.lax.top_k(enc_scores, self.num_queries)
        topk_mem = jnp.take_along_axis(out_mem, topk_ind[..., None], axis=1)
        if self.bbox_head_on_all_tokens:
            topk_unact = jnp.take_along_axis(enc_coord, topk_ind[..., None], axis=1)
        else:
            topk_unact = bbox_head(topk_mem) + jnp.take(anchors[0], topk_ind, axis=0)
        return Selection(enc_logits, enc_scores, topk_ind, topk_unact), jax.lax.stop_gradient(topk_mem)

    def _queries(self, content: jax.Array, sel: Selection, dn_group: Optional[Mapping[str, Any]],
                 train: bool) -> Queries:
        """Prepend the denoising group (train only): class embeddings (padding class -> 0) and box logits."""
        ref_unact = jax.lax.stop_gradient(sel.topk_unact)
        embed = nn.Embed(self.num_classes + 1, self.hidden_dim, embedding_init=dn_embed_init(self.num_classes),
                         name="denoising_class_embed")
        if dn_group is None or not train:
            if self.is_initializing():
                embed(jnp.zeros((1, 1), jnp.int32))
            return Queries(content, ref_unact, None, 0)
        cls = dn_group["query_class"]
        dn_content = embed(cls) * (cls != self.num_classes)[..., None].astype(content.dtype)
        content = jnp.concatenate([dn_content.astype(content.dtype), content], axis=1)
        ref_unact = jnp.concatenate([dn_group["query_bbox_unact"].astype(ref_unact.dtype), ref_unact], axis=1)
        return Queries(content, ref_unact, dn_group["attn_mask"], cls.shape[1])

    def _heads(self, box_dim: int, query_pos_method: str = "default"):
        """``query_pos_head`` ('default': 4 -> 2d -> d; 'as_reg': 4 -> d -> d -> d) and the per-layer
        ``dec_score_head_i`` / ``dec_bbox_head_i`` (3-layer MLP d -> d -> d -> ``box_dim``)."""
        d = self.hidden_dim
        if query_pos_method == "default":
            pos_head = MLP(2 * d, d, 2, act=self.mlp_act, xavier_layers=(0, 1), name="query_pos_head")
        elif query_pos_method == "as_reg":
            pos_head = MLP(d, d, 3, act=self.mlp_act, xavier_layers=(0, 1), name="query_pos_head")
        else:
            raise ValueError(f"query_pos_method {query_pos_method!r}: choose one of {QUERY_POS_METHODS}")
        score = [self._score_head(f"dec_score_head_{i}") for i in range(self.num_layers)]
        bbox = [MLP(d, box_dim, 3, act=self.mlp_act, last_zero=True, name=f"dec_bbox_head_{i}")
                for i in range(self.num_layers)]
        return pos_head, score, bbox

    def _outputs(self, layers: List[Optional[Dict[str, jax.Array]]], eval_idx: int, sel: Selection, q: Queries,
                 train: bool, dn_group: Optional[Mapping[str, Any]], return_debug: bool,
                 teacher: Tuple[str, ...] = (), per_query: Optional[Dict[str, Dict]] = None,
                 constants: Optional[Dict[str, jax.Array]] = None) -> Dict[str, Any]:
        """Split per-layer dicts of [B, D + Q, ...] arrays into the output dict.

        Eval: layer ``eval_idx``'s ``pred_logits`` / ``pred_boxes`` and ``enc_topk_indices``.
        Train: the last layer's entries, ``aux_outputs`` (the other layers), ``enc_aux_outputs``,
        ``enc_topk_indices``, every ``per_query`` dict, ``constants``; with a group also
        ``dn_outputs`` (every layer), ``dn_<per_query key>`` and ``dn_meta``. Each ``teacher`` key
        ``pred_x`` adds ``teacher_x`` (the last layer's value) to every layer dict.
        ``return_debug`` adds ``debug`` = {enc_scores [B, S], dec_init_content [B, Q, d],
        dec_init_ref_unact [B, Q, 4]} of the matching queries.
        """
        n = q.n_dn
        main = lambda t: jax.tree_util.tree_map(lambda x: x[:, n:], t)  # noqa: E731
        if not train:
            res = {k: layers[eval_idx][k][:, n:] for k in ("pred_logits", "pred_boxes")}
            res["enc_topk_indices"] = sel.topk_ind
        else:
            last = layers[-1]
            full = [{**l, **{"teacher_" + k[len("pred_"):]: last[k] for k in teacher}} for l in layers]
            res = {**main(last), **(constants or {}), "aux_outputs": [main(l) for l in full[:-1]],
                   **{k: main(v) for k, v in (per_query or {}).items()},
                   "enc_aux_outputs": [{"pred_logits": jnp.take_along_axis(sel.enc_logits, sel.topk_ind[..., None], 1),
                                        "pred_boxes": jax.nn.sigmoid(sel.topk_unact)}],
                   "enc_topk_indices": sel.topk_ind}
            if n:
                dn = lambda t: jax.tree_util.tree_map(lambda x: x[:, :n], t)  # noqa: E731
                res["dn_outputs"] = [dn(l) for l in full]
                res.update({f"dn_{k}": dn(v) for k, v in (per_query or {}).items()})
                res["dn_meta"] = {k: dn_group[k] for k in DN_META_KEYS if k in dn_group}
        if return_debug:
            res["debug"] = {"enc_scores": sel.enc_scores, "dec_init_content": q.content[:, n:],
                            "dec_init_ref_unact": q.ref_unact[:, n:]}
        return res
