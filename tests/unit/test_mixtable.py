"""The mixed-precision trade-off table and what a build says of a delivered mixed model."""

from pathlib import Path

import numpy as np
import pytest

from duotpu.builder import mixprec
from duotpu.builder.mixprec import Candidate
from duotpu.builder.pipeline import BuildResult, Mixed, ModelArtifact
from duotpu.config.recipe import Recipe, recipe_from_dict

pytestmark = pytest.mark.unit


def _candidate(label, n, metric, *, meets=False, failed="", on="mlir") -> Candidate:
    p = Path("x")
    layers = tuple(f"l{i}" for i in range(n))
    return Candidate(label, layers, metric, meets, 1000, 1.0, True, p, p, p, failed=failed,
                     measured_on=on)  # fmt: skip


def test_candidates_the_compiler_could_not_make_are_listed_after_the_rows():
    rows = [_candidate("pure INT8", 0, 0.5), _candidate("region 3", 4, 0.995, on="simulator")]
    failed = [_candidate("region 1", 7, -1.0, failed="tiu wrong parameter in Conv x")]
    cells = mixprec.table_cells(rows, 1, failed)
    assert [c[0] for c in cells] == ["1", "2", "—"]  # the not-built one cannot be picked
    assert cells[1][4] == "0.9950 sim" and cells[0][4] == "0.5000"
    assert cells[2][2:5] == ["region 1", "7", "not built"]
    md = mixprec.table_md(rows, 1, "cos>=0.99", failed)
    assert "| cos>=0.99 |" in md.splitlines()[0]
    assert "- region 1: tiu wrong parameter in Conv x" in md
    assert "sim: measured on the simulator" in md
    assert "Not built" not in mixprec.table_md(rows, 1, "cos>=0.99")


def test_agreement_is_the_least_similar_common_output(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1, 10)), rng.normal(size=(1, 4))
    np.savez(tmp_path / "model.npz", out=a, aux=b, only_here=a)
    np.savez(tmp_path / "tpu.npz", out=a, aux=-b)
    got = mixprec.agreement(tmp_path / "model.npz", tmp_path / "tpu.npz")
    assert got == pytest.approx(-1.0)
    np.savez(tmp_path / "same.npz", out=a, aux=b)
    assert mixprec.agreement(tmp_path / "model.npz", tmp_path / "same.npz") == pytest.approx(1.0)
    # model_deploy wrote no MLIR outputs (a self-checked model): nothing to disagree with
    assert mixprec.agreement(tmp_path / "model.npz", tmp_path / "missing.npz") == 1.0


def _result(mix: Mixed, cos: float, recipe: Recipe | None = None) -> BuildResult:
    p = Path("x")
    art = ModelArtifact("mix", p, 1, 1.0, {"out": cos})
    return BuildResult(
        recipe or Recipe(), p, p, p, {}, {}, {"mix": art, "bf16": art}, [], p, p, mix=mix
    )


def test_a_mixed_model_is_called_verified_only_when_it_is():
    best = _candidate("regions 3+7", 40, 0.28)
    missed = Mixed((best,), 0, "cos>=0.99", False, True, 0.0)
    assert _result(missed, 0.87).unverified("mix") == "target cos>=0.99 not met (best 0.2800)"
    assert _result(missed, 0.87).unverified("bf16") == ""
    met = Mixed((_candidate("region 2", 3, 0.995, meets=True),), 0, "cos>=0.99", True, True, 0.0)
    assert _result(met, 0.999).unverified("mix") == ""
    strict = recipe_from_dict(
        {"name": "m", "model": {"source": "m.onnx"}, "tolerance": {"verify_int8": 0.999}}, "test"
    )
    why = _result(met, 0.995, strict).unverified("mix")
    assert why.startswith("cosine vs fp32 0.9950 < 0.999")


def test_the_given_table_is_the_row_delivered_or_its_failure_is_said():
    from duotpu.config.errors import ModelError

    int8 = _candidate("pure INT8", 0, 0.5)
    other = _candidate("region 1", 2, 0.99, meets=True)
    table = _candidate("table my.qtable", 5, 0.8)
    # the table is the answer even when another row meets the target
    assert mixprec.choose([int8, other, table], table, "my.qtable") == 2
    # a table the compiler could not make is an error, not another row delivered in its place
    broken = _candidate("table my.qtable", 5, -1.0, failed="tiu wrong parameter in Conv x")
    with pytest.raises(ModelError, match="my.qtable cannot be compiled: tiu wrong parameter"):
        mixprec.choose([int8], broken, "my.qtable")
    # no table: the fewest BF16 layers that meet, else the best metric
    assert mixprec.choose([int8, other, _candidate("r2", 9, 0.999, meets=True)]) == 1
    assert mixprec.choose([int8, _candidate("r", 3, 0.7)]) == 1
