"""Image → input tensor, exactly as tpu_mlir's preprocessing computes it.

The numbers a recipe gives in PyTorch units (``(pixel/255 - mean) / std``) become tpu_mlir's
pixel-unit ``mean`` and ``scale`` (``(pixel - mean255) * scale``). `tpu_mean_scale` does
that conversion once; the compiler flags and `preprocess_image` both use its strings, so the
host and the compiler compute with the same float32 numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duotpu.config.errors import DataError
from duotpu.config.recipe import Preprocess
from duotpu.onboard.preprocess import center_crop, fit


def _fmt(v: float) -> str:
    return np.format_float_positional(np.float32(v), unique=True, trim="-")


def tpu_mean_scale(pre: Preprocess, channels: int) -> tuple[str, str]:
    """tpu_mlir's ``--mean`` and ``--scale`` strings (pixel units) for a recipe's mean/std."""
    mean = list(pre.mean) * (channels if len(pre.mean) == 1 else 1)
    std = list(pre.std) * (channels if len(pre.std) == 1 else 1)
    if channels == 1:  # tpu_mlir reads three values and uses the first for gray
        mean, std = mean * 3, std * 3
    return (",".join(_fmt(m * 255.0) for m in mean), ",".join(_fmt(1.0 / (s * 255.0)) for s in std))


def input_hw(shape: tuple[int, ...] | list[int], pixel_format: str = "") -> tuple[int, int]:
    """The (h, w) of a model input: NCHW, or NHWC for a fused-preprocess ``*_PACKED`` input."""
    if pixel_format.endswith("PACKED"):
        return int(shape[1]), int(shape[2])
    return int(shape[-2]), int(shape[-1])


def resize_dims(pre: Preprocess, shape: tuple[int, ...]) -> tuple[int, int]:
    """The (h, w) an image is resized to before the center crop to the input size."""
    return (pre.resize[0], pre.resize[1]) if pre.resize else (shape[2], shape[3])


def _resize(img: np.ndarray, pre: Preprocess, h: int, w: int) -> np.ndarray:
    """The recipe's resize, as the board app does it (`duotpu.onboard.preprocess.fit`)
    with OpenCV's resize (the same bytes, faster)."""
    import cv2

    def opencv(x: np.ndarray, width: int, height: int) -> np.ndarray:
        return np.asarray(cv2.resize(x, (width, height)))

    return fit(img, pre.resize_mode, h, w, pre.pad_value, opencv)[0]


def load_bgr(image: str | Path | np.ndarray, gray: bool) -> np.ndarray:
    """An image file (or an RGB array) as tpu_mlir reads it: BGR (or gray) uint8."""
    import cv2

    if isinstance(image, np.ndarray):
        img = np.asarray(image)
        if img.ndim == 2:
            return img if gray else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        bgr = np.ascontiguousarray(img[:, :, 2::-1])
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if gray else bgr
    img = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"Cannot read the image {image}: the file is missing or not an image.")
    return img


def preprocess_image(
    image: str | Path | np.ndarray, pre: Preprocess, shape: tuple[int, ...]
) -> np.ndarray:
    """One image → a float32 NCHW tensor of ``shape`` (batch filled with copies)."""
    channels = shape[1]
    gray = channels == 1
    img = load_bgr(image, gray)
    h, w = resize_dims(pre, shape)
    img = _resize(img, pre, h, w)
    x = img[None] if gray else img.transpose(2, 0, 1)
    x = center_crop(x[None], shape[2], shape[3])[0]
    return np.repeat(_normalize(x, pre), shape[0], axis=0)


def _normalize(bgr: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Resized BGR (or gray) NCHW pixels → the model's float input: its channel order, then
    (x - mean) * scale as tpu_mlir computes them."""
    x = bgr.astype(np.float32)
    channels = x.shape[1]
    mean_s, scale_s = tpu_mean_scale(pre, channels)
    mean = np.array([float(v) for v in mean_s.split(",")], np.float32)[None, :, None, None]
    scale = np.array([float(v) for v in scale_s.split(",")], np.float32)[None, :, None, None]
    if channels == 1:
        mean, scale = mean[:, :1], scale[:, :1]
    elif pre.pixel_format == "rgb":
        x = x[:, [2, 1, 0]]
    return ((x - mean) * scale).astype(np.float32)


def fused_to_float(
    raw: np.ndarray, pre: Preprocess, shape: tuple[int, ...], pixel_format: str
) -> np.ndarray:
    """A fused-preprocess model's raw uint8 input (`fused_input`) → the float input of its
    fp32 ONNX model (``shape``), i.e. the crop and mean/scale the TPU does: what
    `preprocess_image` gives for the same image."""
    x = np.asarray(raw)
    if pixel_format.endswith("PACKED"):
        x = x.transpose(0, 3, 1, 2)
    if pixel_format.startswith("RGB"):
        x = x[:, [2, 1, 0]]
    return _normalize(center_crop(x, shape[2], shape[3])[0], pre)


def fused_input(
    image: str | Path | np.ndarray, pre: Preprocess, shape: tuple[int, ...], pixel_format: str
) -> np.ndarray:
    """The raw uint8 input of a fused-preprocess cvimodel: the image resized and cropped as at
    build time, in ``pixel_format`` (``RGB_PLANAR``, ``BGR_PACKED``, ``GRAYSCALE``, ...); the
    TPU does the mean/scale."""
    gray = pixel_format == "GRAYSCALE"
    img = load_bgr(image, gray)
    h, w = resize_dims(pre, (1, 1 if gray else 3, *input_hw(shape, pixel_format)))
    img = _resize(img, pre, h, w)
    x = img[None] if gray else img.transpose(2, 0, 1)
    ch, cw = (
        (shape[2], shape[3]) if pixel_format.endswith("PLANAR") or gray else (shape[1], shape[2])
    )
    ih, iw = x.shape[1:]
    if (ih, iw) != (ch, cw):
        y0, x0 = ih // 2 - ch // 2, iw // 2 - cw // 2
        x = x[:, y0 : y0 + ch, x0 : x0 + cw]
    if pixel_format.startswith("RGB"):
        x = x[[2, 1, 0]]
    if pixel_format.endswith("PACKED"):
        x = x.transpose(1, 2, 0)
    return np.ascontiguousarray(x[None]).astype(np.uint8)
