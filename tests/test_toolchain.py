"""The toolchain module: the glibc fix, tool runs, failures with the log's tail."""

import os
import platform
import subprocess
from pathlib import Path

import pytest

import tinymodels
from duotpu import compiler
from duotpu.config.errors import ModelError, ToolchainError


def _system_glibc() -> tuple[int, int]:
    major, minor = platform.libc_ver()[1].split(".")[:2]
    return int(major), int(minor)


def test_env_preloads_system_glibc():
    env = compiler.tool_env()
    preload = env["LD_PRELOAD"].split()
    assert [Path(p).name for p in preload[-3:]] == ["libc.so.6", "libm.so.6", "libpthread.so.0"]
    assert all("tpu_mlir" not in p and Path(p).exists() for p in preload)
    # idempotent: building the env from an env that already has the fix adds nothing
    again = compiler.tool_env({})
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"]
    os.environ["LD_PRELOAD"] = env["LD_PRELOAD"]
    try:
        assert compiler.tool_env()["LD_PRELOAD"] == env["LD_PRELOAD"]
    finally:
        del os.environ["LD_PRELOAD"]


def test_compiler_binary_and_python_tools_start(tmp_path):
    # model_tool without arguments prints its usage (exit 1); it must not crash in the loader
    with pytest.raises(ToolchainError) as e:
        compiler.run_tool("probe", "model_tool", [], tmp_path, tmp_path / "mt.log")
    log = (tmp_path / "mt.log").read_text()
    assert "--info" in log and "stack smashing" not in log and "GLIBC_" not in log
    assert e.value.returncode > 0  # an ordinary exit, not a signal from the loader
    compiler.run_tool("probe", "model_transform", ["-V"], tmp_path, tmp_path / "v.log")
    assert "v1.30" in (tmp_path / "v.log").read_text()


@pytest.mark.skipif(_system_glibc() <= (2, 35), reason="the bundled glibc only breaks on > 2.35")
def test_without_the_fix_the_bundled_glibc_breaks_tools(tmp_path):
    """Documents the trap the fix is for: the same tool without our LD_PRELOAD dies."""
    env = compiler.tool_env()
    env.pop("LD_PRELOAD")
    proc = subprocess.run(
        compiler.tool_argv("model_tool", []), env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "stack smashing" in proc.stderr or "GLIBC_" in proc.stderr


def test_failure_carries_log_tail_and_path(tmp_path):
    with pytest.raises(ToolchainError) as e:
        compiler.run_tool(
            "transform",
            "model_transform",
            ["--model_name", "x", "--model_def", str(tmp_path / "none.onnx"), "--mlir", "x.mlir"],
            tmp_path,
            tmp_path / "logs/t.log",
        )
    err = e.value
    assert err.log_path == tmp_path / "logs/t.log" and err.log_path.exists()
    assert err.tail and err.tail.splitlines()[-1] in err.log_path.read_text()
    assert "transform" in str(err) and str(err.log_path) in str(err)


def test_unsupported_op_names_op_and_layer(tmp_path):
    from duotpu.config.recipe import Preprocess

    onnx_path = tinymodels.tiny_onnx(tmp_path / "det.onnx", extra_op="Hardmax")
    with pytest.raises(ModelError) as e:
        compiler.transform(
            "det",
            onnx_path,
            [[1, 3, 32, 32]],
            tmp_path / "t",
            tmp_path / "t.log",
            preprocess=Preprocess(),
            test_input=None,
            tolerance=(0.99, 0.99),
        )
    assert "Hardmax" in str(e.value) and "my_Hardmax" in str(e.value)


def test_the_cvimodel_readers_code_is_made_at_install_and_remade_for_another_schema(
    tmp_path, monkeypatch
):
    """`make install`'s selfcheck writes flatc's code once; reading a cvimodel starts no
    process, and a reader without the code says how to make it."""
    from duotpu.compiler import fbsgen
    from duotpu.config.errors import SetupError
    from duotpu.cvimodel import schema

    monkeypatch.setattr(schema, "PACKAGED", tmp_path / "pkg" / "generated")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "pkg").mkdir()
    monkeypatch.delitem(__import__("sys").modules, "cvi.model.Model", raising=False)
    with pytest.raises(SetupError, match=r"python -m duotpu.compiler.selfcheck"):
        schema.model_class()
    folder = fbsgen.generate_cvimodel_code()
    assert folder == schema.PACKAGED and (folder / "cvi/model/Model.py").is_file()
    digest = schema.generated_digest(folder)
    assert len(digest) == 64
    # the same schema: nothing is run again; a stamp of another schema: the code is remade
    mtime = (folder / "cvi/model/Model.py").stat().st_mtime_ns
    assert fbsgen.generate_cvimodel_code() == folder
    assert (folder / "cvi/model/Model.py").stat().st_mtime_ns == mtime
    (folder / schema.STAMP).write_text("0" * 64 + "\n")
    assert fbsgen.generate_cvimodel_code() == folder
    assert schema.generated_digest(folder) == digest
    assert not list(folder.parent.glob(".generated*"))  # no half-made folder left
    assert schema.model_class().__name__ == "Model"
