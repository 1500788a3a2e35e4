"""``duotpu legacy``: the old cvitek command lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duotpu
from duotpu.cli.common import EXIT_OK, StageProgress, _console


def cmd_legacy(args: argparse.Namespace) -> int:
    argv = [args.tool, *args.tool_args]
    con = _console()
    progress = StageProgress(con)
    try:
        res = duotpu.run_legacy(argv, Path.cwd(), progress)
    finally:
        progress.close()
    for f in res.files:
        con.print(f"[bold]{res.tool}[/] wrote {f}")
    for n in res.notes:
        con.print(f"[yellow]note:[/] {n}")
    con.print("the same in duotpu, as a recipe (duotpu build --recipe FILE):")
    sys.stdout.flush()
    print(res.recipe.to_toml(), flush=True)  # plain: a terminal-wrapped TOML would not parse
    return EXIT_OK
