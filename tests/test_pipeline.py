"""The pipeline on small models through the real compiler and simulator."""

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli, tiny_recipe
from duotpu.builder import pipeline
from duotpu.config.errors import PartialBuild, ToleranceError
from duotpu.core.preprocess import preprocess_image


def test_tiny_onnx_builds_int8_and_bf16(tiny_build):
    r = tiny_build
    assert set(r.models) == {"int8", "bf16"} and r.ok
    for mode, art in r.models.items():
        data = art.cvimodel.read_bytes()
        assert data[:8] == b"CviModel" and art.cvimodel.parent == r.out_dir
        assert art.size_bytes == len(data)
        assert art.ion_mb > 0
        need = r.recipe.tolerance.verify_int8 if mode == "int8" else r.recipe.tolerance.verify_bf16
        assert art.cosine["logits"] >= need
        # the outputs really are the simulator's: recompute the cosine against fp32 ourselves
        ref = r.reference["logits"]
        got = art.outputs["logits"]
        cos = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
        assert abs(cos - art.cosine["logits"]) < 1e-6
    assert r.models["bf16"].cosine["logits"] > 0.99
    manifest = json.loads(r.manifest.read_text())
    assert [s["name"] for s in manifest["stages"]] == [
        "export",
        "transform",
        "reference",
        "calibrate",
        "deploy-int8",
        "deploy-bf16",
        "verify-int8",
        "verify-bf16",
    ]
    assert manifest["versions"]["tpu_mlir"] == "1.30.2"
    assert all("key" in s and "seconds" in s for s in manifest["stages"])
    assert r.recipe_path.exists()
    for stage in ("export", "transform", "calibrate", "deploy-int8", "deploy-bf16"):
        assert (r.work_dir / stage / "stage.json").exists()
    assert (r.work_dir / "transform" / "transform.log").exists()
    assert (r.work_dir / "deploy-int8" / "deploy.log").exists()


def test_host_preprocessing_equals_the_compilers(tiny_build):
    """duotpu's numpy preprocessing of the test image == tpu_mlir's own (its _in_f32.npz)."""
    r = tiny_build
    ours = preprocess_image(
        r.test_image_path,
        r.recipe.preprocess,
        r.recipe.inputs[0].shape,
    )
    theirs = r.test_input["input"]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def _copy_build(tiny_build, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(tiny_build.out_dir, out, symlinks=True)
    # the calibrate stage links to transform outputs by absolute path: rebuild those links
    for link in out.rglob("*"):
        if link.is_symlink():
            target = str(link.readlink()).replace(str(tiny_build.out_dir), str(out))
            link.unlink()
            link.symlink_to(target)
    return out


def test_rebuild_is_cached_and_a_tolerance_change_reruns_only_its_stages(
    tiny_build, tmp_path, tiny_onnx_path
):
    out = _copy_build(tiny_build, tmp_path)
    events = []
    again = pipeline.build(tiny_recipe(tiny_onnx_path), out, events=events.append)
    assert [s.name for s in again.stages if not s.cached] == []
    assert {e.status for e in events} - {"info"} == {"cached"}
    events.clear()
    changed = tiny_recipe(tiny_onnx_path, **{"tolerance.int8": [0.8, 0.4]})
    res = pipeline.build(changed, out, events=events.append)
    ran = {s.name for s in res.stages if not s.cached}
    assert ran == {"verify-int8"}  # the tolerance is checked there; nothing is deployed again
    assert res.models["int8"].cvimodel.exists()
    verify = next(s for s in res.stages if s.name == "verify-int8")
    assert "0.8,0.4" in (verify.folder / "tolerance.log").read_text()
    # a tolerance the quantized MLIR misses fails the build as model_deploy's check did
    with pytest.raises(PartialBuild) as e:  # BF16 is delivered
        pipeline.build(tiny_recipe(tiny_onnx_path, **{"tolerance.int8": [0.99999, 0.4]}), out)
    (err,) = e.value.errors
    assert isinstance(err, ToleranceError) and "model_deploy --tolerance" in str(err)
    assert "required 0.99999" in str(err) and err.log_path and err.log_path.is_file()


def test_failed_verification_writes_no_final_file_and_the_build_resumes(tmp_path, tiny_onnx_path):
    out = tmp_path / "b"
    strict = tiny_recipe(tiny_onnx_path, quantize=["int8"], **{"tolerance.verify_int8": 0.999999})
    with pytest.raises(ToleranceError) as e:
        pipeline.build(strict, out)
    msg = str(e.value)
    assert "'logits'" in msg and "0.999999" in msg and "calibration" in msg
    assert not list(out.glob("*.cvimodel")) and not (out / "manifest.json").exists()
    assert not (out / "work" / "verify-int8").exists()
    # an interrupted stage leaves only a hidden temporary folder behind
    (out / "work" / ".deploy-int8.tmp").mkdir()
    (out / "work" / ".deploy-int8.tmp" / "junk").write_text("half")
    events = []
    res = pipeline.build(tiny_recipe(tiny_onnx_path, quantize=["int8"]), out, events=events.append)
    assert [s.name for s in res.stages if not s.cached] == ["verify-int8"]
    assert res.models["int8"].cvimodel.exists()


def test_pytorch_factory_source(tmp_path):
    r = tiny_recipe(
        "tinymodels:tiny_cnn",
        name="tinycnn",
        quantize=["bf16"],
        **{"model.source": "tinymodels:tiny_cnn", "model.kwargs": {"classes": 7}},
    )
    res = pipeline.build(r, tmp_path / "b")
    assert len(res.reference) == 1  # the factory's one output, whatever the exporter named it
    ref = next(iter(res.reference.values()))
    assert ref.shape == (1, 7)
    assert res.models["bf16"].cosine[next(iter(res.reference))] > 0.99


def test_python_api_with_a_toml_recipe_and_overrides(tmp_path, tiny_onnx_path):
    import duotpu

    (tmp_path / "tiny.toml").write_text(tiny_recipe(tiny_onnx_path).to_toml())
    res = duotpu.build(
        tmp_path / "tiny.toml",
        out_dir=tmp_path / "api",
        set={"quantize": ["bf16"], "calibration.count": 3},
        name="apitiny",  # the older keyword form still works beside set=
    )
    assert res.recipe.name == "apitiny" and res.recipe.calibration.count == 3
    assert list(res.models) == ["bf16"]
    assert res.models["bf16"].cvimodel == tmp_path / "api" / "apitiny_cv180x_bf16.cvimodel"
    manifest = json.loads(res.manifest.read_text())
    assert manifest["models"]["bf16"]["cosine_vs_fp32"]["logits"] > 0.98
    verify = next(s for s in manifest["stages"] if s["name"] == "verify-bf16")
    assert (
        verify["result"]["cosine"]["logits"]
        == manifest["models"]["bf16"]["cosine_vs_fp32"]["logits"]
    )
    with pytest.raises(duotpu.ConfigError, match="calibration.cuont"):
        duotpu.build(tmp_path / "tiny.toml", set={"calibration.cuont": 3})


def test_both_failing_branches_are_reported_with_advice_for_their_mode(tmp_path, tiny_onnx_path):
    """INT8 and BF16 both fail: the error names both (not only the first to finish), and the
    BF16 advice does not suggest calibration changes, which cannot affect BF16."""
    from duotpu.config.errors import BuildFailed

    strict = tiny_recipe(
        tiny_onnx_path,
        name="both",
        **{"tolerance.verify_int8": 0.9999999, "tolerance.verify_bf16": 0.9999999},
    )
    with pytest.raises(BuildFailed) as e:
        pipeline.build(strict, tmp_path / "b")
    errs = e.value.errors
    assert len(errs) == 2 and all(isinstance(x, ToleranceError) for x in errs)
    int8, bf16 = errs  # in mode order
    assert "INT8" in str(int8) and "calibration" in str(int8)
    assert "BF16" in str(bf16) and "calibration images" not in str(bf16)
    assert "calibration.method" not in str(bf16) and "tolerance.verify_bf16" in str(bf16)
    assert "INT8" in str(e.value) and "BF16" in str(e.value)
    (tmp_path / "both.toml").write_text(strict.to_toml())
    proc = run_cli("build", "--recipe", str(tmp_path / "both.toml"), "--out", str(tmp_path / "b"))
    assert proc.returncode == 1 and "(1)" in proc.stderr and "(2)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_gray_model_builds_with_the_defaults(tmp_path):
    """`duotpu build gray.onnx --input-shape 1,1,32,32 --pixel-format gray` with no mean/std."""
    import tinymodels

    onnx_path = tinymodels.tiny_onnx(tmp_path / "gray.onnx", channels=1)
    proc = run_cli(
        "build",
        str(onnx_path),
        "--input-shape",
        "1,1,32,32",
        "--pixel-format",
        "gray",
        "--quantize",
        "bf16",
        "--out",
        str(tmp_path / "g"),
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (tmp_path / "g" / "gray_cv180x_bf16.cvimodel").is_file()


def test_calibration_data_given_as_arrays(tiny_onnx_path, tmp_path):
    """duotpu.build(calibration_data=...) calibrates on preprocessed arrays (an iterable, or
    ONNX Runtime's get_next() reader), verifies on the first of them, and a rerun with the same
    arrays is a cache hit; arrays of the wrong shape are refused with the item named."""
    import numpy as np

    import duotpu
    from duotpu.config.errors import DataError

    rng = np.random.default_rng(3)
    arrays = [rng.normal(0, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(6)]
    # calibration.count (4 here) is for image folders: every array given is used
    recipe = tiny_recipe(tiny_onnx_path, quantize=["int8"], **{"calibration.count": 4})
    events: list = []
    r = duotpu.build(recipe, out_dir=tmp_path / "a", calibration_data=arrays, events=events.append)
    assert any("calibrating on the 6 arrays given" in e.message for e in events)
    stages = {s.name: s for s in r.stages}
    used = sorted(p.name for p in stages["calibrate"].result.images.iterdir())
    assert used == [f"{i:05d}.npz" for i in range(6)] and stages["calibrate"].result.count == 6
    assert r.test_image_path is not None and r.test_image_path.suffix == ".npz"
    assert np.array_equal(r.test_input[next(iter(r.test_input))], arrays[0])
    assert min(r.models["int8"].cosine.values()) > 0.95

    class Reader:
        def __init__(self):
            self.left = list(arrays)

        def get_next(self):
            return {"input": self.left.pop(0)} if self.left else None

    again = duotpu.build(
        recipe, out_dir=tmp_path / "a", work_dir=r.work_dir, calibration_data=Reader()
    )
    assert {s.name: s.cached for s in again.stages}["calibrate"]
    with pytest.raises(DataError, match="item 2 has shape"):
        duotpu.build(
            recipe,
            out_dir=tmp_path / "b",
            calibration_data=[*arrays[:2], np.zeros((1, 3, 16, 16), np.float32)],
        )
