"""Board profiles: host, user, key or password source, SDK and work folders, saved in
``~/.config/duotpu/boards.toml``; ``--board NAME|user@host[:port]``."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from duotpu.config.errors import ConfigError
from duotpu.core.files import atomic_write

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
    # the latency estimate's constants fitted to this board (`board bench --calibrate`;
    # 0: the chip's defaults)
    tiu_scale: float = 0.0
    ddr_bytes_per_cycle: float = 0.0
    tdma_overhead: float = 0.0


def config_dir() -> Path:
    """duotpu's configuration folder (``$DUOTPU_CONFIG_DIR`` or ``~/.config/duotpu``)."""
    return Path(os.environ.get("DUOTPU_CONFIG_DIR", Path.home() / ".config" / "duotpu"))


def load_profiles() -> dict[str, BoardProfile]:
    """The saved board profiles (``boards.toml`` in `config_dir`)."""
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
            raise ConfigError(
                f"Unknown key '{sorted(unknown)[0]}' for board '{name}' in {path}; "
                f"valid keys: {', '.join(sorted(names - {'name'}))}."
            )
        out[name] = BoardProfile(name=name, **fields)
    return out


def save_profile(profile: BoardProfile) -> Path:
    """Add or replace a board profile in ``boards.toml``."""
    import tomli_w

    profiles = load_profiles()
    profiles[profile.name] = profile
    path = config_dir() / "boards.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "boards": {
            n: {k: v for k, v in asdict(p).items() if k != "name"} for n, p in profiles.items()
        }
    }
    return atomic_write(path, tomli_w.dumps(data))


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
        raise ConfigError(
            f"--board {spec!r} is neither a saved board ({', '.join(profiles) or 'none saved'}) "
            "nor user@host[:port]. Save one with `duotpu board add NAME --host ...`."
        )
    base = profiles.get("duo", BoardProfile())
    return replace(
        base,
        name=spec,
        user=m.group(1) or base.user,
        host=m.group(2),
        port=int(m.group(3)) if m.group(3) else base.port,
    )
