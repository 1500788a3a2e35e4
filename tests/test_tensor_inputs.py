"""Models whose inputs are tensors, not one image: several named inputs of any rank (an audio
chunk and a recurrent state), calibrated and verified on .npz samples, with the real compiler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tinymodels
from conftest import run_cli
from duotpu.onboard.heads import match_names


def test_two_tensor_inputs_build_verify_and_predict(tmp_path: Path) -> None:
    src = tinymodels.audio_state_onnx(tmp_path / "Vad model.onnx")
    samples = tinymodels.audio_state_samples(tmp_path / "samples")
    out = tmp_path / "b"
    r = run_cli(
        "build", str(src), "--name", "vad", "--out", str(out), "--calib-images", str(samples)
    )
    assert r.returncode == 0, r.stderr + r.stdout
    said = " ".join(r.stdout.split())
    assert "'audio' [N, 576] → [1, 576]" in said  # the free batch, settled and said
    assert "verifying on 4 samples" in said and "on 4 samples: mean cosine" in said
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["inputs"] == [
        {"name": "audio", "shape": [1, 576]},
        {"name": "state", "shape": [2, 1, 128]},
    ]
    assert manifest["recipe"]["calibration"]["images"] == str(samples)  # the user's folder
    for mode in ("int8", "bf16"):
        cos = manifest["models"][mode]["cosine_vs_fp32"]
        assert set(cos) == {"prob", "new_state"} and min(cos.values()) > 0.99, (mode, cos)
        assert manifest["models"][mode]["fits"]["Duo"] is True
    report = (out / "report.html").read_text()
    assert "On the test input" in report and "audio 1×576, state 2×1×128" in report

    model = out / "vad_cv180x_int8.cvimodel"
    r = run_cli("predict", str(model), str(samples / "s03.npz"), "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    outs = {o["name"]: o for o in json.loads(r.stdout)["results"][0]["outputs"]}
    assert outs["prob"]["shape"] == [1, 16] and outs["prob"]["cosine_vs_fp32"] > 0.99
    assert outs["new_state"]["cosine_vs_fp32"] > 0.99
    # evaluation on a folder of samples: each output against fp32
    r = run_cli("eval", str(out), "--images", str(samples))
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["images"] == 8 and set(report["modes"]) == {"int8", "bf16"}
    assert min(report["modes"]["int8"]["cosine_worst"].values()) > 0.99
    # the board app (numpy + the CVI runtime's C API): the same outputs as the host's predict
    r = run_cli("app", str(out), "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    app = Path(json.loads(r.stdout)["folder"])
    doc = _run_app(app, samples / "s03.npz", "--save", tmp_path / "board.npz")
    host = dict(np.load(_predict_npz(model, samples / "s03.npz", tmp_path)))
    got = doc["results"][0]["result"]  # by the compiler's names (prob_Sigmoid_f32)
    names = match_names(list(host), list(got))
    assert all(names.values()) and len(got) == 2, (names, list(got))
    with np.load(tmp_path / "board.npz") as board:
        for name, v in host.items():  # bit for bit (the cvimodel keeps 4-dim shapes)
            assert np.array_equal(board[f"0/{names[name]}"].ravel(), v.ravel()), name
    r = run_cli("app", str(out), "--c")
    assert r.returncode == 2 and "The C app reads images, and vad takes tensors" in r.stderr
    np.savez(tmp_path / "half.npz", audio=np.zeros((1, 576), np.float32))  # no state
    r = run_cli("predict", str(model), str(tmp_path / "half.npz"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "feeds audio; the model's inputs are audio, state" in " ".join(r.stderr.split())


def test_mixed_precision_measures_a_tensor_model_on_its_samples(tmp_path: Path) -> None:
    """``--target`` on a model of tensor inputs: the search measures every candidate on .npz
    samples of the inputs (the calibration folder's, when no --mix-images), and the mixed
    model is delivered and verified like the others."""
    from duotpu import build
    from duotpu.builder import mixing
    from duotpu.config.errors import ConfigError
    from duotpu.config.recipe import recipe_from_dict

    src = tinymodels.audio_state_onnx(tmp_path / "vad.onnx")
    samples = tinymodels.audio_state_samples(tmp_path / "samples", n=10)
    recipe = recipe_from_dict(
        {
            "name": "vad",
            "model": {"source": str(src)},
            "quantize": ["int8"],
            "calibration": {"images": str(samples), "count": 6},
            "mix": {"target": "cos>=0.99999", "count": 4},
        }
    )
    # the samples calibration did not read (it reads the first 6 of 10)
    assert [p.name for p in mixing.validation_samples(recipe)] == [
        "s06.npz", "s07.npz", "s08.npz", "s09.npz"
    ]  # fmt: skip
    result = build(recipe, out_dir=tmp_path / "b")
    mixed = result.models["mix"]
    assert mixed.cvimodel.is_file() and set(mixed.cosine) == {"prob", "new_state"}
    assert min(mixed.cosine.values()) >= min(result.models["int8"].cosine.values())
    table = (tmp_path / "b" / "vad.mix.md").read_text()
    # pure INT8 (cos ~0.9998 on the samples) misses the target: the search kept BF16 layers
    assert "| 1 |  | pure INT8 | 0 |" in table and "sensitivity: region 1" in table
    chosen = next(line for line in table.splitlines() if "| → |" in line)
    assert int(chosen.split("|")[4]) > 0
    with pytest.raises(ConfigError, match="fast_search"):
        recipe_from_dict(
            {
                "name": "vad",
                "model": {"source": str(src)},
                "inputs": [{"name": "audio", "shape": [1, 576]}, {"name": "state"}],
                "mix": {"target": "cos>=0.99", "fast_search": True},
            }
        )


def _run_app(app: Path, *args: Path | str) -> dict:
    import subprocess
    import sys

    from duotpu.compiler.env import tool_env

    env = tool_env()
    env.pop("PYTHONPATH", None)
    r = subprocess.run(
        [sys.executable, "-I", str(app / "main.py"), *map(str, args), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _predict_npz(model: Path, sample: Path, tmp_path: Path) -> Path:
    target = tmp_path / "host.npz"
    r = run_cli("predict", str(model), str(sample), "--save", str(target))
    assert r.returncode == 0, r.stderr + r.stdout
    return target


def test_calibration_data_by_input_name_and_what_a_tensor_model_needs(tmp_path: Path) -> None:
    from duotpu import build
    from duotpu.config.errors import DataError
    from duotpu.config.recipe import recipe_from_dict

    src = tinymodels.audio_state_onnx(tmp_path / "vad.onnx")
    recipe = recipe_from_dict({"name": "vad", "model": {"source": str(src)}, "quantize": ["int8"]})
    # the built-in photos are no calibration set for audio: refused before any compiler step
    with pytest.raises(DataError, match=r"inputs are tensors.*has no .npz files.*audio=…, state=…"):
        build(recipe, out_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before anything is made

    rng = np.random.default_rng(3)
    data = [
        {"state": rng.normal(0, 0.5, (2, 1, 128)), "audio": rng.normal(0, 1, (576,))}
        for _ in range(6)
    ]  # any order of names; the batch dim may be left out
    result = build(recipe, out_dir=tmp_path / "py", calibration_data=data)
    art = result.models["int8"]
    assert min(art.cosine.values()) > 0.99 and len(art.per_image) == 4
    assert art.cvimodel.is_file() and art.estimate is not None


def test_an_lstm_calibrates_on_every_sample_and_around_the_tuner(tmp_path: Path) -> None:
    """Inputs whose first dims differ (x [20, 1, 16], h0 [1, 1, 32]) calibrate sample by sample,
    and tpu_mlir's tuner, which stops on the LSTM's outputs, is left out with a warning."""
    src = tinymodels.lstm_onnx(tmp_path / "lstm.onnx")
    rng = np.random.default_rng(5)
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(6):
        np.savez(
            samples / f"{i}.npz",
            x=rng.normal(0, 1, (20, 1, 16)),
            h0=rng.normal(0, 0.5, (1, 1, 32)),
            c0=rng.normal(0, 0.5, (1, 1, 32)),
        )
    out = tmp_path / "b"
    r = run_cli(
        "build", str(src), "--out", str(out), "--quantize", "int8", "--calib-images", str(samples)
    )
    assert r.returncode == 0, r.stderr + r.stdout
    said = " ".join(r.stdout.split())
    assert "threshold tuning stopped at hs_Reshape" in said and "tune_num = 0" in said
    table = next((out / "work" / "calibrate").glob("*_cali_table")).read_text()
    assert "# sample number: 6" in table  # every sample, not one per 20 files
    manifest = json.loads((out / "manifest.json").read_text())
    assert min(manifest["models"]["int8"]["cosine_vs_fp32"].values()) > 0.99


def test_one_input_that_is_not_an_image_builds_by_its_own_name(tmp_path: Path) -> None:
    """A feature vector [1, 64] (the graph calls it x): samples are keyed by that name."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.normal(0, 0.2, (64, 50)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["p"])],
        "feat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 50])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "feat.onnx"))
    samples = tmp_path / "s"
    samples.mkdir()
    for i in range(5):
        np.save(samples / f"{i}.npy", rng.normal(0, 1, (1, 64)).astype(np.float32))  # .npy
    out = tmp_path / "b"
    r = run_cli(
        "build", str(tmp_path / "feat.onnx"), "--out", str(out), "--calib-images", str(samples)
    )
    assert r.returncode == 0, r.stderr + r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["inputs"] == [{"name": "x", "shape": [1, 64]}]
    assert manifest["recipe"]["task"] == "classify"  # 50 class scores
    assert min(manifest["models"]["int8"]["cosine_vs_fp32"].values()) > 0.98


def test_a_cut_whose_rest_reads_a_model_input_runs_on_the_cpu(tmp_path: Path) -> None:
    """The way around a layer the compiler translates differently in a recurrent model: cut
    before it, though the rest reads the model's state input too (host, and the board app)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "w")
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "w"], ["m"]),
            helper.make_node("Relu", ["m"], ["h"]),
            helper.make_node("Add", ["h", "state"], ["z"]),
            helper.make_node("Tanh", ["z"], ["out"]),
        ],
        "rec",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 4]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "rec.onnx"))
    samples = tmp_path / "s"
    samples.mkdir()
    for i in range(6):
        np.savez(samples / f"{i}.npz", a=rng.normal(0, 1, (1, 8)), state=rng.normal(0, 1, (1, 4)))
    out = tmp_path / "b"
    r = run_cli(
        "build", str(tmp_path / "rec.onnx"), "--out", str(out), "--calib-images", str(samples),
        "--cut-at", "h", "--quantize", "bf16",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["bf16"]["cosine_vs_fp32"]["out"] > 0.99
    model = out / "rec_cv180x_bf16.cvimodel"
    weights = numpy_helper.to_array(w)
    k = max(
        range(6), key=lambda i: np.maximum(np.load(samples / f"{i}.npz")["a"] @ weights, 0).sum()
    )
    sample = samples / f"{k}.npz"  # one where the TPU part's output is not all zero
    host = dict(np.load(_predict_npz(model, sample, tmp_path)))
    x = dict(np.load(sample))
    want = np.tanh(np.maximum(x["a"] @ weights, 0) + x["state"])
    assert np.abs(want - np.tanh(x["state"])).max() > 0.05  # the TPU part counts
    np.testing.assert_allclose(host["out"], want, atol=0.02)
    r = run_cli("app", str(out), "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    app = Path(json.loads(r.stdout)["folder"])
    _run_app(app, sample, "--save", tmp_path / "board.npz")
    with np.load(tmp_path / "board.npz") as board:
        np.testing.assert_allclose(board["0/out"].ravel(), host["out"].ravel(), atol=1e-5)


def test_silero_vads_lstm_difference_names_the_layer_and_carries_its_cut(tmp_path: Path) -> None:
    """silero-vad 6.2.3's trained ONNX (its package, installed without its torch
    requirements): the compiler's fp32 LSTM differs from ONNX Runtime's; the error names the
    LSTM behind the Squeeze that shows it, and carries the cut before it for a program to
    take (``ToleranceError.cut_at``), which the rest of the model can run from."""
    import importlib.util

    from duotpu import ToleranceError, build, recipe_from_dict

    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None and spec.submodule_search_locations, "make install adds silero-vad"
    src = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad_16k_op15.onnx"
    rng = np.random.default_rng(0)
    samples = tmp_path / "chunks"
    samples.mkdir()
    for i in range(4):
        np.savez(
            samples / f"c{i}.npz",
            input=(rng.normal(0, 0.1, (1, 512))).astype(np.float32),
            state=np.zeros((2, 1, 128), np.float32),
        )
    recipe = recipe_from_dict(
        {
            "name": "silero",
            "model": {"source": str(src), "constants": {"sr": 16000}},
            "inputs": [
                {"name": "input", "shape": [1, 512]},
                {"name": "state", "shape": [2, 1, 128]},
            ],
            "calibration": {"images": str(samples), "count": 4},
            "quantize": ["bf16"],
        }
    )
    with pytest.raises(ToleranceError) as e:
        build(recipe, out_dir=tmp_path / "b")
    assert "model_transform" in e.value.what
    assert "'/model/decoder/rnn/LSTM' (LSTM)" in str(e.value), str(e.value)
    assert e.value.cut_at == "/model/decoder/rnn/Unsqueeze_3_output_0"
    assert f"--cut-at {e.value.cut_at} (model.outputs)" in str(e.value)
