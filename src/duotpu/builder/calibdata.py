"""Calibration data given as arrays instead of a folder of images.

Like ONNX Runtime's ``CalibrationDataReader`` (one method, ``get_next()``, returning the model's
input feed or ``None`` when done) or NNCF's ``Dataset`` (any iterable): `duotpu.build`
takes either, each item a preprocessed input — an NCHW float32 array of the recipe's input
shape, or a dict ``{input_name: array}`` (one entry per input for a model of several inputs).
The arrays are written once as ``.npz`` files
(the form tpu_mlir's calibration reads as inputs, without applying the recipe's preprocessing),
in a folder named by their content, so a rerun with the same data is a cache hit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


Inputs = Sequence[tuple[str, tuple[int, ...]]]  # every model input's (name, shape), in order


def _check_item(
    item: NDArray[Any] | Mapping[str, NDArray[Any]], inputs: Inputs, where: str
) -> dict[str, NDArray[np.float32]]:
    """One calibration or test sample as ``{input name: float32 array}``, checked against the
    model's inputs (a one-input model also takes the bare array, with or without its batch)."""
    names = [n for n, _ in inputs]
    if not isinstance(item, Mapping):
        if len(inputs) != 1:
            raise DataError(
                f"{where} is one array; the model has {len(inputs)} inputs ({', '.join(names)}): "
                "give each sample as a dict (or an .npz file) of one array per input name."
            )
        item = {names[0]: item}
    elif len(inputs) == 1 and len(item) == 1:
        item = {names[0]: next(iter(item.values()))}
    if set(item) != set(names):
        raise DataError(
            f"{where} feeds {', '.join(item) or 'nothing'}; the model's inputs are "
            f"{', '.join(names)}. Give one array per input, by the input's name."
        )
    out: dict[str, NDArray[np.float32]] = {}
    for name, shape in inputs:
        a = np.asarray(item[name], dtype=np.float32)
        if a.shape == tuple(shape[1:]):
            a = a[None]
        if a.shape != tuple(shape):
            raise DataError(
                f"{where} has shape {list(a.shape)} for input {name!r}, which is "
                f"{list(shape)}. Give preprocessed arrays of that shape"
                + (
                    " (NCHW, or CHW one image each), or calibrate on a folder of images instead "
                    "(calibration.images), which the recipe's preprocessing turns into inputs."
                    if len(shape) == 4 and len(inputs) == 1
                    else " (with or without the batch dim)."
                )
            )
        out[name] = a
    return out


def write_arrays(data: CalibrationData, root: Path, inputs: Inputs) -> Path:
    """Write every calibration sample as an ``NNNNN.npz`` file (one array per input name) under
    ``root``; returns their folder (``root/arrays-DIGEST``). Raises `DataError` naming
    the first item that is not a sample of ``inputs``."""
    samples = [
        _check_item(item, inputs, f"Calibration item {i}") for i, item in enumerate(_items(data))
    ]
    if not samples:
        raise DataError("The calibration data gave no arrays; give at least one input.")
    h = hashlib.sha256(repr(list(inputs)).encode())
    for sample in samples:
        for a in sample.values():
            h.update(a.tobytes())
    final = root / f"arrays-{h.hexdigest()[:16]}"
    if not final.is_dir():
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i, sample in enumerate(samples):
            np.savez(tmp / f"{i:05d}.npz", **sample)
        os.replace(tmp, final)
    return final


def npy_list(folder: Path, names: Sequence[str]) -> Path:
    """A list file of the samples of ``folder`` (made by `write_arrays`): one line per
    sample naming one ``.npy`` file per input, in ``names``' order, written beside them.
    tpu_mlir's calibration reads such a list sample by sample; its reader of ``.npz`` files
    takes the first input's first dim as a batch and drops samples of a model whose inputs'
    first dims differ (an LSTM's ``x [20, 1, 16]`` beside ``h0 [1, 1, 32]``)."""

    def tag(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    # a subfolder: the folder's own files stay samples; one list per choice of inputs
    target = folder / "npy" / f"inputs-{tag(chr(0).join(names))}.txt"
    if target.is_file():
        return target
    target.parent.mkdir(exist_ok=True)
    lines = []
    for npz in array_files(folder):
        with np.load(npz) as z:
            row = []
            for name in names:
                out = target.with_name(f"{npz.stem}.{tag(name)}.npy")
                np.save(out, z[name])
                row.append(str(out.resolve()))
        lines.append(",".join(row))
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, target)
    return target


#: the files a folder of tensor samples holds
TENSOR_SUFFIXES = (".npz", ".npy")


def tensor_files(folder: Path) -> list[Path]:
    """The ``.npz`` / ``.npy`` samples of a folder, sorted (empty when it has none)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in TENSOR_SUFFIXES)


def read_sample(path: Path, inputs: Inputs) -> dict[str, NDArray[np.float32]]:
    """One sample of a model's inputs from an ``.npz`` file (an array per input name) or an
    ``.npy`` file (a model of one input), checked. Raises `DataError` naming the file."""
    if Path(path).suffix.lower() not in TENSOR_SUFFIXES:
        shown = ", ".join(f"{n} {list(s)}" for n, s in inputs)
        raise DataError(
            f"{path} is not an .npz or .npy file, and the model takes tensors ({shown}), not "
            "images: give .npz files with one array per input name (np.savez(path, "
            f"{', '.join(f'{n}=…' for n, _ in inputs)}))."
        )
    try:
        if Path(path).suffix.lower() == ".npy":
            item: Any = np.load(path)
        else:
            with np.load(path) as z:
                item = {k: np.array(z[k]) for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable numpy file: {e}.") from None
    return _check_item(item, inputs, str(path))


def folder_samples(folder: Path, inputs: Inputs, count: int) -> list[dict[str, NDArray[Any]]]:
    """The first ``count`` samples of a folder of ``.npz`` / ``.npy`` files, checked, for a
    model whose inputs are tensors. Raises `DataError` saying what the folder needs."""
    files = tensor_files(folder)
    if not files:
        names = ", ".join(f"{n} {list(s)}" for n, s in inputs)
        raise DataError(
            f"The model's inputs are tensors ({names}), so INT8 calibrates on samples of "
            f"them: calibration.images = {str(folder)!r} has no .npz files. Give a folder of "
            ".npz files, one per sample with one array per input name (np.savez(path, "
            f"{', '.join(f'{n}=…' for n, _ in inputs)})), or pass calibration_data from Python."
        )
    return [read_sample(p, inputs) for p in files[:count]]


def array_files(folder: Path) -> list[Path]:
    """The ``.npz`` inputs of a folder `write_arrays` made (empty for an image folder)."""
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []
