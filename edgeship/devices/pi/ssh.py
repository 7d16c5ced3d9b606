"""Deploy transport: the system OpenSSH client, never a Python SSH library.

Calling ``ssh`` (and ``rsync -e ssh``) means the user's ``~/.ssh/config``, keys, agent,
``ProxyJump`` hosts and ``ControlMaster`` settings all just work. What we add on top:

- host keys are checked: ``StrictHostKeyChecking=yes`` unless the caller opts in to
  ``accept-new`` for a first contact; a changed key is refused either way;
- ``BatchMode=yes``: never a password or passphrase prompt hanging a deploy;
- ``ConnectTimeout`` (default 10 s, ``CONNECT_TIMEOUT_S``) covers TCP connect and the SSH
  banner, and ``ServerAliveInterval`` 15 s x 3 drops a link that dies mid-command;
- every transfer has a deadline from its size (``transfer_timeout``: ``TRANSFER_BASE_S`` plus
  the time at ``TRANSFER_MIN_RATE``), and rsync also gives up after ``RSYNC_IO_TIMEOUT_S``
  without progress, so a stalled link fails with one line instead of hanging a deploy;
- a login shell that prints something (a banner in ``~/.bashrc``) is tolerated: JSON answers
  are read with ``json_lines`` (the last JSON object on stdout), and rsync, which such a shell
  breaks ("is your shell clean?"), falls back to the sha256 + tar transfer;
- ssh failures become one-line ``SshError`` subclasses that name the fix;
- every remote argument goes through ``shlex.quote``: remote paths with spaces or shell
  metacharacters are just names.

Remote paths are relative to the remote home directory, or absolute. A leading ``~/`` is
dropped (quoting would otherwise stop the shell from expanding it).
"""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar, Literal

from edgeship.core.errors import InputError, MissingDependencyError
from edgeship.core.fsutil import atomic_path
from edgeship.devices.pi import (
    RemoteCommandError,
    SyncResult,
    command_failed,
    diff_manifests,
    json_lines,
    last_line,
    local_manifest,
    remote_path,
)
from edgeship.devices.pi.ssh_errors import (
    AuthenticationError,
    ChangedHostKeyError,
    HostKeyError,
    HostUnreachableError,
    SshError,
    UnknownHostKeyError,
    classify_ssh_error,
)

# The error classes live in ssh_errors; callers import them from here too.
__all__ = [
    "AuthenticationError", "ChangedHostKeyError", "HostKeyError", "HostUnreachableError", "SshError",
    "SshTarget", "UnknownHostKeyError", "classify_ssh_error", "remote_command", "transfer_timeout",
]

CONNECT_TIMEOUT_S = 10
SERVER_ALIVE_INTERVAL_S = 15
SERVER_ALIVE_COUNT = 3
TRANSFER_BASE_S = 120.0  # connection, remote start-up, sha256 of what is there
TRANSFER_MIN_RATE = 64 * 1024  # bytes/s: slower than this counts as a stalled link
RSYNC_IO_TIMEOUT_S = 120  # rsync --timeout: seconds without any data moving
# What rsync says when the remote shell printed something into its protocol stream.
_UNCLEAN_SHELL = ("is your shell clean", "protocol version mismatch", "protocol incompatibility",
                  "unexpected tag")

SyncMethod = Literal["auto", "rsync", "manifest"]


# Remote script: sha256 of every file under a folder, as JSON. Needs only python3's stdlib.
_MANIFEST_PY = """\
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for b in iter(lambda: fh.read(1 << 20), b""):
                h.update(b)
        out[os.path.relpath(p, root).replace(os.sep, "/")] = h.hexdigest()
print(json.dumps(out))
"""


def transfer_timeout(nbytes: int) -> float:
    """Seconds a transfer of ``nbytes`` may take before it counts as stalled."""
    return TRANSFER_BASE_S + nbytes / TRANSFER_MIN_RATE


def remote_command(
    argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """One shell command line for the remote login shell, every word quoted."""
    if not argv:
        raise InputError("empty remote command")
    parts: list[str] = []
    if cwd is not None:
        parts += ["cd", "--", shlex.quote(remote_path(cwd)), "&&"]
    if env:
        bad = [k for k in env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise InputError(f"bad environment variable name {bad[0]!r}")
        parts += ["env", *(shlex.quote(f"{k}={v}") for k, v in env.items())]
    parts += [shlex.quote(str(a)) for a in argv]
    return " ".join(parts)


@dataclass(frozen=True)
class SshTarget:
    """A Pi reached with the system ``ssh``: ``host`` is ``[user@]host`` or a ~/.ssh/config alias.

    ``known_hosts`` and ``ssh_config`` default to OpenSSH's own (``~/.ssh/known_hosts``,
    ``~/.ssh/config``); tests point them at temp files.
    """

    host: str
    port: int | None = None
    identity: Path | None = None
    accept_new_host_key: bool = False
    connect_timeout: int = CONNECT_TIMEOUT_S
    known_hosts: Path | None = None
    ssh_config: Path | None = None

    emulated: ClassVar[bool] = False
    board: ClassVar[str | None] = None  # the probe reads /proc/device-tree/model on the Pi
    venv_args: ClassVar[tuple[str, ...]] = ()  # a plain venv, with pip (ensurepip)
    install_flags: ClassVar[tuple[str, ...]] = ()  # pip compiles the .pyc files there

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise InputError(f"bad SSH host {self.host!r}: give USER@HOST or a ~/.ssh/config alias")
        if self.port is not None and not 0 < self.port < 65536:
            raise InputError(f"bad SSH port {self.port}: give 1-65535")
        if self.identity is not None and not Path(self.identity).expanduser().is_file():
            raise InputError(f"SSH identity file {self.identity} not found: pass an existing key")

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    # -- the ssh command line -------------------------------------------------------------

    def ssh_options(self) -> list[str]:
        """Options shared by ``ssh`` and ``rsync -e``; explicit ``-o`` beats ~/.ssh/config."""
        opts = [
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
            "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT}",
        ]  # fmt: skip
        if self.ssh_config is not None:
            opts += ["-F", str(self.ssh_config)]
        if self.port is not None:
            opts += ["-p", str(self.port)]
        if self.identity is not None:
            opts += ["-i", str(Path(self.identity).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return opts

    def _ssh_argv(self, command: str) -> list[str]:
        return [_tool("ssh", "openssh-client"), *self.ssh_options(), "--", self.host, command]

    def _call(
        self,
        command: str,
        *,
        what: str,
        timeout: float | None,
        input: bytes | None = None,
        stdin: IO[bytes] | int | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        if input is None and stdin is None:
            stdin = subprocess.DEVNULL
        try:
            proc = subprocess.run(
                self._ssh_argv(command),
                input=input,
                stdin=stdin,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise RemoteCommandError(
                f"{what} on {self.name} did not finish within {timeout:g} s: "
                "check the device's load, or raise the timeout"
            ) from e
        if proc.returncode == 255:
            err = classify_ssh_error(proc.stderr.decode(errors="replace"), self)
            if err is not None:
                raise err
        return proc

    # -- the Device interface --------------------------------------------------------------

    def check(self) -> None:
        """Connect once and run ``true``: turns every connection problem into its SshError."""
        self.run(["true"], timeout=self.connect_timeout + 30)

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the device (each word quoted); ``check`` raises RemoteCommandError."""
        proc = self._call(
            remote_command(argv, cwd=cwd, env=env),
            what=f"`{argv[0]}`",
            timeout=timeout,
            input=input.encode() if input is not None else None,
        )
        done = subprocess.CompletedProcess(
            list(argv),
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and done.returncode != 0:
            raise command_failed(argv, done, self.name)
        return done

    def pip_argv(self, venv_python: str) -> list[str]:
        """The venv's own pip: ``VENV_PYTHON -m pip``."""
        return [venv_python, "-m", "pip"]

    def after_install(self, venv_dir: str) -> None:
        """Nothing to finish: pip wrote the .pyc files on the device."""

    def has_command(self, name: str) -> bool:
        """Whether ``name`` is on the device's PATH (for choosing rsync, finding python3)."""
        return self.run(["command", "-v", name], check=False, timeout=60).returncode == 0

    def sha256_manifest(self, remote_dir: str) -> dict[str, str]:
        """``{relative path: sha256}`` computed on the device, to verify what arrived."""
        done = self.run(
            ["python3", "-c", _MANIFEST_PY, remote_path(remote_dir)], check=False, timeout=600
        )
        if done.returncode == 127:
            raise RemoteCommandError(
                f"no python3 on {self.name}: install it there "
                "(sudo apt install python3 python3-venv)", 127, done.stderr
            )
        if done.returncode != 0:
            raise command_failed(["python3"], done, self.name)
        found = json_lines(done.stdout)  # a login shell may print a banner around it
        if not found:
            raise RemoteCommandError(
                f"the sha256 check on {self.name} printed no JSON result (last line: "
                f"{last_line(done.stdout) or 'none'!r}): run `python3 -c pass` there by hand",
                done.returncode, done.stderr,
            )
        return dict(sorted(found[-1].items()))

    def sync(
        self, local_dir: Path, remote_dir: str, *, delete: bool = True, method: SyncMethod = "auto"
    ) -> SyncResult:
        """Make ``remote_dir`` hold what ``local_dir`` holds, sending only changed files.

        rsync (``--checksum``, so a rebuilt but identical file is not resent) when both ends
        have it; otherwise sha256 manifests are compared on both ends and only the changed
        files go over one ssh connection as a tar stream. ``delete`` removes remote files that
        are not in ``local_dir``.
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise InputError(f"nothing to deploy: {local_dir} is not a folder")
        rdir = remote_path(remote_dir)
        if method == "auto":
            method = "rsync" if shutil.which("rsync") and self.has_command("rsync") else "manifest"
        self.run(["mkdir", "-p", "--", rdir], timeout=60)
        if method == "rsync":
            try:
                return self._sync_rsync(local_dir, rdir, delete)
            except RemoteCommandError as e:
                if not any(s in str(e) + e.stderr for s in _UNCLEAN_SHELL):
                    raise
                return self._sync_manifest(local_dir, rdir, delete)  # a chatty login shell
        if method == "manifest":
            return self._sync_manifest(local_dir, rdir, delete)
        raise InputError(f"unknown sync method {method!r}: use auto, rsync or manifest")

    def _sync_rsync(self, local_dir: Path, rdir: str, delete: bool) -> SyncResult:
        ssh = shlex.join([_tool("ssh", "openssh-client"), *self.ssh_options()])
        argv = [
            _tool("rsync", "rsync"),
            "--recursive", "--links", "--perms", "--checksum",
            "--protect-args",  # the remote path reaches rsync as data, never through a shell
            "--out-format=%i %n",
            f"--timeout={RSYNC_IO_TIMEOUT_S}",
            "-e", ssh,
            *(["--delete"] if delete else []),
            f"{local_dir}/",
            f"{self.host}:{rdir}/",
        ]  # fmt: skip
        total_bytes = sum(p.stat().st_size for p in local_dir.rglob("*") if p.is_file())
        timeout = transfer_timeout(total_bytes)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RemoteCommandError(
                f"rsync to {self.name}:{rdir} did not finish within {timeout:.0f} s (slower than "
                f"{TRANSFER_MIN_RATE // 1024} KiB/s for {total_bytes / 2**20:.1f} MiB): check the "
                "link to the device and deploy again"
            ) from e
        if proc.returncode != 0:
            err = classify_ssh_error(proc.stderr, self)
            if err is not None:
                raise err
            raise RemoteCommandError(
                f"rsync to {self.name}:{rdir} failed ({proc.returncode}): {last_line(proc.stderr)}",
                proc.returncode,
                proc.stderr,
            )
        result = SyncResult(method="rsync")
        for line in proc.stdout.splitlines():
            flags, _, name = line.partition(" ")
            if flags.startswith("<f"):
                result.sent.append(name)
                result.bytes_sent += (local_dir / name).stat().st_size
            elif flags.startswith("*deleting"):
                result.deleted.append(name.strip())
        total = sum(1 for p in local_dir.rglob("*") if p.is_file())
        result.unchanged = total - len(result.sent)
        return result

    def _sync_manifest(self, local_dir: Path, rdir: str, delete: bool) -> SyncResult:
        local = local_manifest(local_dir)
        send, extra = diff_manifests(local, self.sha256_manifest(rdir))
        result = SyncResult(method="manifest", sent=send, unchanged=len(local) - len(send))
        if send:
            with tempfile.TemporaryFile() as buf:
                with tarfile.open(fileobj=buf, mode="w") as tar:
                    for rel in send:
                        info = tar.gettarinfo(local_dir / rel, arcname=rel)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        with open(local_dir / rel, "rb") as f:
                            tar.addfile(info, f)
                        result.bytes_sent += info.size
                buf.seek(0)
                cmd = f"tar -x --no-same-owner -f - -C {shlex.quote(rdir)}"
                proc = self._call(cmd, what=f"sending {len(send)} file(s) by tar",
                                  timeout=transfer_timeout(result.bytes_sent), stdin=buf)
            if proc.returncode != 0:
                raise RemoteCommandError(
                    f"copying to {self.name}:{rdir} failed: "
                    f"{last_line(proc.stderr.decode(errors='replace'))}",
                    proc.returncode,
                )
        if delete and extra:
            self.run(["rm", "-f", "--", *extra], cwd=rdir, timeout=120)
            result.deleted = extra
        return result

    def fetch(self, remote_file: str, local_path: Path) -> Path:
        """Copy one remote file here (written atomically); returns ``local_path``.

        The file's bytes follow a random marker, so a banner the login shell prints first is cut.
        """
        mark = f"edgeship-fetch-{secrets.token_hex(8)}:"
        cmd = f"printf %s {mark} && {remote_command(['cat', '--', remote_path(remote_file)])}"
        proc = self._call(cmd, what="cat", timeout=600)
        _banner, found, data = proc.stdout.partition(mark.encode())
        if proc.returncode != 0 or not found:
            raise RemoteCommandError(
                f"cannot fetch {self.name}:{remote_file}: "
                f"{last_line(proc.stderr.decode(errors='replace'))}",
                proc.returncode,
            )
        local_path = Path(local_path)
        with atomic_path(local_path) as tmp:
            tmp.write_bytes(data)
        return local_path


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingDependencyError(f"`{name}` not found: apt-get install {package}")
    return path
