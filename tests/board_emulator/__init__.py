"""BOARD EMULATOR for tests: a real sshd on 127.0.0.1 in front of an SDK-shaped folder whose
model_runner runs the host simulator. See README.md in this folder."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class EmulatedBoard:
    root: Path
    port: int
    client_key: Path
    host_key: Path
    proc: subprocess.Popen | None = None

    @property
    def sdk(self) -> Path:
        return self.root / "board" / "tpu-sdk-cv180x"

    def configure(self, **cfg) -> None:
        """Switch the emulator: runtime_version, chip, fail ('nomem', 'nodevice'), ion_mb."""
        data = {"runtime_version": "1.4.0", "chip": "cv180x", "fail": "", "ion_mb": 16.0}
        data.update(cfg)
        (self.sdk / "emulator.json").write_text(json.dumps(data))
        dev = self.root / "board" / "dev" / "cvi-tpu0"
        if data["fail"] == "nodevice":
            dev.unlink(missing_ok=True)
        else:
            dev.touch()
        (self.root / "board" / "ion_total_mem").write_text(
            str(int(data["ion_mb"] * 1024 * 1024)) + "\n"
        )
        (self.root / "board" / "compatible").write_bytes(
            b"milkv,duo\0cvitek,cv1800b\0"
            if data["chip"] == "cv180x"
            else b"milkv,duo256m\0sophgo,sg2002\0"
        )

    def start(self, host_key: Path | None = None, sftp: bool = True) -> None:
        """Start (or restart with another host key, or without an SFTP subsystem, as Dropbear
        images without gesftpserver) the emulator's sshd on 127.0.0.1."""
        self.stop()
        key = host_key or self.host_key
        cfg = self.root / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {key}",
                    f"PidFile {self.root}/sshd.pid",
                    f"AuthorizedKeysFile {self.root}/authorized_keys",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                ]
                + (["Subsystem sftp internal-sftp"] if sftp else [])
            )
            + "\n"
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "sshd.log", "a"),
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        "sshd exited: " + (self.root / "sshd.log").read_text()
                    ) from None
                time.sleep(0.05)
        raise RuntimeError("sshd did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def create(root: Path) -> EmulatedBoard:
    """Lay out the emulated board under ``root`` (not started)."""
    root.mkdir(parents=True, exist_ok=True)
    board = EmulatedBoard(root, free_port(), keygen(root / "client_key"), keygen(root / "host_key"))
    shutil.copyfile(board.client_key.with_suffix(".pub"), root / "authorized_keys")
    sdk = board.sdk
    (sdk / "bin").mkdir(parents=True)
    (sdk / "lib").mkdir()
    (root / "board" / "dev").mkdir(parents=True)
    (root / "board" / "work").mkdir()
    (sdk / "envs_tpu_sdk.sh").write_text(
        "# BOARD EMULATOR copy of the SDK's environment script (it needs $PWD = the SDK)\n"
        "export PATH=$PWD/bin:$PATH\nexport LD_LIBRARY_PATH=$PWD/lib:$LD_LIBRARY_PATH\n"
    )
    runner = sdk / "bin" / "model_runner"
    runner.write_text(f"#!{sys.executable}\n" + (HERE / "model_runner.py").read_text())
    runner.chmod(0o755)
    # the runtime library: tpu_mlir's build of the same CVI_NN_* API for the CV18xx simulator
    from duotpu.compiler.env import tpu_mlir_root

    (sdk / "lib" / "libcviruntime.so").symlink_to(tpu_mlir_root() / "lib" / "libcviruntime.so")
    board.configure()
    return board


def add_python(board: EmulatedBoard, python: Path) -> None:
    """Give the emulated board a ``python3`` (a Python with numpy only, as the stock images
    have): a wrapper in the SDK's bin/ that runs it with what the host's simulator library
    needs (the system glibc preloaded, tpu_mlir's third-party libraries)."""
    from duotpu.compiler.env import tool_env

    env = tool_env()
    wrapper = board.sdk / "bin" / "python3"
    wrapper.write_text(
        "#!/bin/sh\n# BOARD EMULATOR: the board's python3 (numpy only) over the simulator library\n"
        f"export LD_PRELOAD='{env['LD_PRELOAD']}'\n"
        f'export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:{env["LD_LIBRARY_PATH"]}"\n'
        "unset PYTHONPATH\n"
        f'exec {python} "$@"\n'
    )
    wrapper.chmod(0o755)


def profile_for(board: EmulatedBoard):
    from duotpu.board import BoardProfile

    return BoardProfile(
        name="emulated",
        host="127.0.0.1",
        port=board.port,
        user="root",
        key_file=str(board.client_key),
        sdk_dir=str(board.sdk),
        work_dir=str(board.root / "board" / "work"),
        ion_path=str(board.root / "board" / "ion_total_mem"),
        tpu_device=str(board.root / "board" / "dev" / "cvi-tpu0"),
        soc_path=str(board.root / "board" / "compatible"),
    )
