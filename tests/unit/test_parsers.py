"""What duotpu reads from tools and boards, on recorded text; output matching; branch errors."""

from __future__ import annotations

import numpy as np
import pytest

from duotpu import board
from duotpu.builder import pipeline
from duotpu.compiler import steps
from duotpu.config.errors import BuildFailed, DuoTpuError, ToleranceError

COMPARE_LOG = """\
[input                      ]        EQUAL [PASSED]
[conv1_Relu                 ]  NOT_SIMLIAR [FAILED]
    (1, 8, 32, 32) float32
    cosine_similarity      = 0.812345
    euclidean_similarity   = 0.401000
    sqnr_similarity        = 5.000000
Target    tiny_cv180x_int8_sym_tpu_outputs.npz
Reference tiny_top_outputs.npz
npz compare FAILED.
"""


def test_compare_failures_name_the_tensor_and_the_numbers(tmp_path):
    log = tmp_path / "deploy.log"
    log.write_text(COMPARE_LOG)
    bad = steps.compare_failures(log, (0.85, 0.45))
    assert [(m.tensor, m.metric) for m in bad] == [
        ("conv1_Relu", "cosine"),
        ("conv1_Relu", "euclidean similarity"),
    ]
    assert bad[0].measured == pytest.approx(0.812345) and bad[0].required == 0.85
    assert steps.failed_comparison(log) == (
        "tiny_cv180x_int8_sym_tpu_outputs.npz",
        "tiny_top_outputs.npz",
    )
    log.write_text("all fine\n")
    assert steps.compare_failures(log, (0.85, 0.45)) == []


def test_timer_pmu_and_runtime_lines():
    text = (
        "Cvitek Runtime (1.4.0)@cvitek\n"
        "Performance result: 5 runs take 60.50 ms, each run takes 12.10 ms, fps 82.6\n"
        "tdma_exe_ms: 4.10ms, tiu_exe_ms: 7.20ms, inference_ms: 11.90ms\n"
        "tdma_exe_ms: 4.00ms, tiu_exe_ms: 7.00ms, inference_ms: 11.50ms\n"
    )
    assert board.parse_timer(text) == (5, 12.10, 82.6)
    assert board.parse_pmu(text) == [(4.10, 7.20, 11.90), (4.00, 7.00, 11.50)]
    assert board.runtime_version(text) == "1.4.0"
    assert board.parse_timer("nothing") is None and board.parse_pmu("nothing") == []
    assert board.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)


def test_output_matching_by_prefix_then_position():
    ref = {"logits": np.zeros(3), "boxes": np.zeros(2)}
    got = {"boxes_Conv_f32": np.zeros(2), "logits_Gemm_f32": np.zeros(3)}
    assert pipeline.match_outputs(ref, got) == {
        "logits": "logits_Gemm_f32",
        "boxes": "boxes_Conv_f32",
    }
    renamed = {"out0": np.zeros(3), "out1": np.zeros(2)}
    assert pipeline.match_outputs(ref, renamed) == {"logits": "out0", "boxes": "out1"}
    with pytest.raises(DuoTpuError, match="Cannot find the model output"):
        pipeline.match_outputs(ref, {"only": np.zeros(3)})


def test_every_failing_branch_is_reported_in_mode_order():
    def branch(mode):
        if mode == "bf16":
            raise ToleranceError("the BF16 model", [], "advice b")
        if mode == "int8":
            raise ToleranceError("the INT8 model", [], "advice i")
        return mode

    results, errors = pipeline._run_branches(branch, ["int8", "bf16", "mix"])
    assert results == {"mix": "mix"}
    assert [str(e).split(" failed")[0] for e in errors] == [
        "Verification of the INT8 model",
        "Verification of the BF16 model",
    ]
    err = pipeline.branch_error(errors)
    assert isinstance(err, BuildFailed) and "(1)" in str(err) and "(2)" in str(err)
    assert pipeline.branch_error(errors[:1]) is errors[0]


def test_advice_fits_the_mode():
    from duotpu.compiler import tolerance_advice

    assert "calibration" in tolerance_advice("int8", "tolerance.int8")
    bf16 = tolerance_advice("bf16", "tolerance.bf16")
    assert "calibration images" not in bf16 and "tolerance.bf16" in bf16


def test_runtime_codes_have_one_table_for_board_run_and_the_board_app():
    from duotpu.board.runner import explain_runtime_failure
    from duotpu.onboard import cvi

    assert "out of memory (ION)" in explain_runtime_failure("register failed: 0xC077800C")
    assert "out of memory (ION)" in cvi.explain(0xC077800C - (1 << 32))  # as a C int
    assert "newer compiler" in explain_runtime_failure("error 0xc0010102")
    assert explain_runtime_failure("all fine") == ""
