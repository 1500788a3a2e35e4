"""`duotpu info`: the cvimodel reader against the compiler's own `model_tool --info`."""

import json
import re

import pytest

from conftest import run_cli
from duotpu import compiler, cvimodel
from duotpu.config.errors import ModelError


def _model_tool_ion(path, tmp_path):
    return compiler.model_tool_info(path, tmp_path / f"{path.stem}.log")


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_info_matches_model_tool(tiny_build, tmp_path, mode):
    path = tiny_build.models[mode].cvimodel
    info = cvimodel.read_cvimodel(path)
    ref = _model_tool_ion(path, tmp_path)
    assert f"{info.ion_mb:.2f}" == f"{ref.ion_mb:.2f}"
    assert info.version == ref.version == "1.4.0"
    assert info.chip == ref.chip == "cv180x"
    text = ref.text
    for s in info.sections:  # every section line of model_tool appears with our size/offset
        assert any(
            s.name in ln and str(s.size) in ln and str(s.offset) in ln for ln in text.splitlines()
        ), s
    p = info.programs[0]
    assert [t.name for t in p.inputs] == ["input"] and p.inputs[0].shape == [1, 3, 32, 32]
    assert p.outputs[0].shape[:2] == [1, 10]
    import re

    assert int(re.search(r"shared_gmem_size\s*:\s*(\d+)", text).group(1)) == p.shared_gmem
    assert int(re.search(r"private_gmem_size\s*:\s*(\d+)", text).group(1)) == p.private_gmem


def test_info_fit_verdicts(tiny_build):
    info = cvimodel.read_cvimodel(tiny_build.models["int8"].cvimodel)
    fit = cvimodel.board_fit(info)
    assert fit["duo"]["fits"] and not fit["duo256m"]["fits"]
    assert "cv181x" in fit["duo256m"]["verdict"]
    tight = cvimodel.board_fit(info, {"duo": info.ion_mb / 2})
    assert not tight["duo"]["fits"] and "needs" in tight["duo"]["verdict"]


def test_corrupt_and_truncated_files(tiny_build, tmp_path):
    data = tiny_build.models["int8"].cvimodel.read_bytes()
    (tmp_path / "trunc.cvimodel").write_bytes(data[: len(data) - 100])
    (tmp_path / "short.cvimodel").write_bytes(data[:200])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "flip.cvimodel").write_bytes(bytes(flipped))
    (tmp_path / "text.cvimodel").write_text("hello")
    for name, needle in [
        ("trunc", "corrupt or truncated"),
        ("short", "truncated"),
        ("flip", "md5"),
        ("text", "not a cvimodel"),
    ]:
        with pytest.raises(ModelError, match=needle):
            cvimodel.read_cvimodel(tmp_path / f"{name}.cvimodel")
    proc = run_cli("info", str(tmp_path / "flip.cvimodel"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "md5" in proc.stderr


def test_info_cli(tiny_build):
    path = tiny_build.models["bf16"].cvimodel
    proc = run_cli("info", str(path), "--json", "--ion", "duo=0.01")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["chip"] == "cv180x" and data["programs"][0]["inputs"][0]["name"] == "input"
    assert data["fit"]["duo"]["fits"] is False and data["fit"]["duo"]["ion_mb_assumed"] == 0.01
    human = run_cli("info", str(path))
    assert human.returncode == 0 and "board memory (ION) needed" in human.stdout
    # the parts add up to the total, each named in words
    text = " ".join(human.stdout.split())
    line = text.split("board memory (ION) needed:", 1)[1].split("program 0", 1)[0]
    total = int(re.search(r"\((\d+) B\) =", line).group(1))
    parts = [int(v) for v in re.findall(r"(\d+) B(?! \))", line.split("=", 1)[1])]
    assert len(parts) == 5 and sum(parts) == total, line
    assert "input/output buffers" in line and "runs a" in text
    # the output by its ONNX name (the compiler's name beside it)
    assert re.search(r"out\s+│\s+logits\s+│", human.stdout) and "(logits_" in human.stdout
    bad = run_cli("info", str(path), "--ion", "pi=3")
    assert bad.returncode == 2 and "duo256m" in bad.stderr
