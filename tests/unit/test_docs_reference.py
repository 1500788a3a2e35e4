"""The docs site's generated references cover the code: every recipe key and flag, every
command, every exported name and every benchmark result has its place."""

from __future__ import annotations

from pathlib import Path

from duotpu.cli import reference
from duotpu.config.recipe import recipe_flags

ROOT = Path(__file__).resolve().parents[2]


def test_every_recipe_key_and_flag_is_in_the_recipe_reference():
    page = reference.recipe_page()
    keys = reference.recipe_keys()
    assert "calibration.count" in keys and "deploy.batch_sizes" in keys
    missing = [k for k in keys if f"| `{k}` |" not in page]
    missing += [f.option for f in recipe_flags() if f"`{f.option}`" not in page]
    assert not missing, missing


def test_every_command_and_option_is_in_the_cli_reference():
    page = reference.cli_page()
    commands = reference.cli_commands()
    assert "duotpu board app push" in commands and "duotpu build" in commands
    assert not [c for c in commands if f"## `{c}`" not in page]
    assert "`--calib-count" in page and "`--target" in page


def test_every_export_and_benchmark_result_has_a_page(tmp_path):
    import duotpu

    api = reference.api_page()
    shown = [n for n in duotpu.__all__ if f".{n}\n" in api or f'heading: "{n}"' in api]
    assert sorted(shown) == sorted(n for n in duotpu.__all__ if not n.startswith("__"))
    assert "## Other" not in api and "## Building" in api  # every export has its section
    pages = reference.benchmark_pages(ROOT)
    results = sorted(p.name for p in (ROOT / "bench" / "results").glob("*.md"))
    assert sorted(k for k in pages if k != "index.md") == results
    nav = (ROOT / "mkdocs.yml").read_text()
    assert not [k for k in pages if f"benchmarks/{k}" not in nav], "a benchmark page not in nav"
    build = pages["build.md"]
    assert "`bench/build.py`" in build and '--8<-- "bench/results/build.md"' in build
    written = reference.write_reference(tmp_path / "docs", ROOT)
    assert (tmp_path / "docs" / reference.RECIPE_PAGE) in written


def test_make_bench_knows_the_script_of_every_result():
    import importlib.util
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
        assert spec and spec.loader
        run = sys.modules["bench_run"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run)  # (a dataclass looks its module up in sys.modules)
    finally:
        sys.path.remove(str(ROOT / "bench"))
        sys.modules.pop("bench_run", None)
    results = {p.name for p in (ROOT / "bench" / "results").glob("*.md")}
    assert results - {j.result for j in run.JOBS} == set()
    assert not [j for j in run.JOBS if not (ROOT / "bench" / j.script).is_file()]
