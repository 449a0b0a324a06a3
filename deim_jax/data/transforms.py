"""The official DEIM training / evaluation transforms as TensorFlow ops (deim_dfine.md §8).

Every function works on one example inside ``tf.data``: ``image`` [H, W, 3] uint8, or float32
holding uint8 values 0..255 (the official pipeline works on PIL uint8 images until
``ConvertPILImage``; we round and clip after every op that PIL would quantize); every op returns
the dtype it was given (examples leave the pipeline's map as uint8; /255 is per batch), ``boxes``
float32 [N, 4] absolute pixel **xyxy**, ``labels`` int32 [N]. Randomness is stateless: every op takes a ``seed``
(int32/int64 [2] tensor) so the same seed gives the same output on any machine or thread.

Official op order (§8.2): Mosaic -> RandomPhotometricDistort (``photometric.py``) ->
RandomZoomOut -> RandomIoUCrop(p=0.8) -> SanitizeBoundingBoxes -> RandomHorizontalFlip ->
Resize(640x640) -> SanitizeBoundingBoxes -> /255 -> normalized cxcywh. Batch ops (MixUp,
multi-scale, §8.5) are in ``batch_ops.py``.

Resize: the official resize is PIL bilinear with antialias; we use
``tf.image.resize(method='bilinear', antialias=True)`` and round to uint8, computed as two 1-D
passes (``_resize_rows``, bit-identical to the 2-D op and 2-3x faster on CPU). Measured against
PIL ``Image.resize(BILINEAR)`` on demo images and 640x480 JPEGs, up- and downscaling to
320/640/1000: max |diff| = 1 grey level (rounding), mean 0.0003..0.15 levels
(tests/test_data_transforms.py::test_resize_close_to_pil asserts max <= 1, mean < 0.3).
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

_f32 = tf.float32


def split_seed(seed, n: int):
    """n independent [2] seeds from one."""
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n))


def uniform(seed, shape=(), lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi, dtype=_f32)


def decode_image(data, dtype=_f32):
    """Encoded bytes -> [H, W, 3] values 0..255 of ``dtype``. Grey/RGBA/palette/16-bit/CMYK -> RGB."""
    img = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    img.set_shape([None, None, 3])
    return tf.cast(img, dtype)


def image_hw(img):
    s = tf.shape(img)
    return s[0], s[1]


def _resize_rows(img, h):
    """Antialiased bilinear resize of axis 0: float32 [H, W, C] -> [h, W, C]. One image column of
    W*C channels, so that the op's costly horizontal pass has width 1."""
    s = tf.shape(img)
    out = tf.image.resize(tf.reshape(img, [1, s[0], 1, s[1] * s[2]]), tf.stack([h, 1]), method="bilinear",
                          antialias=True)
    return tf.reshape(out, [h, s[1], s[2]])


def resize(img, boxes, h, w, transposed: bool = False):
    """Resize to (h, w) ignoring aspect ratio (bilinear + antialias, rounded); boxes scaled.
    ``transposed``: the image comes out as [w, h, C], without the transpose back after the column
    pass (for a consumer that reads it so, as Mosaic's gather does)."""
    ih, iw = image_hw(img)
    out = tf.cast(img, _f32)
    out = tf.cond(h == ih, lambda: out, lambda: _resize_rows(out, h))
    if transposed:
        out = tf.transpose(out, [1, 0, 2])
        out = tf.cond(w == iw, lambda: out, lambda: _resize_rows(out, w))
    else:
        out = tf.cond(w == iw, lambda: out,
                      lambda: tf.transpose(_resize_rows(tf.transpose(out, [1, 0, 2]), w), [1, 0, 2]))
    out = tf.cast(tf.round(out), img.dtype)   # no clip: each output is a convex combination of inputs
    sx = tf.cast(w, _f32) / tf.cast(iw, _f32)
    sy = tf.cast(h, _f32) / tf.cast(ih, _f32)
    return out, boxes * tf.stack([sx, sy, sx, sy])


def resize_short_side(img, boxes, size: int, transposed: bool = False):
    """torchvision ``Resize(size)``: shorter side -> size, longer = int(size * long / short)."""
    ih, iw = image_hw(img)
    fh, fw = tf.cast(ih, _f32), tf.cast(iw, _f32)
    w_short = iw <= ih
    nh = tf.where(w_short, tf.cast(tf.floor(size * fh / fw), tf.int32), size)
    nw = tf.where(w_short, size, tf.cast(tf.floor(size * fw / fh), tf.int32))
    return resize(img, boxes, nh, nw, transposed)


def sanitize(boxes, labels, h, w, min_size: float = 1.0):
    """torchvision ``SanitizeBoundingBoxes(min_size=1)``: drop small / out-of-canvas boxes."""
    fw, fh = tf.cast(w, _f32), tf.cast(h, _f32)
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    keep = (bw >= min_size) & (bh >= min_size) & tf.reduce_all(boxes >= 0, axis=-1)
    keep &= (boxes[:, 0] <= fw) & (boxes[:, 2] <= fw) & (boxes[:, 1] <= fh) & (boxes[:, 3] <= fh)
    return tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)


def hflip(img, boxes, seed, p: float = 0.5):
    """RandomHorizontalFlip(p)."""
    do = uniform(seed) < p
    return mirror_if(img, do), hflip_boxes(boxes, tf.shape(img)[1], do)


def mirror_if(img, do):
    """``img`` mirrored left-right where ``do`` (a bool tensor)."""
    return tf.cond(do, lambda: tf.reverse(img, [1]), lambda: img)


def hflip_boxes(boxes, w, do):
    """The boxes of an image of width ``w`` mirrored left-right where ``do``. Mirroring commutes with
    the photometric ops (per pixel, and contrast's mean is exact in any order) and can be folded into
    Mosaic's gather or a crop window, so the pipeline mirrors images early, on uint8, and boxes here."""
    w = tf.cast(w, _f32)
    flipped = tf.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=-1)
    return tf.where(do, flipped, boxes)


def _zoom_out_placement(h, w, seed, p, side_range):
    """RandomZoomOut's draws for an h x w image: (canvas h, canvas w, top, left); the canvas is
    the image itself (offset 0) when the op does not fire."""
    s = split_seed(seed, 3)
    r = tf.where(uniform(s[0]) < p, uniform(s[1], (), *side_range), 1.0)
    cw = tf.cast(tf.floor(tf.cast(w, _f32) * r), tf.int32)
    ch = tf.cast(tf.floor(tf.cast(h, _f32) * r), tf.int32)
    u = uniform(s[2], (2,))
    left = tf.cast(tf.floor(tf.cast(cw - w, _f32) * u[0]), tf.int32)
    top = tf.cast(tf.floor(tf.cast(ch - h, _f32) * u[1]), tf.int32)
    return ch, cw, top, left


def _canvas_window(img, top, left, y0, x0, y1, x1, fill):
    """Rows y0:y1, columns x0:x1 of a ``fill`` canvas holding ``img`` at (top, left)."""
    h, w = image_hw(img)
    a0, b0 = tf.clip_by_value(y0 - top, 0, h), tf.clip_by_value(x0 - left, 0, w)
    a1, b1 = tf.clip_by_value(y1 - top, a0, h), tf.clip_by_value(x1 - left, b0, w)
    part = img[a0:a1, b0:b1]
    pt = tf.clip_by_value(a0 + top - y0, 0, y1 - y0)  # clipped: a window beside the image is all fill
    pl = tf.clip_by_value(b0 + left - x0, 0, x1 - x0)
    return tf.pad(part, [[pt, y1 - y0 - pt - (a1 - a0)], [pl, x1 - x0 - pl - (b1 - b0)], [0, 0]],
                  constant_values=tf.cast(fill, img.dtype))


def zoom_out(img, boxes, seed, p: float = 0.5, side_range=(1.0, 4.0), fill: float = 0.0):
    """RandomZoomOut: canvas int(W r) x int(H r), r ~ U(side_range), image at a random offset."""
    ch, cw, top, left = _zoom_out_placement(*image_hw(img), seed, p, side_range)
    off = tf.cast(tf.stack([left, top, left, top]), _f32)
    return _canvas_window(img, top, left, 0, 0, ch, cw, fill), boxes + off


def zoom_out_iou_crop(img, boxes, labels, zoom_seed, crop_seed, p: float = 0.5, side_range=(1.0, 4.0),
                      fill: float = 0.0, mirrored=False):
    """``iou_crop(*zoom_out(img, boxes, zoom_seed), labels, crop_seed)``, identical output, without
    building the zoomed-out canvas (up to 4x4 times the image): only the crop window is made.
    ``mirrored`` (bool tensor): ``img`` is the mirror image of the one ``boxes`` describe; the window
    is then cut mirrored (the output is the mirror image of the plain one; boxes are not mirrored)."""
    h, w = image_hw(img)
    ch, cw, top, left = _zoom_out_placement(h, w, zoom_seed, p, side_range)
    boxes = boxes + tf.cast(tf.stack([left, top, left, top]), _f32)
    use, crop, keep = _iou_crop_choice(ch, cw, boxes, crop_seed)
    x0, y0, x1, y1 = tf.unstack(tf.where(use, tf.cast(crop, tf.int32), tf.stack([0, 0, cw, ch])))
    mirrored = tf.convert_to_tensor(mirrored)
    left, x0, x1 = (tf.where(mirrored, cw - left - w, left), tf.where(mirrored, cw - x1, x0),
                    tf.where(mirrored, cw - x0, x1))
    out = _canvas_window(img, top, left, y0, x0, y1, x1, fill)
    boxes, labels = tf.cond(use, lambda: _crop_boxes(boxes, labels, crop, keep), lambda: (boxes, labels))
    return out, boxes, labels


def box_iou_one(boxes, crops):
    """IoU [C, N] between crops [C, 4] and boxes [N, 4] (xyxy)."""
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_c = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
    lt = tf.maximum(crops[:, None, :2], boxes[None, :, :2])
    rb = tf.minimum(crops[:, None, 2:], boxes[None, :, 2:])
    wh = tf.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_c[:, None] + area_b[None, :] - inter)


def iou_crop(img, boxes, labels, seed, p: float = 0.8, min_scale=0.3, max_scale=1.0,
             min_aspect=0.5, max_aspect=2.0,
             options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0), trials: int = 40,
             rounds: int = 8):
    """RandomApply(RandomIoUCrop, p). torchvision's ``while True`` over option draws is bounded
    to ``rounds`` draws of ``trials`` candidates each, evaluated at once; the first accepted
    candidate in (round, trial) order wins, an option 1.0 or no accepted candidate keeps the
    image. Boxes whose centre is outside the crop are removed; the others are clipped."""
    h, w = image_hw(img)
    use, crop, keep = _iou_crop_choice(h, w, boxes, seed, p, min_scale, max_scale, min_aspect, max_aspect,
                                       options, trials, rounds)

    def apply():
        l, tp, rr, bb = [tf.cast(v, tf.int32) for v in tf.unstack(crop)]
        return (img[tp:bb, l:rr, :], *_crop_boxes(boxes, labels, crop, keep))

    return tf.cond(use, apply, lambda: (img, boxes, labels))


def _crop_boxes(boxes, labels, crop, keep):
    """Boxes (and labels) kept by an IoU crop, shifted into the crop [x0, y0, x1, y1] and clipped."""
    b = tf.boolean_mask(boxes, keep) - tf.stack([crop[0], crop[1], crop[0], crop[1]])
    cw, chh = crop[2] - crop[0], crop[3] - crop[1]
    b = tf.minimum(tf.maximum(b, 0.0), tf.stack([cw, chh, cw, chh]))
    return b, tf.boolean_mask(labels, keep)


def _iou_crop_choice(h, w, boxes, seed, p: float = 0.8, min_scale=0.3, max_scale=1.0, min_aspect=0.5,
                     max_aspect=2.0, options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
                     trials: int = 40, rounds: int = 8):
    """RandomIoUCrop's draws on an h x w canvas: (crop or not, crop xyxy [4] float, kept boxes [N] bool)."""
    s = split_seed(seed, 5)
    fh, fw = tf.cast(h, _f32), tf.cast(w, _f32)
    opts = tf.constant(options, _f32)
    opt = tf.gather(opts, tf.random.stateless_uniform([rounds], s[1], 0, len(options), tf.int32))
    r = uniform(s[2], (rounds, trials, 2), 0.0, 1.0)
    r = min_scale + (max_scale - min_scale) * r
    new_w = tf.floor(fw * r[..., 0])
    new_h = tf.floor(fh * r[..., 1])
    aspect = new_w / tf.maximum(new_h, 1.0)
    u = uniform(s[3], (rounds, trials, 2))
    left = tf.floor((fw - new_w) * u[..., 0])
    top = tf.floor((fh - new_h) * u[..., 1])
    right, bottom = left + new_w, top + new_h
    ok = (aspect >= min_aspect) & (aspect <= max_aspect) & (new_w > 0) & (new_h > 0)
    crops = tf.reshape(tf.stack([left, top, right, bottom], -1), [-1, 4])
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
    within = ((crops[:, 0:1] < cx[None]) & (cx[None] < crops[:, 2:3]) &
              (crops[:, 1:2] < cy[None]) & (cy[None] < crops[:, 3:4]))          # [C, N]
    iou = box_iou_one(boxes, crops)
    max_iou = tf.reduce_max(tf.concat([iou, tf.fill([tf.shape(crops)[0], 1], -1.0)], 1), axis=1)
    ok = tf.reshape(ok, [-1]) & tf.reduce_any(within, axis=1)
    ok = tf.reshape(ok & (max_iou >= tf.repeat(opt, trials)), [rounds, trials])
    row_done = (opt >= 1.0) | tf.reduce_any(ok, axis=1)
    first_row = tf.argmax(tf.cast(row_done, tf.int32), output_type=tf.int32)
    use = tf.reduce_any(row_done) & (tf.gather(opt, first_row) < 1.0) & (uniform(s[0]) < p)
    t = tf.argmax(tf.cast(ok[first_row], tf.int32), output_type=tf.int32)
    k = first_row * trials + t
    return use, tf.gather(crops, k), tf.gather(within, k)


def affine_matrix(angle_deg, tx, ty, scale, w, h):
    """Forward 2x3 map p' = s R (p - c) + c + t in continuous pixel coordinates, c = (w/2, h/2)."""
    a = angle_deg * (math.pi / 180.0)
    cos, sin = tf.cos(a) * scale, tf.sin(a) * scale
    cx, cy = w / 2.0, h / 2.0
    return tf.stack([[cos, -sin, cx + tx - cos * cx + sin * cy],
                     [sin, cos, cy + ty - sin * cx - cos * cy]])


def _nearest_affine(img, lin, off, fill, mirror=False, transposed: bool = False):
    """out[y, x] = img[round(lin @ (x, y) + off)] (half away from zero), ``fill`` outside: the
    arithmetic of TensorFlow's ImageProjectiveTransform (NEAREST, CONSTANT) as one gather.
    With t = v + 0.5, round(v) is inside [0, n) exactly when 0 < t < n, and is then trunc(t).
    ``mirror`` (bool tensor): output columns in reverse order (the output mirrored, at no cost).
    ``transposed``: ``img`` is given as [W, H, C] (the output is [H, W, C] all the same)."""
    h, w = image_hw(img)[::-1] if transposed else image_hw(img)
    xs = tf.range(w)
    xs = tf.cast(tf.where(mirror, w - 1 - xs, xs), _f32)[None, :]
    ys = tf.cast(tf.range(h), _f32)[:, None]

    def shifted(row):           # v + 0.5 on the [h, w] grid, v summed in the kernel's order
        return (lin[row, 0] * xs + lin[row, 1] * ys) + off[row] + 0.5

    tx, ty = shifted(0), shifted(1)
    inside = (tx > 0) & (tx < tf.cast(w, _f32)) & (ty > 0) & (ty < tf.cast(h, _f32))
    flat = tf.concat([tf.reshape(img, [-1, 3]), tf.fill([1, 3], tf.cast(fill, img.dtype))], 0)
    ty, tx = tf.cast(ty, tf.int32), tf.cast(tx, tf.int32)
    index = tx * h + ty if transposed else ty * w + tx
    return tf.gather(flat, tf.where(inside, index, h * w))


def random_affine(img, boxes, seed, degrees=10.0, translate=(0.1, 0.1), scale=(0.5, 1.5),
                  fill: float = 0.0, mirror=False, transposed: bool = False):
    """torchvision RandomAffine (nearest, fill 0, centre = canvas centre) on image and boxes:
    box corners are mapped, enclosed and clamped to the (unchanged) canvas. ``mirror``: the image
    comes out mirrored left-right (boxes do not). ``transposed``: ``img`` is given as [W, H, C]."""
    s = split_seed(seed, 4)
    h, w = image_hw(img)[::-1] if transposed else image_hw(img)
    fh, fw = tf.cast(h, _f32), tf.cast(w, _f32)
    angle = uniform(s[0], (), -degrees, degrees)
    tx = tf.round(uniform(s[1], (), -translate[0] * fw, translate[0] * fw))
    ty = tf.round(uniform(s[2], (), -translate[1] * fh, translate[1] * fh))
    sc = uniform(s[3], (), *scale)
    m = affine_matrix(angle, tx, ty, sc, fw, fh)
    lin = m[:, :2]
    inv = tf.linalg.inv(lin)
    # output index (x, y) has continuous centre (x+.5, y+.5); input index = continuous - .5
    off = tf.linalg.matvec(inv, tf.constant([0.5, 0.5]) - m[:, 2]) - 0.5
    out = _nearest_affine(img, inv, off, fill, mirror, transposed)
    corners = tf.stack([tf.stack([boxes[:, 0], boxes[:, 1]], -1), tf.stack([boxes[:, 2], boxes[:, 1]], -1),
                        tf.stack([boxes[:, 0], boxes[:, 3]], -1), tf.stack([boxes[:, 2], boxes[:, 3]], -1)], 1)
    pc = tf.einsum("ij,nkj->nki", lin, corners) + m[:, 2]
    lo = tf.reduce_min(pc, axis=1)
    hi = tf.reduce_max(pc, axis=1)
    b = tf.concat([lo, hi], -1)
    b = tf.minimum(tf.maximum(b, 0.0), tf.stack([fw, fh, fw, fh]))
    return out, b


def mosaic(imgs, boxes_list, labels_list, seed, size: int = 320, **affine_kw):
    """Mosaic of 4 (image, boxes, labels): each resized (short side -> size), pasted at
    (0,0), (max_w,0), (0,max_h), (max_w,max_h) of a black 2max_h x 2max_w canvas, then
    RandomAffine (``mirror=`` in ``affine_kw`` mirrors the image). Returns (image, boxes, labels).
    The cells and the canvas are built transposed ([w, h, C]; the affine gather reads them so),
    which saves each cell's transpose back."""
    rs = [resize_short_side(im, b, size, transposed=True) for im, b in zip(imgs, boxes_list)]
    ws = tf.stack([tf.shape(r[0])[0] for r in rs])
    hs = tf.stack([tf.shape(r[0])[1] for r in rs])
    mh, mw = tf.reduce_max(hs), tf.reduce_max(ws)
    cells, out_boxes = [], []
    for k, (im, b) in enumerate(rs):
        ox, oy = (k % 2) * mw, (k // 2) * mh
        cells.append(tf.pad(im, [[0, mw - tf.shape(im)[0]], [0, mh - tf.shape(im)[1]], [0, 0]]))
        out_boxes.append(b + tf.cast(tf.stack([ox, oy, ox, oy]), _f32))
    canvas_t = tf.concat([tf.concat(cells[0::2], 1), tf.concat(cells[1::2], 1)], 0)   # [2mw, 2mh, C]
    boxes = tf.concat(out_boxes, 0)
    labels = tf.concat(list(labels_list), 0)
    img, boxes = random_affine(canvas_t, boxes, seed, transposed=True, **affine_kw)
    return img, boxes, labels


def to_padded_cxcywh(boxes, labels, h, w, max_boxes: int):
    """Absolute xyxy -> normalized cxcywh padded to max_boxes; returns
    (boxes [M,4], labels [M], mask [M], num_dropped)."""
    fw, fh = tf.cast(w, _f32), tf.cast(h, _f32)
    n = tf.shape(boxes)[0]
    keep = tf.minimum(n, max_boxes)
    b = boxes[:keep] / tf.stack([fw, fh, fw, fh])
    b = tf.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)
    pad = max_boxes - keep
    b = tf.pad(b, [[0, pad], [0, 0]])
    l = tf.pad(tf.cast(labels[:keep], tf.int32), [[0, pad]])
    m = tf.range(max_boxes) < keep
    b.set_shape([max_boxes, 4])
    l.set_shape([max_boxes])
    return b, l, m, n - keep
