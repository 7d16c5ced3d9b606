"""Deploy transport: the system OpenSSH client, never a Python SSH library.

Calling ``ssh`` (and ``rsync -e ssh``) means the user's ``~/.ssh/config``, keys, agent,
``ProxyJump`` hosts and ``ControlMaster`` settings all just work. What we add on top:

- host keys are checked: ``StrictHostKeyChecking=yes`` unless the caller opts in to
  ``accept-new`` for a first contact; a changed key is refused either way;
- ``BatchMode=yes``: never a password or passphrase prompt hanging a deploy;
- ``ConnectTimeout`` (default 10 s, ``CONNECT_TIMEOUT_S``) covers TCP connect and the SSH
  banner, and ``ServerAliveInterval`` 15 s x 3 drops a link that dies mid-command;
- ssh failures become one-line ``SshError`` subclasses that name the fix;
- every remote argument goes through ``shlex.quote``: remote paths with spaces or shell
  metacharacters are just names.

Remote paths are relative to the remote home directory, or absolute. A leading ``~/`` is
dropped (quoting would otherwise stop the shell from expanding it).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar, Literal

from edgeship.core.errors import EdgeshipError, InputError, MissingDependencyError
from edgeship.core.fsutil import atomic_path
from edgeship.devices.pi import (
    RemoteCommandError,
    SyncResult,
    command_failed,
    diff_manifests,
    last_line,
    local_manifest,
    remote_path,
)

CONNECT_TIMEOUT_S = 10
SERVER_ALIVE_INTERVAL_S = 15
SERVER_ALIVE_COUNT = 3

SyncMethod = Literal["auto", "rsync", "manifest"]


class SshError(EdgeshipError):
    """ssh itself failed (before or instead of running the remote command)."""


class HostUnreachableError(SshError):
    """No SSH server answered within the connect timeout."""


class AuthenticationError(SshError):
    """The server answered but refused every key we offered."""


class HostKeyError(SshError):
    """The host key could not be verified."""


class UnknownHostKeyError(HostKeyError):
    """First contact: the host is not in known_hosts and accept-new was not asked for."""


class ChangedHostKeyError(HostKeyError):
    """known_hosts holds a different key for this host: refused, whatever the options."""


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
        import json

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
        return dict(sorted(json.loads(done.stdout).items()))

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
            return self._sync_rsync(local_dir, rdir, delete)
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
            "-e", ssh,
            *(["--delete"] if delete else []),
            f"{local_dir}/",
            f"{self.host}:{rdir}/",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
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
                proc = self._call(cmd, what="tar", timeout=None, stdin=buf)
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
        """Copy one remote file here (written atomically); returns ``local_path``."""
        proc = self._call(
            remote_command(["cat", "--", remote_path(remote_file)]), what="cat", timeout=600
        )
        if proc.returncode != 0:
            raise RemoteCommandError(
                f"cannot fetch {self.name}:{remote_file}: "
                f"{last_line(proc.stderr.decode(errors='replace'))}",
                proc.returncode,
            )
        local_path = Path(local_path)
        with atomic_path(local_path) as tmp:
            tmp.write_bytes(proc.stdout)
        return local_path


def classify_ssh_error(stderr: str, target: SshTarget) -> SshError | None:
    """The SshError for ssh's stderr, or None if ssh connected and the failure is remote."""
    where = target.name
    manual = shlex.join(["ssh", *(["-p", str(target.port)] if target.port else []), target.host])
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have" in stderr:
        # ssh prints the exact removal command (known_hosts file and [host]:port form).
        m = re.search(r"^\s*(ssh-keygen .*-R .*)$", stderr, re.MULTILINE)
        fix = m.group(1).strip() if m else f"ssh-keygen -R {target.host.rpartition('@')[2]}"
        return ChangedHostKeyError(
            f"the host key of {where} has CHANGED since the last connection (device reinstalled, "
            f"or someone in between): if you expect it, remove the old key with `{fix}`, "
            f"then check the new one with `{manual}`"
        )
    if "No " in stderr and "host key is known for" in stderr:
        return UnknownHostKeyError(
            f"{where} is not in known_hosts: check its key with one manual `{manual}`, "
            "or pass --accept-new-host-key to trust it on first contact"
        )
    if "Host key verification failed" in stderr:
        return HostKeyError(
            f"the host key of {where} could not be verified ({last_line(stderr)}): "
            "check known_hosts with `ssh-keygen -F HOST`"
        )
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return AuthenticationError(
            f"{where} refused the login ({last_line(stderr)}): pass --identity KEY, or install "
            f"your public key on the device with `ssh-copy-id {target.host}`"
        )
    unreachable = (
        "Connection refused", "timed out", "No route to host", "Network is unreachable",
        "Could not resolve hostname", "Name or service not known", "Connection closed by",
        "Connection reset", "kex_exchange_identification", "banner exchange",
    )  # fmt: skip
    if any(s in stderr for s in unreachable):
        return HostUnreachableError(
            f"cannot reach {where} over SSH ({last_line(stderr)}; connect timeout "
            f"{target.connect_timeout} s): check the address, that the device is on, and that "
            "sshd runs there"
        )
    return None


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingDependencyError(f"`{name}` not found: apt-get install {package}")
    return path
