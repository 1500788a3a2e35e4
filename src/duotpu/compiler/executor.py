"""Where independent pieces of work run: in this process, one after another (the default), or
as tasks on Ray — a local instance duotpu starts and stops (``workers=N``) or a cluster it joins
(``address=…`` / ``$RAY_ADDRESS``).

Every fan-out of the library goes through `Executor.map`: ``duotpu build-many``'s recipes,
the mixed-precision search's sensitivity candidates, ``duotpu eval``'s image shards and
``bench/zoo.py``'s models. Results come back in the order of the items, whatever order the tasks
finish in, so a parallel run produces what the serial one does. A task whose worker process dies
is run once more (Ray's ``max_retries=1``); a second death, or an exception, comes back as a
`TaskFailed` for that item while the others go on — the same in both executors, for
duotpu's typed errors and for any other exception. Ctrl-C (or SIGTERM) cancels every task:
each task's tool processes are stopped with it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

from duotpu.config.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

RETRIES = 1  # a task whose worker process dies runs once more


@dataclass(frozen=True)
class TaskFailed:
    """An item whose task did not return: the exception's message, or why its worker died."""

    label: str
    error: str
    retried: bool = False  # its worker died and the task was run again (and failed again)
    exception: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One item's result (``value``) or failure (``failed``), and where it ran."""

    index: int
    value: R | None
    failed: TaskFailed | None
    node: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.failed is None


Done = Callable[[Outcome[Any]], None]


def _quiet(_: Outcome[Any]) -> None:
    pass


class Executor:
    """Runs ``fn(item)`` for every item; subclasses decide where."""

    workers: int = 1
    name: str = "serial"

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        labels: Sequence[str] | None = None,
        on_done: Done = _quiet,
    ) -> list[Outcome[R]]:
        """``fn`` over ``items``; the outcomes in the items' order. ``on_done`` hears of each
        as it finishes (the caller keeps finished results even if the run is stopped)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers (stops a local Ray instance this executor started)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Serial(Executor):
    """In this process, one item after another: the default, and the reference."""

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        labels: Sequence[str] | None = None,
        on_done: Done = _quiet,
    ) -> list[Outcome[R]]:
        out: list[Outcome[R]] = []
        for i, item in enumerate(items):
            t0 = time.monotonic()
            try:
                o: Outcome[R] = Outcome(i, fn(item), None, node_name(), time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 — as on Ray: this item failed, the others go on
                failed = TaskFailed(_label(labels, i), str(e) or type(e).__name__, exception=e)
                o = Outcome(i, None, failed, node_name(), time.monotonic() - t0)
            on_done(o)
            out.append(o)
        return out


def node_name() -> str:
    """This machine's name, as outcomes report where they ran."""
    return socket.gethostname()


def _label(labels: Sequence[str] | None, i: int) -> str:
    return labels[i] if labels else f"task {i + 1}"


def _run_task(fn: Callable[[Any], Any], item: Any) -> tuple[Any, str, float]:
    """What a Ray worker runs: the item's function, with the tool processes it starts stopped
    when the task is cancelled; returns the value, the node's id and the seconds taken."""
    import ray

    from duotpu.compiler import runner

    runner.clear_cancel()  # a worker process is reused: an earlier cancel is not this task's
    t0 = time.monotonic()
    try:
        value = fn(item)
    except KeyboardInterrupt:  # ray.cancel: stop what this task started, then let Ray know
        runner.stop_children()
        raise
    return value, ray.get_runtime_context().get_node_id(), time.monotonic() - t0


class RayExecutor(Executor):
    """Tasks on Ray: a local instance of ``workers`` CPUs started here (no dashboard), or the
    cluster at ``address``. Each task asks for one CPU: one build or shard per core."""

    name = "ray"

    def __init__(self, workers: int = 0, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is in requirements.lock
            raise ConfigError(
                "Ray is not installed: `pip install ray==2.60.0` (make install does), or run "
                "without --workers / --ray-address."
            ) from None
        self._ray = ray
        # a session the caller started (ray.init before duotpu) is used as it is and left open
        self._owned = not ray.is_initialized()
        if self._owned and address:
            try:
                ray.init(
                    address=address,
                    log_to_driver=False,
                    configure_logging=False,
                    runtime_env={"env_vars": _forwarded_env()},
                )
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(
                    f"Cannot join the Ray cluster at {address}: {e}. Start it with `ray start "
                    "--head` on a machine that has duotpu installed, and give its address "
                    "(host:port, default port 6379)."
                ) from None
        elif self._owned:
            ray.init(
                num_cpus=max(1, workers),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": _forwarded_env()},
            )
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self.node_id = ray.get_runtime_context().get_node_id()
        self._task = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(_run_task)

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        labels: Sequence[str] | None = None,
        on_done: Done = _quiet,
    ) -> list[Outcome[R]]:
        ray = self._ray
        fn_ref = ray.put(fn)
        refs = [self._task.remote(fn_ref, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        outcomes: dict[int, Outcome[R]] = {}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in ready:
                    i = index[ref]
                    outcomes[i] = self._outcome(ref, i, labels)
                    on_done(outcomes[i])
        except BaseException:
            self.cancel(pending)
            raise
        return [outcomes[i] for i in range(len(refs))]

    def _outcome(self, ref: Any, i: int, labels: Sequence[str] | None) -> Outcome[Any]:
        ray = self._ray
        from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError

        try:
            value, node, seconds = ray.get(ref)
        except WorkerCrashedError:
            failed = TaskFailed(
                _label(labels, i),
                f"the worker process running it died {RETRIES + 1} times (killed, or out of "
                "memory); its tool logs are in its work directory",
                retried=True,
            )
            return Outcome(i, None, failed, "", 0.0)
        except ray.exceptions.NodeDiedError as e:
            return Outcome(i, None, TaskFailed(_label(labels, i), f"its node died: {e}"), "", 0.0)
        except TaskCancelledError:
            return Outcome(i, None, TaskFailed(_label(labels, i), "cancelled"), "", 0.0)
        except RayTaskError as e:
            # the task's own exception (a typed duotpu error keeps its type and message)
            err = e.cause if isinstance(e.cause, Exception) else None
            failed = TaskFailed(_label(labels, i), str(err or e), exception=err)
            return Outcome(i, None, failed, "", 0.0)
        return Outcome(i, value, None, node, seconds)

    def cancel(self, refs: list[Any], grace: float = 2.0) -> None:
        """Stop tasks: first as Ctrl-C would (each stops its tool processes), then by force."""
        ray = self._ray
        for ref in refs:
            try:
                ray.cancel(ref, force=False)
            except (ValueError, TypeError):
                pass
        deadline = time.monotonic() + grace
        while refs and time.monotonic() < deadline:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=0.2)
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except (ValueError, TypeError):
                pass

    def close(self) -> None:
        """Stop the Ray session this executor started; one the caller started stays open."""
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()


def _forwarded_env() -> dict[str, str]:
    """What a worker needs of this process's environment to import what the tasks name (a
    factory module on PYTHONPATH) and to find duotpu's configuration."""
    keep = ("PYTHONPATH", "DUOTPU_CONFIG_DIR", "DUOTPU_NODE_DIR", "TORCH_HOME")
    return {k: os.environ[k] for k in keep if k in os.environ}


def executor(workers: int = 0, address: str | None = None) -> Executor:
    """The executor a command asked for: serial unless ``workers`` > 1, an ``address`` or
    ``$RAY_ADDRESS`` says Ray."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address or workers > 1:
        return RayExecutor(workers, address)
    return Serial()
