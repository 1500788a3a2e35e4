"""Host inference (`duotpu predict`), the fast eval path, and `duotpu eval`."""

import json

import numpy as np
import pytest

from conftest import run_cli
from duotpu import compiler
from duotpu.config.errors import ConfigError
from duotpu.core import metrics
from duotpu.core.images import write_calibration_set
from duotpu.eval import evaluate
from duotpu.inference import runtime


def test_predict_matches_the_builds_own_simulator_run(tiny_build, tmp_path):
    art = tiny_build.models["int8"]
    image = tiny_build.work_dir / "inputs" / "chelsea.png"
    proc = run_cli("predict", str(art.cvimodel), str(image), "--json", "--topk", "3")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    top = data["results"][0]["top"]
    assert len(top) == 3
    probs = metrics.as_probabilities(art.outputs["logits"].reshape(1, -1))[0]
    assert top[0]["class"] == int(probs.argmax())
    assert top[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    labels = tmp_path / "synset_words.txt"
    labels.write_text("".join(f"n{i:08d} thing{i}, other name\n" for i in range(10)))
    named = run_cli("predict", str(art.cvimodel), str(image), "--labels", str(labels))
    assert named.returncode == 0 and f"thing{top[0]['class']}" in named.stdout


def test_predict_needs_the_preprocessing(tiny_build, tmp_path):
    lonely = tmp_path / "m.cvimodel"
    lonely.write_bytes(tiny_build.models["bf16"].cvimodel.read_bytes())
    with pytest.raises(ConfigError, match="--recipe"):
        runtime.open_model(lonely)
    proc = run_cli(
        "predict",
        str(lonely),
        str(tiny_build.work_dir / "inputs" / "chelsea.png"),
        "--recipe",
        str(tiny_build.recipe_path),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_fast_path_equals_the_simulator(tiny_build, mode):
    m = runtime.open_model(tiny_build.models[mode].cvimodel)
    assert m.tpu_mlir is not None and m.onnx is not None
    rng = np.random.default_rng(1)
    tensors = [rng.normal(0, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(3)]
    sim = runtime.infer(m, tensors, backend="cvimodel")
    fast = runtime.infer(m, tensors, backend="mlir")
    for a, b in zip(sim, fast):
        for name in m.output_names:
            if mode == "int8":
                np.testing.assert_array_equal(a[name], b[name])
            else:
                np.testing.assert_allclose(a[name], b[name], atol=0.05)


def test_a_builtin_photo_by_name_is_the_photo(tiny_build):
    import duotpu

    m = duotpu.open_model(tiny_build.models["int8"].cvimodel)
    by_name = duotpu.tensors_for(m, ["builtin:chelsea"])[0]
    np.testing.assert_array_equal(
        by_name, duotpu.tensors_for(m, [duotpu.builtin_photo("chelsea")])[0]
    )
    # the README's line: duotpu.infer is the function even after the package was imported
    assert duotpu.top_k(m, duotpu.infer(m, [by_name]), k=1)[0][0]["probability"] > 0


def test_compare_metrics_by_hand():
    fp = np.array([[4.0, 1.0, 0.0], [1.0, 1.01, 0.0], [0.0, 0.0, 5.0]])
    q = np.array([[4.0, 1.0, 0.0], [1.02, 1.0, 0.0], [0.0, 5.0, 0.0]])
    m = metrics.compare("int8", fp, q, 0.05, [0, 1, 1], 1.0)
    assert m.n == 3 and m.top1_agree == pytest.approx(1 / 3)
    assert m.decisive_n == 2 and m.decisive_top1_agree == pytest.approx(0.5)  # the tie is out
    assert m.top5_contains_fp32_top1 == 1.0  # only 3 classes: top-5 holds all
    assert m.cosine_worst == pytest.approx(0.0) and m.kl_mean > 0
    assert m.top1_acc == pytest.approx(2 / 3)
    same = metrics.compare("bf16", fp, fp, 0.05, None, 1.0)
    assert same.kl_mean == pytest.approx(0.0, abs=1e-9) and same.cosine_mean == pytest.approx(1.0)


def test_eval_on_a_labelled_folder(tiny_build, tmp_path):
    folder = tmp_path / "val"
    for cls in ("0", "3", "7"):
        write_calibration_set(folder / cls, 2, seed=int(cls))
    out = tmp_path / "report"
    proc = run_cli(
        "eval",
        str(tiny_build.out_dir),
        "--images",
        str(folder),
        "--out",
        str(out),
        "--layers",
        "1",
        "--check",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "report.json").read_text())
    assert data["images"] == 6 and set(data["modes"]) == {"int8", "bf16"}
    assert data["fast_path_check"]["int8"]["max_abs_diff"] == 0.0
    # fp32 accuracy recomputed independently with ONNX Runtime on the same images
    m = runtime.open_model(tiny_build.models["int8"].cvimodel)
    paths, labels = evaluate.labelled_images(folder, None)
    ref = np.stack([o[0].ravel() for o in runtime.fp32_reference(m, runtime.tensors_for(m, paths))])
    assert data["fp32"]["top1_acc"] == pytest.approx(float(np.mean(ref.argmax(1) == labels)))
    # every tensor of the network, in graph order: the fp32 MLIR's own order
    layers = data["per_layer"]["int8"]
    top = compiler.run_tensors(
        "mlir", m.top_mlir, m.input_name, runtime.tensors_for(m, paths[:1]), []
    )
    names = [n for n, _ in layers]
    assert len(names) >= 4 and [n for n in top[0] if n in names] == names
    assert all(0 < c <= 1.0 + 1e-6 for _, c in layers)
    assert "<svg" in (out / "report.html").read_text()
    assert f"{data['fp32']['top1_acc']:.3f}" in proc.stdout.split("fp32", 1)[1]


def test_fused_preprocess_model(variant_builds, tmp_path):
    from duotpu import compiler, cvimodel

    fused, _ = variant_builds
    art = fused.models["int8"]
    info = cvimodel.read_cvimodel(art.cvimodel)
    t = info.programs[0].inputs[0]
    # the TPU crops too: the model takes the resized image (recipe resize 40x40), packed HWC
    assert t.dtype == "uint8" and t.pixel_format == "RGB_PACKED" and t.shape == [1, 40, 40, 3]
    ref = compiler.model_tool_info(art.cvimodel, tmp_path / "mt.log")
    assert f"{info.ion_mb:.2f}" == f"{ref.ion_mb:.2f}"
    # duotpu prepares the raw image; the result equals the compiler's own simulator run
    image = fused.work_dir / "inputs" / "chelsea.png"
    proc = run_cli("predict", str(art.cvimodel), str(image), "--json")
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)["results"][0]["top"]
    probs = metrics.as_probabilities(art.outputs["logits"].reshape(1, -1))[0]
    assert top[0]["class"] == int(probs.argmax())
    assert top[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    # the fp32 reference of a raw-pixel model gets the float input its ONNX model takes (it
    # was refused by ONNX Runtime: "Actual: (tensor(uint8)), expected: (tensor(float))")
    from duotpu.core.onnxrt import onnx_outputs
    from duotpu.core.preprocess import preprocess_image

    m = runtime.open_model(art.cvimodel)
    assert m.onnx is not None
    got = runtime.fp32_reference(m, runtime.tensors_for(m, [image]))[0][0]
    want = onnx_outputs(m.onnx, [preprocess_image(image, m.recipe.preprocess, (1, 3, 32, 32))])
    assert np.array_equal(got, want[0][0])
    folder = tmp_path / "imgs"
    write_calibration_set(folder, 3, seed=4)
    e = run_cli("eval", str(art.cvimodel), "--images", str(folder), "--out", str(tmp_path / "ev"))
    assert e.returncode == 0, e.stderr
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["modes"]["int8"]["n"] == 3


def test_multi_batch_model(variant_builds, tmp_path):
    from duotpu import compiler, cvimodel

    _, multi = variant_builds
    art = multi.models["bf16"]
    assert art.cvimodel.name == "tmulti_cv180x_bf16_bs1_bs4.cvimodel"
    info = cvimodel.read_cvimodel(art.cvimodel)
    assert [p.inputs[0].shape[0] for p in info.programs] == [1, 4]
    assert [s.type for s in info.sections].count("weight") == 1  # one shared copy
    assert "combined" in info.md5_status
    ref = compiler.model_tool_info(art.cvimodel, tmp_path / "mt.log")
    assert f"{info.ion_mb:.2f}" == f"{ref.ion_mb:.2f}"
    m = runtime.open_model(art.cvimodel)
    folder = tmp_path / "imgs"
    write_calibration_set(folder, 5, seed=9)
    paths = sorted(folder.glob("*.jpg"))
    tensors = runtime.tensors_for(m, paths)
    batched = runtime.infer_batched(m, tensors)  # 4 through the bs4 program, 1 through bs1
    single = runtime.infer(m, tensors, program=0)
    assert len(batched) == 5
    for a, b in zip(batched, single):
        np.testing.assert_allclose(
            a[m.output_names[0]].ravel(), b[m.output_names[0]].ravel(), atol=1e-2
        )
    proc = run_cli("predict", str(art.cvimodel), *map(str, paths), "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["results"]) == 5


def test_multi_batch_bf16_model_has_its_fast_path(variant_builds):
    """A bs1_bs4 BF16 build is opened through its manifest: its quantized MLIR (batch 1's) is
    the fast path, and it agrees with the simulator's batch-1 program."""
    _, multi = variant_builds
    m = runtime.open_model(multi.models["bf16"].cvimodel)
    assert m.mode == "bf16" and m.tpu_mlir is not None and m.tpu_mlir.is_file()
    assert m.tpu_mlir == multi.models["bf16"].tpu_mlir
    rng = np.random.default_rng(5)
    tensors = [rng.normal(0, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    fast = runtime.infer(m, tensors, backend="mlir")
    sim = runtime.infer(m, tensors, program=0)
    for a, b in zip(fast, sim):
        name = m.output_names[0]
        assert np.abs(a[name].ravel() - b[name].ravel()).max() <= 0.0625  # BF16 rounding


def test_a_multi_program_file_with_a_wrong_md5_is_corrupt(variant_builds, tmp_path):
    """Only a file model_tool wrote (header padding "AA": it never records the md5) skips the
    md5 check: a multi-program file whose header claims an md5 ("Cv", as model_deploy writes)
    that does not match is refused as corrupt."""
    import hashlib

    from duotpu import cvimodel
    from duotpu.config.errors import ModelError

    _, multi = variant_builds
    data = bytearray(multi.models["bf16"].cvimodel.read_bytes())
    assert data[46:48] == b"AA"  # combined by model_tool: md5 not recorded
    claimed = tmp_path / "claimed.cvimodel"
    claimed.write_bytes(bytes(data[:46] + b"Cv" + data[48:]))  # the same garbage md5, claimed
    with pytest.raises(ModelError, match="corrupt"):
        cvimodel.read_cvimodel(claimed)
    data[46:48] = b"Cv"
    data[14:30] = hashlib.md5(bytes(data[48:])).digest()
    good = tmp_path / "with_md5.cvimodel"
    good.write_bytes(bytes(data))
    assert cvimodel.read_cvimodel(good).md5_status == "ok"
    data[-100] ^= 0xFF  # a flipped byte in the section data
    bad = tmp_path / "corrupt.cvimodel"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt"):
        cvimodel.read_cvimodel(bad)


def test_the_fast_path_gives_each_input_its_own_answer(tmp_path):
    """tpu_mlir's interpreter keeps state between invocations of one loaded module in an INT8
    constant Pad (EfficientViT's attention): the fast path must answer each input as a fresh
    run does — and as the simulator does."""
    import tinymodels
    from conftest import tiny_recipe
    from duotpu.builder import pipeline

    onnx_path = tinymodels.padded_onnx(tmp_path / "padded.onnx")
    recipe = tiny_recipe(onnx_path, name="padded", quantize=["int8"], task="generic")
    art = pipeline.build(recipe, tmp_path / "o").models["int8"]
    assert art.tpu_mlir is not None
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(3)]
    out = ["logits_Gemm_f32"]
    together = compiler.run_tensors("mlir", art.tpu_mlir, "input", xs, out, workers=1)
    alone = [compiler.run_tensors("mlir", art.tpu_mlir, "input", [x], out)[0] for x in xs]
    sim = compiler.run_tensors("cvimodel", art.cvimodel, "input", xs, out, workers=1)
    # the outputs asked for are read alone (get_tensor), and are what the dump of every
    # tensor holds under their names
    every = compiler.run_tensors("mlir", art.tpu_mlir, "input", xs, [], workers=1)
    for t, a, s, e in zip(together, alone, sim, every):
        assert list(t) == out and len(e) > 1
        np.testing.assert_array_equal(t[out[0]], a[out[0]])
        np.testing.assert_array_equal(t[out[0]], e[out[0]])
        assert metrics.cosine(t[out[0]], s[out[0]]) > 0.999
