"""An image → the model's input, in numpy only, as the build preprocessed it.

The resize is OpenCV's ``INTER_LINEAR`` for uint8 images reproduced in integer arithmetic (11-bit
fixed-point weights, its rounding, the 2× area shortcut), so a frame preprocessed here equals
the host's ``cv2.resize`` byte for byte (tested against OpenCV on many sizes).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

_BITS = 11
_ONE = 1 << _BITS


def _weights(src: int, dst: int, columns: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices and their fixed-point weights. Beyond a
    border OpenCV takes the edge column with weight 1, but keeps a row's weights and repeats
    the edge row (which rounds differently)."""
    scale = 1.0 / (dst / src)  # as OpenCV computes it (1 / inv_scale)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    if columns:
        low = i0 < 0
        frac[low], i0[low] = 0, 0
        high = i0 >= src - 1
        frac[high], i0[high] = 0, src - 1
    w0 = np.rint((np.float32(1) - frac) * np.float32(_ONE)).astype(np.int32)
    w1 = np.rint(frac * np.float32(_ONE)).astype(np.int32)
    i1 = np.clip(i0 + 1, 0, src - 1)
    return np.clip(i0, 0, src - 1), i1, np.stack([w0, w1])


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """``cv2.resize(img, (w, h))`` (bilinear) for a uint8 HxW or HxWxC image."""
    img = np.asarray(img)
    ih, iw = img.shape[:2]
    if (ih, iw) == (h, w):
        return img.copy()
    if ih == 2 * h and iw == 2 * w:  # OpenCV takes INTER_AREA here: the mean of 2x2 pixels
        s = img.astype(np.int32)
        q = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
        return ((q + 2) >> 2).astype(np.uint8)
    x0, x1, wx = _weights(iw, w, columns=True)
    y0, y1, wy = _weights(ih, h, columns=False)
    s = img.astype(np.int32)  # every product below fits: 255·2048·2 and 2048·(2^20 >> 4)
    extra = (None,) * (img.ndim - 2)
    ax0, ax1 = wx[0][(slice(None),) + extra], wx[1][(slice(None),) + extra]
    # horizontal pass: row values scaled by 2^11 (OpenCV's int buffer)
    rows = s[:, x0] * ax0 + s[:, x1] * ax1
    b0 = wy[0][(slice(None), None) + extra]
    b1 = wy[1][(slice(None), None) + extra]
    r0, r1 = rows[y0], rows[y1]
    # vertical pass, OpenCV's VResizeLinear<uchar> rounding
    out = (((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def fit(
    img: np.ndarray,
    mode: str,
    h: int,
    w: int,
    pad_value: float = 0,
    resizer: Optional[Callable[[np.ndarray, int, int], np.ndarray]] = None,
) -> Tuple[np.ndarray, Dict[str, float]]:
    """Resize as the recipe's ``resize_mode`` says (``stretch``, ``letterbox``, ``text_line``,
    ``short_side``) to (h, w), as tpu_mlir's preprocessing does; also how the image maps into it
    (scale, offsets) for boxes. ``resizer(img, w, h)``: `resize` unless given (the host
    passes OpenCV's, which gives the same bytes)."""
    resize_to = resizer or resize
    ih, iw = img.shape[:2]
    if mode == "stretch":
        return resize_to(img, w, h), {"sx": w / iw, "sy": h / ih, "dx": 0.0, "dy": 0.0}
    if mode in ("letterbox", "text_line"):
        s = min(w / iw, h / ih)
        rw, rh = int(iw * s), int(ih * s)
        r = resize_to(img, rw, rh)
        out = np.full((h, w) + img.shape[2:], pad_value, dtype=img.dtype)
        y, x = ((h - rh) // 2, (w - rw) // 2) if mode == "letterbox" else (0, 0)
        out[y : y + rh, x : x + rw] = r
        return out, {"sx": rw / iw, "sy": rh / ih, "dx": float(x), "dy": float(y)}
    if mode != "short_side":
        raise ValueError(f"unknown resize mode {mode!r}")
    s = max(w / iw, h / ih)
    rw = int(iw * s) if iw * s >= w else w
    rh = int(ih * s) if ih * s >= h else h
    r = resize_to(img, rw, rh)
    y, x = max((rh - h) // 2, 0), max((rw - w) // 2, 0)
    return r[y : y + h, x : x + w], {"sx": rw / iw, "sy": rh / ih, "dx": -x, "dy": -y}


def center_crop(x: np.ndarray, ch: int, cw: int) -> Tuple[np.ndarray, int, int]:
    """Crop the last two axes to (ch, cw) around the centre; the offsets taken."""
    ih, iw = x.shape[-2:]
    if (ih, iw) == (ch, cw):
        return x, 0, 0
    y0, x0 = ih // 2 - ch // 2, iw // 2 - cw // 2
    return x[..., y0 : y0 + ch, x0 : x0 + cw], y0, x0


def gray_of_bgr(bgr: np.ndarray) -> np.ndarray:
    """OpenCV's BGR → gray (``COLOR_BGR2GRAY``: 15-bit fixed point, rounded)."""
    b, g, r = (bgr[..., i].astype(np.int32) for i in range(3))
    return ((b * 3735 + g * 19235 + r * 9798 + (1 << 14)) >> 15).astype(np.uint8)


def tensor(
    bgr: np.ndarray,
    shape: Sequence[int],
    resize_hw: Sequence[int],
    mode: str,
    pad_value: float,
    mean: Sequence[float],
    scale: Sequence[float],
    pixel_format: str,
) -> Tuple[np.ndarray, Dict[str, float]]:
    """A BGR (or gray) uint8 image → the float32 NCHW input: resize, centre crop, channel
    order, ``(pixel - mean) * scale`` in tpu_mlir's pixel units (the ``mean``/``scale`` the
    build gave the compiler), the batch filled with copies."""
    gray = shape[1] == 1
    if gray and bgr.ndim == 3:
        bgr = gray_of_bgr(bgr)
    img, place = fit(bgr, mode, int(resize_hw[0]), int(resize_hw[1]), pad_value)
    x = img[None] if gray else img.transpose(2, 0, 1)
    x, y0, x0 = center_crop(x[None], int(shape[2]), int(shape[3]))
    place["dx"] -= x0
    place["dy"] -= y0
    x = x.astype(np.float32)
    m = np.asarray(mean, np.float32)[None, : shape[1], None, None]
    s = np.asarray(scale, np.float32)[None, : shape[1], None, None]
    if not gray and pixel_format == "rgb":
        x = x[:, [2, 1, 0]]
    x = (x - m) * s
    return np.repeat(x, int(shape[0]), axis=0).astype(np.float32), place


def frame(
    bgr: np.ndarray,
    shape: Sequence[int],
    resize_hw: Sequence[int],
    mode: str,
    pad_value: float,
    pixel_format: str,
) -> Tuple[np.ndarray, Dict[str, float]]:
    """A BGR uint8 image → the uint8 input of a fused-preprocess model in ``pixel_format``
    (``RGB_PLANAR``, ``BGR_PACKED``, ``GRAYSCALE``, …): resized and cropped as at build time;
    the TPU does the mean/scale."""
    gray = pixel_format == "GRAYSCALE"
    if gray and bgr.ndim == 3:
        bgr = gray_of_bgr(bgr)
    img, place = fit(bgr, mode, int(resize_hw[0]), int(resize_hw[1]), pad_value)
    x = img[None] if gray else img.transpose(2, 0, 1)
    packed = pixel_format.endswith("PACKED")
    ch, cw = (shape[1], shape[2]) if packed else (shape[2], shape[3])
    x, y0, x0 = center_crop(x, int(ch), int(cw))
    place["dx"] -= x0
    place["dy"] -= y0
    if pixel_format.startswith("RGB"):
        x = x[[2, 1, 0]]
    if packed:
        x = x.transpose(1, 2, 0)
    return np.ascontiguousarray(x[None]).astype(np.uint8), place
