"""Automatic mixed precision on a model with one clearly INT8-sensitive layer."""

import numpy as np
import pytest

from duotpu import mixprec, pipeline
from duotpu.errors import ConfigError

import tinymodels
from conftest import run_cli, tiny_recipe


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory):
    return tinymodels.outlier_onnx(tmp_path_factory.mktemp("outlier") / "outlier.onnx")


def _recipe(onnx_path, **over):
    return tiny_recipe(onnx_path, name="outl", **{"mix.count": 40, "calibration.count": 16,
                                                  **over})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, outlier_onnx):
    out = tmp_path_factory.mktemp("mixbuild")
    return pipeline.build(_recipe(outlier_onnx, **{"mix.target": "agree>=0.95"}), out)


def test_search_finds_the_sensitive_layer(mixed):
    mix = mixed.mix
    rows = mix["rows"]
    assert rows[0]["label"] == "pure INT8" and not rows[0]["meets"]  # INT8 alone falls short
    chosen = rows[mix["chosen"]]
    assert mix["met"] and chosen["meets"] and chosen["metric"] >= 0.95
    assert "hot_Relu" in chosen["layers"]  # the layer with the outlier channel
    all_layers = max(r["n_bf16"] for r in rows if not r["all_bf16"])
    assert chosen["n_bf16"] < 5 and chosen["n_bf16"] <= all_layers
    assert rows[-1]["label"] == "pure BF16"
    # the mixed cvimodel is better than pure INT8 against fp32 on the test image too
    assert mixed.models["mix"].cosine["logits"] > mixed.models["int8"].cosine["logits"]
    assert mixed.models["mix"].cvimodel.name == "outl_cv180x_mix.cvimodel"


def test_table_round_trips_and_the_cache_is_used(mixed, outlier_onnx, tmp_path):
    qtable = mixed.out_dir / "outl.qtable"
    layers = mixprec.read_qtable(qtable)
    assert layers == mixed.mix["rows"][mixed.mix["chosen"]]["layers"]
    again = pipeline.build(_recipe(outlier_onnx, **{"mix.target": "agree>=0.95"}),
                           mixed.out_dir)
    assert all(s.cached for s in again.stages)
    # a hand-edited table is used as is: keep only the sensitive layer
    edited = tmp_path / "edited.qtable"
    mixprec.write_qtable(edited, ["hot_Relu"])
    by_hand = pipeline.build(_recipe(outlier_onnx, **{"mix.qtable": str(edited)}),
                             mixed.out_dir)
    assert by_hand.mix["rows"][by_hand.mix["chosen"]]["layers"] == ["hot_Relu"]
    assert mixprec.read_qtable(mixed.out_dir / "outl.qtable") == ["hot_Relu"]


def test_no_solution_is_reported(outlier_onnx, tmp_path):
    proc = run_cli("build", str(outlier_onnx), "--name", "outl", "--input-shape", "1,3,32,32",
                   "--calib-count", "16", "--mix-count", "40", "--mean", "0.5,0.5,0.5",
                   "--std", "0.25,0.25,0.25", "--target", "agree>=0.95", "--set",
                   "mix.max_layers=1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "target not reached" in proc.stderr and "best found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "mixed precision" in proc.stdout and "pure BF16" in proc.stdout
    assert (tmp_path / "o" / "outl_cv180x_mix.cvimodel").exists()


def test_target_syntax_and_rank_layers():
    with pytest.raises(ConfigError, match="agree>="):
        tiny_recipe("m.onnx", **{"mix.target": "accuracy>0.9"})
    graph = {"a": {"type": "top.Conv", "inputs": ["input"]},
             "b": {"type": "top.Conv", "inputs": ["a"]},
             "c": {"type": "top.Add", "inputs": ["a", "b"]}}
    ranked = mixprec.rank_layers([("a", 0.99), ("b", 0.90), ("c", 0.89)], graph)
    assert [n for n, _ in ranked] == ["b", "a", "c"]  # b adds the most error
    assert mixprec.channel_cosine(np.ones((1, 2, 2, 2)), np.ones((1, 2, 2, 2))) == \
        pytest.approx(1.0)


def test_channel_cosine_ignores_signs_of_tiny_channels():
    """A pooled [1, C, 1, 1] vector whose near-zero channels flip sign is nearly right, not the
    worst tensor of the model; a real per-channel error in a feature map still counts."""
    from duotpu.mixprec import channel_cosine
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (1, 32, 1, 1)).astype(np.float32)
    ref[0, :4] = 1e-4
    got = ref.copy()
    got[0, :4] = -1e-4  # four tiny channels change sign
    assert channel_cosine(ref, got) > 0.999
    fmap = rng.normal(0, 1, (1, 8, 8, 8)).astype(np.float32)
    bad = fmap.copy()
    bad[0, 0] = rng.normal(0, 1, (8, 8))  # one channel entirely wrong
    assert channel_cosine(fmap, bad) < 0.9
