"""Detector heads duotpu does not decode are refused by saying what it saw and the way around,
not mistaken for a YOLOv5 that lacks anchors (the heads it decodes: tests/test_detect.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from duotpu.builder import yolo
from duotpu.config.errors import ModelError


def _detector(path: Path, maps_per_level: list[int], size: int = 64) -> Path:
    """A backbone of stride-2 convolutions and, at strides 8/16/32, head convolutions with the
    given output channels (one entry per head map of a scale)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, outputs = [], [], []
    x, c = "input", 3
    for level in range(5):  # strides 2, 4, 8, 16, 32
        w = f"bw{level}"
        inits.append(
            numpy_helper.from_array(rng.normal(0, 0.2, (8, c, 3, 3)).astype(np.float32), w)
        )
        nodes.append(
            helper.make_node("Conv", [x, w], [f"b{level}"], pads=[1, 1, 1, 1], strides=[2, 2])
        )
        x, c = f"b{level}", 8
        if level >= 2:
            for k, ch in enumerate(maps_per_level):
                hw = f"hw{level}_{k}"
                inits.append(
                    numpy_helper.from_array(
                        rng.normal(0, 0.2, (ch, 8, 1, 1)).astype(np.float32), hw
                    )
                )
                out = f"head{level}_{k}"
                nodes.append(helper.make_node("Conv", [x, hw], [out]))
                s = size // 2 ** (level + 1)
                outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, ch, s, s]))
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "maps,family,saw",
    [
        # no Split into scores and boxes: not PicoDet's shared map, and no YOLOv5 anchors
        ([3 + 32], "no anchors in the graph", "stride 8: 1 map(s) of 35 channels"),
        # three maps but no objectness / class Sigmoid: not YOLOX
        ([3, 4, 1], "YOLOX", "stride 8: 3 map(s) of 3/4/1 channels"),
        ([32, 3], "GFL head", "stride 8: 2 map(s) of 32/3 channels"),
        ([2, 8, 20], "SCRFD", "stride 8: 3 map(s) of 2/8/20 channels"),
    ],
)
def test_a_head_duotpu_does_not_decode_is_named_with_what_it_saw(tmp_path, maps, family, saw):
    src = _detector(tmp_path / "det.onnx", maps)
    with pytest.raises(ModelError) as e:
        yolo.cut_head(src, tmp_path / "cut.onnx")
    msg = str(e.value)
    assert family in msg and saw in msg, msg
    assert 'task = "generic"' in msg  # the way around
    assert not (tmp_path / "cut.onnx").exists()


def test_mask_run_lengths_round_trip_in_coco_order():
    """A mask as COCO's uncompressed run-lengths (column-major, background first) and back; a
    mask that starts on its first pixel begins with a zero-length background run."""
    from duotpu.onboard import heads

    local = np.zeros((3, 4), bool)
    local[0, 0] = local[1, 1:3] = local[2, 3] = True
    enc = heads.rle(0, 0, local, (3, 5))
    assert enc["size"] == [3, 5] and enc["counts"][0] == 0  # the first pixel is set
    assert sum(enc["counts"]) == 15
    full = heads.rle_decode(enc)
    assert full.shape == (3, 5) and np.array_equal(full[:, :4], local) and not full[:, 4].any()
    placed = heads.rle(2, 1, np.ones((1, 2), bool), (3, 5))
    assert np.flatnonzero(heads.rle_decode(placed).ravel()).tolist() == [7, 8]
    assert heads.rle_decode(heads.rle(0, 0, np.zeros((0, 0), bool), (2, 2))).sum() == 0
