"""The ``duotpu`` command: a thin layer over the library. Only this package prints and exits.

One module per command group (``build``, ``inspect``: info and predict, ``evaluate``, ``board``,
``legacy``); ``common`` holds what they share, ``main`` the parser and the error rendering. A
handler parses, makes one library call and renders the result."""

from duotpu.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
