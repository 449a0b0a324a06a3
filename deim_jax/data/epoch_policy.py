"""What the Dense O2O training pipeline does in a given epoch (deim_dfine.md §8.3), in words.

The boundaries are defined here once (``windows``): ``pipeline.train_example_fn`` /
``train_batch_fn`` apply them inside tf.data, and the training loop logs each change as it happens
(no TensorFlow here). ``epoch`` is 0-based; ``d`` is ``config.data``.
"""

from __future__ import annotations

from typing import Dict, List, Tuple


def windows(d) -> Dict[str, Tuple[int, int]]:
    """``{'augment', 'mosaic', 'mixup', 'multiscale'}`` -> [first, end) epochs of each switch.

    augment: photometric distortion, with zoom-out + IoU crop on images without Mosaic;
    mosaic: Mosaic on a ``mosaic_prob`` share of the images; mixup: MixUp on a ``mixup_prob`` share
    of the batches; multiscale: one random size per batch."""
    e0, e1, e2 = (int(e) for e in d.policy_epochs)
    m0, m1 = (int(e) for e in d.mixup_epochs)
    return {
        "augment": (e0, e2),
        "mosaic": (e0, min(e1, e2)),
        "mixup": (m0, m1),
        "multiscale": (0, int(d.stop_epoch)) if d.base_size_repeat is not None else (0, 0),
    }


def within(window: Tuple[int, int], epoch):
    """``first <= epoch < end`` for an int or a tensor (the pipeline's epoch)."""
    return (epoch >= window[0]) & (epoch < window[1])


def epoch_policy(d, epoch: int) -> Dict[str, bool]:
    """The switches of ``windows`` in ``epoch``: ``{'augment': True, 'mosaic': False, ...}``."""
    return {name: bool(within(w, epoch)) for name, w in windows(d).items()}


_WORDS = {
    "augment": "photometric distortion, zoom-out and IoU crop",
    "mosaic": "Mosaic (p={mosaic_prob})",
    "mixup": "MixUp (p={mixup_prob})",
    "multiscale": "multi-scale sizes",
}


def changes_at(d, epoch: int, first: bool = False) -> List[str]:
    """The switches that change at the start of ``epoch`` (all of them if ``first``), e.g.
    ``['Mosaic (p=0.5) on', 'MixUp (p=0.5) on']``."""
    now = epoch_policy(d, epoch)
    before = None if first or epoch == 0 else epoch_policy(d, epoch - 1)
    out = []
    for name, on in now.items():
        if before is None or before[name] != on:
            words = _WORDS[name].format(mosaic_prob=d.mosaic_prob, mixup_prob=d.mixup_prob)
            out.append(f"{words} {'on' if on else 'off'}")
    return out
