"""What a build done on another Ray node may write into the caller's build folder."""

from __future__ import annotations

import json

import pytest

from duotpu.builder.many import _receive
from duotpu.config.errors import DuoTpuError


def test_a_node_writes_only_plain_names_and_leaves_no_stale_model(tmp_path):
    out = tmp_path / "build" / "net"
    out.mkdir(parents=True)
    (out / "net_cv180x_int8.cvimodel").write_bytes(b"old int8")  # an earlier build's
    (out / "net_cv180x_bf16.cvimodel").write_bytes(b"old bf16")  # this mode failed now
    for bad in ("../x", "/etc/evil", "sub/x", ".hidden"):
        with pytest.raises(DuoTpuError, match="plain file names"):
            _receive(out, {bad: b"x", "net_cv180x_int8.cvimodel": b"new"})
        assert not (tmp_path / "build" / "x").exists()
    assert (out / "net_cv180x_int8.cvimodel").read_bytes() == b"old int8"  # nothing written
    manifest = {
        "name": "net",
        "work_dir": "/node/cache/work",
        "onnx": "/node/cache/work/export/net.onnx",
        "reference_onnx": None,
        "top_mlir": "/node/cache/work/transform/net.mlir",
        "models": {"int8": {"cvimodel": "net_cv180x_int8.cvimodel", "tpu_mlir": "/node/x.mlir"}},
    }
    _receive(
        out,
        {
            "net_cv180x_int8.cvimodel": b"new",
            "manifest.json": json.dumps(manifest).encode(),
            "net.fp32.onnx": b"onnx bytes",
        },
    )
    assert (out / "net_cv180x_int8.cvimodel").read_bytes() == b"new"
    assert not (out / "net_cv180x_bf16.cvimodel").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["onnx"] == m["reference_onnx"] == str((out / "net.fp32.onnx").resolve())
    assert m["work_dir"] is None and m["models"]["int8"]["tpu_mlir"] is None
