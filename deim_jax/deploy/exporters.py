"""The detector (``deim_jax.deploy.detector``) with its weights, written as a self-contained
artifact, and run back from it in its own runtime.

Every artifact computes ``(images [B, H, W, 3], orig_target_sizes [B, 2]) -> labels [B, K] int32,
boxes [B, K, 4] float32 (xyxy pixels of the original image), scores [B, K] float32``; ``B`` is
fixed or, with ``batch=None``, symbolic ("dynamic"); H, W are the export size.

* ``stablehlo``: ``jax.export`` serialized bytes (``.stablehlo``), weights inside; runs on any
  JAX backend it was exported for (``platforms``).
* ``savedmodel``: a TF SavedModel (``jax2tf``, native serialization) with the weights as TF
  variables and a ``serving_default`` signature taking and returning those names.
* ``onnx``: ONNX opset 18 (``jax2onnx``, the ``onnx`` extra), inputs ``images`` and
  ``orig_target_sizes``, outputs ``labels``, ``boxes``, ``scores``; a dynamic batch is the
  symbolic dimension ``B``.

``run(path, fmt, images, sizes)`` runs an artifact with ``jax.export.deserialize``, TensorFlow or
onnxruntime, returning numpy ``{'labels', 'boxes', 'scores'}``; ``check_artifact`` compares that
with the jitted model on a random batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from deim_jax.deploy.detector import OUTPUT_NAMES, make_detect
from deim_jax.errors import UserError
from deim_jax.models import layers

FORMATS = ("stablehlo", "savedmodel", "onnx")
INPUT_NAMES = ("images", "orig_target_sizes")
ONNX_OPSET = 18  # ReduceMean with axes as an input; TensorRT 8.6+ reads it


def _specs(size: Tuple[int, int], batch: Optional[int], input_dtype, symbol: str = "B"):
    (b,) = jax.export.symbolic_shape(symbol) if batch is None else (batch,)
    return (jax.ShapeDtypeStruct((b, int(size[0]), int(size[1]), 3), jnp.dtype(input_dtype)),
            jax.ShapeDtypeStruct((b, 2), jnp.float32))


def _as_tuple(detect: Callable, variables) -> Callable:
    """``(images, sizes) -> (labels, boxes, scores)`` with ``variables`` closed over."""

    def fn(images, sizes):
        out = detect(variables, images, sizes)
        return tuple(out[k] for k in OUTPUT_NAMES)

    return fn


def export_stablehlo(detect, variables, path: str, size, batch: Optional[int], input_dtype,
                     platforms: Sequence[str] = ("cpu", "cuda")) -> None:
    exported = jax.export.export(jax.jit(_as_tuple(detect, variables)), platforms=tuple(platforms))(
        *_specs(size, batch, input_dtype))
    with open(path, "wb") as f:
        f.write(exported.serialize())


@contextlib.contextmanager
def _stablehlo_for_tensorflow():
    """jax 0.10 writes StableHLO for readers at most 4 weeks older (1.15), TF 2.21 reads 1.13.7:
    while a SavedModel is traced, serialize for the 12-week window instead (jax has no public
    switch; ``tests/test_deploy.py`` runs the result in TF, so a jax upgrade that breaks this shows)."""
    from jax._src.export import _export

    original = _export._module_to_bytecode

    def twelve_weeks(module):
        hlo = _export.hlo
        target = hlo.get_version_from_compatibility_requirement(hlo.StablehloCompatibilityRequirement.WEEK_12)
        return _export._jax.mlir.serialize_portable_artifact(module, target, _export.xb.get_backend().serialize_with_sdy)

    _export._module_to_bytecode = twelve_weeks
    try:
        yield
    finally:
        _export._module_to_bytecode = original


def export_savedmodel(detect, variables, path: str, size, batch: Optional[int], input_dtype) -> None:
    import tensorflow as tf
    from jax.experimental import jax2tf

    h, w = int(size[0]), int(size[1])
    b = "b" if batch is None else str(batch)
    converted = jax2tf.convert(lambda v, x, s: dict(zip(OUTPUT_NAMES, _as_tuple(detect, v)(x, s))),
                               polymorphic_shapes=[None, f"({b}, {h}, {w}, 3)", f"({b}, 2)"], with_gradient=False)
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), variables)
    tf_batch = None if batch is None else batch

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec((tf_batch, h, w, 3), tf.as_dtype(np.dtype(input_dtype)), name=INPUT_NAMES[0]),
        tf.TensorSpec((tf_batch, 2), tf.float32, name=INPUT_NAMES[1])])
    def serve(images, orig_target_sizes):
        return converted(module.variables_tree, images, orig_target_sizes)

    module.serve = serve
    with _stablehlo_for_tensorflow():
        tf.saved_model.save(module, path, signatures={"serving_default": serve})


def export_onnx(detect, variables, path: str, size, batch: Optional[int], input_dtype) -> None:
    try:
        import onnx
        from jax2onnx import to_onnx
    except ImportError:
        raise UserError("--format=onnx needs jax2onnx and onnx: scripts/setup.sh with the onnx extra "
                        "(see pyproject.toml)") from None
    for noisy in ("jax2onnx", "onnx_ir"):  # plugin trees for libraries not installed; untyped shape notes
        logging.getLogger(noisy).setLevel(logging.ERROR)
    b, (h, w) = batch or "B", (int(size[0]), int(size[1]))  # jax2onnx names its symbolic dimensions itself
    specs = [jax.ShapeDtypeStruct((b, h, w, 3), jnp.dtype(input_dtype)), jax.ShapeDtypeStruct((b, 2), jnp.float32)]
    model = to_onnx(_as_tuple(detect, variables), specs,
                    model_name="deim_jax_detector", opset=ONNX_OPSET, input_names=list(INPUT_NAMES),
                    output_names=list(OUTPUT_NAMES), return_mode="proto")
    onnx.save(model, path)


WRITERS = {"stablehlo": export_stablehlo, "savedmodel": export_savedmodel, "onnx": export_onnx}


def export(cfg, variables, fmt: str, path: str, size=None, batch: Optional[int] = 1,
           input_dtype="float32") -> str:
    """Write ``cfg``'s detector with ``variables`` as ``fmt`` at ``path`` (module docstring); returns ``path``."""
    if fmt not in WRITERS:
        raise UserError(f"--format={fmt}: not one of {', '.join(FORMATS)}")
    size = tuple(size or cfg.eval_spatial_size)
    detect = make_detect(cfg, size=size)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with layers.portable_ops():   # the artifact runs outside this process: no native kernels
        WRITERS[fmt](detect, variables, path, size, batch, input_dtype)
    return path


def run(path: str, fmt: str, images: np.ndarray, sizes: np.ndarray) -> Dict[str, np.ndarray]:
    """The outputs of the artifact at ``path`` for ``images`` [B, H, W, 3], ``sizes`` [B, 2] (w, h)."""
    sizes = np.asarray(sizes, np.float32)
    if fmt == "stablehlo":
        with open(path, "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        out = exported.call(images, sizes)
    elif fmt == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        res = serve(images=tf.constant(images), orig_target_sizes=tf.constant(sizes))
        out = [res[k] for k in OUTPUT_NAMES]
    elif fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        out = session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: images, INPUT_NAMES[1]: sizes})
    else:
        raise UserError(f"format {fmt!r}: not one of {', '.join(FORMATS)}")
    return {k: np.asarray(v) for k, v in zip(OUTPUT_NAMES, out)}


def untied(scores: np.ndarray, tie: float = 1e-6) -> np.ndarray:
    """[B, K] bool: the detections whose score differs by more than ``tie`` from every other score
    of the image. Equal scores (common with untrained weights) may come in either order, and at
    the K-th place either query may be kept, so only these are comparable one by one."""
    s = np.asarray(scores, np.float64)
    gaps = np.where(np.eye(s.shape[1], dtype=bool), np.inf, np.abs(s[:, :, None] - s[:, None, :]))
    return gaps.min(-1) > tie


def compare(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray], tie: float = 1e-6) -> Dict[str, float]:
    """Largest differences of two detector outputs over the untied detections of ``want``:
    ``scores``, ``boxes`` (pixels), ``labels`` (the fraction that differ), ``compared`` (their share)."""
    mask = untied(want["scores"], tie)
    diff = lambda k: np.abs(np.asarray(got[k], np.float64) - np.asarray(want[k], np.float64))  # noqa: E731
    return {"scores": float(diff("scores")[mask].max(initial=0)),
            "boxes": float(diff("boxes")[mask].max(initial=0)),
            "labels": float(np.mean(np.asarray(got["labels"])[mask] != np.asarray(want["labels"])[mask])),
            "compared": float(mask.mean())}


def check_artifact(cfg, variables, path: str, fmt: str, size, batch, input_dtype: str) -> Dict[str, float]:
    """``compare`` of the artifact with the jitted model on a random batch (``batch`` or 2 images)."""
    rng = np.random.default_rng(0)
    n = batch or 2
    images = rng.random((n, size[0], size[1], 3), np.float32)
    if input_dtype == "uint8":
        images = (images * 255).astype(np.uint8)
    sizes = np.tile(np.array([[640, 480]], np.float32), (n, 1))
    want = jax.jit(make_detect(cfg, size=size))(variables, images, sizes)
    got = run(path, fmt, images, sizes)
    return compare(got, {k: np.asarray(v) for k, v in want.items()})
