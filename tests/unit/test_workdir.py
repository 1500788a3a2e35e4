"""The work directory's cache and resume rule, with stand-in stages (no compiler): typed results
stored in stage.json and read back, paths relative to the stage folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from duotpu.builder.workdir import StageResult, WorkDir


@dataclass(frozen=True)
class Made(StageResult):
    out: Path
    count: int
    names: tuple[str, ...] = ()
    extra: Path | None = None


def test_a_stage_runs_once_and_is_cached_until_its_key_changes(tmp_path):
    events, calls = [], []
    wd = WorkDir(tmp_path, events.append)

    def stage(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("made")
        return Made(folder / "out.txt", 3, ("a", "b"))

    first = wd.run("s", {"k": 1}, stage, Made)
    again = wd.run("s", {"k": 1}, stage, Made)
    assert not first.cached and again.cached and len(calls) == 1
    assert first.result == again.result == Made(tmp_path / "s" / "out.txt", 3, ("a", "b"))
    assert again.result.out.read_text() == "made"
    assert [e.status for e in events] == ["start", "done", "cached"]
    changed = wd.run("s", {"k": 2}, stage, Made)
    assert not changed.cached and len(calls) == 2
    record = json.loads((tmp_path / "s" / "stage.json").read_text())
    assert record["key"] == {"k": 2}
    assert record["result"] == {"out": "out.txt", "count": 3, "names": ["a", "b"], "extra": None}


def test_paths_elsewhere_in_the_work_directory_stay_relative(tmp_path):
    wd = WorkDir(tmp_path / "work")
    a = wd.run("a", {}, lambda f: (f / "x").write_text("x") and Made(f / "x", 1), Made)
    b = wd.run("b", {}, lambda f: Made(a.result.out, 2, extra=a.result.out), Made)
    record = json.loads((tmp_path / "work" / "b" / "stage.json").read_text())
    assert record["result"]["out"] == "../a/x"
    moved = tmp_path / "moved"
    (tmp_path / "work").rename(moved)
    again = WorkDir(moved).run("b", {}, lambda f: pytest.fail("should be cached"), Made)
    assert again.cached and again.result.out == moved / "a" / "x" == again.result.extra
    assert b.result.out == tmp_path / "work" / "a" / "x"


def test_a_missing_file_reruns_the_stage(tmp_path):
    wd = WorkDir(tmp_path)
    calls = []

    def stage(folder):
        calls.append(1)
        (folder / "out.txt").write_text("x")
        return Made(folder / "out.txt", 1)

    wd.run("s", {}, stage, Made)
    (tmp_path / "s" / "out.txt").unlink()
    assert not wd.run("s", {}, stage, Made).cached and len(calls) == 2


def test_a_failed_stage_leaves_no_final_folder_and_the_next_run_resumes(tmp_path):
    wd = WorkDir(tmp_path)

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        wd.run("s", {}, broken, Made)
    assert not (tmp_path / "s").exists()  # only the hidden temporary folder
    assert (tmp_path / ".s.tmp" / "half.txt").exists()

    def ok(folder):
        (folder / "o").write_text("o")
        return Made(folder / "o", 1)

    done = wd.run("s", {}, ok, Made)
    assert not done.cached and done.result.count == 1 and not (tmp_path / ".s.tmp").exists()


def test_a_record_from_an_older_layout_reruns_the_stage(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "stage.json").write_text(json.dumps({"key_hash": "x", "result": {"a": 1}}))
    wd = WorkDir(tmp_path)
    (tmp_path / "f").write_text("f")
    res = wd.run("s", {}, lambda folder: Made(tmp_path / "f", 5), Made)
    assert not res.cached and res.result.count == 5


def test_a_record_without_a_field_its_type_has_now_reruns_the_stage(tmp_path):
    wd = WorkDir(tmp_path)
    (tmp_path / "f").write_text("f")
    first = wd.run("s", {"k": 1}, lambda folder: Made(tmp_path / "f", 5, ("a",)), Made)
    record = json.loads((tmp_path / "s" / "stage.json").read_text())
    del record["result"]["names"]  # as written before Made had names (defaults to ())
    (tmp_path / "s" / "stage.json").write_text(json.dumps(record))
    again = wd.run("s", {"k": 1}, lambda folder: Made(tmp_path / "f", 6, ("b",)), Made)
    assert not first.cached and not again.cached and again.result.names == ("b",)


def test_a_relative_work_directory_gives_absolute_result_paths(tmp_path, monkeypatch):
    """`duotpu build` puts its work directory under the relative build/NAME by default."""
    monkeypatch.chdir(tmp_path)
    wd = WorkDir(Path("build") / "w")

    def stage(folder):
        (folder / "x").write_text("x")
        return Made(folder / "x", 1)

    made = wd.run("s", {}, stage, Made)
    assert made.result.out == tmp_path / "build" / "w" / "s" / "x" and made.result.out.is_file()
    record = json.loads((tmp_path / "build" / "w" / "s" / "stage.json").read_text())
    assert record["result"]["out"] == "x"
    again = WorkDir(Path("build") / "w").run("s", {}, stage, Made)
    assert again.cached and again.result == made.result


def test_tool_names_are_what_tpu_mlir_can_take():
    from duotpu.builder.workdir import tool_name

    assert tool_name("MyNet") == "mynet"
    assert tool_name("YOLOv8n") == "yolov8n"
    assert tool_name("my nét 猫") == "my_net"
    assert tool_name("猫") == "model"
    assert tool_name("50layers") == "model_50layers"
    assert tool_name("a$(touch X)") == "a_touch_x"


def test_an_unsafe_output_path_moves_only_the_work_folder(tmp_path, monkeypatch):
    from duotpu.builder.workdir import unsafe_characters, work_root

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert work_root(tmp_path / "out", None, "n") == (tmp_path / "out" / "work", "")
    root, note = work_root(tmp_path / "out dir $x", None, "Net")
    assert root.parent == tmp_path / "cache" / "duotpu" / "work"
    assert not unsafe_characters(root)
    assert "a space" in note and "'$'" in note
    # the same output folder always gets the same work folder (a rebuild resumes)
    assert work_root(tmp_path / "out dir $x", None, "Net")[0] == root
    assert unsafe_characters(Path("/a b/ü;")) == " ü;"


def test_one_build_per_work_folder_at_a_time(tmp_path):
    import os
    import subprocess
    import sys

    from duotpu.builder.workdir import exclusive
    from duotpu.config.errors import BusyError

    with exclusive(tmp_path / "w"):
        with pytest.raises(BusyError, match=rf"Another duotpu build \(pid {os.getpid()}, started"):
            with exclusive(tmp_path / "w"):
                pass
        # another process is refused too; the message names this one
        code = (
            "import sys; from duotpu.builder.workdir import exclusive\n"
            "try:\n    exclusive(sys.argv[1]).__enter__()\n"
            "except Exception as e:\n    print(e); sys.exit(7)\n"
        )
        p = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "w")], capture_output=True, text=True
        )
        assert p.returncode == 7 and f"pid {os.getpid()}" in p.stdout
    with exclusive(tmp_path / "w"):  # released: free again
        pass
    # a holder killed with SIGKILL releases it (the kernel drops the flock)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from duotpu.builder.workdir import exclusive\n"
            "with exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path / "k"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with exclusive(tmp_path / "k"):
        pass


def test_a_running_stage_reports_its_tools_count(tmp_path):
    """A stage whose tool writes a progress bar to its log (run_calibration's images) reports
    the count while it runs, in words; the CLI's spinner shows it."""
    import io
    import time

    from tqdm import tqdm

    from duotpu.builder.workdir import log_progress

    events = []
    wd = WorkDir(tmp_path, events.append)

    def stage(folder):
        with open(folder / "calibration.log", "w") as log:
            bar = tqdm(range(5), total=5, file=log)
            for i in bar:
                bar.set_description(f"activation_collect_and_calc_th for sample: {i}")
                log.flush()
                time.sleep(0.5)
        return Made(folder / "calibration.log", 5)

    wd.run("calibrate", {}, stage, Made)
    said = [e.message for e in events if e.status == "progress"]
    assert said and all(m.endswith("/5 images") for m in said), said
    buf = io.StringIO()
    bar = tqdm(range(80), total=80, file=buf, desc="[2048] threshold: conv1")
    for _ in bar:
        pass
    assert log_progress(buf.getvalue()) == "80/80 layers"
    assert log_progress("no bar here\n") == ""


def test_log_progress_reads_the_last_bar_of_a_long_line():
    """run_calibration's log is one long line of tqdm bars and the simulator's own "[###] 45%"
    bars; the last tqdm bar and the words before it are what counts (the search was quadratic
    in the line's length before: 0.24 s for 4 KB, once a second beside calibration)."""
    from duotpu.builder.workdir import log_progress

    noise = "[" + "#" * 40 + "] 100%" * 3
    bars = "".join(
        f"activation_collect_and_calc_th for sample: {i}:  {i}%|##  | {i}/100 [00:01<00:02]" + noise
        for i in range(1, 60)
    )
    tail = "tune op: conv3:   5%|▌ | 3/60 [00:00<00:00, 9.1it/s]" + noise
    assert log_progress(bars) == "59/100 images"
    assert log_progress(bars + tail) == "3/60 layers tuned"
    assert log_progress(tail[-30:] + bars[-4096:]) == "59/100 images"
