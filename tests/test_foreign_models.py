"""Models other exporters wrote, built end to end with the real compiler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tinymodels
from conftest import run_cli, tiny_recipe
from duotpu.config.errors import ToleranceError


def test_a_current_ultralytics_style_export_builds_without_a_shape(tmp_path: Path) -> None:
    src = tinymodels.current_export_onnx(tmp_path / "exported.onnx")
    out = tmp_path / "b"
    r = run_cli(
        "build", str(src), "--name", "cur", "--out", str(out), "--quantize", "int8,bf16",
        "--calib-count", "8", "--mean", "0.5", "--std", "0.25",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    said = " ".join(r.stdout.split())
    assert "IR version 10 rewritten" in said
    assert "imgsz metadata [32, 32]" in said
    assert "Gelu" in said and "opset 21 lowered to 19" in said
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["inputs"][0]["shape"] == [1, 3, 32, 32]
    for mode in ("int8", "bf16"):
        cos = manifest["models"][mode]["cosine_vs_fp32"]["logits"]
        assert cos > 0.99, (mode, cos)
    export = next(s for s in manifest["stages"] if s["name"] == "export")
    assert any("IR version 10" in n for n in export["result"]["notes"])


def test_a_softmax_too_large_for_cv180x_is_explained_and_the_ways_checked(
    tmp_path: Path,
) -> None:
    from conftest import tiny_recipe
    from duotpu.builder import pipeline
    from duotpu.config.errors import BuildFailed, CompilerFailure

    src = tinymodels.tiny_onnx(tmp_path / "sm.onnx", classes=6600, extra_op="Softmax")
    try:  # the explanation, without the cuts the build would try (the next test)
        pipeline.build(tiny_recipe(src, **{"model.try_cuts": 0}), tmp_path / "b")
        raise AssertionError("a 6600-way Softmax compiled for cv180x")
    except BuildFailed as e:
        errors = e.errors
    assert len(errors) == 2  # INT8 and BF16 both stop in the same kernel
    for err, mode in zip(errors, ("INT8", "BF16")):
        assert isinstance(err, CompilerFailure), err
        assert err.failure.op == "Softmax"
        assert [ly.name for ly in err.failure.layers] == ["logits_Softmax"]
        text = str(err)
        assert f"in its {mode} kernel" in text and "32 KB" in text
        assert "cv181x" in text and "tried, it compiles" in text  # the deploy for cv181x ran
        assert "--cut-at pre" in text  # the tensor before the Softmax
    assert not list((tmp_path / "b").glob("*.cvimodel"))
    # the way around it, as the user runs it next: the cut takes the calibration of the whole
    # model (its layers, weights and images are the whole model's) instead of calibrating again
    events: list = []
    r = pipeline.build(
        tiny_recipe(src, **{"model.outputs": ["pre"]}), tmp_path / "b", events=events.append
    )
    said = [e.message for e in events if e.stage == "calibrate" and e.status == "info"]
    assert said and "taken from the table of the model this one is cut from" in said[0], said
    calibrate = next(s for s in r.stages if s.name == "calibrate")
    assert not calibrate.cached and calibrate.seconds < 2.0
    assert not (calibrate.folder / "calibrate.log").exists()  # run_calibration did not run
    assert r.models["int8"].cosine["logits"] > 0.99  # and the table serves the cut model
    # another preprocessing changes the thresholds: calibrated afresh
    events.clear()
    r2 = pipeline.build(
        tiny_recipe(src, **{"model.outputs": ["pre"], "preprocess.mean": [0.4, 0.4, 0.4]}),
        tmp_path / "b",
        events=events.append,
    )
    assert not [e for e in events if e.stage == "calibrate" and e.status == "info"]
    assert (next(s for s in r2.stages if s.name == "calibrate").folder / "calibrate.log").exists()


def test_the_build_tries_the_cuts_itself_and_delivers_the_best(tmp_path: Path) -> None:
    """The same 6600-way Softmax with the default ``model.try_cuts``: the build cuts the model
    itself, at the tensor its error names and at the ones before it, verifies each (the
    calibration shared) and delivers the best, saying every candidate's numbers."""
    from conftest import tiny_recipe
    from duotpu.builder import pipeline

    src = tinymodels.tiny_onnx(tmp_path / "sm.onnx", classes=6600, extra_op="Softmax")
    events: list = []
    r = pipeline.build(tiny_recipe(src), tmp_path / "b", events=events.append)
    said = [e.message for e in events if e.status == "info" and e.stage.startswith("cut")]
    assert "trying the TPU model cut at pre" in said[0], said
    assert len(r.tried_cuts) >= 2 and r.tried_cuts[0].startswith("pre verified (worst cos")
    assert r.recipe.model.outputs == ("pre",)  # all verify alike: the most left on the TPU
    assert len(r.tried_cuts) == 3 and "gap verified" in r.tried_cuts[1]
    assert "delivering the cut at pre" in said[-1]
    for mode, art in r.models.items():  # the whole model's output, the Softmax on the CPU
        assert art.cosine["logits"] > 0.99, mode
    assert (tmp_path / "b" / "tiny.tail.onnx").is_file()
    written = (tmp_path / "b" / "tiny.recipe.toml").read_text()
    assert "outputs = [\n" in written and '"pre",' in written, written
    # the candidates' own builds stay in the work folder, not beside the delivered model
    assert sorted(p.name for p in (tmp_path / "b").glob("*.cvimodel")) == [
        "tiny_cv180x_bf16.cvimodel",
        "tiny_cv180x_int8.cvimodel",
    ]
    # the delivered cut took the whole model's calibration table: run_calibration ran once
    infos = [e.message for e in events if e.stage == "calibrate" and e.status == "info"]
    assert infos and all("taken from the table" in m for m in infos), infos
    calibrate = next(s for s in r.stages if s.name == "calibrate")
    assert not (calibrate.folder / "calibrate.log").exists() and calibrate.seconds < 2.0
    # a mixed-precision target: the candidates are compared without it, the delivered cut
    # runs the search (once)
    m = pipeline.build(
        tiny_recipe(
            src,
            quantize=["int8"],
            **{"mix.target": "cos>=0.99", "mix.count": 4, "model.try_cuts": 2},
        ),
        tmp_path / "mixcut",
    )
    assert m.mix is not None and m.recipe.model.outputs == ("pre",)
    assert len(m.tried_cuts) == 2
    cuts = tmp_path / "mixcut" / "work" / "cuts"
    assert sorted(p.name for p in cuts.glob("cut*")) == ["cut0", "cut1"]
    assert not list(cuts.glob("cut*/**/mix/stage.json")), "a candidate ran the search"
    # when no cut verifies: the error says each one's numbers, the flags for the closest and
    # where the first failure's log is kept (the cuts' stages replaced its folder)
    from duotpu.config.errors import DuoTpuError

    with pytest.raises(DuoTpuError) as e:
        pipeline.build(
            tiny_recipe(
                src, quantize=["int8"], **{"tolerance.verify_int8": 0.9999999, "model.try_cuts": 2}
            ),
            tmp_path / "strict",
        )
    text = str(e.value)
    assert "none verified: pre below the tolerance (worst cos" in text, text
    assert "The closest is the cut at" in text and "--verify-int8 0.9" in text
    kept = text.split("The log of the first failure is kept as ")[1].rstrip(".")
    assert "Assertion" in Path(kept).read_text()
    assert not list((tmp_path / "strict").glob("*.cvimodel"))


def test_a_partial_build_delivers_the_verified_mode(tmp_path: Path) -> None:
    src = tinymodels.tiny_onnx(tmp_path / "t.onnx")
    out = tmp_path / "b"
    stale = out / "t_cv180x_int8.cvimodel"
    out.mkdir()
    stale.write_bytes(b"from an earlier build")
    r = run_cli(
        "build", str(src), "--name", "t", "--out", str(out), "--calib-count", "8",
        "--verify-int8", "0.9999999",
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "partial build: delivered BF16" in " ".join(r.stderr.split())
    assert (out / "t_cv180x_bf16.cvimodel").is_file() and not stale.exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["models"]) == ["bf16"]
    assert "cosine" in manifest["failed"]["int8"]
    # no preprocessing flags at all: the likely cause is named before calibration advice
    assert manifest["failed"]["int8"].index("First check the preprocessing") < manifest["failed"][
        "int8"
    ].index("calibration")
    # the failed mode's stages are in the record: the deploy that ran, the verify that failed
    assert "deploy-int8" in [s["name"] for s in manifest["stages"]]
    assert "verify-int8" in manifest["failed_stages"]
    report = (out / "report.html").read_text()
    assert "deploy-int8" in report and "verify-int8" in report and ">failed<" in report
    info = run_cli("info", str(out / "t_cv180x_bf16.cvimodel"))
    assert info.returncode == 0 and "bf16" in info.stdout.lower()


def test_verification_uses_the_users_own_images(tmp_path: Path) -> None:
    from duotpu.builder import pipeline
    from duotpu.core import images

    own = tmp_path / "own"
    images.write_calibration_set(own, 6, seed=5)
    (own / "notes.txt").write_text("not an image")
    r = pipeline.build(
        tiny_recipe(tinymodels.tiny_onnx(tmp_path / "t.onnx"), **{"calibration.images": str(own)}),
        tmp_path / "b",
    )
    assert r.test_image_path is not None and r.test_image_path.parent == own
    for mode, art in r.models.items():
        assert len(art.per_image) == pipeline.VERIFY_IMAGES, mode
        assert min(art.per_image) <= min(art.cosine.values()) <= max(art.per_image)
    manifest = json.loads(r.manifest.read_text())
    assert manifest["models"]["int8"]["verified_images"] == pipeline.VERIFY_IMAGES
    # a folder given as the test image: the same, from that folder; the cat only when asked for
    folder = tmp_path / "pages"
    images.write_calibration_set(folder, 2, seed=9)
    picked = pipeline.test_images(tiny_recipe(tmp_path / "t.onnx", test_image=str(folder)), own)
    assert [p.parent for p in picked] == [folder, folder]
    # all of a given folder is verified (not 4 of it), and its worst image decides
    images.write_calibration_set(folder, 7, seed=9)
    strict = tiny_recipe(
        tmp_path / "t.onnx", test_image=str(folder), quantize=["bf16"], name="tfolder"
    )
    assert len(pipeline.test_images(strict, tmp_path / "in")) == 7
    built = pipeline.build(strict, tmp_path / "f")
    per = built.models["bf16"].per_image
    assert len(per) == 7
    between = (min(per) + float(np.mean(per))) / 2  # passes on the mean, not on the worst
    if min(per) < between < float(np.mean(per)):
        with pytest.raises(ToleranceError, match="worst over 7 images"):
            pipeline.build(
                tiny_recipe(
                    tmp_path / "t.onnx",
                    test_image=str(folder),
                    quantize=["bf16"],
                    name="tfolder",
                    **{"tolerance.verify_bf16": between},
                ),
                tmp_path / "f",
            )
    cat = pipeline.test_images(tiny_recipe(tmp_path / "t.onnx"), tmp_path / "inputs")
    assert [p.name for p in cat] == ["chelsea.png"]


def test_cut_at_runs_the_tail_on_the_cpu_and_checks_the_whole_model(tmp_path: Path) -> None:
    import onnxruntime as ort

    from duotpu.builder import pipeline
    from duotpu.inference import runtime

    # the 6600-way Softmax cv180x cannot compile (see above), cut off and run on the CPU
    src = tinymodels.tiny_onnx(tmp_path / "sm.onnx", classes=6600, extra_op="Softmax")
    r = pipeline.build(tiny_recipe(src, **{"model.outputs": ["pre"]}), tmp_path / "b")
    tail = tmp_path / "b" / "tiny.tail.onnx"
    assert tail.is_file()
    assert [i.name for i in ort.InferenceSession(str(tail)).get_inputs()] == ["pre"]
    manifest = json.loads(r.manifest.read_text())
    assert manifest["tail"] == "tiny.tail.onnx"
    for mode, art in r.models.items():  # verified on the whole model's output
        assert list(art.cosine) == ["logits"] and art.cosine["logits"] > 0.99, mode
        assert np.isclose(art.outputs["logits"].sum(), 1.0, atol=1e-3)  # the Softmax ran
    # predict: the cvimodel on the simulator, then the tail: the whole model's outputs
    model = runtime.open_model(tmp_path / "b" / "tiny_cv180x_int8.cvimodel")
    assert model.output_names == ["logits"] and model.compiled_output_names != ["logits"]
    x = runtime.tensors_for(model, [r.test_image_path])
    got = runtime.infer(model, x)[0]["logits"]
    ref = runtime.fp32_reference(model, x)[0][0]
    assert got.shape == ref.shape == (1, 6600)
    assert (
        float(np.dot(got.ravel(), ref.ravel())) / (np.linalg.norm(got) * np.linalg.norm(ref)) > 0.99
    )
    # a cut at a tensor the graph does not have names near ones
    bad = run_cli("build", str(src), "--cut-at", "prre", "--out", str(tmp_path / "c"))
    assert bad.returncode == 1 and "'prre'" in bad.stderr and "pre" in bad.stderr


def test_a_model_that_is_not_a_classifier_is_shown_as_tensors(tmp_path: Path) -> None:
    src = tinymodels.two_output_onnx(tmp_path / "two.onnx")
    out = tmp_path / "b"
    r = run_cli("build", str(src), "--name", "two", "--out", str(out), "--calib-count", "8")
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "task: generic" in said and "class" not in said.replace("class scores", "")
    assert "mask" in said and "1×4×32×32" in said and "INT8 cos" in said
    assert 'task = "generic"' in (out / "two.recipe.toml").read_text()
    # a generic model's summary gives its board memory, fit and estimated time too
    assert "INT8: ION" in said and "Duo ✓" in said and "ms on the board" in said
    fits = json.loads((out / "manifest.json").read_text())["models"]["int8"]["fits"]
    assert fits == {"Duo": True}
    img = out / "work" / "inputs" / "chelsea.png"
    p = run_cli(
        "predict", str(out / "two_cv180x_int8.cvimodel"), str(img), "--save",
        str(tmp_path / "o.npz"), "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)["results"][0]
    assert [o["name"] for o in res["outputs"]] == ["mask", "box"]
    assert all(o["cosine_vs_fp32"] > 0.99 for o in res["outputs"])
    with np.load(tmp_path / "o.npz") as z:
        assert {k: z[k].shape for k in z.files} == {"mask": (1, 4, 32, 32), "box": (1, 4)}
    # one .npz for two inputs is refused (it made a folder named many.npz/)
    many = run_cli(
        "predict", str(out / "two_cv180x_int8.cvimodel"), str(img), str(img), "--save",
        str(tmp_path / "many.npz"),
    )  # fmt: skip
    assert many.returncode == 2 and "names one .npz file" in many.stderr, many.stderr
    assert not (tmp_path / "many.npz").exists()
    imgs = tmp_path / "imgs"
    from duotpu.core import images

    images.write_calibration_set(imgs, 3, seed=2)
    e = run_cli("eval", str(out), "--images", str(imgs))
    assert e.returncode == 0, e.stderr
    data = json.loads((out / "eval" / "report.json").read_text())
    assert data["task"] == "generic" and set(data["modes"]) == {"int8", "bf16"}
    for d in data["modes"].values():
        assert set(d["cosine_mean"]) == {"mask", "box"}
        assert all(d["cosine_worst"][n] <= d["cosine_mean"][n] for n in d["cosine_mean"])
    # the report shows each worst image itself, named, with the outputs it was worst for
    html = (out / "eval" / "report.html").read_text()
    worst = {Path(p).name for d in data["modes"].values() for p in d["worst_image_path"].values()}
    assert "The worst images" in html and html.count("<img") >= len(worst) >= 1
    assert all(name in html for name in worst)


@pytest.mark.slow
def test_a_model_the_simulator_cannot_load_is_checked_on_its_mlir(tmp_path: Path) -> None:
    """ResNet50 for cv180x: model_deploy writes the cvimodel, then the CV18xx simulator aborts
    loading it (a command buffer beyond its reserve). duotpu verifies it on the quantized MLIR
    model_deploy already ran, says so, and predict runs there too."""
    out = tmp_path / "b"
    r = run_cli(
        "build", "torchvision:resnet50", "--name", "r50", "--out", str(out), "--quantize",
        "int8", "--calib-count", "2", "--mean", "0.485,0.456,0.406", "--std",
        "0.229,0.224,0.225",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    said = " ".join((r.stdout + r.stderr).split())
    assert "simulator cannot load this cvimodel" in said
    entry = json.loads((out / "manifest.json").read_text())["models"]["int8"]
    assert (
        entry["verified_on"].startswith("quantized MLIR")
        and entry["cosine_vs_fp32"]["output"] > 0.9
    )
    p = run_cli(
        "predict", str(out / "r50_cv180x_int8.cvimodel"), str(out / "work/inputs/chelsea.png")
    )
    assert p.returncode == 0 and "quantized MLIR" in p.stdout, p.stderr
