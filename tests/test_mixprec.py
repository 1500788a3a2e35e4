"""Automatic mixed precision on a model with one clearly INT8-sensitive layer."""

import json
from pathlib import Path

import pytest

import tinymodels
from conftest import run_cli, tiny_recipe
from duotpu.builder import mixprec, pipeline
from duotpu.config.errors import ConfigError


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory):
    return tinymodels.outlier_onnx(tmp_path_factory.mktemp("outlier") / "outlier.onnx")


def _recipe(onnx_path, **over):
    return tiny_recipe(onnx_path, name="outl", **{"mix.count": 40, "calibration.count": 16, **over})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, outlier_onnx):
    out = tmp_path_factory.mktemp("mixbuild")
    return pipeline.build(_recipe(outlier_onnx, **MIXED), out)


# deploy options the mixed-precision candidates must carry like the plain builds do
MIXED = {
    "mix.target": "agree>=0.95",
    "deploy.model_version": "1.2",
    "mix.fast_search": True,
    "mix.fast_search_cos": 0.99,
    "tolerance.correctness": [0.985, 0.85],
}


def test_the_build_report_plots_the_trade_off(mixed, browser, tmp_path):
    """The mixed build's report plots every candidate (hover: its numbers) and marks the one
    chosen; its numbers are the manifest's."""
    from reportcheck import look, numbers_match

    facts = look(browser, mixed.report, tmp_path, {"models", "mix", "test-image"})
    assert numbers_match(facts, mixed.manifest) >= 3 * len(mixed.models)
    tips = [t for t in facts["tooltips"] if "BF16 layers" in t]
    assert len(tips) == len(mixed.mix.rows)
    assert f"{mixed.mix.best.label}: {mixed.mix.best.shown_bf16} BF16 layers" in "\n".join(tips)


def test_search_finds_the_sensitive_layer(mixed):
    mix = mixed.mix
    rows = mix.rows
    assert rows[0].label == "pure INT8" and not rows[0].meets  # INT8 alone falls short
    chosen = rows[mix.chosen]
    assert mix.met and chosen.meets and chosen.metric >= 0.95
    assert "hot_Relu" in chosen.layers  # the layer with the outlier channel
    all_layers = max(r.n_bf16 for r in rows if not r.all_bf16)
    assert chosen.n_bf16 < 5 and chosen.n_bf16 <= all_layers
    assert rows[-1].label == "pure BF16"
    # the mixed cvimodel is better than pure INT8 against fp32 on the test image too
    assert mixed.models["mix"].cosine["logits"] > mixed.models["int8"].cosine["logits"]
    assert mixed.models["mix"].cvimodel.name == "outl_cv180x_mix.cvimodel"


def test_table_round_trips_and_the_cache_is_used(mixed, outlier_onnx, tmp_path):
    qtable = mixed.out_dir / "outl.qtable"
    layers = mixprec.read_qtable(qtable)
    assert tuple(layers) == mixed.mix.rows[mixed.mix.chosen].layers
    again = pipeline.build(_recipe(outlier_onnx, **MIXED), mixed.out_dir)
    assert all(s.cached for s in again.stages)
    # a hand-edited table is used as is: keep only the sensitive layer
    edited = tmp_path / "edited.qtable"
    mixprec.write_qtable(edited, ["hot_Relu"])
    by_hand = pipeline.build(
        _recipe(outlier_onnx, **{**MIXED, "mix.target": "", "mix.qtable": str(edited)}),
        mixed.out_dir,
    )
    assert by_hand.mix.rows[by_hand.mix.chosen].layers == ("hot_Relu",)
    assert mixprec.read_qtable(mixed.out_dir / "outl.qtable") == ["hot_Relu"]


def _outlier_build(outlier_onnx) -> list[str]:
    """`duotpu build` of the outlier model with the settings `_recipe` gives it."""
    return [
        "build",
        str(outlier_onnx),
        "--name",
        "outl",
        "--input-shape",
        "1,3,32,32",
        "--calib-count",
        "16",
        "--mix-count",
        "40",
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
    ]


def test_no_solution_is_reported(outlier_onnx, tmp_path):
    args = [
        *_outlier_build(outlier_onnx),
        "--target",
        "agree>=0.95",
        "--set",
        "mix.max_layers=1",
        "--out",
        str(tmp_path / "o"),
    ]
    proc = run_cli(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "target not reached" in proc.stderr and "best found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "mixed precision" in proc.stdout and "pure BF16" in proc.stdout
    assert (tmp_path / "o" / "outl_cv180x_mix.cvimodel").exists()
    # the user takes the pure BF16 row by its number: no new search, told it is their pick
    stages = json.loads((tmp_path / "o" / "manifest.json").read_text())["stages"]
    rows = next(s for s in stages if s["name"] == "mix")["result"]["rows"]
    assert rows[-1]["all_bf16"]
    picked = run_cli(*args, "--mix-pick", str(len(rows)))
    assert picked.returncode == 0, picked.stdout + picked.stderr
    mix = (tmp_path / "o" / "outl_cv180x_mix.cvimodel").read_bytes()
    assert mix == (tmp_path / "o" / "outl_cv180x_bf16.cvimodel").read_bytes()
    assert "target not reached" not in picked.stderr
    assert "whole model in BF16" in (tmp_path / "o" / "outl.qtable").read_text()


def test_pick_uses_another_row_without_a_new_search(mixed, outlier_onnx):
    """--mix-pick N takes row N of the trade-off table from the cached search."""
    base = pipeline.build(
        _recipe(outlier_onnx, **MIXED), mixed.out_dir
    )  # (another test may have built a hand-made table here)
    rows = base.mix.rows
    again = pipeline.build(_recipe(outlier_onnx, **MIXED, **{"mix.pick": 1}), mixed.out_dir)
    assert all(s.cached for s in again.stages)  # the search is not run again
    assert again.mix.chosen == 0 and again.mix.picked
    mix_file = again.out_dir / "outl_cv180x_mix.cvimodel"
    assert mix_file.read_bytes() == (again.out_dir / "outl_cv180x_int8.cvimodel").read_bytes()
    assert mixprec.read_qtable(again.out_dir / "outl.qtable") == []
    assert "| 1 | → | pure INT8 |" in (again.out_dir / "outl.mix.md").read_text()
    with pytest.raises(ConfigError, match="rows 1 to"):
        pipeline.build(_recipe(outlier_onnx, **MIXED, **{"mix.pick": len(rows) + 1}), mixed.out_dir)
    # back to the search's own choice
    back = pipeline.build(_recipe(outlier_onnx, **MIXED), mixed.out_dir)
    assert mixprec.read_qtable(back.out_dir / "outl.qtable") == list(rows[base.mix.chosen].layers)


def test_target_syntax_and_regions():
    with pytest.raises(ConfigError, match="agree>="):
        tiny_recipe("m.onnx", **{"mix.target": "accuracy>0.9"})
    with pytest.raises(ConfigError, match="mix.regions"):
        tiny_recipe("m.onnx", **{"mix.target": "cos>=0.9", "mix.regions": 0})
    # a -> b -> c -> d, with a skip a -> c; the Reshape cannot be chosen
    graph = {
        "input": {"type": "top.Input", "inputs": []},
        "a": {"type": "top.Conv", "inputs": ["input"]},
        "b": {"type": "top.Conv", "inputs": ["a"]},
        "r": {"type": "top.Reshape", "inputs": ["b"]},
        "c": {"type": "top.Add", "inputs": ["a", "r"]},
        "d": {"type": "top.Conv", "inputs": ["c"]},
    }
    order, consumers = mixprec.graph_order(graph)
    assert order == ["a", "b", "c", "d"]
    # each region also holds the consumers of its layers, so its tensors never see INT8
    assert mixprec.regions(order, consumers, 2) == [["a", "b", "c"], ["c", "d"]]
    assert mixprec.regions(order, consumers, 9) == [["a", "b", "c"], ["b", "c"], ["c", "d"], ["d"]]


def test_region_search_narrows_to_the_layers_that_matter():
    """The search logic on its own (a stand-in metric, no compiler): in a 16-layer chain where
    INT8 only hurts unless layers 5–7 are all in BF16, it ends with exactly those three."""
    names = [f"l{i}" for i in range(16)]
    graph = {"input": {"type": "top.Input", "inputs": []}}
    for i, n in enumerate(names):
        graph[n] = {"type": "top.Conv", "inputs": [names[i - 1] if i else "input"]}
    need = {"l5", "l6", "l7"}
    built = {}

    def build(layers, label):
        ok = need <= set(layers)
        built[frozenset(layers)] = mixprec.Candidate(
            label, tuple(layers), 1.0 if ok else 0.5, ok, 0, 0.0, True, Path(), Path(), Path()
        )
        return built[frozenset(layers)]

    mix = tiny_recipe("m.onnx", **{"mix.target": "cos>=0.9"}).mix
    mixprec._search_regions(graph, mix, build, 0.5)
    best = min((c for c in built.values() if c.meets), key=lambda c: c.n_bf16)
    assert list(best.layers) == ["l5", "l6", "l7"]
    assert len(built) < 2 * len(names)


def test_mix_candidates_carry_the_recipes_deploy_options(mixed):
    """Every candidate is deployed with the recipe's options (one place builds them): the mix
    cvimodel has the recipe's format version, and fast_search was asked for the recipe's
    cosine. model_deploy runs nothing on the test input for candidates: duotpu measures each on
    its MLIR and compares the cvimodel with it on the simulator itself where it matters (every
    candidate that meets the target and the one delivered; a disagreeing one is measured on the
    simulator)."""
    from duotpu import cvimodel

    mix = mixed.models["mix"]
    assert cvimodel.read_cvimodel(mix.cvimodel).version.startswith("1.2")
    assert cvimodel.read_cvimodel(mixed.models["int8"].cvimodel).version.startswith("1.2")
    stage = mixed.work_dir / "mix"
    logs = sorted(stage.glob("c*/deploy.log"))
    assert logs
    for log in logs:
        cmd = log.read_text().splitlines()[0]
        assert "--model_version 1.2" in cmd, cmd
        assert "--test_input" not in cmd and "--correctness" not in cmd, cmd
    rows = mixed.mix.rows
    assert all(r.measured_on in ("mlir", "simulator") for r in rows)
    assert all(r.checked for r in rows if r.meets) and mixed.mix.best.checked
    assert any(not r.checked for r in rows), "every candidate was simulated"
    # the delivered model's outputs on the test input came from the check's simulator run
    best = mixed.mix.best
    assert best.model_outputs is not None and best.model_outputs.is_file()
    assert mix.cosine and min(mix.cosine.values()) > 0.9
    fast = (stage / "fast_search" / "fast_search.log").read_text().splitlines()[0]
    assert "--expected_cos 0.99 " in fast + " "


def test_eval_scores_the_mix_model_as_itself(mixed, tmp_path):
    """`duotpu eval` of a build folder scores every cvimodel, the mix one under its own name,
    on its own quantized MLIR (bit-exact with the simulator), and the table fits 100 columns
    without empty label columns."""
    from duotpu.core.images import write_calibration_set
    from duotpu.inference import runtime

    m = runtime.open_model(mixed.models["mix"].cvimodel)
    assert m.mode == "mix" and m.tpu_mlir == mixed.models["mix"].tpu_mlir
    assert m.tpu_mlir.is_file() and "mix" in str(m.tpu_mlir.parent)
    folder = tmp_path / "imgs"
    write_calibration_set(folder, 4, seed=3)
    p = run_cli(
        "eval",
        str(mixed.out_dir),
        "--images",
        str(folder),
        "--backend",
        "mlir",
        "--check",
        "2",
        "--out",
        str(tmp_path / "rep"),
    )
    assert p.returncode == 0, p.stderr + p.stdout
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(rep["modes"]) == {"int8", "bf16", "mix"}
    assert rep["fast_path_check"]["mix"]["max_abs_diff"] == 0.0
    # the mix model keeps the outlier layer in BF16: closer to fp32 than pure INT8
    assert rep["modes"]["mix"]["cosine_mean"] > rep["modes"]["int8"]["cosine_mean"]
    lines = p.stdout.splitlines()
    assert max(map(len, lines)) <= 100 and not any("…" in ln for ln in lines), p.stdout
    assert "top-1 acc" not in p.stdout and "decisive (n)" in p.stdout


def test_a_target_rescues_an_int8_model_below_tolerance(outlier_onnx, tmp_path):
    """The way around an INT8 model that misses model_deploy's tolerance, which its error names
    (--target), works: the search starts from that model, the mixed model that meets the target
    is delivered beside BF16, and INT8 is reported as not delivered (a partial build, exit 3)."""
    out = tmp_path / "o"
    args = [
        *_outlier_build(outlier_onnx),
        "--tolerance-int8",
        "0.9999,0.999",  # the pure INT8 model cannot pass this
        "--out",
        str(out),
    ]
    plain = run_cli(*args)
    assert plain.returncode == 3, plain.stdout + plain.stderr
    assert "--target" in plain.stdout + plain.stderr  # the way around it names
    proc = run_cli(*args, "--target", "agree>=0.95")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "outl_cv180x_mix.cvimodel").is_file()
    assert (out / "outl_cv180x_bf16.cvimodel").is_file()
    assert not (out / "outl_cv180x_int8.cvimodel").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["failed"]) == {"int8"} and "mix" in manifest["models"]
    # the mixed model's layer names, for the estimate's per-layer view, are kept
    assert Path(manifest["models"]["mix"]["tensor_info"]).is_file()
    rows = next(s for s in manifest["stages"] if s["name"] == "mix")["result"]["rows"]
    assert rows[0]["label"] == "pure INT8" and not rows[0]["meets"]
    chosen = next(s for s in manifest["stages"] if s["name"] == "mix")["result"]["chosen"]
    assert rows[chosen]["meets"] and 0 < len(rows[chosen]["layers"]) < 10
    assert "MIX (verified)" in " ".join(proc.stderr.split())
    # a hand-written table starts from the failed INT8 model the same way
    table = tmp_path / "hand.qtable"
    table.write_text("".join(f"{name} BF16\n" for name in rows[chosen]["layers"]))
    hand = run_cli(*args, "--mix-qtable", str(table), "--out", str(tmp_path / "q"))
    assert hand.returncode == 3, hand.stdout + hand.stderr
    assert (tmp_path / "q" / "outl_cv180x_mix.cvimodel").is_file()
    assert "table hand.qtable" in hand.stdout
