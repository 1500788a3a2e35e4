"""Uploading the SDK and models: checked before they go up, skipped when unchanged."""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from duotpu.compiler import file_digest
from duotpu.config.errors import BoardError, ConfigError

from .checks import Doctor, doctor, model_problems
from .ssh import Board


@dataclass
class PushReport:
    """What `push` did: the upload, and the problems found (kept only with ``force``)."""

    result: PushResult
    problems: list[str]


def push(
    b: Board,
    models: list[Path],
    sdk: Path | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PushReport:
    """Upload an SDK folder and/or cvimodels, each checked before it is uploaded.

    The board's chip and ION memory are checked against every model before anything is
    uploaded. The runtime version is checked against the runtime that will run the models:
    the board's, or with ``sdk`` the new SDK's (uploaded first, then asked). Models are never
    uploaded before all their checks pass; ``force`` uploads anyway and returns the problems.
    Raises `BoardError` with every problem otherwise."""
    if not models and sdk is None:
        raise ConfigError("Nothing to push: give cvimodel files and/or --sdk FOLDER.")
    d = doctor(b) if models else Doctor()
    if sdk is not None:
        d.runtime_version = ""  # the board's runtime is about to be replaced
    problems = model_problems(models, d)
    if problems and not force:
        raise BoardError(" ".join(problems) + " Nothing was uploaded (--force to try anyway).")
    sent = PushResult([], [], 0)
    if sdk is not None:
        sent = push_files(b, sdk_files(Path(sdk), b.profile.sdk_dir), progress)
        if models:
            late = [p for p in model_problems(models, doctor(b)) if p not in problems]
            if late and not force:
                raise BoardError(
                    " ".join(late) + " The SDK was uploaded; the models were not "
                    "(--force to try anyway)."
                )
            problems += late
    if models:
        more = push_files(b, [(Path(m), remote_model_path(b, Path(m))) for m in models], progress)
        sent = PushResult(
            sent.uploaded + more.uploaded,
            sent.skipped + more.skipped,
            sent.bytes_sent + more.bytes_sent,
        )
    return PushReport(sent, problems)


# --------------------------------------------------------------------------------------------
# Files: SDK and models, skipped when unchanged
# --------------------------------------------------------------------------------------------
def remote_hashes(b: Board, paths: list[str]) -> dict[str, str]:
    """sha256 of remote files (missing files are left out)."""
    out: dict[str, str] = {}
    for i in range(0, len(paths), 200):
        chunk = " ".join(shlex.quote(p) for p in paths[i : i + 200])
        r = b.run(f"sha256sum {chunk} 2>/dev/null")
        for line in r.stdout.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2:
                out[parts[1].strip()] = parts[0]
    return out


@dataclass
class PushResult:
    uploaded: list[str]
    skipped: list[str]
    bytes_sent: int


def push_files(
    b: Board, files: list[tuple[Path, str]], progress: Callable[[int, int], None] | None = None
) -> PushResult:
    """Upload (local, remote) pairs whose content differs on the board."""
    hashes = remote_hashes(b, [r for _, r in files])
    todo = [(loc, r) for loc, r in files if hashes.get(r) != file_digest(loc)]
    total = sum(loc.stat().st_size for loc, _ in todo)
    dirs = sorted({posixpath.dirname(r) for _, r in todo})
    if dirs:
        b.run("mkdir -p " + " ".join(shlex.quote(d) for d in dirs))
    sent = 0
    for local, remote in todo:
        base = sent

        def cb(done: int, _total: int, base=base) -> None:
            if progress:
                progress(base + done, total)

        b.put(local, remote, cb)
        mode = local.stat().st_mode & 0o777
        b.chmod(remote, mode)
        sent += local.stat().st_size
    done = {r for _, r in todo}
    return PushResult(sorted(done), [r for _, r in files if r not in done], sent)


def sdk_files(sdk: Path, remote_sdk: str) -> list[tuple[Path, str]]:
    """The files of a local SDK folder and their places on the board."""
    sdk = Path(sdk)
    if not (sdk / "envs_tpu_sdk.sh").is_file():
        raise ConfigError(
            f"{sdk} is not a TPU runtime SDK folder (no envs_tpu_sdk.sh). Give the "
            "unpacked tpu-sdk-cv180x (Duo), tpu-sdk-sg200x (Duo 256M / S) or "
            "cvitek_tpu_sdk folder."
        )
    out = []
    for p in sorted(sdk.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out.append((p, posixpath.join(remote_sdk, *p.relative_to(sdk).parts)))
    return out


def remote_model_path(b: Board, cvimodel: Path) -> str:
    return posixpath.join(b.profile.work_dir, "models", Path(cvimodel).name)


def push_model(b: Board, cvimodel: Path) -> PushResult:
    """Upload a cvimodel to the work folder's models/ (skipped when unchanged)."""
    return push_files(b, [(Path(cvimodel), remote_model_path(b, cvimodel))])
