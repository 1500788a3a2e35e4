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
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from duotpu.core.files import atomic_write

#: a table kept to be shared: the table and what it was made from (conditions, weights)
INDEX = "made-from.json"

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


def keep(pool: Path, table: Path, conditions: dict[str, Any], weights: dict[str, str]) -> None:
    """Keep a freshly made table in the work directory's pool, with what it was made from."""
    data = json.dumps({"conditions": conditions, "weights": weights}, sort_keys=True)
    entry = pool / hashlib.sha256(data.encode()).hexdigest()[:16]
    tmp = pool / f".{entry.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(table, tmp / "cali_table")
    atomic_write(tmp / INDEX, data)
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)


def shared_table(
    pool: Path, conditions: dict[str, Any], mlir: Path, weights: Path
) -> tuple[Path, int] | None:
    """A table in the pool that holds for the model ``mlir`` / ``weights`` (the newest first):
    (the table, how many layers the model takes from it); None when none does."""
    if not pool.is_dir():
        return None
    wanted = json.loads(json.dumps(conditions))
    mine: dict[str, str] | None = None
    needed: set[str] = set()
    entries = sorted(pool.glob("[!.]*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for entry in entries:
        try:
            index = json.loads((entry / INDEX).read_text())
            if index["conditions"] != wanted:
                continue
            old_weights: dict[str, str] = index["weights"]
        except (OSError, ValueError, KeyError):
            continue
        if mine is None:
            mine = weights_index(weights)
            needed = layers(mlir, set(mine))
        if any(old_weights.get(name) != digest for name, digest in mine.items()):
            continue
        table = entry / "cali_table"
        if needed and table.is_file() and needed <= table_layers(table):
            return table, len(needed)
    return None
