"""The Python API behaves as the command line does by default."""

from __future__ import annotations

import inspect


def test_the_library_checks_the_fast_path_as_the_cli_does():
    from duotpu.cli.main import build_parser
    from duotpu.eval import evaluate

    # before: the library ran no check (check=0) where `duotpu eval` ran 2
    assert inspect.signature(evaluate.evaluate_build).parameters["check"].default == 2
    args = build_parser().parse_args(["eval", "build/x", "--images", "imgs"])
    assert args.check is None  # the CLI then takes the library's default


def test_the_worker_checks_its_loaded_module_more_than_once():
    from duotpu.compiler import worker

    # inputs 2, 18, 34, ... run on a fresh module too: state that shows late is caught
    assert 0 < worker.CHECK_EVERY <= 32


def _cli_uses() -> list[tuple[str, int, str]]:
    """(file, line, what) for every name of duotpu the CLI's modules import or read."""
    import ast
    from pathlib import Path

    import duotpu.cli

    uses = []
    for path in sorted(Path(duotpu.cli.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                uses += [(path.name, node.lineno, f"import {a.name}") for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("duotpu"):
                uses += [
                    (path.name, node.lineno, f"from {node.module} import {a.name}")
                    for a in node.names
                ]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "duotpu"
            ):
                uses.append((path.name, node.lineno, f"duotpu.{node.attr}"))
    return uses


def test_the_command_line_calls_only_what_duotpu_exports():
    import duotpu

    public = set(duotpu.__all__)
    uses = _cli_uses()
    wrong = []
    for file, line, what in uses:
        if what.startswith("import "):
            module = what.split()[1]
            ok = not module.startswith("duotpu") or module == "duotpu"
            ok = ok or module.startswith("duotpu.cli")
        elif what.startswith("from "):
            module, name = what.split()[1], what.split()[3]
            ok = module.startswith("duotpu.cli") or (module == "duotpu" and name in public)
        else:
            attr = what.split(".", 1)[1]
            # the API reference lists the exports, and where the lazy ones are defined
            ok = attr in public or (file == "reference.py" and attr in ("__all__", "_LAZY"))
        if not ok:
            wrong.append(f"{file}:{line}: {what}")
    assert not wrong, "the CLI reaches past duotpu's exports:\n" + "\n".join(wrong)
    # the check sees the CLI's calls (it would pass vacuously on a parse that found none)
    assert sum(what.startswith("duotpu.") for _, _, what in uses) > 40
    # and every export is there (the lazy ones load)
    for name in public:
        assert getattr(duotpu, name) is not None, name


def test_no_subpackage_hides_an_exported_function():
    import types

    import duotpu
    import duotpu.inference.runtime  # noqa: F401 — importing a subpackage sets it on duotpu

    # the README's duotpu.infer(model, tensors): when the package was duotpu.infer, opening a
    # model made duotpu.infer that package ("'module' object is not callable")
    assert callable(duotpu.infer) and not isinstance(duotpu.infer, types.ModuleType)
    modules = [n for n in duotpu.__all__ if isinstance(getattr(duotpu, n), types.ModuleType)]
    assert modules == ["board"]  # the one sub-API exported as a module
