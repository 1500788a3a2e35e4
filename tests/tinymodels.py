"""Small models built inside the tests (ONNX with onnx.helper, PyTorch modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_onnx(
    path: Path,
    size: int = 32,
    channels: int = 3,
    classes: int = 10,
    seed: int = 0,
    extra_op: str | None = None,
    dynamic_batch: bool = False,
) -> Path:
    """Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → Gemm, random weights.

    ``extra_op`` appends a unary op (e.g. ``Det`` after a reshape is not needed: we use ops the
    compiler does not know) to the logits.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, channels, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 16).astype(np.float32)
    wf = rng.normal(0, 0.3, (classes, 16)).astype(np.float32)
    bf = rng.normal(0, 0.1, classes).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wf, "wf"), (bf, "bf")]
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node(
            "Gemm", ["flat", "wf", "bf"], ["logits" if not extra_op else "pre"], name="fc", transB=1
        ),
    ]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["pre"], ["logits"], name=f"my_{extra_op}"))
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    opset = 13
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def tiny_cnn(classes: int = 10, width: int = 8):
    """A small PyTorch CNN (the ``tinymodels:tiny_cnn`` factory of the tests)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU6(),
        nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width * 2, classes),
    ).eval()


def outlier_onnx(path: Path, seed: int = 0) -> Path:
    """A small CNN with one clearly INT8-sensitive layer: ``hot`` (a 1x1 conv) adds a huge
    constant (+400) to one channel, so one INT8 scale cannot hold both that channel and the
    small ones, which carry the signal the next layers use."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = np.zeros(8, np.float32)
    w2 = (np.eye(8) + rng.normal(0, 0.05, (8, 8))).astype(np.float32).reshape(8, 8, 1, 1)
    b2 = np.zeros(8, np.float32)
    b2[0] = 400.0
    w3 = rng.normal(0, 0.3, (16, 8, 1, 1)).astype(np.float32)
    w3[:, 0] = 0.0  # the outlier channel carries no signal onwards
    b3 = rng.normal(0, 0.1, 16).astype(np.float32)
    wf = rng.normal(0, 0.3, (10, 16)).astype(np.float32)
    bf = np.zeros(10, np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [
            (w1, "w1"),
            (b1, "b1"),
            (w2, "w2"),
            (b2, "b2"),
            (w3, "w3"),
            (b3, "b3"),
            (wf, "wf"),
            (bf, "bf"),
        ]
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="hot"),
        helper.make_node("Relu", ["c2"], ["hot"], name="hot_relu"),
        helper.make_node("Conv", ["hot", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    return _save_classifier(nodes, "outlier", inits, path)


def yolov5_classic(nc: int = 3, seed: int = 0):
    """A small detector with the original YOLOv5 head (ultralytics/yolov5 ``models/yolo.py``,
    ``Detect.forward`` in export mode, copied): three anchor maps of ``na * (5 + nc)`` channels
    at strides 8, 16, 32, decoded with the grid and the anchors inside the graph."""
    import torch
    from torch import nn

    def block(c1, c2, s):
        return nn.Sequential(nn.Conv2d(c1, c2, 3, s, 1), nn.BatchNorm2d(c2), nn.SiLU())

    class Detect(nn.Module):
        stride = torch.tensor([8.0, 16.0, 32.0])
        export = False

        def __init__(self, ch):
            super().__init__()
            self.nc, self.no, self.nl, self.na = nc, nc + 5, 3, 3
            anchors = torch.tensor(
                [
                    [10, 13, 16, 30, 33, 23],
                    [30, 61, 62, 45, 59, 119],
                    [116, 90, 156, 198, 373, 326],
                ],
                dtype=torch.float32,
            )
            self.register_buffer("anchors", anchors.view(3, 3, 2) / self.stride.view(-1, 1, 1))
            self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
            self.grid = [torch.empty(0)] * 3
            self.anchor_grid = [torch.empty(0)] * 3

        def _make_grid(self, nx, ny, i):
            shape = 1, self.na, ny, nx, 2
            y, x = torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32)
            yv, xv = torch.meshgrid(y, x, indexing="ij")
            grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
            anchor_grid = (
                (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
            )
            return grid, anchor_grid

        def forward(self, x):
            z = []
            for i in range(self.nl):
                x[i] = self.m[i](x[i])
                bs, _, ny, nx = x[i].shape
                x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
                self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + self.grid[i]) * self.stride[i]
                wh = (wh * 2) ** 2 * self.anchor_grid[i]
                y = torch.cat((xy, wh, conf), 4)
                z.append(y.view(bs, self.na * nx * ny, self.no))
            return (torch.cat(z, 1),)

    class TinyV5(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1 = nn.Sequential(block(3, 8, 2), block(8, 16, 2), block(16, 16, 2))
            self.b2 = block(16, 32, 2)
            self.b3 = block(32, 32, 2)
            self.detect = Detect((16, 32, 32))
            self.names = {i: f"thing{i}" for i in range(nc)}

        def forward(self, x):
            p3 = self.b1(x)
            p4 = self.b2(p3)
            p5 = self.b3(p4)
            return self.detect([p3, p4, p5])

    torch.manual_seed(seed)
    model = TinyV5()
    with torch.no_grad():  # objectness and class logits around 0.5: scores spread around 0.4
        for conv in model.detect.m:
            conv.bias.fill_(0.5)
            conv.weight.mul_(40.0)
    return model.eval()


def _photo_batchnorm(model, hw: tuple[int, int], seed: int):
    """Re-estimate a random-weight model's batch-norm statistics on 8 natural photo crops of
    ``hw`` (pixels / 255; random weights with fresh statistics make the activations vanish), so
    its outputs vary with the image. Returns the model in eval mode."""
    import cv2
    import torch
    from torch import nn

    from duotpu.core.images import calibration_photos, random_crops

    h, w = hw
    crops = [c for _, c in random_crops(calibration_photos(), 8, seed)]
    x = torch.from_numpy(
        np.stack([cv2.resize(c, (w, h)) for c in crops]).transpose(0, 3, 1, 2).astype(np.float32)
        / 255
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the batches seen
        model.train()
        model(x)
    return model.eval()


def _down(i: int, o: int, act=None):
    """A stride-2 3×3 convolution, batch norm and activation (ReLU unless ``act``)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), act() if act else nn.ReLU()
    )


def lively_yolov8(cfg: str = "yolov8n.yaml", nc: int = 3, seed: int = 0, size: int = 160):
    """An Ultralytics detector from its yaml with random weights whose head maps vary with the
    image: the batch-norm statistics are re-estimated on a few natural photos (random weights
    with fresh statistics make the activations vanish), so decode, NMS and accuracy see
    varied scores."""
    import torch

    from duotpu.builder.yolo import ultralytics_model

    torch.manual_seed(seed)
    model = ultralytics_model(cfg, nc=nc)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ in ("Detect", "Segment"):
                for seq in m.cv3:
                    seq[-1].bias.zero_()
    return _photo_batchnorm(model, (size, size), seed)


def lively_yolov8_seg(nc: int = 3, seed: int = 0, size: int = 160):
    """`lively_yolov8` with Ultralytics' segmentation head (``yolov8n-seg.yaml``): box, class
    and mask-coefficient maps per scale and the mask prototypes."""
    return lively_yolov8("yolov8n-seg.yaml", nc, seed, size)


def photo_input(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """One natural photo crop as a ``[1, 3, h, w]`` float32 input (RGB / 255)."""
    import cv2

    from duotpu.core.images import calibration_photos, random_crops

    _, crop = random_crops(calibration_photos(), 1, seed)[0]
    x = cv2.resize(crop, (hw[1], hw[0])).transpose(2, 0, 1)[None].astype(np.float32) / 255
    return np.ascontiguousarray(x)


def current_export_onnx(path: Path, size: int = 32) -> Path:
    """The tiny model as a current exporter writes it: IR version 10, opset 21, a ``Gelu``, free
    ``batch``/``height``/``width`` dims and Ultralytics' ``imgsz`` metadata (what
    ``model.export(format="onnx", dynamic=True)`` with onnx ≥ 1.16 gives)."""
    import onnx

    model = onnx.load(str(tiny_onnx(path, size=size)))
    for n in model.graph.node:
        if n.name == "relu1":
            n.op_type, n.name = "Gelu", "gelu1"
    model.opset_import[0].version = 21
    model.ir_version = 10
    for v in (*model.graph.input, *model.graph.output):
        dims = v.type.tensor_type.shape.dim
        for d, name in zip(dims, ["batch", None, "height", "width"]):
            if name:
                d.ClearField("dim_value")
                d.dim_param = name
    model.metadata_props.add(key="imgsz", value=f"[{size}, {size}]")
    path.write_bytes(model.SerializeToString())
    return path


def two_output_onnx(path: Path, size: int = 32) -> Path:
    """Not a classifier: a 4-channel mask map and a 4-value box regression (a generic model)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "wm"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8)).astype(np.float32), "wb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wm"], ["mask"], name="mask_head"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wb"], ["box"], transB=1, name="box_head"),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 4, size, size]),
            helper.make_tensor_value_info("box", TensorProto.FLOAT, [1, 4]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return Path(path)


def padded_onnx(path: Path, seed: int = 0) -> Path:
    """Conv → Relu → Pad(constant 1, one column) → Mul → Flatten → Gemm: the shape of
    EfficientViT's linear attention, whose INT8 Pad tpu_mlir's interpreter (pymlir) computes
    right only on a module's first invocation."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "pads": np.array([0, 0, 0, 0, 0, 0, 0, 1], np.int64),
        "one": np.array(1.0, np.float32),
        "two": np.array(2.0, np.float32),
        "wf": rng.normal(0, 0.05, (10, 8 * 16 * 17)).astype(np.float32),
        "bf": rng.normal(0, 0.1, 10).astype(np.float32),
    }
    nodes = [
        helper.make_node(
            "Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Pad", ["r1", "pads", "one"], ["p"], name="pad", mode="constant"),
        helper.make_node("Mul", ["p", "two"], ["m"], name="mul"),
        helper.make_node("Flatten", ["m"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    return _save_classifier(nodes, "padded", inits, path)


def _save_classifier(nodes: list, name: str, inits: list, path: Path) -> Path:
    """Save a graph from ``input`` [1, 3, 32, 32] to ``logits`` [1, 10] (opset 13, IR 8),
    checked by onnx."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def audio_state_onnx(path: Path, seed: int = 0) -> Path:
    """A voice-activity-style model of two tensor inputs, like silero-vad: an audio chunk
    ``audio [N, 576]`` (free batch) and a recurrent state ``state [2, 1, 128]``; outputs the
    speech probabilities ``prob [1, 16]`` and the next state ``new_state [2, 1, 128]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (576, 128)).astype(np.float32), "w")
    u = numpy_helper.from_array(rng.normal(0, 0.1, (128, 128)).astype(np.float32), "u")
    v = numpy_helper.from_array(rng.normal(0, 0.1, (128, 16)).astype(np.float32), "v")
    shp = numpy_helper.from_array(np.array([2, 128], np.int64), "shp")
    ax = numpy_helper.from_array(np.array([0], np.int64), "ax")
    nodes = [
        helper.make_node("MatMul", ["audio", "w"], ["a"]),
        helper.make_node("Reshape", ["state", "shp"], ["s2"]),
        helper.make_node("MatMul", ["s2", "u"], ["su"]),
        helper.make_node("ReduceMean", ["su"], ["sm"], axes=[0], keepdims=1),
        helper.make_node("Add", ["a", "sm"], ["z"]),
        helper.make_node("Tanh", ["z"], ["hid"]),
        helper.make_node("MatMul", ["hid", "v"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["prob"]),
        helper.make_node("Unsqueeze", ["hid", "ax"], ["h3"]),
        helper.make_node("Concat", ["h3", "h3"], ["new_state"], axis=0),
    ]
    g = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", 576]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 128]),
        ],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, 1, 128]),
        ],
        [w, u, v, shp, ax],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def audio_state_samples(folder: Path, n: int = 8, seed: int = 1) -> Path:
    """``n`` samples of :func:`audio_state_onnx`'s inputs, one ``.npz`` each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.savez(
            folder / f"s{i:02d}.npz",
            audio=rng.normal(0, 1, (1, 576)).astype(np.float32),
            state=rng.normal(0, 0.5, (2, 1, 128)).astype(np.float32),
        )
    return folder


def lstm_onnx(path: Path, hidden: int = 32, steps: int = 20, seed: int = 0) -> Path:
    """A recurrent model as PyTorch exports ``nn.LSTM`` (sequence first): inputs ``x [steps, 1,
    16]``, ``h0`` and ``c0 [1, 1, hidden]``; outputs a projection of the last hidden state
    ``out [1, 8]``, the cell state ``Yc`` and every step's hidden state ``Y``. The inputs' first
    dims differ (20 and 1), which tpu_mlir's ``.npz`` calibration reader mistakes for a batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    h = hidden
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 4 * h, 16)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 4 * h, h)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.normal(0, 0.1, (1, 8 * h)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.normal(0, 0.3, (h, 8)).astype(np.float32), "V"),
        numpy_helper.from_array(np.array([1, h], np.int64), "shp"),
    ]
    nodes = [
        helper.make_node(
            "LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", "Yh", "Yc"], hidden_size=h
        ),
        helper.make_node("Reshape", ["Yh", "shp"], ["hs"]),
        helper.make_node("MatMul", ["hs", "V"], ["out"]),
    ]
    f = TensorProto.FLOAT
    g = helper.make_graph(
        nodes,
        "lstm",
        [
            helper.make_tensor_value_info("x", f, [steps, 1, 16]),
            helper.make_tensor_value_info("h0", f, [1, 1, h]),
            helper.make_tensor_value_info("c0", f, [1, 1, h]),
        ],
        [
            helper.make_tensor_value_info("out", f, [1, 8]),
            helper.make_tensor_value_info("Yc", f, [1, 1, h]),
            helper.make_tensor_value_info("Y", f, [steps, 1, 1, h]),
        ],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def picodet_like(nc: int = 4, shared: bool = True, seed: int = 0, size: tuple = (96, 80)):
    """A detector with PP-PicoDet's GFL head as PaddleDetection exports it: per stride 8 / 16 /
    32 one convolution of ``nc + 4 * 8`` channels split into class scores (Sigmoid) and box
    distributions (``shared``), or two convolutions; outputs ``[B, hw, nc]`` scores then
    ``[B, hw, 32]`` distributions. Random weights, batch-norm statistics re-estimated on photos
    so the scores vary with the image."""
    import torch
    from torch import nn

    block = _down

    class PicoLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(block(3, 8), block(8, 16), block(16, 16))
            self.down = nn.ModuleList([block(16, 16), block(16, 16)])
            self.heads = nn.ModuleList(
                [nn.Conv2d(16, nc + 32, 1) if shared else nn.Conv2d(16, nc, 1) for _ in range(3)]
            )
            self.boxes = nn.ModuleList([] if shared else [nn.Conv2d(16, 32, 1) for _ in range(3)])

        def forward(self, x):
            feats = [self.stem(x)]
            for d in self.down:
                feats.append(d(feats[-1]))
            scores, dists = [], []
            for i, f in enumerate(feats):
                if shared:
                    cls, box = torch.split(self.heads[i](f), [nc, 32], dim=1)
                else:
                    cls, box = self.heads[i](f), self.boxes[i](f)
                b = f.shape[0]
                scores.append(torch.sigmoid(cls).reshape(b, nc, -1).transpose(1, 2))
                dists.append(box.reshape(b, 32, -1).transpose(1, 2))
            return (*scores, *dists)

    torch.manual_seed(seed)
    model = PicoLike()
    with torch.no_grad():
        for conv in model.heads:  # class logits a little below 0: scores spread around 0.4
            conv.weight.mul_(3.0)
            conv.bias.fill_(-0.5)
    return _photo_batchnorm(model, size, seed)


def picodet_separate(nc: int = 4, seed: int = 0):
    """:func:`picodet_like` with separate class and box convolutions (NanoDet / PicoDet with
    ``share_cls_reg`` off): two maps per scale and no DFL convolution in the graph."""
    return picodet_like(nc, shared=False, seed=seed)


def yolox_like(nc: int = 3, seed: int = 0, size: int = 96):
    """A detector with YOLOX's decoupled head as its exporter writes it: per stride 8 / 16 / 32
    a class convolution (``nc``), a box convolution (4) and an objectness convolution (1),
    concatenated as ``[box, sigmoid(obj), sigmoid(cls)]`` and decoded in the graph
    (``xy = (t + grid) · stride``, ``wh = exp(t) · stride``): output ``[B, N, 5 + nc]``.
    Random weights, batch-norm statistics re-estimated on photos."""
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return _down(i, o, nn.SiLU)

    class YoloxLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(block(3, 8), block(8, 16), block(16, 16))
            self.down = nn.ModuleList([block(16, 16), block(16, 16)])
            self.cls = nn.ModuleList([nn.Conv2d(16, nc, 1) for _ in range(3)])
            self.reg = nn.ModuleList([nn.Conv2d(16, 4, 1) for _ in range(3)])
            self.obj = nn.ModuleList([nn.Conv2d(16, 1, 1) for _ in range(3)])

        def forward(self, x):
            feats = [self.stem(x)]
            for d in self.down:
                feats.append(d(feats[-1]))
            outs = []
            for i, f in enumerate(feats):
                c, r, o = self.cls[i](f), self.reg[i](f), self.obj[i](f)
                b, _, h, w = f.shape
                out = torch.cat([r, o.sigmoid(), c.sigmoid()], 1).flatten(2).transpose(1, 2)
                ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                grid = torch.stack([xs, ys], -1).reshape(1, -1, 2).float()
                s = x.shape[2] // h
                xy = (out[..., :2] + grid) * s
                wh = torch.exp(out[..., 2:4]) * s
                outs.append(torch.cat([xy, wh, out[..., 4:]], -1))
            return torch.cat(outs, 1)

    torch.manual_seed(seed)
    model = YoloxLike()
    with torch.no_grad():
        for conv in [*model.cls, *model.obj]:  # scores spread around 0.3
            conv.weight.mul_(3.0)
            conv.bias.fill_(0.5)
        for conv in model.reg:  # boxes of a few cells
            conv.weight.mul_(0.3)
    return _photo_batchnorm(model, (size, size), seed)


def scrfd_like(seed: int = 0, size: int = 96, anchors: int = 2):
    """A face detector with insightface's SCRFD head as its exporter writes it: per stride 8 /
    16 / 32 a score convolution (one channel per anchor, Sigmoid), box distances (4 per anchor)
    and five landmarks (10 per anchor), each permuted to ``[B, h·w·anchors, k]``; the decode
    (× stride around each cell's corner) is left to the caller, as in insightface. Random
    weights, batch-norm statistics re-estimated on photos."""
    import torch
    from torch import nn

    block = _down

    class ScrfdLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(block(3, 8), block(8, 16), block(16, 16))
            self.down = nn.ModuleList([block(16, 16), block(16, 16)])
            self.score = nn.ModuleList([nn.Conv2d(16, anchors, 1) for _ in range(3)])
            self.box = nn.ModuleList([nn.Conv2d(16, 4 * anchors, 1) for _ in range(3)])
            self.kps = nn.ModuleList([nn.Conv2d(16, 10 * anchors, 1) for _ in range(3)])

        def forward(self, x):
            feats = [self.stem(x)]
            for d in self.down:
                feats.append(d(feats[-1]))
            b = x.shape[0]
            scores = [
                self.score[i](f).sigmoid().permute(0, 2, 3, 1).reshape(b, -1, 1)
                for i, f in enumerate(feats)
            ]
            boxes = [
                self.box[i](f).permute(0, 2, 3, 1).reshape(b, -1, 4) for i, f in enumerate(feats)
            ]
            kps = [
                self.kps[i](f).permute(0, 2, 3, 1).reshape(b, -1, 10) for i, f in enumerate(feats)
            ]
            return (*scores, *boxes, *kps)

    torch.manual_seed(seed)
    model = ScrfdLike()
    with torch.no_grad():
        for conv in model.score:  # scores spread around 0.4
            conv.weight.mul_(3.0)
            conv.bias.fill_(-0.3)
        for conv in model.box:  # distances of about a cell
            conv.weight.mul_(0.5)
            conv.bias.fill_(1.0)
    return _photo_batchnorm(model, (size, size), seed)
