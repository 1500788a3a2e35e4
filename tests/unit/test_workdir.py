"""The work directory's cache and resume rule, with a stand-in stage (no compiler)."""

from __future__ import annotations

import json

import pytest

from duotpu.builder.pipeline import WorkDir


def test_a_stage_runs_once_and_is_cached_until_its_key_changes(tmp_path):
    events, calls = [], []
    wd = WorkDir(tmp_path, events.append)

    def stage(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("made")
        return {"file": "out.txt"}

    first = wd.run("s", {"k": 1}, stage, lambda r: [r["file"]])
    again = wd.run("s", {"k": 1}, stage, lambda r: [r["file"]])
    assert not first.cached and again.cached and len(calls) == 1
    assert (tmp_path / "s" / "out.txt").read_text() == "made"
    assert [e.status for e in events] == ["start", "done", "cached"]
    changed = wd.run("s", {"k": 2}, stage, lambda r: [r["file"]])
    assert not changed.cached and len(calls) == 2
    manifest = json.loads((tmp_path / "s" / "stage.json").read_text())
    assert manifest["key"] == {"k": 2} and manifest["result"] == {"file": "out.txt"}


def test_a_missing_output_reruns_the_stage(tmp_path):
    wd = WorkDir(tmp_path)
    calls = []

    def stage(folder):
        calls.append(1)
        (folder / "out.txt").write_text("x")
        return {"file": "out.txt"}

    wd.run("s", {}, stage, lambda r: [r["file"]])
    (tmp_path / "s" / "out.txt").unlink()
    assert not wd.run("s", {}, stage, lambda r: [r["file"]]).cached and len(calls) == 2


def test_a_failed_stage_leaves_no_final_folder_and_the_next_run_resumes(tmp_path):
    wd = WorkDir(tmp_path)

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        wd.run("s", {}, broken)
    assert not (tmp_path / "s").exists()  # only the hidden temporary folder
    assert (tmp_path / ".s.tmp" / "half.txt").exists()
    ok = wd.run("s", {}, lambda folder: {"n": 1})
    assert not ok.cached and ok.result == {"n": 1} and not (tmp_path / ".s.tmp").exists()
