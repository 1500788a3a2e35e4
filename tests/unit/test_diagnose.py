"""Compiler failure signatures → the op, the layer and the ways around (log text from real runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from duotpu.compiler import diagnose

SOFTMAX_LOG = """\
[Running]: tpuc-opt sm_cv180x_int8_sym_final.mlir --codegen="model_file=sm.cvimodel" -o /dev/null
tpuc-opt: /__w/tpu-mlir/tpu-mlir/lib/Backend/CV18xx/Kernel/TgBf16SoftmaxKernel.cpp:252: void \
tpu_mlir::backend::TgSoftmaxKernel::softmaxLargeSizeHandler(): \
Assertion `tl_lut_reciprocal_result' \
failed.
PLEASE submit a bug report
"""

ERF_LOG = """\
%9 = "top.Erf"(%8) : (tensor<1x8x32x32xbf16>) -> tensor<1x8x32x32xf32> loc("gelu_1_t_Erf")
unimplemented tpu dialect!
UNREACHABLE executed at /__w/tpu-mlir/tpu-mlir/lib/Conversion/TopToTpu/TopToTpuPass.cpp:1921!
"""

CMDBUF_LOG = """\
model_runner: /work/cviruntime/src/cmodel/cmodel_cmdbuf.cpp:168: bmerr_t cmodel_cmdbuf(...): \
Assertion `tdma_sz + tiu_sz <= sz && tdma_sz <= g_tdma_cmdbuf_reserved_size' failed.
"""

FINAL_MLIR = """\
#loc1 = loc("x")
#loc7 = loc("logits_Gemm")
#loc8 = loc("prob_Softmax")
module @sm {
    %0 = "top.Input"(%arg0) : (tensor<1x3x32x32xf32>) -> tensor<1x3x32x32xf32> loc(#loc1)
    %1 = "top.Weight"() : () -> tensor<6600x8xbf16> loc(#loc2)
    %5 = "tpu.MatMul"(%4, %1) : (tensor<1x8xi8>) -> tensor<1x6600xbf16, 4096 : i64> loc(#loc7)
    %6 = "tpu.Softmax"(%5, %1) : (tensor<1x6600xbf16>) -> tensor<1x6600xbf16, 8192 : i64> loc(#loc8)
    %7 = "tpu.Cast"(%6) : (tensor<1x6600xbf16>) -> tensor<1x6600xf32> loc("prob_Softmax_f32")
}
"""


def test_a_kernel_assertion_names_the_op_and_its_layer(tmp_path: Path) -> None:
    (tmp_path / "sm_cv180x_int8_sym_final.mlir").write_text(FINAL_MLIR)
    f = diagnose.recognise(SOFTMAX_LOG)
    assert f is not None and f.kind == "kernel" and f.op == "Softmax"
    f = diagnose.locate(f, tmp_path, SOFTMAX_LOG)
    assert [ly.name for ly in f.layers] == ["prob_Softmax"] and f.layers[0].shape == (1, 6600)
    assert f.tail_layer is not None  # one op after it: a cut before it is offered
    text = diagnose.explain(f, "cv180x", "int8", other_chip_works=True, cut_at="logits")
    assert "'prob_Softmax'" in text and "2 lanes with 32 KB" in text
    assert "tried, it compiles" in text and "--cut-at logits" in text
    assert "cv181x" not in diagnose.explain(f, "cv181x", "bf16").split("Ways around")[1][:40]


def test_several_candidate_layers_at_the_end_get_a_cut_and_the_other_mode_how_to_ask(
    tmp_path: Path,
) -> None:
    """The log names the kernel (Softmax), not which of the model's three Softmax layers: all
    among the last ones, the cut goes before the first; BF16 not asked for is said as a flag."""
    mlir = FINAL_MLIR.replace(
        '    %7 = "tpu.Cast"',
        '    %8 = "tpu.Softmax"(%6) : (tensor<1x6600xbf16>) -> tensor<1x6600xbf16> '
        'loc("p2_Softmax")\n'
        '    %7 = "tpu.Cast"',
    )
    (tmp_path / "sm_cv180x_int8_sym_final.mlir").write_text(mlir)
    f = diagnose.locate(diagnose.recognise(SOFTMAX_LOG), tmp_path, SOFTMAX_LOG)
    assert [ly.name for ly in f.layers] == ["prob_Softmax", "p2_Softmax"]
    assert f.tail_layer is not None and f.tail_layer.name == "prob_Softmax"
    text = diagnose.explain(f, "cv180x", "int8", cut_at="logits", other_mode_built=False)
    assert "running those 2 layers on the CPU" in text and "('prob_Softmax')" in text
    assert "a BF16 build (--quantize bf16)" in text and "if it succeeded" not in text
    assert "if it succeeded" in diagnose.explain(f, "cv180x", "int8", other_mode_built=True)


def test_the_large_size_softmax_handler_is_the_widest_softmax(tmp_path: Path) -> None:
    """PP-OCRv5's recognizer: two 1×8×40×40 attention softmaxes inside the network and the
    18,385-way last one; the large-size handler failed, so the last one is the layer and its
    cut is offered (before: three candidates, not all at the end: no cut at all)."""
    attention = "".join(
        f'    %a{k} = "tpu.Softmax"(%0) : (tensor<1x8x40x40xbf16>) -> tensor<1x8x40x40xbf16> '
        f'loc("p2o.pd_op.softmax.{k}.0_Softmax")\n'
        + "".join(
            f'    %m{k}{j} = "tpu.MatMul"(%0) : (tensor<1x8xi8>) -> tensor<1x8x40x40xbf16> '
            f'loc("mm{k}{j}")\n'
            for j in range(4)
        )
        for k in range(2)
    )
    mlir = FINAL_MLIR.replace('    %5 = "tpu.MatMul"', attention + '    %5 = "tpu.MatMul"').replace(
        "1x6600", "1x40x18385"
    )
    (tmp_path / "rec_cv180x_int8_sym_final.mlir").write_text(mlir)
    f = diagnose.locate(diagnose.recognise(SOFTMAX_LOG), tmp_path, SOFTMAX_LOG)
    assert [ly.name for ly in f.layers] == ["prob_Softmax"]
    assert f.tail_layer is not None and f.tail_layer.shape == (1, 40, 18385)


def test_a_missing_lowering_names_the_op_and_layer() -> None:
    f = diagnose.recognise(ERF_LOG)
    assert f is not None and f.kind == "lowering" and f.op == "Erf"
    f = diagnose.locate(f, Path("/nonexistent"), ERF_LOG)
    assert f.layers[0].name == "gelu_1_t_Erf"
    assert "no cv180x BF16 implementation of Erf" in diagnose.explain(f, "cv180x", "bf16")


def test_the_simulators_command_buffer_limit_is_explained() -> None:
    tiu = (
        "python: /work/externals/cviruntime/src/cmodel/cmodel_cmdbuf.cpp:164: virtual bmerr_t "
        "CModelCmdbuf::rt_load_cmdbuf(...): Assertion `tiu_sz <= (int)sz && tiu_sz <= "
        "(int)g_tiu_cmdbuf_reserved_size' failed.\n"
    )
    t = diagnose.recognise(tiu)
    assert t is not None and t.kind == "simulator-cmdbuf"  # ResNeXt50 BF16 on cv180x
    f = diagnose.recognise(CMDBUF_LOG)
    assert f is not None and f.kind == "simulator-cmdbuf"
    text = diagnose.explain(f, "cv180x", "bf16")
    assert "cannot load it" in text and "smaller input size" in text and "INT8 build" in text


def test_unknown_failures_are_not_guessed() -> None:
    assert diagnose.recognise("Traceback\nValueError: something else\n") is None
    assert diagnose.kernel_op("TgInt8PoolingKernel") == "Pooling"


def test_an_empty_reference_is_told_apart_from_a_translation_error(tmp_path):
    """A test image the model does not respond to (a seal detector on a page without seals:
    peak 3.9e-6) makes model_transform's comparison fail on noise; that is the image's fault,
    not the compiler's."""
    import numpy as np

    from duotpu.compiler.steps import empty_reference

    ref = tmp_path / "m_ref_outputs.npz"
    np.savez(ref, seal=np.full((1, 2, 8, 8), 3.9e-6, np.float32), conv=np.ones((1, 4), np.float32))
    assert empty_reference(ref, ["seal"]) == pytest.approx(3.9e-6)
    assert empty_reference(ref, ["seal", "conv"]) is None  # a real tensor differs too
    assert empty_reference(ref, ["missing"]) is None
    assert empty_reference(tmp_path / "none.npz", ["seal"]) is None


def test_a_correctness_gap_gets_the_flag_that_lets_it_through_with_the_measured_numbers() -> None:
    """silero-vad's encoder, cut before its LSTM: the simulator and the quantized MLIR differ at
    the cut tensor (cos 0.9888, euclid 0.711); the advice is the --correctness they meet."""
    from duotpu.compiler.steps import correctness_advice
    from duotpu.config.errors import Mismatch

    bad = [
        Mismatch("/model/cut_Unsqueeze_f32", "cosine", 0.988781, 0.99),
        Mismatch("/model/cut_Unsqueeze_f32", "euclidean", 0.711334, 0.9),
    ]
    text = correctness_advice(bad, (0.99, 0.9))
    assert "--correctness 0.98,0.71 " in text and "'/model/cut_Unsqueeze_f32'" in text
    assert "verification against the fp32 model still decides" in text
    assert "--correctness 0.99,0.83 " in correctness_advice(
        [Mismatch("t", "euclidean", 0.837, 0.85)], (0.99, 0.85)
    )
    # its BF16 build: cosine 0.9998 but a euclidean similarity below 0 (an advice of 0 would
    # not let it through); a cosine below 0 is never advised
    assert "--correctness 0.96,-0.16 " in correctness_advice(
        [Mismatch("t", "euclidean", -0.157147, 0.0)], (0.96, 0.0)
    )
    assert "--correctness 0,0.5 " in correctness_advice(
        [Mismatch("t", "cosine", -0.3, 0.99)], (0.99, 0.5)
    )
