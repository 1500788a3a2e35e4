"""Board features over real SSH: against the board emulator (sshd on 127.0.0.1 + an SDK-shaped
folder running the host simulator), or a real board when DUOTPU_BOARD=user@host is set."""

import json
import os

import numpy as np
import pytest

import board_emulator
from conftest import run_cli
from duotpu import board, cvimodel
from duotpu.config.errors import BoardError
from duotpu.core import metrics
from duotpu.inference import runtime

REAL = os.environ.get("DUOTPU_BOARD")
emulator_only = pytest.mark.skipif(bool(REAL), reason="failure modes need the board emulator")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    if REAL:
        yield None
        return
    b = board_emulator.create(tmp_path_factory.mktemp("emuboard"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DUOTPU_CONFIG_DIR", str(tmp_path / "cfg"))
    return tmp_path / "cfg"


@pytest.fixture
def profile(emu, config_dir):
    if REAL:
        return board.resolve_board(REAL)
    emu.configure()
    p = board_emulator.profile_for(emu)
    board.save_profile(p)
    with board.Board(p, accept_new_host_key=True):
        pass  # trust the emulator's host key in this test's config dir
    return p


def test_unknown_host_key_is_refused_with_its_fingerprint(emu, config_dir):
    if REAL:
        pytest.skip("needs a host this machine has never seen")
    p = board_emulator.profile_for(emu)
    with pytest.raises(BoardError, match=r"not a known host.*SHA256:"):
        board.Board(p).connect()
    with board.Board(p, accept_new_host_key=True) as b:
        assert b.run("echo hi").stdout.strip() == "hi"
    assert (
        p.host in (config_dir / "known_hosts").read_text()
        or f"[{p.host}]:{p.port}" in (config_dir / "known_hosts").read_text()
    )
    with board.Board(p) as b:  # now known: no flag needed
        assert b.run("true").returncode == 0


@emulator_only
def test_changed_host_key_is_refused(emu, profile, tmp_path):
    other = board_emulator.keygen(tmp_path / "other_host_key")
    emu.start(host_key=other)
    try:
        with pytest.raises(BoardError, match="CHANGED"):
            board.Board(profile, accept_new_host_key=True).connect()
    finally:
        emu.start()


@emulator_only
def test_authentication_and_unreachable_errors(emu, profile, tmp_path):
    from dataclasses import replace

    wrong = board_emulator.keygen(tmp_path / "wrong_key")
    with pytest.raises(BoardError, match="Authentication"):
        board.Board(replace(profile, key_file=str(wrong))).connect()
    closed = board_emulator.free_port()
    with pytest.raises(BoardError, match="Cannot reach|Timed out"):
        board.Board(replace(profile, port=closed), timeout=2).connect()


def test_doctor_reports_the_board(profile):
    with board.Board(profile) as b:
        d = board.doctor(b)
    assert d.arch and d.os and d.tpu_device and d.sdk_ok
    assert d.runtime_version.count(".") >= 1
    assert d.chip in ("cv180x", "cv181x")
    assert d.mem_total_mb > 0
    if REAL:  # a real board: its own heap, whatever the image reserves
        assert d.ion_mb is not None and d.ion_mb > 0, d.problems
    else:
        assert d.ion_mb == pytest.approx(16.0) and not d.problems


@emulator_only
def test_doctor_names_problems(emu, profile):
    emu.configure(fail="nodevice", ion_mb=0)
    with board.Board(profile) as b:
        d = board.doctor(b)
    text = " ".join(d.problems)
    assert "No TPU device" in text and "0 MB" in text
    proc = run_cli("board", "doctor", "--board", profile.name)
    assert proc.returncode == 1 and "No TPU device" in proc.stdout + proc.stderr
    from dataclasses import replace

    with board.Board(replace(profile, sdk_dir="/nonexistent/tpu-sdk")) as b:
        d = board.doctor(b)
    assert any("not at /nonexistent/tpu-sdk" in p and "board push --sdk" in p for p in d.problems)


def test_run_on_the_board_equals_the_host_simulator(profile, tiny_build):
    art = tiny_build.models["int8"]
    m = runtime.open_model(art.cvimodel)
    rng = np.random.default_rng(3)
    tensors = [rng.normal(0, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    with board.Board(profile) as b:
        got = board.run_model(b, art.cvimodel, m.info, tensors, m.input_name)
        leftovers = b.run(f"ls {profile.work_dir}").stdout.split()
    assert not [x for x in leftovers if x.startswith("run-")]  # each run cleans up
    host = runtime.infer(m, tensors)
    for g, h in zip(got, host):
        name = m.output_names[0]
        assert metrics.cosine(g[name], h[name]) > 0.9999


def test_board_run_and_compare_cli(profile, tiny_build):
    art = tiny_build.models["bf16"]
    image = tiny_build.work_dir / "inputs" / "chelsea.png"
    proc = run_cli(
        "board",
        "run",
        str(art.cvimodel),
        str(image),
        "--board",
        profile.name,
        "--json",
        env={"DUOTPU_CONFIG_DIR": os.environ.get("DUOTPU_CONFIG_DIR", "")},
    )
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)["results"][0]["top"]
    probs = metrics.as_probabilities(art.outputs["logits"].reshape(1, -1))[0]
    assert top[0]["class"] == int(probs.argmax())
    cmp = run_cli(
        "board", "compare", str(art.cvimodel), str(image), "--board", profile.name, "--json"
    )
    assert cmp.returncode == 0, cmp.stderr
    data = json.loads(cmp.stdout)
    assert data["outputs"][0]["board_vs_simulator"] > 0.9999
    assert data["outputs"][0]["board_vs_fp32"] > 0.98


def test_bench_parses_timer_and_pmu(profile, tiny_build):
    art = tiny_build.models["int8"]
    m = runtime.open_model(art.cvimodel)
    x = np.zeros((1, 3, 32, 32), np.float32)
    with board.Board(profile) as b:
        r = board.bench(b, art.cvimodel, x, m.input_name, count=5)
    assert r.runs == 5 and r.mean_ms > 0 and r.fps > 0
    # the PMU block of every run (TPU_ENABLE_PMU=1), on the emulator and on a real board alike
    assert len(r.inference_ms) == 5 and r.p90_ms >= r.median_ms > 0
    assert "TDMA" in r.tpu_split


def test_push_skips_unchanged_files(profile, tmp_path, emu):
    if REAL:
        pytest.skip("would upload a fake SDK to the real board")
    from dataclasses import replace

    sdk = tmp_path / "tpu-sdk-cv180x"
    (sdk / "bin").mkdir(parents=True)
    (sdk / "envs_tpu_sdk.sh").write_text("export PATH=$PWD/bin:$PATH\n")
    (sdk / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (sdk / "bin" / "tool").chmod(0o755)
    target = replace(profile, sdk_dir=str(emu.root / "board" / "pushed-sdk"))
    with board.Board(target) as b:
        first = board.push_files(b, board.sdk_files(sdk, target.sdk_dir))
        again = board.push_files(b, board.sdk_files(sdk, target.sdk_dir))
        (sdk / "bin" / "tool").write_text("#!/bin/sh\necho tool v2\n")
        third = board.push_files(b, board.sdk_files(sdk, target.sdk_dir))
        out = b.run(b.sdk_command("tool")).stdout.strip()
    assert len(first.uploaded) == 2 and not again.uploaded and len(again.skipped) == 2
    assert third.uploaded == [f"{target.sdk_dir}/bin/tool"] and out == "tool v2"


@emulator_only
def test_checks_before_pushing(emu, profile, tiny_build):
    art = tiny_build.models["bf16"]
    info = cvimodel.read_cvimodel(art.cvimodel)
    for cfg, needle in [
        ({"runtime_version": "1.2.0"}, "model_version 1.2"),
        ({"chip": "cv181x"}, "CANNOT run on platform cv181x"),
        ({"ion_mb": info.ion_mb / 2}, "ION memory"),
    ]:
        emu.configure(**cfg)
        with board.Board(profile) as b:
            problems = board.check_model_for_board(info, board.doctor(b))
        assert any(needle in p for p in problems), problems
        proc = run_cli("board", "push", str(art.cvimodel), "--board", profile.name)
        assert proc.returncode == 1 and needle.split()[0] in proc.stderr
        forced = run_cli("board", "push", str(art.cvimodel), "--board", profile.name, "--force")
        assert forced.returncode == 0, forced.stderr
    emu.configure(fail="nomem")
    image = tiny_build.work_dir / "inputs" / "chelsea.png"
    proc = run_cli(
        "board", "run", str(art.cvimodel), str(image), "--board", profile.name, "--force"
    )
    assert proc.returncode == 1 and "alloc memory for weight failed" in proc.stderr
    assert "ION memory" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_on_the_board(profile, tiny_build):
    art = tiny_build.models["int8"]
    image = tiny_build.work_dir / "inputs" / "chelsea.png"
    host = json.loads(run_cli("predict", str(art.cvimodel), str(image), "--json").stdout)
    on_board = run_cli("predict", str(art.cvimodel), str(image), "--board", profile.name, "--json")
    assert on_board.returncode == 0, on_board.stderr
    assert (
        json.loads(on_board.stdout)["results"][0]["top"][0]["class"]
        == host["results"][0]["top"][0]["class"]
    )
    bench = run_cli("board", "bench", str(art.cvimodel), "--board", profile.name, "--count", "3")
    assert bench.returncode == 0 and "median" in bench.stdout, bench.stderr


def test_detector_on_the_board(profile, tiny_detector_build, tmp_path):
    """`duotpu board run` on a detector prints the boxes the host simulator finds, and draws
    them with --save."""
    from duotpu.core.images import builtin_photo, save_image

    art = tiny_detector_build.models["int8"]
    image = save_image(tmp_path / "astro.jpg", builtin_photo("astronaut"))
    host = json.loads(run_cli("predict", str(art.cvimodel), str(image), "--json").stdout)
    on_board = run_cli(
        "board",
        "run",
        str(art.cvimodel),
        str(image),
        "--board",
        profile.name,
        "--json",
        "--save",
        str(tmp_path / "board.jpg"),
    )
    assert on_board.returncode == 0, on_board.stderr
    got = json.loads(on_board.stdout)["results"][0]
    want = host["results"][0]["detections"]
    # the board's outputs equal the simulator's to cosine 0.9999, not bit for bit: scores at
    # the threshold may fall either side, so compare the detections as detections
    from duotpu.core.detect import Detection, coco_map

    truth = [[(d["box"], d["class"]) for d in want]]
    found = [
        [Detection(tuple(d["box"]), d["score"], d["class"], d["name"]) for d in got["detections"]]
    ]
    assert want and coco_map(truth, found, 3)["map50"] > 0.95
    assert abs(len(got["detections"]) - len(want)) <= max(2, len(want) // 10)
    assert (tmp_path / "board.jpg").is_file()
    text = run_cli("board", "run", str(art.cvimodel), str(image), "--board", profile.name)
    assert text.returncode == 0 and "object(s)" in text.stdout, text.stderr


@emulator_only
def test_doctor_refuses_an_sdk_whose_model_runner_does_not_start(emu, profile, tmp_path):
    """`model_runner: not found` (or a runner that is not the SDK's) is not a usable SDK, even
    though its output contains the word 'model'."""
    from dataclasses import replace

    broken = tmp_path / "broken-sdk"
    (broken / "bin").mkdir(parents=True)
    (broken / "envs_tpu_sdk.sh").write_text("export PATH=$PWD/bin:$PATH\n")
    with board.Board(replace(profile, sdk_dir=str(broken))) as b:
        d = board.doctor(b)
    assert not d.sdk_ok and not d.runtime_version
    assert any("model_runner does not start" in p for p in d.problems), d.problems
    (broken / "bin" / "model_runner").write_text(
        "#!/bin/sh\necho 'usage: model_runner -m model'\nexit 1\n"
    )
    (broken / "bin" / "model_runner").chmod(0o755)
    with board.Board(replace(profile, sdk_dir=str(broken))) as b:
        assert not board.doctor(b).sdk_ok  # no runtime version line: not cviruntime's runner
    for text, ok in [
        ("Cvitek Runtime (1.4.0)\nusage: ...\nduotpu-rc:1", True),
        ("sh: model_runner: not found\nduotpu-rc:127", False),
        ("Cvitek Runtime (1.4.0)\nduotpu-rc:126", False),
        ("model_runner: error while loading shared libraries: libcviruntime.so", False),
    ]:
        assert board.sdk_usable(text) is ok, text


@emulator_only
def test_push_with_sdk_checks_the_models_before_uploading_them(emu, profile, tiny_build, tmp_path):
    """`board push --sdk DIR MODEL`: the chip and memory checks come before anything is
    uploaded; the runtime version is checked against the SDK being pushed, before the models."""
    import shutil
    from dataclasses import replace

    art = tiny_build.models["int8"]
    sdk = tmp_path / "tpu-sdk-cv180x"
    shutil.copytree(emu.sdk, sdk)
    target = replace(
        profile,
        name="pushy",
        sdk_dir=str(tmp_path / "board-sdk"),
        work_dir=str(tmp_path / "board-work"),
    )
    board.save_profile(target)
    remote_model = tmp_path / "board-work" / "models" / art.cvimodel.name
    emu.configure(chip="cv181x")
    proc = run_cli("board", "push", "--sdk", str(sdk), str(art.cvimodel), "--board", "pushy")
    assert proc.returncode == 1 and "CANNOT run on platform cv181x" in proc.stderr
    assert not remote_model.exists() and not (tmp_path / "board-sdk").exists()
    # the new SDK's runtime is older than the model's format: SDK goes up, the model does not
    emu.configure()
    cfg = json.loads((sdk / "emulator.json").read_text())
    (sdk / "emulator.json").write_text(json.dumps(cfg | {"runtime_version": "1.2.0"}))
    proc = run_cli("board", "push", "--sdk", str(sdk), str(art.cvimodel), "--board", "pushy")
    assert proc.returncode == 1 and "model_version 1.2" in proc.stderr, proc.stderr
    assert (tmp_path / "board-sdk" / "envs_tpu_sdk.sh").is_file() and not remote_model.exists()
    (sdk / "emulator.json").write_text(json.dumps(cfg))
    proc = run_cli("board", "push", "--sdk", str(sdk), str(art.cvimodel), "--board", "pushy")
    assert proc.returncode == 0, proc.stderr
    assert remote_model.is_file()


def test_a_cut_generic_model_on_the_board_is_finished_on_the_host(profile, tmp_path):
    """`board run` of a model cut with --cut-at: the board runs the cvimodel, duotpu pulls its
    outputs back and runs the tail here; a generic model's outputs are shown as tensors."""
    import tinymodels

    src = tinymodels.two_output_onnx(tmp_path / "two.onnx")
    out = tmp_path / "b"
    # cut before the box head's Gemm: the mask stays on the TPU, the box regression runs here
    b = run_cli(
        "build", str(src), "--name", "two", "--out", str(out), "--quantize", "int8",
        "--calib-count", "8", "--cut-at", "mask,f",
    )  # fmt: skip
    assert b.returncode == 0, b.stderr
    assert (out / "two.tail.onnx").is_file()
    model = str(out / "two_cv180x_int8.cvimodel")
    image = str(out / "work" / "inputs" / "chelsea.png")
    host = run_cli("predict", model, image, "--json")
    on_board = run_cli("board", "run", model, image, "--board", profile.name, "--json")
    assert host.returncode == 0 and on_board.returncode == 0, on_board.stderr
    h = json.loads(host.stdout)["results"][0]["outputs"]
    o = json.loads(on_board.stdout)["results"][0]["outputs"]
    assert [x["name"] for x in o] == ["mask", "box"] and [x["shape"] for x in o] == [
        [1, 4, 32, 32],
        [1, 4],
    ]
    for a, c in zip(h, o):
        assert abs(a["mean"] - c["mean"]) < 1e-3 and c["cosine_vs_fp32"] > 0.99


def test_a_model_of_two_tensor_inputs_runs_on_the_board(profile, tmp_path):
    """`board run` of a build of two tensor inputs (audio + state): .npz samples in, by input
    name; the board's outputs equal the host simulator's."""
    import tinymodels

    src = tinymodels.audio_state_onnx(tmp_path / "vad.onnx")
    samples = tinymodels.audio_state_samples(tmp_path / "samples")
    out = tmp_path / "b"
    b = run_cli(
        "build", str(src), "--name", "vad", "--out", str(out), "--quantize", "int8",
        "--calib-images", str(samples),
    )  # fmt: skip
    assert b.returncode == 0, b.stderr
    model, sample = str(out / "vad_cv180x_int8.cvimodel"), str(samples / "s05.npz")
    host = run_cli("predict", model, sample, "--json")
    on_board = run_cli("board", "run", model, sample, "--board", profile.name, "--json")
    assert host.returncode == 0 and on_board.returncode == 0, on_board.stderr
    h = json.loads(host.stdout)["results"][0]["outputs"]
    o = json.loads(on_board.stdout)["results"][0]["outputs"]
    assert [x["name"] for x in o] == ["prob", "new_state"]
    for a, c in zip(h, o):
        assert abs(a["mean"] - c["mean"]) < 1e-6 and c["cosine_vs_fp32"] > 0.99


@emulator_only
def test_bench_calibrate_fits_the_boards_constants(emu, profile, tiny_build):
    """The fitting procedure, not the estimate's accuracy: the emulated board's TPU times come
    from the estimate with other constants (a board that computes 1.3× slower, with 3
    bytes/cycle of DDR and 120 cycles per TDMA command); `board bench --calibrate` recovers
    them, saves them in the profile, and the estimates for that board then match its times.
    The estimate against real board times is `test_the_estimate_against_a_real_board` (with
    DUOTPU_BOARD) and `bench/latency.py` (published times)."""
    truth = {"tiu_scale": 1.3, "ddr_bytes_per_cycle": 3.0, "tdma_overhead": 120.0}
    emu.configure(latency=truth)
    models = [str(tiny_build.models[m].cvimodel) for m in ("int8", "bf16")]
    before = run_cli("board", "bench", *models, "--board", profile.name, "--count", "3", "--json")
    assert before.returncode == 0, before.stderr
    first = json.loads(before.stdout)
    assert first["fitted"] is None
    errors = [m["estimate"]["ms"] / m["median_ms"] - 1 for m in first["models"]]
    assert max(abs(e) for e in errors) > 0.05  # the chip's constants miss this board
    r = run_cli(
        "board", "bench", *models, "--board", profile.name, "--count", "3", "--calibrate",
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    fit = data["fitted"]
    assert abs(fit["tiu_scale"] / truth["tiu_scale"] - 1) < 0.03, fit
    assert abs(fit["ddr_bytes_per_cycle"] / truth["ddr_bytes_per_cycle"] - 1) < 0.2, fit
    assert abs(fit["tdma_overhead"] - truth["tdma_overhead"]) <= 20, fit
    saved = board.load_profiles()[profile.name]
    assert (saved.tiu_scale, saved.ddr_bytes_per_cycle) == (
        fit["tiu_scale"],
        fit["ddr_bytes_per_cycle"],
    )
    for m in data["models"]:
        assert abs(m["estimate"]["ms"] / m["median_ms"] - 1) < 0.03, m
    text = run_cli("board", "bench", models[0], "--board", profile.name, "--count", "2")
    assert "estimate (this board)" in text.stdout, text.stderr


def test_a_command_that_fills_stderr_and_stdout_does_not_stall(profile):
    # 4 MB on stderr while stdout is read (and the reverse): beyond any SSH channel window
    with board.Board(profile) as b:
        r = b.run(
            "head -c 4000000 /dev/zero | tr '\\0' e >&2; head -c 3000000 /dev/zero | tr '\\0' o",
            timeout=120,
        )
        assert r.returncode == 0 and len(r.stderr) == 4_000_000 and len(r.stdout) == 3_000_000
        with pytest.raises(BoardError, match="did not finish"):
            b.run("sleep 30", timeout=1)


@emulator_only
def test_a_board_without_sftp_still_gets_its_files(emu, profile, tiny_build, tmp_path):
    # Dropbear images often have no SFTP subsystem: transfers stream over a command
    emu.start(sftp=False)
    try:
        art = tiny_build.models["int8"]
        with board.Board(profile) as b:
            assert b.sftp is None
            remote = board.remote_model_path(b, art.cvimodel)
            b.run(f"rm -f {remote}")  # an earlier test may have sent it
            sent = board.push_model(b, art.cvimodel)
            assert sent.uploaded
            back = b.get(remote, tmp_path / "back.cvimodel")
        assert back.read_bytes() == art.cvimodel.read_bytes()
    finally:
        emu.start()


@pytest.mark.skipif(not REAL, reason="needs a real board (DUOTPU_BOARD=user@host)")
def test_the_estimate_against_a_real_board(profile, tiny_build):
    # the README's bound for the estimate: within 35 % of the board's PMU median
    models = [str(tiny_build.models[m].cvimodel) for m in ("int8", "bf16")]
    r = run_cli("board", "bench", *models, "--board", profile.name, "--count", "20", "--json")
    assert r.returncode == 0, r.stderr
    for m in json.loads(r.stdout)["models"]:
        assert abs(m["estimate"]["ms"] / m["median_ms"] - 1) < 0.35, m
