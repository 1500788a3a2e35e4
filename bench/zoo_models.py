"""Models for the conformance benchmark that no package ships: a DBNet-like text detector and
CRNN-/SVTR-like text recognizers, written after the PaddleOCR mobile models' structure, and the
YOLOX-Nano and SCRFD-500M detector shapes (random weights; BatchNorm statistics re-estimated on
natural crops so activations are realistic)."""

from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

from duotpu.builder.export import reestimate_batchnorm
from duotpu.config.recipe import Preprocess

IMAGENET = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
HALF = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
CLASSES = 6625  # PaddleOCR's Chinese dictionary + blank


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class DBNetLite(nn.Module):
    """MobileNetV3-Small backbone, a 4-level FPN, and DB's probability-map head (two 2×
    transposed convolutions and a sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torchvision.models.mobilenet_v3_small(weights=None).features
        self.taps = (1, 3, 8, 12)  # strides 4, 8, 16, 32
        chans = (16, 24, 48, 576)
        self.lateral = nn.ModuleList(nn.Conv2d(c, 64, 1) for c in chans)
        self.smooth = nn.ModuleList(nn.Conv2d(64, 16, 3, padding=1) for _ in chans)
        self.head = nn.Sequential(
            _cbr(64, 16),
            nn.ConvTranspose2d(16, 16, 2, 2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 2, 2),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + nn.functional.interpolate(lat[i + 1], scale_factor=2.0)
        size = lat[0].shape[-2:]
        outs = [
            nn.functional.interpolate(s(f), size=size) if k else s(f)
            for k, (s, f) in enumerate(zip(self.smooth, lat))
        ]
        return self.head(torch.cat(outs, 1))


class CRNN(nn.Module):
    """A conv stack down to height 1, a 2-layer bidirectional LSTM, per-column class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            _cbr(3, 32),
            nn.MaxPool2d(2),
            _cbr(32, 64),
            nn.MaxPool2d(2),
            _cbr(64, 128),
            _cbr(128, 128),
            nn.MaxPool2d((2, 1)),
            _cbr(128, 192),
            nn.MaxPool2d((2, 1)),
            nn.Conv2d(192, 192, (2, 1), bias=False),  # height 2 → 1
            nn.BatchNorm2d(192),
            nn.ReLU(),
        )
        self.rnn = nn.LSTM(192, 96, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(192, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x).squeeze(2).permute(0, 2, 1)  # [N, W/4, C]
        return self.fc(self.rnn(f)[0]).softmax(-1)


class SVTRTiny(nn.Module):
    """SVTR's shape: a conv stem to 1/4, global-mixing transformer blocks (attention, GELU
    MLP, LayerNorm), height pooled, per-column class scores."""

    def __init__(self, dim: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, dim // 2, 3, 2), _cbr(dim // 2, dim, 3, 2))
        layer = nn.TransformerEncoderLayer(
            dim, 2, dim * 2, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)  # [N, C, H/4, W/4]
        n, c, h, w = f.shape
        t = self.blocks(f.flatten(2).transpose(1, 2))  # [N, H·W, C]
        t = t.transpose(1, 2).reshape(n, c, h, w).mean(2).transpose(1, 2)  # [N, W/4, C]
        return self.fc(self.norm(t)).softmax(-1)


def _base(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1) -> nn.Sequential:
    """YOLOX's BaseConv: convolution, BatchNorm, SiLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.SiLU(),
    )


def _dw(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    """YOLOX's DWConv: a depthwise k×k BaseConv, then a pointwise one."""
    return nn.Sequential(_base(cin, cin, k, s, groups=cin), _base(cin, cout))


class _CSP(nn.Module):
    """YOLOX's CSPLayer with depthwise bottlenecks: two 1×1 halves, ``n`` bottlenecks on one,
    concatenated and mixed by a 1×1."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        hidden = cout // 2
        self.conv1, self.conv2 = _base(cin, hidden), _base(cin, hidden)
        self.m = nn.ModuleList(
            nn.Sequential(_base(hidden, hidden), _dw(hidden, hidden)) for _ in range(n)
        )
        self.shortcut = shortcut
        self.conv3 = _base(2 * hidden, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        for m in self.m:
            a = a + m(a) if self.shortcut else m(a)
        return self.conv3(torch.cat([a, self.conv2(x)], 1))


class YOLOXNano(nn.Module):
    """YOLOX-Nano's shape (width 0.25, depth 0.33, depthwise convolutions): a Focus stem, the
    CSPDarknet with SPP, the PAFPN, and the decoupled head per stride 8 / 16 / 32 (class,
    box and objectness predictions), decoded in the graph as YOLOX's exporter writes it:
    ``[B, N, 4 + 1 + classes]`` with ``xy = (t + grid) · stride``, ``wh = exp(t) · stride`` and
    sigmoid scores."""

    def __init__(self, nc: int = 80) -> None:
        super().__init__()
        self.stem = _base(12, 16, 3)
        self.dark2 = nn.Sequential(_dw(16, 32, 3, 2), _CSP(32, 32, 1))
        self.dark3 = nn.Sequential(_dw(32, 64, 3, 2), _CSP(64, 64, 3))
        self.dark4 = nn.Sequential(_dw(64, 128, 3, 2), _CSP(128, 128, 3))
        self.dark5 = nn.Sequential(_dw(128, 256, 3, 2), _base(256, 128))
        self.spp_out = _base(512, 256)
        self.dark5_csp = _CSP(256, 256, 1, shortcut=False)
        self.lateral0, self.c3_p4 = _base(256, 128), _CSP(256, 128, 1, False)
        self.reduce1, self.c3_p3 = _base(128, 64), _CSP(128, 64, 1, False)
        self.bu2, self.c3_n3 = _dw(64, 64, 3, 2), _CSP(128, 128, 1, False)
        self.bu1, self.c3_n4 = _dw(128, 128, 3, 2), _CSP(256, 256, 1, False)
        self.head_stem = nn.ModuleList(_base(c, 64) for c in (64, 128, 256))
        self.cls_convs = nn.ModuleList(nn.Sequential(_dw(64, 64), _dw(64, 64)) for _ in range(3))
        self.reg_convs = nn.ModuleList(nn.Sequential(_dw(64, 64), _dw(64, 64)) for _ in range(3))
        self.cls_pred = nn.ModuleList(nn.Conv2d(64, nc, 1) for _ in range(3))
        self.reg_pred = nn.ModuleList(nn.Conv2d(64, 4, 1) for _ in range(3))
        self.obj_pred = nn.ModuleList(nn.Conv2d(64, 1, 1) for _ in range(3))
        for conv in [*self.cls_pred, *self.obj_pred]:  # YOLOX's prior: scores near 0.01
            nn.init.constant_(conv.bias, -4.6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2]
        x = torch.cat(
            [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1
        )
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        y = self.dark5(c4)
        pools = [nn.functional.max_pool2d(y, k, 1, k // 2) for k in (5, 9, 13)]
        c5 = self.dark5_csp(self.spp_out(torch.cat([y, *pools], 1)))
        f0 = self.lateral0(c5)
        up = nn.functional.interpolate(f0, scale_factor=2.0, mode="nearest")
        f1 = self.c3_p4(torch.cat([up, c4], 1))
        f1r = self.reduce1(f1)
        up = nn.functional.interpolate(f1r, scale_factor=2.0, mode="nearest")
        p3 = self.c3_p3(torch.cat([up, c3], 1))
        p4 = self.c3_n3(torch.cat([self.bu2(p3), f1r], 1))
        p5 = self.c3_n4(torch.cat([self.bu1(p4), f0], 1))
        outs = []
        for i, f in enumerate((p3, p4, p5)):
            f = self.head_stem[i](f)
            c = self.cls_pred[i](self.cls_convs[i](f))
            r_feat = self.reg_convs[i](f)
            r, o = self.reg_pred[i](r_feat), self.obj_pred[i](r_feat)
            h, w = f.shape[2:]
            out = torch.cat([r, o.sigmoid(), c.sigmoid()], 1).flatten(2).transpose(1, 2)
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            grid = torch.stack([xs, ys], -1).reshape(1, -1, 2).float()
            stride = size // h
            xy = (out[..., :2] + grid) * stride
            wh = torch.exp(out[..., 2:4]) * stride
            outs.append(torch.cat([xy, wh, out[..., 4:]], -1))
        return torch.cat(outs, 1)


class SCRFDLite(nn.Module):
    """SCRFD-500M's shape (insightface's face detector with five landmarks): a depthwise
    MobileNet backbone, a PAFPN to 16 channels at strides 8 / 16 / 32, and a head shared by the
    three strides (two depthwise convolutions, then 2 anchors' scores, box distances and
    landmarks), each permuted to ``[B, h·w·2, k]`` as insightface's exporter writes it; the
    decode (× stride around each cell's corner) is the caller's."""

    def __init__(self, anchors: int = 2) -> None:
        super().__init__()

        def dws(cin: int, cout: int, s: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, s, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                *_cbr(cin, cout, 1),
            )

        self.stage0 = nn.Sequential(_cbr(3, 16, 3, 2), dws(16, 16, 1), dws(16, 40, 2))
        self.stage1 = nn.Sequential(dws(40, 40, 1), dws(40, 40, 2), dws(40, 40, 1))  # 8
        self.stage2 = nn.Sequential(dws(40, 72, 2), dws(72, 72, 1), dws(72, 72, 1))  # 16
        self.stage3 = nn.Sequential(dws(72, 152, 2), dws(152, 152, 1))  # 32
        self.lateral = nn.ModuleList(nn.Conv2d(c, 16, 1) for c in (40, 72, 152))
        self.fpn = nn.ModuleList(_cbr(16, 16) for _ in range(3))
        self.down = nn.ModuleList(_cbr(16, 16, 3, 2) for _ in range(2))
        self.shared = nn.Sequential(dws(16, 32, 1), dws(32, 32, 1))
        self.score = nn.Conv2d(32, anchors, 3, 1, 1)
        self.box = nn.Conv2d(32, 4 * anchors, 3, 1, 1)
        self.kps = nn.Conv2d(32, 10 * anchors, 3, 1, 1)
        # a trained head's outputs are not zero-mean noise: faces are rare (scores near 0.01),
        # box sides lie a few strides from the anchor and landmarks near the face's middle;
        # random weights alone give zero-mean boxes that no detector outputs
        nn.init.constant_(self.score.bias, -4.6)
        nn.init.constant_(self.box.bias, 2.0)
        nn.init.constant_(self.kps.bias, 1.0)

    def forward(self, x: torch.Tensor):
        c3 = self.stage1(self.stage0(x))
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        lat = [conv(f) for conv, f in zip(self.lateral, (c3, c4, c5))]
        for i in (1, 0):
            lat[i] = lat[i] + nn.functional.interpolate(lat[i + 1], scale_factor=2.0)
        outs = [self.fpn[i](f) for i, f in enumerate(lat)]
        for i in (1, 2):
            outs[i] = outs[i] + self.down[i - 1](outs[i - 1])
        b = x.shape[0]
        scores, boxes, kps = [], [], []
        for f in outs:
            f = self.shared(f)
            scores.append(self.score(f).sigmoid().permute(0, 2, 3, 1).reshape(b, -1, 1))
            boxes.append(self.box(f).permute(0, 2, 3, 1).reshape(b, -1, 4))
            kps.append(self.kps(f).permute(0, 2, 3, 1).reshape(b, -1, 10))
        return (*scores, *boxes, *kps)


def _lively(make: Callable[[], nn.Module], shape: tuple[int, ...], pre: Preprocess) -> nn.Module:
    """``make()``'s model with seeded random weights and its BatchNorm re-estimated."""
    torch.manual_seed(0)
    model = make()
    torch.manual_seed(0)
    reestimate_batchnorm(model, shape, pre)
    return model.eval()


def dbnet_lite(size: int = 640) -> nn.Module:
    return _lively(DBNetLite, (1, 3, size, size), IMAGENET)


def crnn() -> nn.Module:
    return _lively(CRNN, (1, 3, 32, 320), HALF)


def svtr_tiny() -> nn.Module:
    return _lively(SVTRTiny, (1, 3, 48, 320), HALF)


def vad_samples(folder, count: int, model_path):
    """Samples for silero-vad's inputs (``input`` [1, 512]: 32 ms of 16 kHz audio, ``state``
    [2, 1, 128]: the LSTM's state): voiced-like chunks (harmonics of a pitch between 90 and 300
    Hz under a syllable envelope), noise and near-silence, with states a chunk stream leaves
    (the model at ``model_path``, run on the chunks before). One ``.npz`` per sample, by input
    name."""
    from pathlib import Path

    import numpy as np

    from duotpu.core.onnxrt import session

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    model = session(Path(model_path))
    t = np.arange(512) / 16000.0
    state = np.zeros((2, 1, 128), np.float32)
    for i in range(count):
        kind = i % 3
        if kind == 0:  # voiced
            f0 = rng.uniform(90, 300)
            x = sum(rng.uniform(0.2, 1) / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 8))
            x = x * np.sin(np.pi * np.linspace(0.1, 0.9, 512)) * rng.uniform(0.1, 0.6)
        elif kind == 1:  # noise
            x = rng.normal(0, rng.uniform(0.01, 0.2), 512)
        else:  # near silence
            x = rng.normal(0, 0.002, 512)
        chunk = np.asarray(x, np.float32).reshape(1, 512)
        np.savez(folder / f"s{i:03d}.npz", input=chunk, state=state)
        _, state = model.run(None, {"input": chunk, "state": state, "sr": np.array(16000)})
        state = np.asarray(state, np.float32)
    return folder


#: YOLOX's input: BGR pixels 0–255, not normalised (its `preproc`), letterboxed with 114
YOLOX_PRE = Preprocess(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, pixel_format="bgr")
#: SCRFD's input: (RGB − 127.5) / 128
SCRFD_PRE = Preprocess(mean=(0.5, 0.5, 0.5), std=(128 / 255,) * 3)


def yolox_nano() -> nn.Module:
    return _lively(YOLOXNano, (1, 3, 416, 416), YOLOX_PRE)


def scrfd_lite() -> nn.Module:
    return _lively(SCRFDLite, (1, 3, 640, 640), SCRFD_PRE)
