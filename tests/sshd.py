"""A real OpenSSH server on 127.0.0.1 acting as the Pi in tests.

Keys, config, pid file and log live in one temp folder; the server runs in the foreground
(``sshd -D -e``) as the current user on a free non-privileged port, and is killed by pid on
``stop()``. ``rotate_host_key()`` restarts it with a new host key on the same port, which is
what a reinstalled (or impersonated) device looks like to a client.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def available() -> str | None:
    """None if a test sshd can run here, else the reason (for pytest.skip)."""
    if not os.path.exists(SSHD):
        return "no sshd: apt-get install openssh-server"
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        return "no ssh client: apt-get install openssh-client"
    return None


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    """A fresh ed25519 key pair without a passphrase; returns the private key path."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeship-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


class SshServer:
    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host = f"{self.user}@127.0.0.1"
        self.client_key = keygen(root / "client_key")
        self.host_key = keygen(root / "host_key")
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text(
            self.client_key.with_name("client_key.pub").read_text(), encoding="utf-8"
        )
        self.config = root / "sshd_config"
        self.log = root / "sshd.log"
        self.pid_file = root / "sshd.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        sftp = next(
            (p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server")
             if os.path.exists(p)),
            None,
        )
        lines = [
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"PidFile {self.pid_file}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "LogLevel VERBOSE",
            *([f"Subsystem sftp {sftp}"] if sftp else []),
        ]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> SshServer:
        self._write_config()
        if os.geteuid() == 0:
            # sshd refuses to start as root without its privilege-separation directory,
            # which the Debian package only creates at boot through systemd.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        self._proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config), "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.port}: {self.log}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def rotate_host_key(self) -> None:
        """Restart with a brand-new host key: clients that knew the old one must refuse."""
        self.stop()
        keygen(self.host_key)
        self.start()

    def known_hosts_line(self) -> str:
        """The known_hosts entry a client that trusts this server holds."""
        pub = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n"


@contextmanager
def running_sshd(root: Path) -> Iterator[SshServer]:
    root.mkdir(parents=True, exist_ok=True)
    server = SshServer(root).start()
    try:
        yield server
    finally:
        server.stop()
