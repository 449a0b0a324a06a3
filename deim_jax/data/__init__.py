"""Dense O2O input pipeline (tf.data): COCO-format folders, demo set, train/eval iterators."""

from deim_jax.data.coco import CocoRecords, load_coco, MSCOCO_LABEL2CATEGORY, MSCOCO_CATEGORY2LABEL
from deim_jax.data.pipeline import (TrainIterator, build_eval_dataset, build_eval_iterator,
                                    build_train_iterator, global_batch, steps_per_epoch)
from deim_jax.data.sources import load_split

__all__ = ["CocoRecords", "load_coco", "MSCOCO_LABEL2CATEGORY", "MSCOCO_CATEGORY2LABEL",
           "TrainIterator",
           "build_eval_dataset", "build_eval_iterator", "build_train_iterator", "global_batch",
           "load_split", "steps_per_epoch"]
