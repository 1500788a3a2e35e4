"""Calibration data given as arrays instead of a folder of images.

Like ONNX Runtime's ``CalibrationDataReader`` (one method, ``get_next()``, returning the model's
input feed or ``None`` when done) or NNCF's ``Dataset`` (any iterable): :func:`duotpu.build`
takes either, each item a preprocessed input — an NCHW float32 array of the recipe's input
shape, or a one-entry dict ``{input_name: array}``. The arrays are written once as ``.npz`` files
(the form tpu_mlir's calibration reads as inputs, without applying the recipe's preprocessing),
in a folder named by their content, so a rerun with the same data is a cache hit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from duotpu.config.errors import DataError


@runtime_checkable
class CalibrationDataReader(Protocol):
    """ONNX Runtime's calibration data protocol: the next input feed, ``None`` when done."""

    def get_next(self) -> Mapping[str, NDArray[Any]] | None: ...


CalibrationData = Union[
    CalibrationDataReader, Iterable[Union[NDArray[Any], Mapping[str, NDArray[Any]]]]
]


def _items(data: CalibrationData) -> Iterator[NDArray[Any] | Mapping[str, NDArray[Any]]]:
    if isinstance(data, CalibrationDataReader):
        while (feed := data.get_next()) is not None:
            yield feed
    else:
        yield from data


def write_arrays(
    data: CalibrationData, root: Path, input_name: str, shape: tuple[int, ...]
) -> Path:
    """Write every calibration input as an ``NNNNN.npz`` file under ``root``; returns
    their folder (``root/arrays-DIGEST``). Raises :class:`DataError` naming the first item that
    is not an input of ``shape``."""
    arrays: list[NDArray[np.float32]] = []
    for i, item in enumerate(_items(data)):
        if isinstance(item, Mapping):
            if len(item) != 1:
                raise DataError(
                    f"Calibration item {i} feeds {len(item)} inputs ({', '.join(item)}); the "
                    f"model has one, {input_name!r}."
                )
            item = next(iter(item.values()))
        a = np.asarray(item, dtype=np.float32)
        if a.shape == tuple(shape[1:]):
            a = a[None]
        if a.shape != tuple(shape):
            raise DataError(
                f"Calibration item {i} has shape {list(a.shape)}; the model's input "
                f"{input_name!r} is {list(shape)}. Give preprocessed NCHW arrays of that shape "
                "(or CHW, one image each), or calibrate on a folder of images instead "
                "(calibration.images), which the recipe's preprocessing turns into inputs."
            )
        arrays.append(a)
    if not arrays:
        raise DataError("The calibration data gave no arrays; give at least one input.")
    h = hashlib.sha256(f"{input_name}{shape}".encode())
    for a in arrays:
        h.update(a.tobytes())
    final = root / f"arrays-{h.hexdigest()[:16]}"
    if not final.is_dir():
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i, a in enumerate(arrays):
            np.savez(tmp / f"{i:05d}.npz", **{input_name: a})
        os.replace(tmp, final)
    return final


def array_files(folder: Path) -> list[Path]:
    """The ``.npz`` inputs of a folder :func:`write_arrays` made (empty for an image folder)."""
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []
