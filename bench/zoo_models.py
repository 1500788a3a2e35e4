"""Models for the conformance benchmark that no package ships: a DBNet-like text detector and
CRNN-/SVTR-like text recognizers, written after the PaddleOCR mobile models' structure (random
weights; BatchNorm statistics re-estimated on natural crops so activations are realistic)."""

from __future__ import annotations

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


def _lively(model: nn.Module, shape: tuple[int, ...], pre: Preprocess) -> nn.Module:
    torch.manual_seed(0)
    reestimate_batchnorm(model, shape, pre)
    return model.eval()


def dbnet_lite(size: int = 640) -> nn.Module:
    torch.manual_seed(0)
    return _lively(DBNetLite(), (1, 3, size, size), IMAGENET)


def crnn() -> nn.Module:
    torch.manual_seed(0)
    return _lively(CRNN(), (1, 3, 32, 320), HALF)


def svtr_tiny() -> nn.Module:
    torch.manual_seed(0)
    return _lively(SVTRTiny(), (1, 3, 48, 320), HALF)


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
