"""What the detector is pointed at: image files, folders, glob patterns and videos, read as RGB.

``expand_inputs(spec)`` -> ``[Source]`` (``kind`` 'image' or 'video', ``path``), in a stable
order. ``read_rgb(path)`` -> ``[H, W, 3]`` uint8 of any image PIL opens: EXIF orientation applied,
greyscale and palette images expanded, RGBA/LA composited on white, 16-bit and 32-bit integer or
float images scaled to 8 bits. ``to_model_input(rgb, size)`` resizes as the official evaluation
does (PIL bilinear to ``size`` = (H, W), no letterbox) into float32 in [0, 1].
Videos (``video_frames``, ``VideoWriter``) need PyAV, the ``video`` extra.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Iterator, List, Tuple

import numpy as np
from PIL import Image, ImageOps

from deim_jax.data.image_files import is_image
from deim_jax.errors import MissingDataError, UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # 'image' or 'video'
    path: str


def is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _source(path: str) -> Source:
    return Source("video" if is_video(path) else "image", path)


def expand_inputs(spec: str, flag: str = "--input") -> List[Source]:
    """The images and videos named by ``spec``: a file, a folder (searched recursively, sorted by
    path) or a glob pattern (``**`` recursive). A ``MissingDataError`` naming ``flag`` if none."""
    if os.path.isfile(spec):
        return [_source(spec)]
    if os.path.isdir(spec):
        paths = [os.path.join(d, f) for d, _, files in os.walk(spec) for f in files]
        found = sorted(p for p in paths if is_image(p) or is_video(p))
        if not found:
            raise MissingDataError(f"{flag}={spec}: no image or video files in this folder")
        return [_source(p) for p in found]
    if glob.has_magic(spec):
        found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            raise MissingDataError(f"{flag}={spec}: the pattern matches no file")
        return [_source(p) for p in found]
    raise MissingDataError(f"{flag}={spec}: no such file or folder")


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """An integer or float array of any range to uint8 (16-bit: the high byte; float: [0, 1])."""
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    top = 65535 if a.max(initial=0) > 255 else 255  # PIL's 'I' mode holds 16-bit PNGs as int32
    return np.clip(a.astype(np.float64) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def read_rgb(path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image file, as it is displayed (see the module docstring).
    Raises ``OSError``/``ValueError`` (PIL's) for a file that is not a readable image."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            grey = _to_uint8(np.asarray(im))
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(im.convert("RGB"))


def to_model_input(rgb: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``rgb`` [h, w, 3] uint8 -> [H, W, 3] float32 in [0, 1] at ``size`` = (H, W), PIL bilinear."""
    im = Image.fromarray(rgb).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return np.asarray(im, np.float32) / 255.0


def _av():
    try:
        import av
    except ImportError:
        raise UserError("reading or writing videos needs PyAV: pip install -e '.[video]'") from None
    return av


def video_info(path: str) -> Tuple[float, int]:
    """(frames per second, number of frames or 0 if the container does not say) of a video."""
    av = _av()
    with av.open(path) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or 25), int(stream.frames or 0)


def video_frames(path: str) -> Iterator[np.ndarray]:
    """The frames of a video file as ``[H, W, 3]`` uint8 RGB."""
    av = _av()
    with av.open(path) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


class VideoWriter:
    """Writes RGB uint8 frames into an H.264 (or MPEG-4 part 2, where no H.264 encoder is built
    in) video at ``fps``; the size is the first frame's, rounded down to even numbers."""

    def __init__(self, path: str, fps: float):
        self._av = _av()
        self.path, self.fps = path, fps
        self._container = self._av.open(path, mode="w")
        self._stream = None

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
        if self._stream is None:
            from fractions import Fraction

            rate = Fraction(self.fps).limit_denominator(1000)
            for codec in ("libx264", "h264", "mpeg4"):
                try:
                    self._stream = self._container.add_stream(codec, rate=rate)
                    break
                except Exception:  # this PyAV build has no such encoder
                    continue
            self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, "yuv420p"
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
