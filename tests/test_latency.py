"""The latency estimate: command buffers decoded from real cvimodels, and the cost model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli, tiny_recipe
from duotpu import latency
from duotpu.builder import pipeline
from duotpu.cvimodel import cmdbuf


def one_conv(path: Path, ic: int = 3, oc: int = 8, size: int = 32, k: int = 3) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (oc, ic, k, k)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["y"], pads=[k // 2] * 4, name="conv")],
        "one",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, ic, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oc, size, size])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_one_conv_decodes_to_its_exact_work(tmp_path: Path) -> None:
    src = one_conv(tmp_path / "conv.onnx")
    r = pipeline.build(
        tiny_recipe(src, quantize=["int8", "bf16"], **{"inputs": [{"shape": [1, 3, 32, 32]}]}),
        tmp_path / "b",
    )
    # INT8 convs take input channels in pairs (double_conv): 3 channels are padded to 4
    for mode, bytes_per, ic_hw in (("int8", 1, 4), ("bf16", 2, 3)):
        routines = cmdbuf.routines(r.models[mode].cvimodel)
        assert [x.chip for x in routines] == ["cv180x"]
        tiu = [t for x in routines for t in x.tiu]
        tdma = [t for x in routines for t in x.tdma]
        convs = [t for t in tiu if t.kind == "conv"]
        assert convs and all(t.kernel == (3, 3) and t.bf16 == (mode == "bf16") for t in convs)
        # 8 output channels × 32 × 32 positions × 3×3 kernel × the input channels, exactly
        assert sum(t.macs for t in convs) == 8 * 32 * 32 * 9 * ic_hw
        # the input is loaded once, whole (3 × 32 × 32), and the conv's output stored once
        loads = [t.bytes for t in tdma if t.direction == "load"]
        stores = [t.bytes for t in tdma if t.direction == "store"]
        assert loads.count(3 * 32 * 32 * bytes_per) == 1, loads
        assert stores.count(8 * 32 * 32 * bytes_per) == 1, stores
        e = latency.estimate(r.models[mode].cvimodel)
        assert max(e.tiu_ms, e.tdma_ms) <= e.ms <= e.tiu_ms + e.tdma_ms + 1e-9
        assert e.macs == 8 * 32 * 32 * 9 * ic_hw and 0 < e.mac_utilization <= 1
    # a BF16 conv runs on half the EU width: more cycles than the same conv in INT8
    k = latency.CHIPS["cv180x"]
    conv = {
        m: next(t for x in cmdbuf.routines(r.models[m].cvimodel) for t in x.tiu if t.kind == "conv")
        for m in ("int8", "bf16")
    }
    assert latency.tiu_cycles(conv["bf16"], k) > latency.tiu_cycles(conv["int8"], k)
    info = run_cli("info", str(r.models["int8"].cvimodel), "--json", "--layers", "3")
    est = json.loads(info.stdout)["estimate"]
    assert est["ms"] > 0 and est["bound"] in ("compute", "memory")
    assert est["top_layers"][0]["name"]  # names from model_deploy's tensor table


def test_a_multi_batch_model_is_estimated_for_one_program(variant_builds):
    from duotpu.cvimodel import read_cvimodel
    from duotpu.cvimodel.cmdbuf import routines
    from duotpu.latency import constants_for, estimate, simulate

    _, multi = variant_builds
    path = multi.models["bf16"].cvimodel
    info = read_cvimodel(path)
    assert [p.inputs[0].shape[0] for p in info.programs] == [1, 4]
    # before: the estimate summed the bs1 and the bs4 program (one inference runs one)
    assert len(routines(path, info, None)) == 2 * len(routines(path, info, 0))
    k = constants_for(info.chip)
    bs1 = sum(simulate(r, k)[0] for r in routines(path, info, 0))
    assert estimate(path).ms == pytest.approx(bs1 * 1e-3 / k.clock_mhz)
    # chips without fitted constants keep their own lane count
    assert constants_for("cv183x").lanes == 32 and constants_for("cv182x").lanes == 8
