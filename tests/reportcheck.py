"""Looking at a report the way a person does: in headless Chromium, at desktop and phone width."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

# what the page tells the test: its sections, the numbers it took from its data file, its plots'
# hover texts, and its picture gallery
PAGE_FACTS = """({
  sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
  numbers: [...document.querySelectorAll('[data-json]')].map(e => [e.dataset.json, e.textContent]),
  tooltips: [...document.querySelectorAll('svg title')].map(t => t.textContent),
  cards: [...document.querySelectorAll('.card')].length,
  text: document.body.innerText,
})"""


def look(browser, page: Path, shots: Path, sections: set[str]) -> dict:
    """Open ``page`` at 1280 and 390 pixels wide; every image loads, the console has no errors,
    nothing is wider than the screen, the screenshot is a picture (not blank), and ``sections``
    are there. Returns what the page shows (``PAGE_FACTS``)."""
    from PIL import Image

    facts = {}
    for width in (1280, 390):
        v = browser.view(page, width=width, evaluate=PAGE_FACTS)
        assert v.console_errors == [], v.console_errors
        assert v.broken_images == [], v.broken_images
        assert v.scroll_width <= width, f"{page.name} is {v.scroll_width} px wide at {width}"
        shot = Image.open(io.BytesIO(v.screenshot)).convert("L")
        assert shot.width == width and shot.height > 400
        assert len(shot.getcolors(1 << 16) or range(1 << 16)) > 50, "the page looks blank"
        (shots / f"{page.parent.name}-{page.stem}-{width}.png").write_bytes(v.screenshot)
        assert sections <= set(v.values["sections"]), v.values["sections"]
        facts = v.values
    return facts


def numbers_match(facts: dict, data_file: Path) -> int:
    """Every number the page took from ``data_file`` equals it there, to the digits shown.
    Returns how many were checked."""
    data = json.loads(data_file.read_text())
    assert facts["numbers"], "the page shows no numbers from its data"
    for key, text in facts["numbers"]:
        value = data
        for part in json.loads(key):
            value = value[part]
        decimals = len(text.split(".")[1]) if "." in text else 0
        assert float(text) == pytest.approx(value, abs=0.5 * 10**-decimals + 1e-9), (key, text)
    return len(facts["numbers"])
