"""The serial executor: the reference every parallel run is compared with."""

from __future__ import annotations

from duotpu.compiler.executor import Serial, executor
from duotpu.config.errors import DataError


def _work(x: int) -> int:
    if x == 3:
        raise DataError("three is bad input")
    if x == 4:
        raise RuntimeError("a bug")
    return x * x


def test_serial_keeps_order_reports_each_and_captures_typed_errors():
    heard = []
    out = Serial().map(_work, [1, 2, 3], labels=["a", "b", "c"], on_done=heard.append)
    assert [o.value for o in out] == [1, 4, None] and [o.index for o in heard] == [0, 1, 2]
    assert out[2].failed is not None and out[2].failed.label == "c"
    assert "three is bad input" in out[2].failed.error
    assert isinstance(out[2].failed.exception, DataError)
    # any other exception is that item's failure too, as on Ray (the others go on)
    out = Serial().map(_work, [4, 5])
    assert isinstance(out[0].failed.exception, RuntimeError) and out[1].value == 25


def test_serial_is_the_default(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert isinstance(executor(), Serial) and isinstance(executor(workers=1), Serial)
