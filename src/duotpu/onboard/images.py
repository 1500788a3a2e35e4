"""Images on a board without Pillow or OpenCV: ``.npy``, binary PPM/PGM, BMP and raw frames in
plain Python + numpy; JPEG and PNG through OpenCV or Pillow when the board has one.

Every reader returns what the host's OpenCV returns: BGR ``uint8`` ``HxWx3``, or ``HxW`` gray.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Union

import numpy as np

#: suffixes read without any image library
NATIVE = (".npy", ".ppm", ".pgm", ".pnm", ".bmp")
#: suffixes that need OpenCV or Pillow on the board
DECODED = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")
RAW = (".raw", ".yuv", ".nv21", ".nv12", ".rgb", ".bgr")


class ImageError(Exception):
    """An image cannot be read; the message says which file, why and what to do."""


def read(path: Union[str, Path]) -> np.ndarray:
    """A file as BGR uint8 (``HxWx3``) or gray (``HxW``); a ``.npy`` of floats is returned as
    it is (a ready input tensor)."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such file.")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return _npy(p)
        if suffix in (".ppm", ".pgm", ".pnm"):
            return _pnm(p)
        if suffix == ".bmp":
            return _bmp(p)
    except (ValueError, struct.error, IndexError) as e:
        raise ImageError(f"{p} is not a readable {suffix[1:].upper()} image ({e}).") from None
    return _decoded(p)


def _npy(p: Path) -> np.ndarray:
    a = np.load(p, allow_pickle=False)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        return np.ascontiguousarray(a[:, :, ::-1])  # an RGB picture (numpy's convention)
    return a


def _token(data: bytes, pos: int) -> "tuple[bytes, int]":
    while True:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        break
    end = pos
    while end < len(data) and not data[end : end + 1].isspace():
        end += 1
    return data[pos:end], end


def _pnm(p: Path) -> np.ndarray:
    data = p.read_bytes()
    magic, pos = _token(data, 0)
    if magic not in (b"P5", b"P6"):
        raise ValueError(f"only binary P5/P6 files are read, this is {magic[:2]!r}")
    w, pos = _token(data, pos)
    h, pos = _token(data, pos)
    top, pos = _token(data, pos)
    if int(top) != 255:
        raise ValueError(f"only 8-bit files are read (maxval {int(top)})")
    c = 3 if magic == b"P6" else 1
    n = int(w) * int(h) * c
    px = np.frombuffer(data, np.uint8, count=n, offset=pos + 1)
    img = px.reshape(int(h), int(w), c) if c == 3 else px.reshape(int(h), int(w))
    return np.ascontiguousarray(img[:, :, ::-1]) if c == 3 else img.copy()


def _bmp(p: Path) -> np.ndarray:
    data = p.read_bytes()
    if data[:2] != b"BM":
        raise ValueError("no 'BM' signature")
    offset = struct.unpack_from("<I", data, 10)[0]
    header = struct.unpack_from("<I", data, 14)[0]
    w, h, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    if compression not in (0, 3) or bits not in (8, 24, 32):
        raise ValueError(f"{bits}-bit, compression {compression}: only uncompressed 8/24/32-bit")
    flip, h = h > 0, abs(h)
    stride = (w * bits // 8 + 3) & ~3
    rows = np.frombuffer(data, np.uint8, count=stride * h, offset=offset).reshape(h, stride)
    if bits == 8:
        ncolors = struct.unpack_from("<I", data, 46)[0] or 256
        pal = np.frombuffer(data, np.uint8, count=4 * ncolors, offset=14 + header)
        pal = pal.reshape(ncolors, 4)[:, :3]
        idx = rows[:, :w]
        img = pal[idx]
        if (pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all():
            img = img[:, :, 0]
    else:
        img = rows[:, : w * bits // 8].reshape(h, w, bits // 8)[:, :, :3]
    return np.ascontiguousarray(img[::-1] if flip else img)


def _decoded(p: Path) -> np.ndarray:
    try:
        import cv2
    except ImportError:
        cv2 = None  # type: ignore[assignment]
    if cv2 is not None:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ImageError(f"{p} is not an image OpenCV can read (missing, corrupt or cut).")
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[:, :, :3]
        return np.ascontiguousarray(img)
    try:
        from PIL import Image
    except ImportError:
        raise ImageError(
            f"{p}: reading {p.suffix} files needs OpenCV or Pillow, and this Python has neither "
            "(the stock Duo images ship neither). Convert the image to PPM, BMP or .npy on the "
            "PC (e.g. `convert photo.jpg photo.ppm`), or install Pillow on the board."
        ) from None
    try:
        with Image.open(p) as im:
            im.load()
            gray = im.mode in ("L", "I;16", "1")
            img = np.asarray(im.convert("L") if gray else im.convert("RGB"))
    except (OSError, SyntaxError) as e:
        raise ImageError(f"{p} is not an image Pillow can read ({e}).") from None
    return np.ascontiguousarray(img[:, :, ::-1]) if img.ndim == 3 else img


def write_ppm(path: Union[str, Path], bgr: np.ndarray) -> Path:
    """Write a BGR (or gray) uint8 image as binary PPM (PGM), which every board can read."""
    p = Path(path)
    img = np.asarray(bgr, np.uint8)
    magic = b"P6" if img.ndim == 3 else b"P5"
    body = img[:, :, ::-1] if img.ndim == 3 else img
    p.write_bytes(magic + b"\n%d %d\n255\n" % (img.shape[1], img.shape[0]) + body.tobytes())
    return p
