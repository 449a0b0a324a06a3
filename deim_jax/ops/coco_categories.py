"""The COCO category table: the 80 ids (1..90 with gaps) <-> contiguous labels 0..79, and their names."""

from __future__ import annotations

import numpy as np

# ascending: contiguous label i -> MSCOCO_CATEGORY_IDS[i]
MSCOCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)
MSCOCO_LABEL2CATEGORY = {i: c for i, c in enumerate(MSCOCO_CATEGORY_IDS)}
MSCOCO_CATEGORY2LABEL = {c: i for i, c in enumerate(MSCOCO_CATEGORY_IDS)}
# contiguous label i -> the name of category MSCOCO_CATEGORY_IDS[i] (instances_*2017.json)
MSCOCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def label_to_category(labels):
    """Contiguous labels 0..79 (any int array, numpy or jax) -> COCO category ids."""
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(MSCOCO_CATEGORY_IDS, np.int32))[labels]


def category_to_label(categories):
    """COCO category ids (numpy ints) -> contiguous labels; unknown ids give -1."""
    table = np.full(max(MSCOCO_CATEGORY_IDS) + 1, -1, np.int64)
    table[list(MSCOCO_CATEGORY_IDS)] = np.arange(len(MSCOCO_CATEGORY_IDS))
    return table[np.asarray(categories)]
