"""The CVI runtime's C API (``libcviruntime.so``, sophgo/cviruntime ``include/cviruntime.h``)
through ctypes: open a cvimodel, describe its tensors, run it on numpy arrays.

Needs only the Python standard library and numpy, so it runs on the board's Python. On the
board the library is the SDK's; on a PC it can be tpu_mlir's build of the same API for the
CV18xx simulator (``tpu_mlir/lib/libcviruntime.so``), which is how this module is tested.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

LIBRARY = "libcviruntime.so"
#: where the SDK puts its libraries on the Duo images (after LD_LIBRARY_PATH and $TPU_SDK_PATH)
BOARD_LIB_DIRS = ("/mnt/system/lib", "/mnt/system/usr/lib", "/usr/lib", "/lib")

# CVI_FMT
FP32, INT32, UINT32, BF16, INT16, UINT16, INT8, UINT8 = range(8)
_DTYPES = {
    FP32: np.float32,
    INT32: np.int32,
    UINT32: np.uint32,
    BF16: np.uint16,
    INT16: np.int16,
    UINT16: np.uint16,
    INT8: np.int8,
    UINT8: np.uint8,
}
FORMAT_NAMES = {
    FP32: "fp32",
    INT32: "int32",
    UINT32: "uint32",
    BF16: "bf16",
    INT16: "int16",
    UINT16: "uint16",
    INT8: "int8",
    UINT8: "uint8",
}
# CVI_NN_PIXEL_FORMAT_E
PIXEL_FORMATS = {
    0: "RGB_PACKED",
    1: "BGR_PACKED",
    2: "RGB_PLANAR",
    3: "BGR_PLANAR",
    11: "YUV_NV12",
    12: "YUV_NV21",
    13: "YUV420_PLANAR",
    15: "GRAYSCALE",
    100: "TENSOR",
    1000: "RGBA_PLANAR",
}
OPTION_PROGRAM_INDEX = 9

# cvitpu_debug.h: CVI_TPU_ERR(CVI_TPU_RUNTIME = 0x77, level ERROR = 4, errid)
_ERR_BASE = 0xC0000000 | (0x77 << 16) | (4 << 13)
#: the runtime's return codes in plain words
RETURN_CODES = {
    -1: "general failure",
    _ERR_BASE | 16: "the TPU is not ready (no /dev/cvi-tpu0, or the driver is not loaded)",
    _ERR_BASE | 21: "the TPU timed out",
    _ERR_BASE | 7: "the runtime is not initialised",
    _ERR_BASE | 3: (
        "an argument was refused: often a model from a newer compiler than the board's runtime "
        "(update the SDK on the board, or build with an older deploy.model_version), or a "
        "model for another chip"
    ),
    _ERR_BASE | 12: "out of memory (ION): the model does not fit the board's ION carveout",
    _ERR_BASE | 22: "data error: the model file is corrupt",
    _ERR_BASE | 18: "the TPU is busy",
    _ERR_BASE | 8: "not supported by this runtime",
    0xC0010102: (
        "the runtime could not open the model: usually a model from a newer compiler than the "
        "board's runtime; update the SDK on the board"
    ),
}


class CviError(Exception):
    """A runtime call failed or a model cannot be used; the message says what and what to do."""

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.code = code


def explain(code: int) -> str:
    """Plain words for a runtime return code."""
    c = code & 0xFFFFFFFF if code < -1 else code
    return RETURN_CODES.get(c, RETURN_CODES.get(code, "unknown error"))


class _Shape(ctypes.Structure):
    _fields_ = [("dim", ctypes.c_int32 * 6), ("dim_size", ctypes.c_size_t)]


class _Tensor(ctypes.Structure):
    """``CVI_TENSOR`` (the same layout on riscv64, aarch64 and x86_64: all LP64)."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("shape", _Shape),
        ("fmt", ctypes.c_int),
        ("count", ctypes.c_size_t),
        ("mem_size", ctypes.c_size_t),
        ("sys_mem", ctypes.c_void_p),
        ("paddr", ctypes.c_uint64),
        ("mem_type", ctypes.c_int),
        ("qscale", ctypes.c_float),
        ("zero_point", ctypes.c_int),
        ("pixel_format", ctypes.c_int),
        ("aligned", ctypes.c_bool),
        ("mean", ctypes.c_float * 3),
        ("scale", ctypes.c_float * 3),
        ("owner", ctypes.c_void_p),
        ("reserved", ctypes.c_char * 32),
    ]


_TensorP = ctypes.POINTER(_Tensor)


class TensorInfo:
    """One input or output: name, shape, element format, quantization and, for a
    fused-preprocess input, the pixel format the TPU expects."""

    def __init__(self, t: _Tensor):
        self.name = (t.name or b"").decode("utf-8", "replace")
        self.shape = tuple(int(t.shape.dim[i]) for i in range(int(t.shape.dim_size)))
        self.fmt = int(t.fmt)
        self.format = FORMAT_NAMES.get(self.fmt, str(self.fmt))
        self.dtype: np.dtype = np.dtype(_DTYPES.get(self.fmt, np.uint8))
        self.count = int(t.count)
        self.size = int(t.mem_size)
        self.qscale = float(t.qscale)
        self.zero_point = int(t.zero_point)
        self.pixel_format = PIXEL_FORMATS.get(int(t.pixel_format), str(t.pixel_format))
        self.aligned = bool(t.aligned)
        self.mean = tuple(float(v) for v in t.mean)
        self.scale = tuple(float(v) for v in t.scale)

    @property
    def is_image(self) -> bool:
        """A fused-preprocess input: uint8 pixels, the TPU does the rest."""
        return self.pixel_format not in ("TENSOR",) and self.fmt in (UINT8, INT8)

    def describe(self) -> str:
        q = f", qscale {self.qscale:g}" if self.fmt in (INT8, UINT8) else ""
        px = f", pixels {self.pixel_format}" if self.is_image else ""
        return f"{self.name} {list(self.shape)} {self.format}{q}{px}"

    def __repr__(self) -> str:
        return f"TensorInfo({self.describe()})"


def find_library(explicit: Union[str, Path, None] = None) -> Path:
    """``libcviruntime.so``: ``explicit``, else ``$DUOTPU_CVIRUNTIME``, else the folders of
    ``$LD_LIBRARY_PATH``, ``$TPU_SDK_PATH/lib`` and the board images' library folders."""
    if explicit:
        p = Path(explicit)
        if p.is_dir():
            p = p / LIBRARY
        if not p.is_file():
            raise CviError(f"The CVI runtime library {p} does not exist.")
        return p
    env = os.environ.get("DUOTPU_CVIRUNTIME")
    if env:
        return find_library(env)
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    sdk = os.environ.get("TPU_SDK_PATH")
    if sdk:
        dirs.append(os.path.join(sdk, "lib"))
    for d in dirs + list(BOARD_LIB_DIRS):
        p = Path(d) / LIBRARY
        if p.is_file():
            return p
    raise CviError(
        f"The CVI runtime library ({LIBRARY}) was not found in LD_LIBRARY_PATH, "
        f"$TPU_SDK_PATH/lib or {', '.join(BOARD_LIB_DIRS)}. On the board, source the SDK's "
        "envs_tpu_sdk.sh (or set LD_LIBRARY_PATH to the SDK's lib folder), or give its path "
        "with --lib (DUOTPU_CVIRUNTIME)."
    )


_LIBS: Dict[str, ctypes.CDLL] = {}


def load_library(path: Union[str, Path, None] = None) -> ctypes.CDLL:
    """The runtime library, loaded once per path, with the argument types set."""
    p = str(find_library(path))
    if p in _LIBS:
        return _LIBS[p]
    try:
        lib = ctypes.CDLL(p)
    except OSError as e:
        raise CviError(
            f"The CVI runtime library {p} cannot be loaded ({e}). It must be the SDK's library "
            "for this board's CPU (riscv64 musl on a Duo, aarch64 on a Duo 256M / Duo S "
            "booted from an arm64 image) and find its own libraries (LD_LIBRARY_PATH)."
        ) from None
    handle = ctypes.c_void_p
    lib.CVI_NN_RegisterModel.argtypes = [ctypes.c_char_p, ctypes.POINTER(handle)]
    lib.CVI_NN_SetConfig.argtypes = [handle, ctypes.c_int, ctypes.c_int]
    lib.CVI_NN_GetInputOutputTensors.argtypes = [
        handle,
        ctypes.POINTER(_TensorP),
        ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(_TensorP),
        ctypes.POINTER(ctypes.c_int32),
    ]
    lib.CVI_NN_Forward.argtypes = [handle, _TensorP, ctypes.c_int32, _TensorP, ctypes.c_int32]
    lib.CVI_NN_CleanupModel.argtypes = [handle]
    lib.CVI_NN_TensorPtr.argtypes = [_TensorP]
    lib.CVI_NN_TensorPtr.restype = ctypes.c_void_p
    for fn in ("CVI_NN_RegisterModel", "CVI_NN_SetConfig", "CVI_NN_GetInputOutputTensors"):
        getattr(lib, fn).restype = ctypes.c_int
    lib.CVI_NN_Forward.restype = ctypes.c_int
    lib.CVI_NN_CleanupModel.restype = ctypes.c_int
    _LIBS[p] = lib
    return lib


class Header:
    """The 48-byte cvimodel header: format version and chip (read before the runtime sees the
    file, so a wrong file gets a clear message)."""

    SIZE = 48

    def __init__(self, path: Union[str, Path]):
        p = Path(path)
        try:
            with open(p, "rb") as f:
                head = f.read(self.SIZE)
                f.seek(0, os.SEEK_END)
                length = f.tell()
        except OSError as e:
            raise CviError(f"Cannot read the model {p}: {e.strerror}.") from None
        if len(head) < self.SIZE or not head.startswith(b"CviModel"):
            raise CviError(
                f"{p} is not a cvimodel (it does not start with the 'CviModel' header): copy "
                "the .cvimodel file that `duotpu build` made."
            )
        body, major, minor = struct.unpack_from("<IBB", head, 8)
        self.version = (int(major), int(minor))
        self.chip = head[30:46].split(b"\0")[0].decode("ascii", "replace")
        if not self.chip.startswith("cv18"):
            raise CviError(
                f"{p} is not a cvimodel for a CV18xx chip (its header names {self.chip!r}): "
                "copy the .cvimodel file that `duotpu build` made."
            )
        if length < self.SIZE + body:
            raise CviError(
                f"{p} is truncated ({length} bytes; its header announces {self.SIZE + body}): "
                "copy the file again."
            )
        # the md5 of all that follows the header (model_tool's files, padded "AA", have none)
        if head[46:48] != b"AA":
            digest = hashlib.md5()
            with open(p, "rb") as f:
                f.seek(self.SIZE)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.digest() != head[14:30]:
                raise CviError(
                    f"{p} is damaged or truncated ({length} bytes; its md5 is not the one in its "
                    "header): copy the file again."
                )


class Model:
    """A registered cvimodel.

    >>> m = Model("net_cv180x_int8.cvimodel")
    >>> out = m.run({"input": x})          # numpy in, dequantized float32 numpy out
    """

    def __init__(
        self,
        path: Union[str, Path],
        lib: Union[str, Path, None] = None,
        program: Optional[int] = None,
        chip: Optional[str] = None,
    ):
        self.path = Path(path)
        self.header = Header(self.path)
        if chip and self.header.chip and self.header.chip != chip:
            raise CviError(
                f"{self.path} was built for {self.header.chip}, but this board's chip is "
                f"{chip}: rebuild it with --chip {chip}."
            )
        self._lib = load_library(lib)
        self._handle = ctypes.c_void_p()
        rc = self._lib.CVI_NN_RegisterModel(str(self.path).encode(), ctypes.byref(self._handle))
        if rc != 0:
            self._handle = ctypes.c_void_p()
            raise CviError(
                f"The runtime refused the model {self.path} (code {rc & 0xFFFFFFFF:#x}: "
                f"{explain(rc)}; model format {self.header.version[0]}.{self.header.version[1]}"
                f", chip {self.header.chip}).",
                rc,
            )
        if program is not None:
            self._check(
                self._lib.CVI_NN_SetConfig(self._handle, OPTION_PROGRAM_INDEX, int(program)),
                "choosing program",
            )
        self._in = _TensorP()
        self._out = _TensorP()
        self._n_in = ctypes.c_int32()
        self._n_out = ctypes.c_int32()
        self._check(
            self._lib.CVI_NN_GetInputOutputTensors(
                self._handle,
                ctypes.byref(self._in),
                ctypes.byref(self._n_in),
                ctypes.byref(self._out),
                ctypes.byref(self._n_out),
            ),
            "reading the tensors",
        )
        self.inputs: List[TensorInfo] = [TensorInfo(self._in[i]) for i in range(self._n_in.value)]
        self.outputs: List[TensorInfo] = [
            TensorInfo(self._out[i]) for i in range(self._n_out.value)
        ]

    # -- running ---------------------------------------------------------------------------
    def run(
        self, inputs: Union[Mapping[str, np.ndarray], Sequence[np.ndarray], np.ndarray]
    ) -> Dict[str, np.ndarray]:
        """Run once: float arrays are quantized as the input tensor wants (INT8/UINT8 with its
        qscale, BF16 by truncation), uint8 frames are copied as they are; outputs come back as
        float32 (INT8 dequantized, BF16 widened)."""
        arrays = self._by_name(inputs)
        for i, info in enumerate(self.inputs):
            data = lower(arrays[info.name], info)
            ptr = self._lib.CVI_NN_TensorPtr(ctypes.byref(self._in[i]))
            ctypes.memmove(ptr, data.ctypes.data, data.nbytes)
        self._check(
            self._lib.CVI_NN_Forward(
                self._handle, self._in, self._n_in.value, self._out, self._n_out.value
            ),
            "running the model",
        )
        return {info.name: lift(self._raw(i, info), info) for i, info in enumerate(self.outputs)}

    def _raw(self, i: int, info: TensorInfo) -> np.ndarray:
        ptr = self._lib.CVI_NN_TensorPtr(ctypes.byref(self._out[i]))
        n = info.size // info.dtype.itemsize
        buf = (ctypes.c_char * info.size).from_address(ptr)
        raw = np.frombuffer(bytes(buf), dtype=info.dtype, count=n)
        return raw[: info.count].reshape(info.shape) if n >= info.count else raw

    def _by_name(self, inputs) -> Dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if not isinstance(inputs, Mapping):
            seq = list(inputs)
            if len(seq) != len(self.inputs):
                raise CviError(
                    f"The model takes {len(self.inputs)} inputs "
                    f"({', '.join(i.name for i in self.inputs)}); {len(seq)} were given."
                )
            return {info.name: np.asarray(a) for info, a in zip(self.inputs, seq)}
        missing = [i.name for i in self.inputs if i.name not in inputs]
        if missing:
            raise CviError(
                f"No array for the input(s) {', '.join(missing)}; the model takes "
                f"{', '.join(i.describe() for i in self.inputs)}."
            )
        return {i.name: np.asarray(inputs[i.name]) for i in self.inputs}

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise CviError(
                f"The runtime failed {what} for {self.path} "
                f"(code {rc & 0xFFFFFFFF:#x}: {explain(rc)}).",
                rc,
            )

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Release the model (the runtime's ION memory)."""
        if self._handle:
            self._lib.CVI_NN_CleanupModel(self._handle)
            self._handle = ctypes.c_void_p()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 — interpreter shutdown
            pass


def round_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (the runtime's and tpu_mlir's rounding)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def lower(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """An array as the input tensor's bytes: quantized when the tensor is INT8/UINT8/BF16 and
    the array is float; integer arrays of the tensor's own type are taken as they are."""
    x = np.asarray(x)
    if x.dtype == info.dtype or (info.fmt in (INT8, UINT8) and x.dtype in (np.uint8, np.int8)):
        data = x
    elif info.fmt == INT8:
        q = round_away(x.astype(np.float32) * np.float32(info.qscale) + info.zero_point)
        data = np.clip(q, -128, 127).astype(np.int8)
    elif info.fmt == UINT8:
        q = round_away(x.astype(np.float32) * np.float32(info.qscale) + info.zero_point)
        data = np.clip(q, 0, 255).astype(np.uint8)
    elif info.fmt == BF16:
        data = (np.ascontiguousarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    else:
        data = x.astype(info.dtype)
    data = np.ascontiguousarray(data)
    if data.nbytes != info.size and data.size != info.count:
        raise CviError(
            f"The input {info.name} takes {info.count} values {list(info.shape)} "
            f"({info.size} bytes); the array has shape {list(x.shape)}. Give an image of "
            "the model's size and channel count, or let the app preprocess it."
        )
    if data.nbytes > info.size:
        raise CviError(f"The input {info.name} takes {info.size} bytes; got {data.nbytes}.")
    return data


def lift(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    """An output tensor's values as float32: INT8/UINT8 dequantized with their qscale, BF16
    widened."""
    if info.fmt in (INT8, UINT8) and info.qscale:
        return (raw.astype(np.float32) - info.zero_point) * np.float32(info.qscale)
    if info.fmt == BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)
