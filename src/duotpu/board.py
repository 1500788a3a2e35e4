"""A Milk-V Duo over SSH: profiles, connection (host keys checked), the SDK's ``model_runner``.

Everything runs through the board's own runtime SDK (``tpu-sdk-cv180x``, ``tpu-sdk-sg200x`` or
``cvitek_tpu_sdk``): ``cd SDK && source ./envs_tpu_sdk.sh`` and then ``model_runner``. Remote paths
are always quoted; each run works in its own folder under the profile's work folder and removes it
afterwards; nothing outside the SDK and work folders is written.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shlex
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from .errors import BoardError, ConfigError
from .toolchain import file_digest

DEFAULT_ION_PATH = "/sys/kernel/debug/ion/cvi_carveout_heap_dump/total_mem"
PASSWORD_ENV = "DUOTPU_BOARD_PASSWORD"


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoardProfile:
    """How to reach a board and where things live on it. The password is never stored: it
    comes from the environment variable ``password_env`` or a prompt."""
    name: str = "duo"
    host: str = "192.168.42.1"
    port: int = 22
    user: str = "root"
    key_file: str = ""
    password_env: str = PASSWORD_ENV
    sdk_dir: str = "/root/tpu-sdk"
    work_dir: str = "/root/duotpu"
    ion_path: str = DEFAULT_ION_PATH
    tpu_device: str = "/dev/cvi-tpu0"
    soc_path: str = "/proc/device-tree/compatible"


def config_dir() -> Path:
    """duotpu's configuration folder (``$DUOTPU_CONFIG_DIR`` or ``~/.config/duotpu``)."""
    return Path(os.environ.get("DUOTPU_CONFIG_DIR", Path.home() / ".config" / "duotpu"))


def load_profiles() -> dict[str, BoardProfile]:
    """The saved board profiles (``boards.toml`` in :func:`config_dir`)."""
    import tomli
    path = config_dir() / "boards.toml"
    if not path.exists():
        return {}
    try:
        data = tomli.loads(path.read_text())
    except tomli.TOMLDecodeError as e:
        raise ConfigError(f"The board profiles file {path} is not valid TOML: {e}.") from None
    names = {f for f in BoardProfile.__dataclass_fields__}
    out = {}
    for name, fields in data.get("boards", {}).items():
        unknown = set(fields) - names
        if unknown:
            raise ConfigError(f"Unknown key '{sorted(unknown)[0]}' for board '{name}' in {path}; "
                              f"valid keys: {', '.join(sorted(names - {'name'}))}.")
        out[name] = BoardProfile(name=name, **fields)
    return out


def save_profile(profile: BoardProfile) -> Path:
    """Add or replace a board profile in ``boards.toml``."""
    import tomli_w
    profiles = load_profiles()
    profiles[profile.name] = profile
    path = config_dir() / "boards.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"boards": {n: {k: v for k, v in asdict(p).items() if k != "name"}
                       for n, p in profiles.items()}}
    tmp = path.with_name(".boards.toml.tmp")
    tmp.write_text(tomli_w.dumps(data))
    os.replace(tmp, path)
    return path


def resolve_board(spec: str | None) -> BoardProfile:
    """``NAME`` of a saved profile, or ``[user@]host[:port]``; none: the only saved profile or
    the Duo's defaults (root@192.168.42.1)."""
    profiles = load_profiles()
    if not spec:
        if len(profiles) == 1:
            return next(iter(profiles.values()))
        return profiles.get("duo", BoardProfile())
    if spec in profiles:
        return profiles[spec]
    m = re.fullmatch(r"(?:([\w.-]+)@)?([\w.:-]+?)(?::(\d+))?", spec)
    if not m or ("@" not in spec and "." not in spec and ":" not in spec and spec != "localhost"):
        raise ConfigError(f"--board {spec!r} is neither a saved board ({', '.join(profiles) or 'none saved'}) "
                          "nor user@host[:port]. Save one with `duotpu board add NAME --host ...`.")
    base = profiles.get("duo", BoardProfile())
    return replace(base, name=spec, user=m.group(1) or base.user, host=m.group(2),
                   port=int(m.group(3)) if m.group(3) else base.port)


# --------------------------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------------------------
def _fingerprint(key) -> str:
    import base64
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_file() -> Path:
    """duotpu's own known_hosts (besides ~/.ssh/known_hosts, which is read too)."""
    return config_dir() / "known_hosts"


@dataclass
class RemoteResult:
    """A finished remote command."""
    command: str
    returncode: int
    stdout: str
    stderr: str


class Board:
    """An open SSH connection to a board. Use as a context manager."""

    def __init__(self, profile: BoardProfile, accept_new_host_key: bool = False,
                 timeout: float = 10.0, password_prompt: Callable[[str], str] | None = None):
        self.profile = profile
        self.accept_new_host_key = accept_new_host_key
        self.timeout = timeout
        self.password_prompt = password_prompt
        self.client = None
        self._sftp = None

    # ----------------------------------------------------------------- connect
    def __enter__(self) -> "Board":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        import paramiko
        p = self.profile
        client = paramiko.SSHClient()
        kh = known_hosts_file()
        system_kh = Path.home() / ".ssh" / "known_hosts"
        if system_kh.exists():
            try:
                client.load_system_host_keys(str(system_kh))
            except Exception:  # an unreadable system file must not block a connection
                pass
        if kh.exists():
            client.load_host_keys(str(kh))
        accept = self.accept_new_host_key

        class _Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client_, hostname, key):
                fp = _fingerprint(key)
                if not accept:
                    raise BoardError(
                        f"The board {hostname} is not a known host. Its {key.get_name()} host key "
                        f"has the fingerprint {fp}. If that is your board, connect once with "
                        "--accept-new-host-key to trust it (it is saved to "
                        f"{known_hosts_file()}).")
                kh.parent.mkdir(parents=True, exist_ok=True)
                client_.get_host_keys().add(hostname, key.get_name(), key)
                client_.save_host_keys(str(kh))
        client.set_missing_host_key_policy(_Policy())
        kwargs = dict(hostname=p.host, port=p.port, username=p.user, timeout=self.timeout,
                      banner_timeout=self.timeout, auth_timeout=self.timeout,
                      allow_agent=False, look_for_keys=False)
        if p.key_file:
            kwargs["key_filename"] = os.path.expanduser(p.key_file)
        password = os.environ.get(p.password_env) if p.password_env else None
        if not p.key_file and password is None and self.password_prompt is not None:
            password = self.password_prompt(f"password for {p.user}@{p.host}: ")
        if password is not None:
            kwargs["password"] = password
        where = f"{p.user}@{p.host}:{p.port}"
        try:
            client.connect(**kwargs)
        except BoardError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise BoardError(
                f"The host key of {where} has CHANGED (now {_fingerprint(e.key)}). This happens "
                "when a board is re-flashed — or when something else answers at that address. "
                f"If you re-flashed it, remove the old entry for {p.host} from {known_hosts_file()}"
                " (or ~/.ssh/known_hosts) and connect again with --accept-new-host-key.") from None
        except paramiko.AuthenticationException:
            client.close()
            how = f"the key {p.key_file}" if p.key_file else (
                f"the password from ${p.password_env}" if password is not None else
                "no key or password")
            raise BoardError(f"Authentication to {where} failed with {how}. Set the board's "
                             f"password in ${p.password_env} (the Duo's default is 'milkv'), or "
                             "give a key file in the board profile (--key).") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise BoardError(f"Timed out connecting to {where}. Is the board powered and "
                             "connected (USB network: the host has 192.168.42.x), and is the "
                             "address right?") from None
        except (OSError, paramiko.SSHException) as e:
            client.close()
            raise BoardError(f"Cannot reach {where}: {e}. Check the cable / network and the "
                             "address (--board user@host).") from None
        self.client = client

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None

    # ----------------------------------------------------------------- commands and files
    def run(self, command: str, timeout: float = 600.0, env: dict[str, str] | None = None) -> \
            RemoteResult:
        """Run a shell command on the board (``env`` is exported first)."""
        prefix = "".join(f"export {k}={shlex.quote(v)}; " for k, v in (env or {}).items())
        try:
            _, out, err = self.client.exec_command(prefix + command, timeout=timeout)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            rc = out.channel.recv_exit_status()
        except socket.timeout:
            raise BoardError(f"The board did not finish `{command[:80]}` within {timeout:.0f} s.") \
                from None
        return RemoteResult(command, rc, stdout, stderr)

    @property
    def sftp(self):
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def put(self, local: Path, remote: str, progress: Callable[[int, int], None] | None = None):
        """Upload a file (to a temporary name, then renamed: no half-written file on the board)."""
        tmp = remote + ".part"
        self.sftp.put(str(local), tmp, callback=progress)
        self.run(f"mv -f {shlex.quote(tmp)} {shlex.quote(remote)}")

    def get(self, remote: str, local: Path) -> Path:
        self.sftp.get(remote, str(local))
        return Path(local)

    def sdk_command(self, command: str) -> str:
        """``command`` inside the SDK's environment (``envs_tpu_sdk.sh`` needs its own folder as
        the working directory)."""
        sdk = shlex.quote(self.profile.sdk_dir)
        return f"cd {sdk} && . ./envs_tpu_sdk.sh >/dev/null && {command}"


# --------------------------------------------------------------------------------------------
# What the board says
# --------------------------------------------------------------------------------------------
@dataclass
class Doctor:
    """The board's state, and problems in plain words with the fix."""
    os: str = ""
    arch: str = ""
    soc: str = ""
    chip: str = ""
    runtime_version: str = ""
    tpu_device: bool = False
    mem_total_mb: float = 0.0
    mem_free_mb: float = 0.0
    ion_mb: float | None = None
    sdk_ok: bool = False
    problems: list[str] = field(default_factory=list)


_SOC_CHIP = {"cv1800b": "cv180x", "cv1801b": "cv180x", "cv180": "cv180x", "sg2002": "cv181x",
             "sg2000": "cv181x", "cv1812": "cv181x", "cv181": "cv181x", "cv182": "cv182x",
             "cv183": "cv183x"}


def chip_of_soc(soc: str) -> str:
    """The TPU chip family (cv180x, cv181x, ...) of a SoC name from the device tree."""
    s = soc.lower()
    return next((chip for key, chip in _SOC_CHIP.items() if key in s), "")


def runtime_version(text: str) -> str:
    m = re.search(r"Cvitek Runtime\s*\(?\s*v?(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else ""


def doctor(b: Board) -> Doctor:
    """Inspect the board: OS, CPU, SoC, TPU device, memory, ION heap, SDK and runtime."""
    d = Doctor()
    p = b.profile
    script = "; ".join([
        "uname -sr", "uname -m",
        f"tr -d '\\0' < {shlex.quote(p.soc_path)} 2>/dev/null | tr '\\n' ' '; echo",
        f"ls {shlex.quote(p.tpu_device)} >/dev/null 2>&1 && echo tpu:yes || echo tpu:no",
        "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo",
        f"cat {shlex.quote(p.ion_path)} 2>/dev/null || echo ion:unreadable",
    ])
    r = b.run(script)
    lines = r.stdout.splitlines()
    if len(lines) >= 4:
        d.os, d.arch, d.soc = lines[0].strip(), lines[1].strip(), lines[2].strip()
        d.tpu_device = "tpu:yes" in r.stdout
    d.chip = chip_of_soc(d.soc)
    for key, attr in (("MemTotal", "mem_total_mb"), ("MemAvailable", "mem_free_mb")):
        m = re.search(rf"{key}:\s*(\d+)\s*kB", r.stdout)
        if m:
            setattr(d, attr, int(m.group(1)) / 1024)
    m = re.search(r"^\s*(\d+)\s*$", lines[-1] if lines else "")
    if "ion:unreadable" not in r.stdout and m:
        d.ion_mb = int(m.group(1)) / (1024 * 1024)
    if not d.tpu_device:
        d.problems.append(f"No TPU device ({p.tpu_device}): the TPU driver is not loaded. Use a "
                          "Duo image with TPU support (the official Milk-V buildroot images).")
    if d.ion_mb is None:
        d.problems.append(f"The ION heap size is unreadable ({p.ion_path}); mount debugfs "
                          "(`mount -t debugfs none /sys/kernel/debug`) to let duotpu check that "
                          "models fit.")
    elif d.ion_mb == 0:
        d.problems.append("The ION heap is 0 MB: this image reserves no memory for the TPU. "
                          "Flash an image with an ION carveout (the Duo's are 16–27 MB).")
    sdk = b.run(f"test -f {shlex.quote(p.sdk_dir)}/envs_tpu_sdk.sh && echo sdk:yes || "
                "echo sdk:no")
    if "sdk:yes" not in sdk.stdout:
        d.problems.append(f"The runtime SDK is not at {p.sdk_dir} on the board. Upload it with "
                          "`duotpu board push --sdk PATH/TO/tpu-sdk-cv180x`.")
        return d
    # run it with no arguments: it prints its "Cvitek Runtime (x.y.z)" line, then its usage
    rr = b.run(b.sdk_command('out=$(model_runner 2>&1); rc=$?; printf "%s\\n" "$out" | '
                             'head -20; echo "duotpu-rc:$rc"'))
    text = rr.stdout + rr.stderr
    d.runtime_version = runtime_version(text)
    d.sdk_ok = sdk_usable(text)
    if not d.sdk_ok:
        shown = re.sub(r"duotpu-rc:\d+\s*$", "", text.strip()).strip()[-300:]
        d.problems.append("The SDK's model_runner does not start on the board "
                          f"({shown or 'no output'}). Upload a complete SDK for the board's "
                          "chip with `duotpu board push --sdk PATH/TO/tpu-sdk-cv180x`.")
    return d


def sdk_usable(text: str) -> bool:
    """Whether ``model_runner``'s output (run with no arguments, followed by a
    ``duotpu-rc:N`` line with its exit code) shows a working runtime: it printed the runtime's
    version line, and the shell could run it (not 126/127, no loader error)."""
    rc = re.search(r"duotpu-rc:(\d+)", text)
    if rc and int(rc.group(1)) in (126, 127):
        return False
    if re.search(r"not found|No such file|cannot execute|error while loading shared libraries|"
                 r"Exec format error|Segmentation fault|Illegal instruction", text):
        return False
    return bool(runtime_version(text))


# --------------------------------------------------------------------------------------------
# Checks before pushing a model
# --------------------------------------------------------------------------------------------
def check_model_for_board(info, d: Doctor) -> list[str]:
    """Reasons a cvimodel cannot run on this board (empty when it can)."""
    out = []
    if d.chip and info.chip != d.chip:
        out.append(f"{Path(info.path).name} is built for {info.chip}, but the board's SoC "
                   f"({d.soc.split()[0] if d.soc else '?'}) is {d.chip}: the runtime would say "
                   f"'cvimodel built for {info.chip} CANNOT run on platform {d.chip}'. Rebuild "
                   f"with --chip {d.chip}.")
    if d.runtime_version:
        rv = tuple(int(x) for x in d.runtime_version.split(".")[:2])
        mv = tuple(int(x) for x in info.version.split(".")[:2])
        if mv > rv:
            out.append(f"{Path(info.path).name} is cvimodel {info.version}, newer than the "
                       f"board's runtime {d.runtime_version}: the runtime would refuse it "
                       f"('cvimodel({mv[0]}.{mv[1]}) is not supported in runtime"
                       f"({rv[0]}.{rv[1]})'). Update the SDK on the board, or rebuild the model "
                       f"with model_version {rv[0]}.{rv[1]}.")
    if d.ion_mb is not None and info.ion_mb > d.ion_mb:
        out.append(f"{Path(info.path).name} needs {info.ion_mb:.2f} MB of ION memory; the board "
                   f"has {d.ion_mb:.2f} MB. Use a smaller input, INT8 instead of BF16, or an "
                   "image with a bigger ION carveout.")
    return out


@dataclass
class PushReport:
    """What :func:`push` did: the upload, and the problems found (kept only with ``force``)."""
    result: PushResult
    problems: list[str]


def push(b: Board, models: list[Path], sdk: Path | None = None, force: bool = False,
         progress: Callable[[int, int], None] | None = None) -> PushReport:
    """Upload an SDK folder and/or cvimodels, each checked before it is uploaded.

    The board's chip and ION memory are checked against every model before anything is
    uploaded. The runtime version is checked against the runtime that will run the models:
    the board's, or with ``sdk`` the new SDK's (uploaded first, then asked). Models are never
    uploaded before all their checks pass; ``force`` uploads anyway and returns the problems.
    Raises :class:`BoardError` with every problem otherwise."""
    from .cvimodel import read_cvimodel
    if not models and sdk is None:
        raise ConfigError("Nothing to push: give cvimodel files and/or --sdk FOLDER.")
    infos = [read_cvimodel(m) for m in models]
    d = doctor(b) if models else Doctor()
    if sdk is not None:
        d.runtime_version = ""  # the board's runtime is about to be replaced
    problems = [p for info in infos for p in check_model_for_board(info, d)]
    if problems and not force:
        raise BoardError(" ".join(problems) + " Nothing was uploaded (--force to try anyway).")
    sent = PushResult([], [], 0)
    if sdk is not None:
        sent = push_files(b, sdk_files(Path(sdk), b.profile.sdk_dir), progress)
        if models:
            new = doctor(b)
            late = [p for info in infos for p in check_model_for_board(info, new)
                    if p not in problems]
            if late and not force:
                raise BoardError(" ".join(late) + " The SDK was uploaded; the models were not "
                                 "(--force to try anyway).")
            problems += late
    if models:
        more = push_files(b, [(Path(m), remote_model_path(b, Path(m))) for m in models],
                          progress)
        sent = PushResult(sent.uploaded + more.uploaded, sent.skipped + more.skipped,
                          sent.bytes_sent + more.bytes_sent)
    return PushReport(sent, problems)


# --------------------------------------------------------------------------------------------
# Files: SDK and models, skipped when unchanged
# --------------------------------------------------------------------------------------------
def remote_hashes(b: Board, paths: list[str]) -> dict[str, str]:
    """sha256 of remote files (missing files are left out)."""
    out: dict[str, str] = {}
    for i in range(0, len(paths), 200):
        chunk = " ".join(shlex.quote(p) for p in paths[i:i + 200])
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


def push_files(b: Board, files: list[tuple[Path, str]],
               progress: Callable[[int, int], None] | None = None) -> PushResult:
    """Upload (local, remote) pairs whose content differs on the board."""
    hashes = remote_hashes(b, [r for _, r in files])
    todo = [(l, r) for l, r in files if hashes.get(r) != file_digest(l)]
    total = sum(l.stat().st_size for l, _ in todo)
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
        b.sftp.chmod(remote, mode)
        sent += local.stat().st_size
    done = {r for _, r in todo}
    return PushResult(sorted(done), [r for _, r in files if r not in done], sent)


def sdk_files(sdk: Path, remote_sdk: str) -> list[tuple[Path, str]]:
    """The files of a local SDK folder and their places on the board."""
    sdk = Path(sdk)
    if not (sdk / "envs_tpu_sdk.sh").is_file():
        raise ConfigError(f"{sdk} is not a TPU runtime SDK folder (no envs_tpu_sdk.sh). Give the "
                          "unpacked tpu-sdk-cv180x (Duo), tpu-sdk-sg200x (Duo 256M / S) or "
                          "cvitek_tpu_sdk folder.")
    out = []
    for p in sorted(sdk.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out.append((p, posixpath.join(remote_sdk, *p.relative_to(sdk).parts)))
    return out


# --------------------------------------------------------------------------------------------
# model_runner
# --------------------------------------------------------------------------------------------
_RUNTIME_ERRORS = [
    (r"cvimodel\((\S+)\) is not supported in runtime\((\S+)\)",
     "The board's runtime is older than the model's format; update the SDK on the board or "
     "rebuild with an older model_version."),
    (r"CANNOT run on platform", "The model was built for another chip; rebuild with the board's "
                                "chip (--chip)."),
    (r"alloc memory for weight failed|failed to alloc (private|shared) gmem|failed to alloc io mem",
     "The board ran out of ION memory for this model; use a smaller input, INT8 instead of BF16, "
     "or an image with a bigger ION carveout."),
    (r"0xc0010102", "The runtime could not open the model (0xc0010102): usually a model from a "
                    "newer compiler than the board's runtime; update the SDK on the board."),
]


def explain_runtime_failure(text: str) -> str:
    """Plain words for a known model_runner failure, or ''."""
    for pattern, advice in _RUNTIME_ERRORS:
        if re.search(pattern, text):
            return advice
    return ""


@dataclass
class BenchResult:
    """Latency of a model on the board."""
    runs: int
    mean_ms: float
    fps: float
    inference_ms: list[float]
    tdma_ms: list[float]
    tiu_ms: list[float]
    median_ms: float
    p90_ms: float

    @property
    def tpu_split(self) -> str:
        if not self.tdma_ms:
            return ""
        return (f"TDMA (memory) {statistics.median(self.tdma_ms):.2f} ms, TIU (compute) "
                f"{statistics.median(self.tiu_ms):.2f} ms per subgraph run")


def parse_timer(text: str) -> tuple[int, float, float] | None:
    """``Performance result: N runs take T ms, each run takes X ms, fps F``."""
    m = re.search(r"Performance result:\s*(\d+)\s*runs take\s*([\d.]+)\s*ms,\s*each run takes\s*"
                  r"([\d.]+)\s*ms,\s*fps\s*([\d.]+)", text)
    return (int(m.group(1)), float(m.group(3)), float(m.group(4))) if m else None


def parse_pmu(text: str) -> list[tuple[float, float, float]]:
    """(tdma_ms, tiu_ms, inference_ms) of every PMU block printed with TPU_ENABLE_PMU=1."""
    return [(float(a), float(b), float(c)) for a, b, c in re.findall(
        r"tdma_exe_ms:\s*([\d.]+)ms,\s*tiu_exe_ms:\s*([\d.]+)ms,\s*inference_ms:\s*([\d.]+)ms",
        text)]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --------------------------------------------------------------------------------------------
# Running models
# --------------------------------------------------------------------------------------------
def remote_model_path(b: Board, cvimodel: Path) -> str:
    return posixpath.join(b.profile.work_dir, "models", Path(cvimodel).name)


def push_model(b: Board, cvimodel: Path) -> PushResult:
    """Upload a cvimodel to the work folder's models/ (skipped when unchanged)."""
    return push_files(b, [(Path(cvimodel), remote_model_path(b, cvimodel))])


def _failure(r: RemoteResult, what: str) -> BoardError:
    text = r.stdout + "\n" + r.stderr
    tail = "\n".join([ln for ln in text.splitlines() if ln.strip()][-12:])
    advice = explain_runtime_failure(text)
    return BoardError(f"{what} failed on the board (exit code {r.returncode}). "
                      + (advice + " " if advice else "") + f"Last lines of its output:\n{tail}")


class RunFolder:
    """A fresh folder under the work folder for one run, removed afterwards."""

    def __init__(self, b: Board):
        self.b = b
        self.path = posixpath.join(b.profile.work_dir, f"run-{os.getpid()}-{time.time_ns()}")

    def __enter__(self) -> str:
        self.b.run(f"mkdir -p {shlex.quote(self.path)}")
        return self.path

    def __exit__(self, *exc) -> None:
        try:
            self.b.run(f"rm -rf {shlex.quote(self.path)}")
        except Exception:  # cleaning up must not hide the real error
            pass


def to_float_outputs(outputs: dict, info) -> dict:
    """The board's output npz as fp32: int8 outputs are dequantized with their qscale, bf16
    outputs (stored as uint16) widened."""
    import numpy as np
    out = {}
    tensors = {t.name: t for p in info.programs for t in p.outputs}
    for name, v in outputs.items():
        t = tensors.get(name)
        v = np.asarray(v)
        if v.dtype == np.uint16 or (t is not None and t.dtype == "bf16"):
            v = (v.astype(np.uint32) << 16).view(np.float32)
        elif v.dtype in (np.int8, np.uint8) and t is not None and t.qscale:
            v = (v.astype(np.float32) - t.zero_point) * np.float32(t.qscale)
        out[name] = v.astype(np.float32)
    return out


def run_model(b: Board, cvimodel: Path, info, tensors: list, input_name: str,
              program: int = 0) -> list[dict]:
    """Run input tensors through the model with the SDK's model_runner; fp32 outputs back."""
    import tempfile

    import numpy as np
    push_model(b, cvimodel)
    model = remote_model_path(b, cvimodel)
    results = []
    with RunFolder(b) as rdir, tempfile.TemporaryDirectory() as tmp:
        for i, x in enumerate(tensors):
            local_in = Path(tmp) / f"in{i}.npz"
            np.savez(local_in, **{input_name: x})
            rin, rout = posixpath.join(rdir, f"in{i}.npz"), posixpath.join(rdir, f"out{i}.npz")
            b.put(local_in, rin)
            cmd = (f"model_runner -m {shlex.quote(model)} -i {shlex.quote(rin)} "
                   f"-o {shlex.quote(rout)}" + (f" -s {program}" if program else ""))
            r = b.run(b.sdk_command(cmd))
            if r.returncode != 0:
                raise _failure(r, "model_runner")
            local_out = b.get(rout, Path(tmp) / f"out{i}.npz")
            with np.load(local_out) as z:
                results.append(to_float_outputs({k: z[k] for k in z.files}, info))
    return results


def bench(b: Board, cvimodel: Path, tensor, input_name: str, count: int = 50) -> BenchResult:
    """Latency with ``model_runner --enable-timer -c COUNT`` and, with ``TPU_ENABLE_PMU=1``,
    the TPU's own counters per run (median, p90, TDMA/TIU split)."""
    import tempfile

    import numpy as np
    push_model(b, cvimodel)
    model = remote_model_path(b, cvimodel)
    with RunFolder(b) as rdir, tempfile.TemporaryDirectory() as tmp:
        local_in = Path(tmp) / "in.npz"
        np.savez(local_in, **{input_name: tensor})
        rin = posixpath.join(rdir, "in.npz")
        b.put(local_in, rin)
        cmd = (f"model_runner -m {shlex.quote(model)} -i {shlex.quote(rin)} -c {int(count)} "
               "--enable-timer")
        r = b.run(b.sdk_command(cmd), env={"TPU_ENABLE_PMU": "1"})
        if r.returncode != 0:
            raise _failure(r, "model_runner --enable-timer")
    text = r.stdout + r.stderr
    timer = parse_timer(text)
    if timer is None:
        raise BoardError("model_runner printed no 'Performance result' line:\n" + text[-800:])
    runs, mean_ms, fps = timer
    blocks = parse_pmu(text)
    per_run, tdma, tiu = [], [], []
    if blocks and len(blocks) % runs == 0:
        k = len(blocks) // runs  # several TPU subgraphs per run when CPU ops split the model
        for i in range(runs):
            chunk = blocks[i * k:(i + 1) * k]
            per_run.append(sum(c[2] for c in chunk))
            tdma.append(sum(c[0] for c in chunk))
            tiu.append(sum(c[1] for c in chunk))
    dist = per_run or [mean_ms]
    return BenchResult(runs, mean_ms, fps, per_run, tdma, tiu, statistics.median(dist),
                       percentile(dist, 0.9))
