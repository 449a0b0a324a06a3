"""The DEIM detector: backbone -> hybrid encoder -> DETR decoder.

``model.apply(variables, images, train=False)`` with ``images`` [B, H, W, 3]
float32 RGB in [0, 1] (no mean/std normalization) returns ``pred_logits``
[B, Q, C] and ``pred_boxes`` [B, Q, 4] (normalized cxcywh) plus
``enc_topk_indices`` [B, Q]. In train mode (``mutable=['batch_stats']``) the
decoder returns every auxiliary output the criterion needs; given ``targets``
(``boxes`` [B, M, 4], ``labels`` [B, M], ``mask`` [B, M]) and an rng named
``'denoising'``, a contrastive denoising group is drawn, unless ``dn_group`` is
passed explicitly (parity tests feed the official group).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax

from deim_jax.models.denoising import make_contrastive_group


class DEIM(nn.Module):
    backbone: nn.Module
    encoder: nn.Module
    decoder: nn.Module

    def __call__(
        self,
        images: jax.Array,
        train: bool = False,
        targets: Optional[Mapping[str, jax.Array]] = None,
        dn_group: Optional[Mapping[str, Any]] = None,
    ):
        feats = self.backbone(images, train=train)
        feats = self.encoder(feats, train=train)
        if train and dn_group is None and targets is not None and self.decoder.num_denoising > 0:
            dn_group = make_contrastive_group(
                self.make_rng("denoising"),
                targets["labels"],
                targets["boxes"],
                targets["mask"],
                num_classes=self.decoder.num_classes,
                num_denoising=self.decoder.num_denoising,
                label_noise_ratio=self.decoder.label_noise_ratio,
                box_noise_scale=self.decoder.box_noise_scale,
                num_queries=self.decoder.num_queries,
            )
        return self.decoder(feats, train=train, dn_group=dn_group)
