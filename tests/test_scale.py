"""Scale-out on Ray: the same answers as serial, a real two-node cluster on 127.0.0.1 (started by
the test as ordinary processes), a killed worker, a lost node, Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import TESTS, run_cli, tiny_recipe
from duotpu import cvimodel
from duotpu.builder.many import build_many
from duotpu.compiler.executor import RayExecutor, Serial
from duotpu.core.images import write_calibration_set

RAY = Path(sys.executable).parent / "ray"
# the cluster's processes find `tinymodels` (a factory source) and share one auth mode
ENV = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def same_model(a: Path, b: Path) -> None:
    """Two cvimodels are the same model: byte for byte, except the build time tpu_mlir writes
    into the file (and so the header's md5 of the body)."""
    ia, ib = cvimodel.read_cvimodel(a), cvimodel.read_cvimodel(b)
    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db)
    da = da.replace(ia.build_time.encode(), b"#" * len(ia.build_time))
    db = db.replace(ib.build_time.encode(), b"#" * len(ib.build_time))
    assert da[cvimodel.HEADER_SIZE :] == db[cvimodel.HEADER_SIZE :]


def recipes(onnx: Path, names: list[str], **over):
    return [
        tiny_recipe(onnx, name=n, **{"calibration.seed": i, **over}) for i, n in enumerate(names)
    ]


def _start_duotpu(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The real `duotpu` command in the background, its output (stdout and stderr) piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "duotpu.cli", *args],
        env={**os.environ, **ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _outlier_recipe(tmp_path: Path, name: str, **over):
    """The small model with one INT8-sensitive layer, with a mixed-precision target."""
    import tinymodels

    onnx = tinymodels.outlier_onnx(tmp_path / "outlier.onnx")
    return tiny_recipe(
        onnx,
        name=name,
        quantize=["int8"],
        **{
            "mix.count": 40,
            "calibration.count": 16,
            "mix.target": "agree>=0.95",
            "mix.fast_search": False,
            **over,
        },
    )


def test_parallel_builds_equal_serial_ones(tiny_onnx_path, tmp_path):
    """build_many on a local Ray instance of 2 workers gives the serial run's cvimodels and
    numbers; a second run is all cache."""
    rs = recipes(tiny_onnx_path, ["sa", "sb"])
    serial = build_many(rs, out_root=tmp_path / "serial", executor=Serial())
    with RayExecutor(workers=2) as ex:
        assert ex.workers == 2
        par = build_many(rs, out_root=tmp_path / "par", executor=ex)
        again = build_many(rs, out_root=tmp_path / "par", executor=ex)
    assert [b.name for b in par] == ["sa", "sb"] and all(b.ok for b in serial + par)
    for s, p in zip(serial, par):
        assert s.models == p.models  # sizes, ION, cosines, estimates
        for mode in ("int8", "bf16"):
            name = s.models[mode]["cvimodel"]
            same_model(s.out_dir / name, p.out_dir / name)
    assert all(b.cached for b in again)


def test_a_parallel_mix_search_and_eval_equal_serial_ones(tmp_path, tiny_build):
    """The mixed-precision search with its sensitivity candidates built as parallel tasks keeps
    the serial search's rows (labels, layers, metrics, same models) and choice; an eval
    spread over 2 workers in shards gives the serial eval's numbers."""
    from duotpu.builder import pipeline
    from duotpu.eval.evaluate import evaluate_build

    recipe = _outlier_recipe(tmp_path, "pm", **{"mix.regions": 4})
    serial = pipeline.build(recipe, tmp_path / "serial")
    folder = tmp_path / "imgs"
    write_calibration_set(folder, 6, seed=4)
    with RayExecutor(workers=2) as ex:
        par = pipeline.build(recipe, tmp_path / "par", executor=ex)
        ev_par = evaluate_build(tiny_build.out_dir, folder, executor=ex, layers=0)
    ev_serial = evaluate_build(tiny_build.out_dir, folder, layers=0)
    assert serial.mix is not None and par.mix is not None
    assert par.mix.chosen == serial.mix.chosen
    for a, b in zip(serial.mix.rows, par.mix.rows, strict=True):
        assert (a.label, a.layers, a.metric, a.ion_mb) == (b.label, b.layers, b.metric, b.ion_mb)
        same_model(a.cvimodel, b.cvimodel)
        assert a.cvimodel.parent.name == b.cvimodel.parent.name  # the same candidate folders
    for mode, m in ev_serial.modes.items():
        got = ev_par.modes[mode]
        assert replace(m, images_per_second=0.0) == replace(got, images_per_second=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture()
def cluster(tmp_path):
    """A head node and a second node on 127.0.0.1, one CPU each; the second runs in the
    foreground (--block) so the test can take it down. Stopped after the test."""
    env = {**os.environ, **ENV}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
        env=env,
        check=True,
        capture_output=True,
    )
    second = subprocess.Popen(
        [RAY, "start", f"--address={address}", "--block", *common],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = subprocess.run(
                [RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True
            )
            if st.stdout.count(" node_") >= 2:
                break
            time.sleep(1)
        else:
            pytest.fail(f"the second Ray node did not join: {st.stdout} {st.stderr}")
        yield address, second
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGTERM)
            second.wait(30)
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)


def _write_recipes(onnx: Path, folder: Path, names: list[str], **over) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in recipes(onnx, names, **over):
        p = folder / f"{r.name}.toml"
        p.write_text(r.to_toml())
        paths.append(str(p))
    return paths


def test_a_two_node_cluster_builds_and_survives_a_lost_node(cluster, tiny_onnx_path, tmp_path):
    """`duotpu build-many --ray-address` on a real two-node cluster: two builds run side by
    side, one on each node, and the one done on the other node comes back into the caller's
    folder. Then the second node is taken down mid-run: what had finished stays, the lost task
    runs again on the head, every recipe is built."""
    address, second = cluster
    out = tmp_path / "out"

    def start(names: list[str]) -> subprocess.Popen:
        files = _write_recipes(tiny_onnx_path, tmp_path / "r", names)
        return _start_duotpu(
            "build-many",
            *files,
            "--out-root",
            str(out),
            "--ray-address",
            address,
            env={"DUOTPU_NODE_DIR": str(tmp_path / "nodes")},
        )

    proc = start(["na", "nb"])
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout
    shipped = list((tmp_path / "nodes").glob("*/manifest.json"))
    assert len(shipped) == 1, "one of the two builds runs on the second node"
    there = shipped[0].parent
    name = there.name.rsplit("-", 1)[0]
    for f in there.glob("*.cvimodel"):  # came back from the other node, byte for byte
        assert (out / name / f.name).read_bytes() == f.read_bytes()
    assert (out / name / "report.html").is_file() and not (out / name / "work").exists()
    # the caller can evaluate it: the fp32 model came along, the node's paths did not
    from conftest import run_cli
    from duotpu.core import images

    images.write_calibration_set(tmp_path / "imgs", 4, seed=3)
    ev = run_cli("eval", str(out / name), "--images", str(tmp_path / "imgs"), "--check", "0")
    assert ev.returncode == 0, ev.stderr
    assert "/nodes/" not in (out / name / "manifest.json").read_text()

    proc = start(["nc", "nd", "ne"])
    deadline = time.monotonic() + 300  # the first finished build, then the node goes down
    while not list(out.glob("n[cde]/manifest.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    first = {p: p.stat().st_mtime for p in out.glob("n[cde]/*.cvimodel")}
    assert first, "no build finished"
    os.killpg(second.pid, signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout
    for name in ("nc", "nd", "ne"):
        assert (out / name / f"{name}_cv180x_int8.cvimodel").is_file(), stdout
    assert all(p.stat().st_mtime == t for p, t in first.items())  # finished work was kept


def test_a_killed_worker_is_retried_once_then_reported(tiny_onnx_path, tmp_path):
    """A build whose worker process is killed runs again and succeeds; killed twice, the build
    is reported as failed (exit 1) with why."""
    files = _write_recipes(tiny_onnx_path, tmp_path / "r", ["ka"])

    def run(kills: int) -> tuple[subprocess.CompletedProcess | None, str]:
        out = tmp_path / f"out{kills}"
        proc = _start_duotpu("build-many", *files, "--out-root", str(out), "--workers", "2")
        killed = 0
        deadline = time.monotonic() + 300
        while killed < kills and time.monotonic() < deadline and proc.poll() is None:
            pids = _ray_processes("ray::_run_task")
            if pids:
                time.sleep(2)  # in the middle of the build
                for pid in _ray_processes("ray::_run_task"):
                    os.kill(pid, signal.SIGKILL)
                killed += 1
                while _ray_processes("ray::_run_task") == pids:
                    time.sleep(0.2)
            time.sleep(0.2)
        stdout, _ = proc.communicate(timeout=600)
        assert killed == kills
        return proc, stdout

    proc, stdout = run(1)
    assert proc.returncode == 0, stdout
    assert (tmp_path / "out1" / "ka" / "ka_cv180x_int8.cvimodel").is_file()
    proc, stdout = run(2)
    assert proc.returncode == 1, stdout
    assert "died 2 times" in stdout


def test_ctrl_c_stops_every_task(tiny_onnx_path, tmp_path):
    """Ctrl-C during a parallel build-many: exit 130 within seconds, and no task, tool process
    or local Ray process is left."""
    # 300 calibration images: the calibration runs long enough to be caught running
    files = _write_recipes(
        tiny_onnx_path, tmp_path / "r", ["ca", "cb"], **{"calibration.count": 300}
    )
    proc = _start_duotpu(
        "build-many", *files, "--out-root", str(tmp_path / "out"), "--workers", "2"
    )
    deadline = time.monotonic() + 120
    while (
        len(_ray_processes("ray::_run_task")) < 2
        and time.monotonic() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.2)
    # wait for the calibration (its command line names the test's folder; the other tools take
    # a second or less): a task's worker imports duotpu first, slower on a loaded machine
    ours = str(tmp_path / "out")
    calibrating = f"run_calibration.py .* {ours}"
    while not _ray_processes(calibrating) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1)
    if not _ray_processes(calibrating):
        proc.kill()
        raise AssertionError(f"no calibration was running: {proc.communicate()[0]}")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    assert time.monotonic() - t0 < 15
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        _ray_processes("ray::_run_task") or _ray_processes(ours)
    ):
        time.sleep(0.5)
    assert not _ray_processes("ray::_run_task|raylet|gcs_server")
    assert not _ray_processes(ours), "a tool process outlived Ctrl-C"
    assert "interrupted" in stdout


def test_build_many_refuses_two_recipes_of_one_name(tiny_onnx_path, tmp_path):
    files = _write_recipes(tiny_onnx_path, tmp_path / "a", ["same"])
    files += _write_recipes(tiny_onnx_path, tmp_path / "b", ["same"])
    p = run_cli("build-many", *files, "--out-root", str(tmp_path / "o"))
    assert p.returncode == 2 and "Several recipes are named same" in p.stderr


def test_an_interrupted_mix_search_resumes_without_rebuilding(tmp_path):
    """Ctrl-C in the middle of the mixed-precision search, then the same command again: the
    candidates that had finished are taken as they are (not deployed again), the search ends
    with them in its table."""
    recipe = tmp_path / "rs.toml"
    recipe.write_text(_outlier_recipe(tmp_path, "rs").to_toml())
    out = tmp_path / "out"
    proc = _start_duotpu("build", "--recipe", str(recipe), "--out", str(out))
    pending = out / "work" / ".mix.tmp"
    deadline = time.monotonic() + 300
    while len(list(pending.glob("c*/candidate.json"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    finished = {
        p.parent.name: p.stat().st_mtime_ns
        for p in pending.glob("c*/*.cvimodel")
        if (p.parent / "candidate.json").is_file()
    }
    assert len(finished) >= 2
    p = run_cli("build", "--recipe", str(recipe), "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    mix = out / "work" / "mix"
    for name, mtime in finished.items():
        (cvi,) = (mix / name).glob("*.cvimodel")
        assert cvi.stat().st_mtime_ns == mtime, f"{name} was built again"


def test_both_executors_fail_alike_and_a_users_ray_session_stays_open():
    import ray

    from duotpu.compiler.executor import RayExecutor, Serial

    items = ["1", "x", "3"]  # int("x"): an exception that is not one of duotpu's
    serial = Serial().map(int, items, labels=items)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ex = RayExecutor(workers=2)  # joins the session the caller started
        on_ray = ex.map(int, items, labels=items)
        ex.close()
        assert ray.is_initialized(), "close() must not shut down the caller's session"
    finally:
        ray.shutdown()
    for outcomes in (serial, on_ray):
        assert [o.value for o in outcomes] == [1, None, 3]
        failed = outcomes[1].failed
        assert failed is not None and failed.label == "x"
        assert "invalid literal" in failed.error and isinstance(failed.exception, ValueError)
