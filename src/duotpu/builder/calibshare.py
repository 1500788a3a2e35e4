"""Calibration tables a model shares with its cuts.

A model cut before some layers (``--cut-at``, a detector's head, a way around a compiler
failure) computes, up to the cut, exactly what the whole model computes: the same layers with the
same weights on the same calibration images. Their activation thresholds are the same, so the
cut's calibration can take the whole model's table instead of running ``run_calibration`` again
(148–371 s on the models that needed a cut).

It is taken only when that is provably so: the same calibration images and options, the same
preprocessing and input shapes, the same duotpu and tpu_mlir; every weight of the cut is a
weight of the earlier model with the same name and the same values; and every layer of the cut
has a threshold in the earlier table (a cut can end at a tensor the whole model fused away,
e.g. a convolution's output before its ReLU: then it is calibrated afresh).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from duotpu.core.files import atomic_write

#: what a calibration folder keeps to be shared: the conditions and the weights it was made with
INDEX = "shared-calibration.json"

_LOC = re.compile(r'^#loc\d+ = loc\("([^"]+)"\)', re.M)


def weights_index(weights: Path) -> dict[str, str]:
    """Each weight of a ``*_top_f32_all_weight.npz`` → a digest of its dtype, shape and values."""
    out = {}
    with np.load(weights) as npz:
        for name in npz.files:
            a = np.ascontiguousarray(npz[name])
            h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
            out[name] = h.hexdigest()[:24]
    return out


def layers(mlir: Path, weights: set[str]) -> set[str]:
    """The tensors of an fp32 MLIR that a calibration table gives thresholds for: its named
    locations that are not weights (the input and every op's output)."""
    return set(_LOC.findall(mlir.read_text(errors="replace"))) - weights


def table_layers(table: Path) -> set[str]:
    """The tensor names a calibration table has thresholds for."""
    return {
        ln.split()[0]
        for ln in table.read_text(errors="replace").splitlines()
        if ln.strip() and not ln.startswith("#")
    }


def write_index(folder: Path, conditions: dict[str, Any], weights: dict[str, str]) -> None:
    """Record beside a calibration table what it was made from."""
    atomic_write(folder / INDEX, json.dumps({"conditions": conditions, "weights": weights}))


def shared_table(
    earlier: Path, conditions: dict[str, Any], mlir: Path, weights: Path
) -> tuple[Path, dict[str, str], int] | None:
    """The calibration table in the folder ``earlier`` (the work directory's last calibration)
    when it holds for the model ``mlir`` / ``weights``: (the table, the weights index to keep
    with its copy, how many layers the model takes from it); None when it does not."""
    try:
        index = json.loads((earlier / INDEX).read_text())
        old_weights: dict[str, str] = index["weights"]
        old_conditions = index["conditions"]
        table = next(earlier.glob("*_cali_table"))
    except (OSError, ValueError, KeyError, StopIteration):
        return None
    if old_conditions != json.loads(json.dumps(conditions)):
        return None
    mine = weights_index(weights)
    if any(old_weights.get(name) != digest for name, digest in mine.items()):
        return None
    needed = layers(mlir, set(mine))
    if not needed or not needed <= table_layers(table):
        return None
    return table, old_weights, len(needed)


def take(table: Path, into: Path) -> None:
    """Copy a shared table into a calibration folder under the name the build gives it."""
    shutil.copyfile(table, into)
