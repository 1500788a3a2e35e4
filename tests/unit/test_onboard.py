"""The board runtime's numpy code against what the host uses (OpenCV): the resize, the gray
conversion and the NMS must give the same bytes, so the board and the PC give the same answers."""

from __future__ import annotations

import numpy as np
import pytest

from duotpu.onboard import heads, images, preprocess


def test_resize_equals_opencv_byte_for_byte():
    import cv2

    rng = np.random.RandomState(0)
    for trial in range(300):
        ih, iw = rng.randint(1, 150, 2)
        h, w = rng.randint(1, 160, 2)
        shape = (ih, iw, 3) if trial % 2 else (ih, iw)
        img = rng.randint(0, 256, shape).astype(np.uint8)
        want = cv2.resize(img, (int(w), int(h)))
        assert np.array_equal(preprocess.resize(img, int(w), int(h)), want), (ih, iw, h, w)
    img = rng.randint(0, 256, (64, 48, 3)).astype(np.uint8)  # the 2x shortcut (INTER_AREA)
    assert np.array_equal(preprocess.resize(img, 24, 32), cv2.resize(img, (24, 32)))
    assert np.array_equal(preprocess.gray_of_bgr(img), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))


def test_nms_equals_opencvs_batched_nms():
    import cv2

    rng = np.random.RandomState(1)
    for trial in range(300):
        n, nc = rng.randint(1, 300), rng.randint(1, 5)
        boxes = np.concatenate(
            [rng.uniform(0, 300, (n, 2)), rng.uniform(1, 120, (n, 2))], 1
        ).astype(np.float32)
        scores = rng.uniform(0, 1, (n, nc)).astype(np.float32)
        if trial % 3 == 0:
            scores = np.round(scores * 10) / 10  # ties
        conf, iou = 0.25, (0.45, 0.3, 0.7)[trial % 3]
        got = heads.nms(boxes, scores, conf, iou, 300)
        cls = scores.argmax(1)
        best = scores[np.arange(n), cls]
        keep = np.flatnonzero(best >= conf)
        b = boxes[keep]
        tlwh = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, 2:]], 1)
        idx = cv2.dnn.NMSBoxesBatched(
            tlwh.tolist(), best[keep].astype(float).tolist(), cls[keep].tolist(), conf, iou
        )
        order = np.asarray(idx, int).reshape(-1)
        order = order[np.argsort(-best[keep][order], kind="stable")]
        want = [
            (tuple(np.array([*tlwh[k, :2], *(tlwh[k, :2] + tlwh[k, 2:])])), int(cls[keep][k]))
            for k in order
        ]
        assert [(tuple(x), c) for x, _, c in got] == want, trial


def test_image_readers_without_an_image_library(tmp_path):
    import cv2

    rng = np.random.RandomState(2)
    bgr = rng.randint(0, 256, (7, 5, 3)).astype(np.uint8)
    gray = bgr[:, :, 0].copy()
    assert np.array_equal(images.read(images.write_ppm(tmp_path / "a.ppm", bgr)), bgr)
    assert np.array_equal(images.read(images.write_ppm(tmp_path / "g.pgm", gray)), gray)
    cv2.imwrite(str(tmp_path / "a.bmp"), bgr)
    assert np.array_equal(images.read(tmp_path / "a.bmp"), bgr)
    cv2.imwrite(str(tmp_path / "g.bmp"), gray)
    assert np.array_equal(images.read(tmp_path / "g.bmp"), gray)
    np.save(tmp_path / "rgb.npy", bgr[:, :, ::-1])
    assert np.array_equal(images.read(tmp_path / "rgb.npy"), bgr)
    (tmp_path / "bad.ppm").write_bytes(b"P3\n1 1\n255\n0 0 0\n")
    try:
        images.read(tmp_path / "bad.ppm")
    except images.ImageError as e:
        assert "P5/P6" in str(e)
    else:
        raise AssertionError("an ASCII PPM must be refused")


def test_one_rule_maps_onnx_names_to_the_compilers():
    """The host's reference check, the board app's CPU tail and the detector heads share one
    rule: the name the compiler made from the ONNX name, else the same position, else what is
    left; the host refuses an output it cannot place."""
    import pytest

    from duotpu.config.errors import DuoTpuError
    from duotpu.core.onnxrt import match_outputs

    produced = ["boxes_Concat_f32", "logits_Gemm_f32", "extra"]
    assert heads.match_names(["logits", "boxes"], produced) == {
        "logits": "logits_Gemm_f32",
        "boxes": "boxes_Concat_f32",
    }
    # renamed outputs: by position; a position another name took falls to what is left
    assert heads.match_names(["a", "logits"], ["x", "logits_Gemm"]) == {
        "a": "x",
        "logits": "logits_Gemm",
    }
    assert heads.match_names(["logits", "a"], ["x", "logits_Gemm"]) == {
        "logits": "logits_Gemm",
        "a": "x",
    }
    assert heads.match_names(["a", "b"], ["x"]) == {"a": "x", "b": None}
    ref = {"a": 0, "b": 0}
    with pytest.raises(DuoTpuError, match="Cannot find the model output 'b'"):
        match_outputs(ref, {"x": 0})
    head = {"outputs": ["p3", "p4"]}
    maps = heads.maps_in_order(head, {"p4_Conv": np.ones(1), "p3_Conv": np.zeros(1)})
    assert [float(m[0]) for m in maps] == [0.0, 1.0]


def test_onnx_runtime_keeps_its_warnings_off_the_terminal(capfd):
    """A model with an unused initializer makes ONNX Runtime warn on stderr ('Removing
    initializer'); duotpu's sessions log errors only."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from duotpu.core.onnxrt import session

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("unused", TensorProto.FLOAT, [1], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    blob = model.SerializeToString()
    ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    assert "unused" in capfd.readouterr().err  # the warning this test keeps off
    y = session(blob).run(None, {"x": -np.ones((1, 4), np.float32)})[0]
    assert float(y.max()) == 0.0
    assert "unused" not in capfd.readouterr().err
    assert onnx.checker.check_model(model) is None


def test_a_packed_fused_input_without_a_resize_keeps_its_height_and_width():
    """A fused-preprocess model with packed (NHWC) input and no preprocess.resize: the image
    is resized to the input's own H, W (it was resized to W x 3: the shape read as NCHW)."""
    from duotpu.config.recipe import Preprocess
    from duotpu.core.preprocess import fused_input, input_hw

    rng = np.random.RandomState(3)
    img = rng.randint(0, 256, (48, 64, 3)).astype(np.uint8)
    for fmt, shape in (("BGR_PACKED", (1, 40, 30, 3)), ("RGB_PLANAR", (1, 3, 40, 30))):
        assert input_hw(shape, fmt) == (40, 30)
        raw = fused_input(img, Preprocess(), shape, fmt)
        assert raw.shape == shape and raw.dtype == np.uint8
    packed = fused_input(img, Preprocess(), (1, 40, 30, 3), "BGR_PACKED")[0]
    planar = fused_input(img, Preprocess(), (1, 3, 40, 30), "BGR_PLANAR")[0]
    assert np.array_equal(packed, planar.transpose(1, 2, 0))


def test_text_line_resize_on_the_board_equals_the_hosts():
    """The board app's numpy resize for resize_mode text_line (image at the top left, padded on
    the right) gives the host's bytes (OpenCV), and boxes map back without an offset."""
    from duotpu.config.recipe import Preprocess
    from duotpu.core.preprocess import _resize

    rng = np.random.RandomState(4)
    img = rng.randint(0, 256, (30, 50, 3)).astype(np.uint8)
    board, place = preprocess.fit(img, "text_line", 32, 96, 127)
    host = _resize(img, Preprocess(resize_mode="text_line", pad_value=127), 32, 96)
    assert np.array_equal(board, host)
    rw = int(50 * 32 / 30)
    assert (board[:, rw:] == 127).all() and not (board[:, :rw] == 127).all()
    assert place["dx"] == place["dy"] == 0.0
    assert heads.placement("text_line", (32, 96), (32, 96), (30, 50))[2:] == (0.0, 0.0)


def _one_node(op: str, names: str, outs: list[str], feeds: dict, **attrs) -> list:
    """The outputs of one ONNX node in ONNX Runtime (the reference for the board's numpy ops)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node(op, list(names), outs, **attrs)],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: feeds[n] for n in names if n})


def test_the_board_tails_lstm_and_conv_equal_onnx_runtime():
    """A recurrent model cut before the LSTM the compiler mistranslates (silero-vad) runs its
    LSTM and its decoder's Conv on the board's CPU, in numpy."""
    from duotpu.onboard import tail

    rng = np.random.default_rng(0)
    h = 6
    f = {
        "X": rng.normal(0, 1, (5, 2, 3)),
        "W": rng.normal(0, 0.5, (1, 4 * h, 3)),
        "R": rng.normal(0, 0.5, (1, 4 * h, h)),
        "B": rng.normal(0, 0.3, (1, 8 * h)),
        "h0": rng.normal(0, 1, (1, 2, h)),
        "c0": rng.normal(0, 1, (1, 2, h)),
    }
    f = {k: v.astype(np.float32) for k, v in f.items()}
    ref = _one_node(
        "LSTM", ["X", "W", "R", "B", "", "h0", "c0"], ["Y", "Yh", "Yc"], f, hidden_size=h
    )
    args = [f["X"], f["W"], f["R"], f["B"], np.zeros(0), f["h0"], f["c0"]]
    for want, got in zip(ref, tail.OPS["LSTM"](args, {"hidden_size": h})):
        np.testing.assert_allclose(got, want, atol=1e-5)
    for dims, kernel, attrs in (
        ((1, 4, 9), (3,), {"strides": [2], "pads": [1, 1], "group": 1}),
        (
            (1, 4, 7, 8),
            (3, 2),
            {"strides": [1, 2], "pads": [1, 0, 1, 2], "dilations": [2, 1], "group": 2},
        ),
    ):
        g = attrs["group"]
        c = {
            "X": rng.normal(0, 1, dims).astype(np.float32),
            "W": rng.normal(0, 1, (6, 4 // g, *kernel)).astype(np.float32),
            "B": rng.normal(0, 1, 6).astype(np.float32),
        }
        want = _one_node("Conv", ["X", "W", "B"], ["Y"], c, **attrs)[0]
        got = tail.OPS["Conv"]([c["X"], c["W"], c["B"]], attrs)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(tail.TailError, match="a bidirectional or reverse LSTM"):
        tail.check([{"op": "LSTM", "name": "rnn", "attrs": {"direction": "bidirectional"}}])
