"""The build manifest: one typed schema, written and read back the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duotpu.builder.manifest import MANIFEST, Manifest, ManifestModel, listed_model
from duotpu.config.errors import ConfigError


def _manifest(tmp_path: Path) -> Manifest:
    (tmp_path / "net_cv180x_int8.cvimodel").write_bytes(b"not a real cvimodel")
    return Manifest(
        name="net",
        chip="cv180x",
        recipe={"name": "net"},
        versions={"tpu_mlir": "1.30.2"},
        work_dir=str(tmp_path / "work"),
        input_name="input",
        onnx=None,
        reference_onnx=None,
        tail=None,
        task="classify",
        top_mlir=None,
        models={
            "int8": ManifestModel(
                "net_cv180x_int8.cvimodel",
                19,
                1.5,
                {"logits": 0.99},
                verified_on="quantized MLIR (the simulator cannot load this cvimodel)",
            )
        },
        stages=[{"name": "export", "cached": False, "seconds": 0.1}],
    )


def test_a_manifest_round_trips_and_a_partial_build_adds_its_failures(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    m.write(tmp_path / MANIFEST)
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert (
        data["schema"] == 1
        and "failed" not in data
        and data["models"]["int8"]["cosine_vs_fp32"] == {"logits": 0.99}
    )
    assert Manifest.read(tmp_path) == m
    m.failed, m.failed_stages = {"bf16": "why"}, {"deploy-bf16": 1.2}
    m.write(tmp_path / MANIFEST)
    assert json.loads((tmp_path / MANIFEST).read_text())["failed"] == {"bf16": "why"}
    listed = listed_model(tmp_path / "net_cv180x_int8.cvimodel")
    assert listed is not None and listed.mode == "int8" and not listed.simulable
    assert listed_model(tmp_path / "other.cvimodel") is None


def test_an_older_or_damaged_manifest(tmp_path: Path) -> None:
    old = {"name": "net", "models": {"int8": {"cvimodel": "a.cvimodel"}, "x": "not a table"}}
    m = Manifest.from_json(old)
    assert list(m.models) == ["int8"] and m.models["int8"].simulable and m.stages == []
    with pytest.raises(ConfigError, match="not a build folder"):
        Manifest.read(tmp_path)
    with pytest.raises(ConfigError, match="schema 2, newer than this duotpu reads"):
        Manifest.from_json({"name": "net", "schema": 2, "versions": {"duotpu": "9.0.0"}})
    (tmp_path / MANIFEST).write_text("{ torn")
    with pytest.raises(ConfigError, match="not a build folder"):
        Manifest.read(tmp_path)
