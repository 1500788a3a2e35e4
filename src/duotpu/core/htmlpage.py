"""Self-contained HTML reports: one file, images embedded, readable offline and on a phone.

Every number a report shows from its data file carries ``data-json="a.b.c"`` (its path in that
file), so a test can check the page against the data. Plots are matplotlib SVG inlined in the
page, with the full name of each point on hover (an SVG ``<title>``); photos are JPEG thumbnails.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from duotpu.core.files import atomic_write

CSS = """
:root{--fg:#1d2430;--mute:#5b6472;--line:#d9dee5;--bg:#f6f8fa;--good:#1a7f37;--bad:#cf222e}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
 margin:0 auto;max-width:1100px;padding:16px}
h1{font-size:1.5em;margin:.2em 0}
h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid var(--line);padding-bottom:.2em}
p.lead{color:var(--mute);margin:.2em 0 1em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:.4em 0}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
th{background:var(--bg);font-weight:600;font-size:.92em;min-width:4.5em}
td.num{text-align:right;white-space:nowrap}
.good{color:var(--good)} .bad{color:var(--bad);font-weight:600} .nowrap{white-space:nowrap}
figure{margin:.6em 0} figcaption{color:var(--mute);font-size:.9em}
svg,img{max-width:100%;height:auto}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(230px,100%),1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px;background:#fff;min-width:0;
 overflow-wrap:anywhere}
.card table{width:100%;table-layout:fixed}
.card img{display:block;margin:0 auto 6px}
.card h3{font-size:.95em;margin:.1em 0 .3em;overflow-wrap:anywhere}
.bar{height:6px;background:#4c8bf5;border-radius:3px}
.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(260px,100%),1fr));gap:10px}
.kv td:first-child{color:var(--mute);white-space:nowrap}
small{color:var(--mute)}
code,p{overflow-wrap:anywhere}
@media (max-width:600px){body{font-size:14px;padding:10px} th,td{padding:3px 6px}
 h1{font-size:1.25em}}
"""


def esc(value: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(value))


def breakable(name: object) -> str:
    """A long tensor or file name, escaped, that may wrap after its ``/ . _ -`` separators
    rather than in the middle of a word."""
    text = esc(name)
    for sep in ("/", ".", "_", "-"):
        text = text.replace(sep, sep + "<wbr>")
    return text


def num(value: float | int | None, spec: str = ".4f", key: str | None = None) -> str:
    """A number as text; with ``key`` wrapped in a span that names its place in the data."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    text = format(value, spec)
    return f'<span data-json="{esc(key)}">{text}</span>' if key else text


def at(data: Any, spec: str, *path: str | int) -> str:
    """The number at ``path`` in ``data`` (a report's JSON), shown with ``spec`` and marked
    with that path, so the page and the file cannot disagree; "—" where the data has none."""
    value = data
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            value = None
            break
    return num(value, spec, json.dumps(list(path)))


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()
) -> str:
    """A table (cells are HTML already) in a horizontally scrolling box; columns whose every
    cell is empty or "—" are left out."""
    rows = [list(r) for r in rows]
    keep = [i for i in range(len(headers)) if any(r[i] not in ("", "—") for r in rows) or not rows]
    head = "".join(f"<th>{esc(headers[i])}</th>" for i in keep)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in numeric else ''}>{r[i]}</td>" for i in keep)
        + "</tr>"
        for r in rows
    )
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table of labels and (HTML) values."""
    return (
        "<div class=scroll><table class=kv>"
        + "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in pairs)
        + "</table></div>"
    )


def section(anchor: str, title: str, body: str, lead: str = "") -> str:
    """An ``<h2>`` section with an id the tests and links can find."""
    lead_html = f"<p class=lead>{lead}</p>" if lead else ""
    return f"<section id={esc(anchor)}><h2>{esc(title)}</h2>{lead_html}{body}</section>"


def svg(fig: Any, tooltips: dict[str, str] | None = None) -> str:
    """A matplotlib figure as inline SVG. ``tooltips`` maps an artist's gid to the text shown
    when the pointer rests on it (the full layer name, for instance)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # no XML prolog or doctype inside HTML
    # matplotlib writes fixed pt sizes: let the page scale it
    text = re.sub(r'<svg([^>]*?) width="([\d.]+)pt" height="([\d.]+)pt"', _scalable, text, count=1)
    for gid, tip in (tooltips or {}).items():
        text = text.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{esc(tip)}</title>', 1)
    return f"<figure role=img>{text}</figure>"


def _scalable(m: re.Match[str]) -> str:
    w, h = float(m.group(2)), float(m.group(3))
    return f'<svg{m.group(1)} width="{w * 4 / 3:.0f}" height="{h * 4 / 3:.0f}"'


def thumbnail(image: Any, max_side: int = 200, quality: int = 80) -> str:
    """A JPEG data URI of an image (path, RGB array or PIL image), at most ``max_side`` wide
    or high: reports embed thumbnails, never originals."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        img = Image.open(image).convert("RGB")
    elif isinstance(image, np.ndarray):
        img = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    else:
        img = image.convert("RGB")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def img(uri: str, alt: str, width: int | None = None) -> str:
    """An ``<img>`` of a data URI."""
    w = f" width={width}" if width else ""
    return f'<img src="{uri}" alt="{esc(alt)}"{w}>'


def page(title: str, heading: str, lead: str, sections: Sequence[str]) -> str:
    """The whole HTML document."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(heading)}</h1><p class=lead>{lead}</p>" + "".join(sections) + "</body></html>"
    )


def write(folder: Path, data: dict | None, document: str, stem: str = "report") -> Path:
    """Write ``stem.html`` (and ``stem.json`` = ``data`` when given) atomically; returns the
    HTML's path."""
    folder = Path(folder)
    if data is not None:
        atomic_write(folder / f"{stem}.json", json.dumps(data, indent=2))
    return atomic_write(folder / f"{stem}.html", document)


def zoom(ax: Any, values: Sequence[float], axis: str = "y", top: float = 1.0) -> None:
    """Limit ``axis`` to where the values are (see `zoomed_limits`) and label its ticks
    with as many decimals as the span needs, without matplotlib's offset notation."""
    import math

    from matplotlib.ticker import FormatStrFormatter

    lo, hi = zoomed_limits(values, top)
    decimals = min(6, max(2, math.ceil(-math.log10(max(hi - lo, 1e-6))) + 1))
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lo, hi)
    target.set_major_formatter(FormatStrFormatter(f"%.{decimals}f"))


def zoomed_limits(values: Sequence[float], top: float = 1.0) -> tuple[float, float]:
    """Axis limits that show where the values are: from a little under the smallest to a
    little over ``top`` (cosines near 1 would otherwise look all the same)."""
    lo = float(min(values)) if len(values) else 0.0
    lo = min(lo, top - 0.01)  # at least 0.01 of axis: a drop of 0.0001 is not a cliff
    span = top - lo
    return lo - 0.08 * span, top + 0.04 * span
