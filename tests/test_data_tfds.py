"""TFDS source: fails fast when not prepared; TFDS-style examples export to the COCO format."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deim_jax import configs, data
from deim_jax.data import coco, tfds_source


def test_unprepared_tfds_fails_fast_with_clear_message(tmp_path):
    defaults = configs.module("defaults")
    c = defaults.run("test", "deim", epochs=1, batch_size=2)
    c.data = defaults.tfds_data(c, "coco/2017", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not prepared.*never starts a download"):
        data.load_split(c.data, "train")


def test_export_tfds_examples(tmp_path):
    def jpeg(w, h):
        b = io.BytesIO()
        Image.new("RGB", (w, h), (10, 200, 30)).save(b, "JPEG")
        return b.getvalue()

    ex = [{"image": jpeg(40, 20), "image/id": np.int64(7),
           "objects": {"bbox": np.array([[0.5, 0.25, 1.0, 0.5]], np.float32),
                       "label": np.array([79], np.int64), "is_crowd": np.array([False])}},
          {"image": jpeg(30, 30), "image/id": np.int64(3),
           "objects": {"bbox": np.zeros([0, 4], np.float32), "label": np.zeros([0], np.int64),
                       "is_crowd": np.zeros([0], bool)}}]
    ds = tf.data.Dataset.from_generator(lambda: iter(ex), output_signature={
        "image": tf.TensorSpec([], tf.string), "image/id": tf.TensorSpec([], tf.int64),
        "objects": {"bbox": tf.TensorSpec([None, 4], tf.float32), "label": tf.TensorSpec([None], tf.int64),
                    "is_crowd": tf.TensorSpec([None], tf.bool)}})
    names = [f"c{i}" for i in range(80)]
    img_dir, ann = tfds_source.export_examples(ds, str(tmp_path), "train", names, coco_ids=True)
    r = coco.load_coco(img_dir, ann, 80, remap_mscoco_category=True)
    assert r.image_ids.tolist() == [3, 7]
    np.testing.assert_allclose(r.boxes_of(1)[0], [[10, 10, 20, 20]], atol=1e-4)
    assert r.boxes_of(1)[1].tolist() == [79] and r.label_to_category[79] == 90
    assert r.widths.tolist() == [30, 40] and r.heights.tolist() == [30, 20]
