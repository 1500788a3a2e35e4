"""A second model for the mixed-precision benchmark: a MobileNetV3-Small (depthwise convs,
hard-swish, squeeze-excitation: the kind of network that loses more in INT8) trained offline on
the CPU to tell which built-in photo a small patch comes from (12 classes, 96×96 input).

`python bench/mnv3_photos.py` trains it (a few minutes, cached) and writes
build/bench-mix/mnv3_photos.pth and build/bench-mix/mnv3_photos.toml (a duotpu recipe), and a
folder of validation patches the search measures on. `--arch mobilenet_v2 --epochs 6` trains a
MobileNetV2 on the same task instead (build/bench-mix/mnv2_photos.*: bench/rounding.py's second
model; ~90 s an epoch on 2 cores).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench-mix"
SIZE = 96


def patches(photos, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random square patches (8–25 % of the short side), flipped at random, as RGB 96×96."""
    import cv2

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(count):
        k = int(rng.integers(len(photos)))
        img = photos[k]
        h, w = img.shape[:2]
        s = int(rng.uniform(0.08, 0.25) * min(h, w))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        p = cv2.resize(img[y : y + s, x : x + s], (SIZE, SIZE))
        if rng.random() < 0.5:
            p = p[:, ::-1]
        xs.append(p)
        ys.append(k)
    return np.stack(xs), np.array(ys)


#: the networks this script trains, by the tag of their files
ARCHS = {"mobilenet_v3_small": "mnv3", "mobilenet_v2": "mnv2"}


def main() -> int:
    import argparse

    import torch
    import torchvision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="mobilenet_v3_small")
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    arch, epochs = args.arch, args.epochs
    tag = ARCHS[arch]

    from duotpu.core.images import builtin_photo, calibration_photos, save_image

    OUT.mkdir(parents=True, exist_ok=True)
    weights = OUT / f"{tag}_photos.pth"
    photos = [p for _, p in calibration_photos()] + [builtin_photo("chelsea")]
    n = len(photos)
    if not weights.is_file():
        torch.manual_seed(0)
        torch.set_num_threads(2)
        model = torchvision.models.get_model(arch, num_classes=n)
        x, y = patches(photos, 6000, 0)
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        xt = torch.from_numpy(((x / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
        yt = torch.from_numpy(y)
        opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * 94)
        t0 = time.monotonic()
        for ep in range(epochs):
            model.train()
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt) - 63, 64):
                idx = perm[i : i + 64]
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            print(
                f"epoch {ep + 1}/{epochs} loss {loss.item():.3f} ({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
        model.eval()
        xv, yv = patches(photos, 500, 1)
        with torch.no_grad():
            xv_t = torch.from_numpy(
                ((xv / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
            )
            acc = float((model(xv_t).argmax(1).numpy() == yv).mean())
        print(f"validation accuracy {acc:.3f}")
        torch.save(model.state_dict(), weights)
        (OUT / f"{tag}_photos.train.txt").write_text(
            f"{epochs} epochs, {time.monotonic() - t0:.0f} s, val accuracy {acc:.3f}\n"
        )
    val = OUT / f"{tag}_val"
    if not val.is_dir():
        val.mkdir()
        xv, yv = patches(photos, 600, 2)  # 300 the search measures on, 300 held out
        for i, (p, k) in enumerate(zip(xv, yv)):
            save_image(val / f"{i:04d}_c{k}.png", p)
    (OUT / f"{tag}_photos.toml").write_text(f'''name = "{tag}_photos"
chip = "cv180x"
quantize = ["int8", "bf16"]
test_image = "{val / "0000_c{}.png".format(patches(photos, 300, 2)[1][0])}"

[model]
source = "torchvision:{arch}"
weights = "{weights}"
kwargs = {{ num_classes = {n} }}

[[inputs]]
name = "input"
shape = [1, 3, {SIZE}, {SIZE}]

[preprocess]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[calibration]
images = "builtin:natural"
count = 100

[mix]
images = "{val}"
count = 300

[tolerance]
int8 = [0.5, 0.0]
verify_int8 = 0.5
''')
    print(OUT / f"{tag}_photos.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
