"""The docs site builds in strict mode from the code (generated references, benchmark results
included as written) and reads on a desktop and a phone screen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reportcheck import look

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strictly_and_reads_at_1280_and_390(tmp_path, browser):
    gen = subprocess.run(
        [sys.executable, "-m", "duotpu.cli.reference", "docs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert gen.returncode == 0, gen.stderr
    site = tmp_path / "site"
    mk = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert mk.returncode == 0, mk.stdout[-3000:] + mk.stderr[-3000:]
    shots = tmp_path / "shots"
    shots.mkdir()
    home = look(browser, site / "index.html", shots, set())
    assert "Quick start" in home["text"] and "make demo" in home["text"]
    recipe = look(browser, site / "reference" / "recipe" / "index.html", shots, set())
    assert "calibration.count" in recipe["text"] and "--calib-count" in recipe["text"]
    bench = look(browser, site / "benchmarks" / "build" / "index.html", shots, set())
    # the result file itself, not a copy of its numbers
    first_row = (ROOT / "bench/results/build.md").read_text().split("| (a) hand workflow")[1]
    assert first_row.split("|")[2].strip() in bench["text"]
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "into verified cvimodels" in api and api.count("doc-object") > 40  # docstrings
