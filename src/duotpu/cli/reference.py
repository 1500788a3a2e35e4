"""The docs site's generated pages: the recipe reference from the recipe dataclasses' field
metadata (the same source as ``--help``), the CLI reference from the argument parser, and one
page per benchmark result under ``bench/results/`` (included as the script wrote it, stamped with
the commit and date that wrote it). ``make docs`` runs ``python -m duotpu.cli.reference docs``
before MkDocs builds the site."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import duotpu

RECIPE_PAGE = "reference/recipe.md"
CLI_PAGE = "reference/cli.md"
API_PAGE = "reference/api.md"
BENCH_DIR = "benchmarks"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (tuple, list):
        inner = {_type_name(a) for a in args if a is not Ellipsis}
        return "list of " + ", ".join(sorted(inner))
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is dict:
        return "table"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "—"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`" if value not in ("", None) else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def recipe_keys() -> list[str]:
    """Every recipe key the reference documents (dotted), in declaration order."""
    return [key for key, _, _ in duotpu.recipe_fields()]


def recipe_page() -> str:
    """The recipe reference: every key with its type, default, command-line flag and help."""
    flags = {f.key: f for f in duotpu.recipe_flags()}
    lines = [
        "# Recipe reference",
        "",
        "Generated from the recipe dataclasses (`duotpu.config.recipe`), the same source the",
        "TOML loader and `duotpu build --help` read. A recipe is a TOML file; each key below is",
        "`section.key` (write it under `[section]`), and every key with a flag can be set on",
        "the command line too. `inputs` is a list of tables (`[[inputs]]`).",
        "",
    ]
    sections: dict[str, list[str]] = {}
    for key, f, tp in duotpu.recipe_fields():
        head = key.split(".")[0] if "." in key else ""
        flag = flags.get(key)
        sections.setdefault(head, []).append(
            f"| `{key}` | {_cell(_type_name(tp))} | {_cell(_default(f))} | "
            + (f"`{flag.option}`" if flag else "—")
            + f" | {_cell(flag.help) if flag else ''} |"
        )
    for head, rows in sections.items():
        title = f"`[{head}]`" if head else "Top level"
        lines += ["", f"## {title}", "", "| key | type | default | flag | what it does |"]
        lines += ["| --- | --- | --- | --- | --- |", *rows]
    return "\n".join(lines) + "\n"


def _parsers(
    p: argparse.ArgumentParser, name: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, q in a.choices.items():
                yield from _parsers(q, f"{name} {sub}")


def cli_commands() -> list[str]:
    """Every command of the command line (``duotpu build``, ``duotpu board app push`` …)."""
    from duotpu.cli.main import build_parser

    return [name for name, _ in _parsers(build_parser(), "duotpu")]


def cli_page() -> str:
    """The CLI reference: every command's usage, what it does and its options."""
    from duotpu.cli.main import build_parser

    lines = [
        "# Command-line reference",
        "",
        "Generated from duotpu's argument parser (`duotpu.cli.main.build_parser`): what",
        "`duotpu COMMAND --help` prints. Options that set a recipe key are listed in the",
        "[recipe reference](recipe.md) too.",
    ]
    for name, p in _parsers(build_parser(), "duotpu"):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        usage = p.format_usage().replace("usage: ", "").strip()
        lines += ["", f"## `{name}`", ""]
        if p.description:
            lines += [p.description, ""]
        lines += ["```text", usage, "```", ""]
        if subs:
            lines += ["| command | what it does |", "| --- | --- |"]
            helps = {c.dest: c.help or "" for c in subs[0]._choices_actions}
            for sub in subs[0].choices:
                full = f"{name} {sub}"
                lines.append(f"| [`{full}`](#{_anchor(full)}) | {_cell(helps.get(sub, ''))} |")
            continue
        rows = [
            a
            for a in p._actions
            if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
        ]
        if rows:
            lines += ["| argument | what it does |", "| --- | --- |"]
            for a in rows:
                what = (
                    (a.help or "") % {"default": a.default}
                    if a.help and "%(" in a.help
                    else (a.help or "")
                )
                if a.choices and not a.option_strings:
                    what += " (" + ", ".join(map(str, a.choices)) + ")"
                names = ", ".join(a.option_strings) or a.dest
                meta = a.metavar if isinstance(a.metavar, str) else None
                if a.option_strings and a.nargs != 0 and meta:
                    names += f" {meta}"
                lines.append(f"| `{_cell(names)}` | {_cell(what)} |")
    return "\n".join(lines) + "\n"


#: the API page's sections: a name goes under the first whose module prefix it has
API_SECTIONS = (
    ("Building", ("duotpu.build", "duotpu.builder", "duotpu.compiler")),
    ("Recipes and boards", ("duotpu.config.recipe", "duotpu.BOARDS")),
    (
        "Running and inspecting built models",
        ("duotpu.inference", "duotpu.cvimodel", "duotpu.core", "duotpu.onboard"),
    ),
    ("Evaluating", ("duotpu.evaluate", "duotpu.eval")),
    ("On the board", ("duotpu.board",)),
    ("Errors", ("duotpu.config.errors",)),
)


def _api_home(name: str) -> str:
    """Where the docs tool finds an export (it cannot follow duotpu's lazy attributes)."""
    obj = getattr(duotpu, name)
    if isinstance(obj, types.ModuleType):  # a sub-API (duotpu.board)
        return obj.__name__
    if getattr(obj, "__module__", "").startswith("duotpu") and hasattr(obj, "__name__"):
        return f"{obj.__module__}.{obj.__name__}"
    if name in duotpu._LAZY:  # a type alias (EvalResult): where the table finds it
        return f"{duotpu._LAZY[name]}.{name}"
    return f"duotpu.{name}"  # a constant (BOARDS)


def api_section(where: str) -> str:
    """The API page's section for an export found at ``where``."""
    for title, prefixes in API_SECTIONS:
        if any(where == p or where.startswith(p + ".") for p in prefixes):
            return title
    return "Other"


def api_page() -> str:
    """The Python API reference: every name ``duotpu/__init__.py`` exports, with its docstring
    (rendered by mkdocstrings), in sections that follow the pipeline."""
    lines = [
        "# Python API reference",
        "",
        "Generated from the docstrings of every name `duotpu` exports (`duotpu.__all__`); the",
        "command line calls nothing else. The guides show them in use, e.g.",
        "[Build your own model](../guides/build.md).",
    ]
    sections: dict[str, list[str]] = {title: [] for title, _ in API_SECTIONS}
    for name in duotpu.__all__:
        if name.startswith("__"):
            continue
        where = _api_home(name)
        block = ["", f"::: {where}", "    options:", "        show_root_full_path: false"]
        block.append("        heading_level: 3")
        if where.rsplit(".", 1)[1] != name:  # exported under another name (list_images)
            block += [f'        heading: "{name}"', f'        toc_label: "{name}"']
        sections.setdefault(api_section(where), []).extend(block)
    for title, block in sections.items():
        if block:
            lines += ["", f"## {title}", *block]
    return "\n".join(lines) + "\n"


def _anchor(title: str) -> str:
    """MkDocs' heading id for a heading made of ``title`` in backticks."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in title.lower()).strip("-")


def _script_for(result: Path, bench: Path) -> Path | None:
    stem = result.stem
    for cand in (stem, stem.split("_")[0]):
        if (bench / f"{cand}.py").is_file():
            return bench / f"{cand}.py"
    return None


def _stamp(path: Path, root: Path) -> str:
    """The commit and date that last wrote ``path`` ("" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %cs", "--", str(path.relative_to(root))],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return ""
    return out


def benchmark_pages(root: Path) -> dict[str, str]:
    """One page per ``bench/results/*.md`` (file name → page text): the result as the script
    wrote it (included, no number retyped), the script's name, the commit and date."""
    bench = root / "bench"
    pages: dict[str, str] = {}
    rows = []
    for result in sorted((bench / "results").glob("*.md")):
        text = result.read_text()
        first = next((ln for ln in text.splitlines() if ln.strip()), result.stem).lstrip("# ")
        script = _script_for(result, bench)
        stamp = _stamp(result, root)
        by = f"`bench/{script.name}`" if script else "a script under `bench/`"
        lines = [
            f"# {result.stem}",
            "",
            f"Printed by {by} and written to `bench/results/{result.name}`"
            + (
                f" (last written in commit `{stamp.split()[0]}`, {stamp.split()[1]})"
                if stamp
                else ""
            )
            + ". Included as the script wrote it:",
            "",
            "---",
            "",
            f'--8<-- "bench/results/{result.name}"',
            "",
        ]
        pages[f"{result.stem}.md"] = "\n".join(lines)
        rows.append(f"| [{result.stem}]({result.stem}.md) | {_cell(first[:120])} | {by} |")
    pages["index.md"] = "\n".join(
        [
            "# Benchmarks",
            "",
            "Every number on this site comes from a script under `bench/`; each page below",
            "includes a results file as its script wrote it, ending with the script and the",
            "seconds its run took. `make bench` (`bench/run.py`) reruns the ones that fit in",
            "about 30 minutes on 2 cores and names the others with their last run's time;",
            "`bench/run.py --all` reruns every one, `.venv/bin/python bench/NAME.py` one.",
            "",
            "| result | what | script |",
            "| --- | --- | --- |",
            *rows,
            "",
        ]
    )
    return pages


def write_reference(docs: Path, root: Path | None = None) -> list[Path]:
    """Write the generated pages under ``docs`` (the MkDocs source folder); their paths."""
    docs = Path(docs)
    root = Path(root) if root else docs.resolve().parent
    pages = {RECIPE_PAGE: recipe_page(), CLI_PAGE: cli_page(), API_PAGE: api_page()}
    changelog = root / "CHANGELOG.md"
    if changelog.is_file():  # the site's copy of the repository's changelog
        pages["changelog.md"] = changelog.read_text()
    pages |= {f"{BENCH_DIR}/{k}": v for k, v in benchmark_pages(root).items()}
    out = []
    for rel, text in pages.items():
        path = docs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.append(path)
    return out


if __name__ == "__main__":
    written = write_reference(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
    print(f"wrote {len(written)} generated pages")
