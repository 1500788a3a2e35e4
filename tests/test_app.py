"""On the board, on its own (issue 26): `duotpu app` folders run in a fresh Python that holds
only numpy, over tpu_mlir's build of the board's runtime library (libcviruntime.so for the CV18xx
simulator: the same CVI_NN_* API as the SDK's). Their outputs must equal, bit for bit, what
`duotpu predict`'s host path gives on the simulator for the same image."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinymodels
from conftest import run_cli, tiny_recipe

# A Python other than the project's 3.10 where pyenv has one (the boards ship their own).
_PYENV = sorted(Path.home().glob(".pyenv/versions/3.11.*/bin/python3"))
BOARD_NUMPY = "numpy==1.26.4"


@pytest.fixture(scope="session")
def board_python(tmp_path_factory) -> Path:
    """A fresh virtual environment with numpy and nothing else (no duotpu, OpenCV, Pillow)."""
    base = str(_PYENV[-1]) if _PYENV else shutil.which("python3.11") or sys.executable
    venv = tmp_path_factory.mktemp("boardpy") / "venv"
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", BOARD_NUMPY], check=True, capture_output=True
    )
    for absent in ("cv2", "PIL", "duotpu", "onnx", "torch"):
        probe = subprocess.run([str(py), "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"{absent} must not be importable on the 'board'"
    return py


def _board_env() -> dict[str, str]:
    from duotpu.compiler.env import tool_env

    env = tool_env()
    env.pop("PYTHONPATH", None)
    return env


def run_app(py: Path, app: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(py), "-I", str(app / "main.py"), *args],
        env=_board_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """The cat photo as binary PPM: an image the stock board can read without Pillow."""
    from duotpu.core import images
    from duotpu.onboard.images import write_ppm

    path = tmp_path_factory.mktemp("photos") / "cat photo.ppm"
    return write_ppm(path, images.builtin_photo("chelsea")[:, :, ::-1])


def _host(cvimodel: Path, image: Path, program: int = 0):
    from duotpu.inference import runtime

    m = runtime.open_model(cvimodel)
    return m, runtime.infer(m, runtime.tensors_for(m, [image]), program=program)[0]


def _saved(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("0/")}


def _same(board: dict[str, np.ndarray], host: dict[str, np.ndarray]) -> None:
    assert set(board) == set(host), (list(board), list(host))
    for name, v in host.items():
        assert np.array_equal(board[name].ravel(), np.asarray(v).ravel()), name


def test_int8_and_bf16_classifier_on_the_board_equal_the_host(
    board_python, tiny_build, photo, tmp_path
):
    from duotpu.inference import runtime

    build = tiny_build.models["int8"].cvimodel.parent
    proc = run_cli("app", str(build), "--out", str(tmp_path / "my app"))
    assert proc.returncode == 0, proc.stderr
    app = tmp_path / "my app"
    assert json.loads((app / "app.json").read_text())["models"].keys() == {"int8", "bf16"}
    for mode in ("int8", "bf16"):
        got = run_app(
            board_python,
            app,
            str(photo),
            "--model",
            mode,
            "--json",
            "--save",
            str(tmp_path / f"{mode}.npz"),
        )
        assert got.returncode == 0, got.stderr
        doc = json.loads(got.stdout)  # the runtime's own prints stay off stdout
        model, host = _host(tiny_build.models[mode].cvimodel, photo)
        _same(_saved(tmp_path / f"{mode}.npz"), host)
        r = doc["results"][0]
        assert r["result"] == runtime.top_k(model, [host])[0]
        assert {"preprocess", "tpu", "postprocess", "total"} <= set(r["times_ms"])
    # a benchmark run reports the TPU time
    bench = run_app(board_python, app, str(photo), "--count", "3")
    assert bench.returncode == 0 and "tpu x3: mean" in bench.stdout


_PY313 = sorted(Path.home().glob(".pyenv/versions/3.13.*/bin/python3"))


@pytest.mark.skipif(not _PY313, reason="pyenv has no Python 3.13 here")
def test_the_v2_images_python_and_numpy_2_run_the_app(tiny_build, photo, tmp_path):
    """The Milk-V Duo V2 images are buildroot 2025.02, whose python3 is 3.13 with numpy 2: the
    app gives the host's outputs there too (the other tests use 3.11 and numpy 1.26)."""
    venv = tmp_path / "py313"
    subprocess.run([str(_PY313[-1]), "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "numpy>=2"], check=True, capture_output=True
    )
    version = subprocess.run(
        [str(py), "-c", "import sys, numpy; print(sys.version_info[:2], numpy.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.startswith("(3, 13)") and " 2." in version, version
    build = tiny_build.models["int8"].cvimodel.parent
    assert run_cli("app", str(build), "--out", str(tmp_path / "app")).returncode == 0
    got = run_app(py, tmp_path / "app", str(photo), "--save", str(tmp_path / "o.npz"))
    assert got.returncode == 0, got.stderr
    _same(_saved(tmp_path / "o.npz"), _host(tiny_build.models["int8"].cvimodel, photo)[1])


@pytest.mark.parametrize("which", ["v5", "v8", "picodet", "yolox", "scrfd"])
def test_yolo_detector_on_the_board_gives_the_hosts_boxes(
    board_python, photo, tmp_path, which, request
):
    from duotpu import make_app
    from duotpu.inference import runtime

    # YOLOv5 (anchors, objectness), YOLOv8 (anchor-free, DFL) and PP-PicoDet (a shared GFL
    # map, multi-label NMS): each decode on the board
    fixture = {
        "v5": "tiny_detector_build",
        "v8": "tiny_v8_build",
        "picodet": "tiny_pico_build",
        "yolox": "tiny_yolox_build",
        "scrfd": "tiny_scrfd_build",
    }
    art = request.getfixturevalue(fixture[which]).models["int8"]
    app = make_app(art.cvimodel.parent, tmp_path / "det").folder
    got = run_app(
        board_python, app, str(photo), "--json", "--conf", "0.05", "--save", str(tmp_path / "d.npz")
    )
    assert got.returncode == 0, got.stderr
    model, host = _host(art.cvimodel, photo)
    _same(_saved(tmp_path / "d.npz"), host)
    boxes = json.loads(got.stdout)["results"][0]["result"]
    ref = runtime.detect(model, [photo], [host], conf=0.05)[0]
    assert boxes, "the test needs some boxes to compare"
    assert [(b["class"], b["box"], b["score"]) for b in boxes] == [
        (d.cls, [round(v, 1) for v in d.box], round(d.score, 4)) for d in ref
    ]
    assert [b.get("keypoints", []) for b in boxes] == [
        d.to_json().get("keypoints", []) for d in ref
    ]
    if which == "scrfd":  # a face's five landmarks, on the board as on the host
        assert all(len(b["keypoints"]) == 5 for b in boxes)


def test_fused_preprocess_and_multi_batch_models(board_python, variant_builds, photo, tmp_path):
    from duotpu import make_app

    fused, multi = variant_builds
    app = make_app(fused.models["int8"].cvimodel.parent, tmp_path / "fused").folder
    got = run_app(board_python, app, str(photo), "--save", str(tmp_path / "f.npz"))
    assert got.returncode == 0, got.stderr
    _same(_saved(tmp_path / "f.npz"), _host(fused.models["int8"].cvimodel, photo)[1])

    # bs1 + bs4 in one cvimodel: the batch-4 program on the photo (the batch filled with copies)
    art = multi.models["bf16"]
    app = make_app(art.cvimodel.parent, tmp_path / "multi").folder
    assert json.loads((app / "app.json").read_text())["models"]["bf16"]["programs"] == [1, 4]
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from duotpu_onboard.app import App;"
        "a = App(sys.argv[1], program=1); x, _ = a.prepare(sys.argv[2]);"
        "assert a.input.shape[0] == 4, a.input.shape;"
        "assert x.shape[0] == 4, x.shape;"
        "out = a.forward(x);"
        "np.savez(sys.argv[3], **out)"
    )
    proc = subprocess.run(
        [str(board_python), "-I", "-c", script, str(app), str(photo), str(tmp_path / "b4.npz")],
        env=_board_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    _, host = _host(art.cvimodel, photo)
    with np.load(tmp_path / "b4.npz") as z:
        for name, v in host.items():
            rows = z[name].reshape(4, -1)
            assert all(np.array_equal(row, v.ravel()) for row in rows), name


def test_a_cut_models_cpu_tail_runs_on_the_board(board_python, tmp_path, photo):
    from duotpu import make_app
    from duotpu.builder import pipeline

    src = tinymodels.tiny_onnx(tmp_path / "sm.onnx", extra_op="Softmax")
    r = pipeline.build(
        tiny_recipe(src, name="cut", quantize=["int8"], **{"model.outputs": ["pre"]}),
        tmp_path / "b",
    )
    app = make_app(r.out_dir, tmp_path / "cutapp").folder
    got = run_app(board_python, app, str(photo), "--save", str(tmp_path / "c.npz"), "--json")
    assert got.returncode == 0, got.stderr
    board = _saved(tmp_path / "c.npz")
    _, host = _host(r.models["int8"].cvimodel, photo)  # cvimodel + the tail in ONNX Runtime
    assert list(board) == ["logits"]
    np.testing.assert_allclose(
        board["logits"].ravel(), host["logits"].ravel(), rtol=1e-5, atol=1e-7
    )
    assert json.loads(got.stdout)["results"][0]["result"][0]["class"] == int(
        host["logits"].argmax()
    )


def test_bad_input_on_the_board_is_one_clear_line(board_python, tiny_build, tmp_path, photo):
    from duotpu import make_app

    app = make_app(tiny_build.models["int8"].cvimodel.parent, tmp_path / "a").folder
    jpg = tmp_path / "photo.jpg"
    jpg.write_bytes(b"\xff\xd8 not really")
    data = bytearray((app / "models" / tiny_build.models["int8"].cvimodel.name).read_bytes())
    corrupt = tmp_path / "broken.cvimodel"  # a copy that stopped half way
    corrupt.write_bytes(bytes(data[: len(data) // 2]))
    other = tmp_path / "other.cvimodel"
    data[30:46] = b"cv181x".ljust(16, b"\0")
    other.write_bytes(bytes(data))
    cases = [
        ((str(jpg),), "needs OpenCV or Pillow"),
        ((str(tmp_path / "missing.ppm"),), "no such file"),
        ((str(photo), "--model", str(corrupt)), "damaged or truncated"),
        ((str(photo), "--model", str(other)), "built for cv181x"),
        ((str(photo), "--model", "mix"), "No model 'mix'"),
    ]
    for args, needle in cases:
        got = run_app(board_python, app, *args)
        assert got.returncode != 0, args
        assert needle in got.stderr, (args, got.stderr)
        assert "Traceback" not in got.stderr
    env = _board_env()
    env["LD_LIBRARY_PATH"] = ""
    env.pop("LD_PRELOAD", None)
    got = subprocess.run(
        [str(board_python), "-I", str(app / "main.py"), str(photo)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (
        got.returncode == 1 and "libcviruntime.so" in got.stderr and "Traceback" not in got.stderr
    )
    assert not list(tmp_path.glob("*.part*"))


@pytest.fixture(scope="module")
def app_board(tmp_path_factory, board_python):
    """The board emulator (sshd on 127.0.0.1) with a numpy-only python3, or a real board
    (DUOTPU_BOARD=user@host): (profile name, config dir)."""
    import board_emulator
    from duotpu import board

    cfg = tmp_path_factory.mktemp("appcfg")
    old = os.environ.get("DUOTPU_CONFIG_DIR")
    os.environ["DUOTPU_CONFIG_DIR"] = str(cfg)
    real = os.environ.get("DUOTPU_BOARD")
    emu = None
    try:
        if real:
            yield real
            return
        emu = board_emulator.create(tmp_path_factory.mktemp("appboard"))
        board_emulator.add_python(emu, board_python)
        emu.start()
        p = board_emulator.profile_for(emu)
        board.save_profile(p)
        with board.Board(p, accept_new_host_key=True):
            pass
        yield p.name
    finally:
        if emu is not None:
            emu.stop()
        if old is None:
            os.environ.pop("DUOTPU_CONFIG_DIR", None)
        else:
            os.environ["DUOTPU_CONFIG_DIR"] = old


def test_board_app_push_run_bench_over_ssh(app_board, tiny_detector_build, tiny_build, tmp_path):
    from duotpu.core import images

    env = {"DUOTPU_CONFIG_DIR": os.environ["DUOTPU_CONFIG_DIR"]}
    build = tiny_build.models["int8"].cvimodel.parent
    push = run_cli("board", "app", "push", str(build), "--board", app_board, "--json", env=env)
    assert push.returncode == 0, push.stderr
    doc = json.loads(push.stdout)
    assert doc["remote"].endswith("/apps/tiny") and "main.py" in " ".join(doc["uploaded"])
    again = run_cli("board", "app", "push", str(build), "--board", app_board, "--json", env=env)
    assert json.loads(again.stdout)["uploaded"] == []  # unchanged files are not sent again
    # the on-board accuracy check: JPEG and PNG photos go up as PPM; answers equal the host's
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "astronaut", "coffee"):
        images.save_image(photos / f"{name}.png", images.builtin_photo(name))
    run = run_cli("board", "app", "run", str(build), str(photos), "--board", app_board, env=env)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "agrees" in run.stdout and "agreement 1.000" in run.stdout
    assert run.stdout.count("tpu ") >= 3 and "chelsea.png: " in run.stdout
    # a detector: same boxes (F1 1.0) on the board
    det = tiny_detector_build.models["int8"].cvimodel.parent
    dr = run_cli(
        "board",
        "app",
        "run",
        str(det),
        str(photos / "astronaut.png"),
        "--board",
        app_board,
        "--json",
        env=env,
    )
    assert dr.returncode == 0, dr.stderr
    d = json.loads(dr.stdout)
    assert d["agrees"] and d["agreement"] == 1.0
    bench = run_cli(
        "board",
        "app",
        "bench",
        str(build),
        str(photos / "coffee.png"),
        "--count",
        "5",
        "--board",
        app_board,
        "--json",
        env=env,
    )
    assert bench.returncode == 0, bench.stderr
    doc = json.loads(bench.stdout)
    assert doc["bench"]["runs"] == 5 and doc["peak_rss_mb"] > 5  # the board process's own VmHWM


# The C application --------------------------------------------------------------------------
_STUB = """/* LINK-ONLY STUB of libcviruntime.so for cross-compile tests: the API's symbol names,
   nothing behind them (no board SDK here). Never run. */
""" + "\n".join(
    f"int {name}(void) {{ return 0; }}"
    for name in (
        "CVI_NN_RegisterModel",
        "CVI_NN_GetInputOutputTensors",
        "CVI_NN_Forward",
        "CVI_NN_CleanupModel",
        "CVI_NN_TensorName",
        "CVI_NN_TensorPtr",
        "CVI_NN_TensorSize",
        "CVI_NN_TensorCount",
        "CVI_NN_TensorQuantScale",
        "CVI_NN_TensorQuantZeroPoint",
    )
)


def _c_app_on_host(build_dir: Path, out: Path) -> Path:
    """The C app compiled for this machine against tpu_mlir's simulator libcviruntime.so."""
    from duotpu import make_app
    from duotpu.board.capp import write_c_app
    from duotpu.compiler.env import tpu_mlir_root

    made = make_app(build_dir, out)
    lib = tpu_mlir_root() / "lib"
    # the simulator library's own dependencies are found at run time (LD_LIBRARY_PATH)
    c = write_c_app(
        made.folder, made.config, target="host", lib_dir=lib, extra=["-Wl,--allow-shlib-undefined"]
    )
    assert c.binary is not None
    return c.binary


def _run_c_app(binary: Path, *args: str) -> subprocess.CompletedProcess:
    """The host-built C app on ``args``; it must exit 0."""
    got = subprocess.run(
        [str(binary), *args], env=_board_env(), capture_output=True, text=True, timeout=600
    )
    assert got.returncode == 0, got.stderr
    return got


def _flat_host_outputs(cvimodel: Path, image: Path):
    """The model and the host's outputs on ``image``, flattened in the order the C app saves."""
    model, host = _host(cvimodel, image)
    return (
        model,
        host,
        np.concatenate([np.asarray(host[n]).ravel() for n in model.compiled_output_names]),
    )


def test_c_app_gives_the_python_apps_outputs(tiny_build, tiny_detector_build, photo, tmp_path):
    from duotpu.inference import runtime

    binary = _c_app_on_host(tiny_build.models["int8"].cvimodel.parent, tmp_path / "capp")
    got = _run_c_app(binary, str(photo), "--save", str(tmp_path / "c.bin"), "--count", "2")
    model, host, flat = _flat_host_outputs(tiny_build.models["int8"].cvimodel, photo)
    assert np.array_equal(np.fromfile(tmp_path / "c.bin", np.float32), flat)
    best = runtime.top_k(model, [host])[0][0]
    assert f"{photo}: {best['name']} {best['probability']:.6f}" in got.stdout
    assert "tpu x2: mean" in got.stdout

    art = tiny_detector_build.models["int8"]
    binary = _c_app_on_host(art.cvimodel.parent, tmp_path / "cdet")
    got = _run_c_app(binary, str(photo), "--save", str(tmp_path / "d.bin"))
    model, host, flat = _flat_host_outputs(art.cvimodel, photo)
    assert np.array_equal(np.fromfile(tmp_path / "d.bin", np.float32), flat)
    ref = runtime.detect(model, [photo], [host])[0]
    line = next(ln for ln in got.stdout.splitlines() if ln.startswith(str(photo)))
    assert f"{len(ref)} objects" in line
    for d in ref:  # the same objects, class and score, as the host's decode and NMS
        assert f"{d.name} {d.score:.4f} [" in line


@pytest.mark.parametrize("which", ["picodet", "yolox", "scrfd"])
def test_c_app_decodes_picodet_yolox_and_scrfd_heads(which, request, photo, tmp_path):
    """PP-PicoDet's shared class + box map, a last stride that does not divide the input and
    PaddleDetection's multi-label NMS; YOLOX's box / objectness / class maps: in C, the host's
    objects."""
    from duotpu.inference import runtime

    build = request.getfixturevalue(f"tiny_{'pico' if which == 'picodet' else which}_build")
    if which == "picodet":
        assert build.head.shared == "cls_box" and build.head.multi_label
    else:
        assert build.head.kind == which
    art = build.models["int8"]
    binary = _c_app_on_host(art.cvimodel.parent, tmp_path / "capp")
    got = _run_c_app(binary, str(photo), "--save", str(tmp_path / "p.bin"))
    model, host, flat = _flat_host_outputs(art.cvimodel, photo)
    assert np.array_equal(np.fromfile(tmp_path / "p.bin", np.float32), flat)
    ref = runtime.detect(model, [photo], [host], conf=build.recipe.detect.conf)[0]
    assert ref, "the comparison needs objects"
    line = next(ln for ln in got.stdout.splitlines() if ln.startswith(str(photo)))
    assert f"{len(ref)} objects" in line
    for d in ref:
        assert f"{d.name} {d.score:.4f} [" in line
        if d.keypoints:  # SCRFD's landmarks, as the host maps them onto the image
            assert "landmarks [" + ", ".join(f"{v:.1f}" for p in d.keypoints for v in p) in line


def test_c_app_reads_jpeg_and_png_through_stb_image(tiny_build, tmp_path):
    """Built where Debian's libstb-dev is (make test installs it), the C app decodes JPEG and
    PNG itself: a PNG gives the host's outputs bit for bit, a JPEG (stb's decoder, not
    libjpeg's) the same answer."""
    import cv2

    from duotpu.board.capp import stb_include
    from duotpu.core import images
    from duotpu.core.metrics import cosine

    assert stb_include() is not None, "make test installs libstb-dev (stb_image.h)"
    binary = _c_app_on_host(tiny_build.models["int8"].cvimodel.parent, tmp_path / "capp")
    bgr = images.builtin_photo("chelsea")[:, :, ::-1]
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"cat{suffix}"
        cv2.imwrite(str(path), bgr)
        out = tmp_path / f"{suffix[1:]}.bin"
        _run_c_app(binary, str(path), "--save", str(out))
        _, _, flat = _flat_host_outputs(tiny_build.models["int8"].cvimodel, path)
        c_out = np.fromfile(out, np.float32)
        if suffix == ".png":
            assert np.array_equal(c_out, flat)
        else:
            assert cosine(c_out, flat) > 0.99


@pytest.mark.parametrize(
    "target,machine,loader,needed",
    [
        ("riscv64-musl", "RISC-V", "/lib/ld-musl-riscv64v0p7_xthead.so.1", "libc.so"),
        ("aarch64-gnu", "AArch64", "/lib/ld-linux-aarch64.so.1", "libc.so.6"),
    ],
)
def test_c_app_cross_compiles_for_the_boards(tiny_build, tmp_path, target, machine, loader, needed):
    from duotpu.board.capp import TARGETS, zig

    # an SDK-shaped folder whose libcviruntime.so is a LINK-ONLY STUB for the target (see _STUB)
    sdk = tmp_path / "tpu-sdk"
    (sdk / "lib").mkdir(parents=True)
    (tmp_path / "stub.c").write_text(_STUB)
    subprocess.run(
        [
            *zig(),
            "-target",
            TARGETS[target][0],
            "-shared",
            "-o",
            str(sdk / "lib" / "libcviruntime.so"),
            str(tmp_path / "stub.c"),
        ],
        check=True,
        capture_output=True,
    )
    build = tiny_build.models["int8"].cvimodel.parent
    proc = run_cli(
        "app",
        str(build),
        "--out",
        str(tmp_path / "app"),
        "--sdk",
        str(sdk),
        "--target",
        target,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    binary = Path(json.loads(proc.stdout)["c_binary"])
    elf = subprocess.run(
        ["readelf", "-h", "-l", "-d", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(rf"Machine:\s+{machine}", elf)
    assert f"[Requesting program interpreter: {loader}]" in elf
    assert "Shared library: [libcviruntime.so]" in elf and f"Shared library: [{needed}]" in elf
    # without an SDK: the source, the generated header and a Makefile
    src = run_cli("app", str(build), "--out", str(tmp_path / "src"), "--c")
    assert src.returncode == 0, src.stderr
    assert {p.name for p in (tmp_path / "src" / "c").iterdir()} >= {
        "duotpu_app.c",
        "duotpu_cvi.h",
        "app_config.h",
        "Makefile",
    }


def test_two_inputs_and_two_outputs_through_the_board_runtime(board_python, tmp_path):
    """A cvimodel with two inputs of different ranks and two outputs (made with tpu_mlir's own
    tools: duotpu's builds take one input until issue 27): the board runtime, fed by name,
    gives tpu_mlir's model_runner's outputs bit for bit."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from duotpu import compiler
    from duotpu.config.recipe import Preprocess

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    m = numpy_helper.from_array(rng.normal(0, 0.3, (8, 5)).astype(np.float32), "m")
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["a", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["feat"], name="relu"),
            helper.make_node("MatMul", ["b", "m"], ["score"], name="mm"),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8]),
        ],
        [
            helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 5]),
        ],
        [w, m],
    )
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = {
        "a": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32),
        "b": rng.normal(0, 1, (1, 8)).astype(np.float32),
    }
    np.savez(tmp_path / "in.npz", **x)
    compiler.transform(
        "two", path, [[1, 3, 8, 8], [1, 8]], tmp_path, tmp_path / "t.log",
        preprocess=Preprocess(), test_input=None, tolerance=(0.99, 0.99),
    )  # fmt: skip
    compiler.run_tool(
        "deploy", "model_deploy",
        ["--mlir", "two.mlir", "--quantize", "BF16", "--chip", "cv180x", "--model",
         "two.cvimodel"],
        tmp_path, tmp_path / "d.log",
    )  # fmt: skip
    ref = compiler.run_cvimodel(tmp_path / "two.cvimodel", tmp_path / "in.npz",
                                tmp_path / "ref.npz", tmp_path / "r.log")  # fmt: skip
    runtime_dir = Path(__file__).parent.parent / "src" / "duotpu"
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1])\n"
        "from onboard.cvi import Model\n"
        "m = Model(sys.argv[2])\n"
        "assert [i.name for i in m.inputs] == ['a', 'b'], m.inputs\n"
        "assert [i.count for i in m.inputs] == [192, 8], [i.count for i in m.inputs]\n"
        "x = dict(np.load(sys.argv[3]))\n"
        "out = m.run({'b': x['b'], 'a': x['a']})  # by name, in any order\n"
        "np.savez(sys.argv[4], **out)\n"
        "print('outputs', len(m.outputs))\n"
    )
    proc = subprocess.run(
        [str(board_python), "-I", "-c", script, str(runtime_dir), str(tmp_path / "two.cvimodel"),
         str(tmp_path / "in.npz"), str(tmp_path / "board.npz")],
        env=_board_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "outputs 2" in proc.stdout.splitlines()
    with np.load(ref) as want, np.load(tmp_path / "board.npz") as got:
        # model_runner also keeps the inputs and a few inner tensors; the outputs are these two
        assert len(got.files) == 2 and set(got.files) <= set(want.files), got.files
        for name in got.files:
            assert np.array_equal(got[name].ravel(), want[name].ravel()), name
