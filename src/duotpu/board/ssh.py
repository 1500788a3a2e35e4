"""The SSH connection to a board (paramiko): host keys checked against duotpu's known_hosts,
commands, file transfer, the SDK's environment."""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from duotpu.config.errors import BoardError

from .profiles import BoardProfile, config_dir

# paramiko logs a failed handshake (a banner error, a reset) with its traceback; duotpu says
# what failed itself, so the library's own log stays off the terminal
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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

    def __init__(
        self,
        profile: BoardProfile,
        accept_new_host_key: bool = False,
        timeout: float = 10.0,
        password_prompt: Callable[[str], str] | None = None,
    ):
        self.profile = profile
        self.accept_new_host_key = accept_new_host_key
        self.timeout = timeout
        self.password_prompt = password_prompt
        self.client = None
        self._sftp = None
        self._no_sftp = False

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
                        f"{known_hosts_file()})."
                    )
                kh.parent.mkdir(parents=True, exist_ok=True)
                client_.get_host_keys().add(hostname, key.get_name(), key)
                client_.save_host_keys(str(kh))

        client.set_missing_host_key_policy(_Policy())
        kwargs = dict(
            hostname=p.host,
            port=p.port,
            username=p.user,
            timeout=self.timeout,
            banner_timeout=self.timeout,
            auth_timeout=self.timeout,
            allow_agent=False,
            look_for_keys=False,
        )
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
                " (or ~/.ssh/known_hosts) and connect again with --accept-new-host-key."
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            how = (
                f"the key {p.key_file}"
                if p.key_file
                else (
                    f"the password from ${p.password_env}"
                    if password is not None
                    else "no key or password"
                )
            )
            raise BoardError(
                f"Authentication to {where} failed with {how}. Set the board's "
                f"password in ${p.password_env} (the Duo's default is 'milkv'), or "
                "give a key file in the board profile (--key)."
            ) from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise BoardError(
                f"Timed out connecting to {where}. Is the board powered and "
                "connected (USB network: the host has 192.168.42.x), and is the "
                "address right?"
            ) from None
        except (OSError, paramiko.SSHException) as e:
            client.close()
            raise BoardError(
                f"Cannot reach {where}: {e}. Check the cable / network and the "
                "address (--board user@host)."
            ) from None
        self.client = client

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None

    # ----------------------------------------------------------------- commands and files
    def run(
        self,
        command: str,
        timeout: float = 600.0,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> RemoteResult:
        """Run a shell command on the board (``env`` is exported first, ``stdin`` fed to it).
        Its stdout and stderr are read together as they come (a command that fills one
        while the other is read cannot stall), all within ``timeout`` seconds."""
        prefix = "".join(f"export {k}={shlex.quote(v)}; " for k, v in (env or {}).items())
        chan = self._channel()
        try:
            chan.exec_command(prefix + command)
            if stdin is not None:
                chan.sendall(stdin)
                chan.shutdown_write()
            out, err = self._drain(chan, command, timeout)
            rc = chan.recv_exit_status()
        finally:
            chan.close()
        return RemoteResult(command, rc, out.decode(errors="replace"), err.decode(errors="replace"))

    def _channel(self):
        client = self.client
        if client is None:
            raise BoardError("Not connected to the board: use `with Board(profile) as b:`.")
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise BoardError("The SSH connection to the board was closed; run the command again.")
        return transport.open_session()

    @staticmethod
    def _drain(chan, command: str, timeout: float) -> tuple[bytes, bytes]:
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        chan.settimeout(0.2)
        while True:
            got = False
            while chan.recv_ready():
                out += chan.recv(65536)
                got = True
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                got = True
            # the end is the server's EOF (all output sent), not the exit status, which sshd
            # may send while output is still on its way
            done = chan.eof_received or chan.closed
            if done and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                raise BoardError(
                    f"The board did not finish `{command[:80]}` within {timeout:.0f} s."
                )
            if not got:
                time.sleep(0.01)
        return bytes(out), bytes(err)

    @property
    def sftp(self):
        """The SFTP session, or ``None`` when the board's SSH server has no SFTP subsystem
        (Dropbear without gesftpserver): file transfer then streams over a command."""
        if self._sftp is None and not self._no_sftp:
            import paramiko

            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, EOFError, OSError):
                self._no_sftp = True
        return self._sftp

    def put(self, local: Path, remote: str, progress: Callable[[int, int], None] | None = None):
        """Upload a file (to a temporary name, then renamed: no half-written file on the board)."""
        tmp = remote + ".part"
        if self.sftp is not None:
            self.sftp.put(str(local), tmp, callback=progress)
        else:
            data = Path(local).read_bytes()
            r = self.run(f"cat > {shlex.quote(tmp)}", stdin=data, timeout=3600)
            if r.returncode != 0:
                raise BoardError(f"Writing {remote} on the board failed: {r.stderr.strip()}")
            if progress:
                progress(len(data), len(data))
        self.run(f"mv -f {shlex.quote(tmp)} {shlex.quote(remote)}")

    def get(self, remote: str, local: Path) -> Path:
        """Download a file."""
        if self.sftp is not None:
            self.sftp.get(remote, str(local))
            return Path(local)
        chan = self._channel()
        try:
            chan.exec_command(f"cat {shlex.quote(remote)}")
            out, err = self._drain(chan, f"cat {remote}", 3600)
            rc = chan.recv_exit_status()
        finally:
            chan.close()
        if rc != 0:
            raise BoardError(f"Reading {remote} from the board failed: {err.decode().strip()}")
        Path(local).write_bytes(out)
        return Path(local)

    def chmod(self, remote: str, mode: int) -> None:
        """Set a remote file's permission bits."""
        if self.sftp is not None:
            self.sftp.chmod(remote, mode)
        else:
            self.run(f"chmod {mode:o} {shlex.quote(remote)}")

    def sdk_command(self, command: str) -> str:
        """``command`` inside the SDK's environment (``envs_tpu_sdk.sh`` needs its own folder as
        the working directory)."""
        sdk = shlex.quote(self.profile.sdk_dir)
        return f"cd {sdk} && . ./envs_tpu_sdk.sh >/dev/null && {command}"
