"""Screenshots of a build report and an eval report for the README (headless Chromium).

    .venv/bin/python scripts/screenshots.py BUILD_DIR [EVAL_DIR] [--height 1500]

Writes docs/build-report.png (BUILD_DIR/report.html) and docs/eval-report.png
(EVAL_DIR/report.html, default BUILD_DIR/eval), the top of each page at 1100 pixels wide.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from browser import Browser
from PIL import Image

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_dir", type=Path)
    ap.add_argument("eval_dir", type=Path, nargs="?")
    ap.add_argument("--height", type=int, default=1500)
    args = ap.parse_args()
    pages = {
        "build-report.png": args.build_dir / "report.html",
        "eval-report.png": (args.eval_dir or args.build_dir / "eval") / "report.html",
    }
    DOCS.mkdir(exist_ok=True)
    with Browser() as b:
        for name, page in pages.items():
            view = b.view(page, width=1100)
            if view.console_errors or view.broken_images:
                raise SystemExit(f"{page}: {view.console_errors} {view.broken_images}")
            img = Image.open(io.BytesIO(view.screenshot))
            img = img.crop((0, 0, img.width, min(img.height, args.height)))
            img.save(DOCS / name, optimize=True)
            print(f"{DOCS / name}: {img.width}×{img.height} from {page}")


if __name__ == "__main__":
    main()
