"""SSH deploy transport against a real sshd on 127.0.0.1 (tests/sshd.py), no mocks."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sshd

from edgeship.devices.pi import RemoteCommandError
from edgeship.devices.pi.ssh import (
    AuthenticationError,
    ChangedHostKeyError,
    HostUnreachableError,
    SshTarget,
    UnknownHostKeyError,
    remote_command,
)

pytestmark = pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))

# A folder name that breaks any unquoted shell use: spaces, ; $() backticks, quotes, glob.
NASTY = "dev ice; $(touch PWNED) `touch PWNED2` 'q' \"d\" *"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshServer]:
    with sshd.running_sshd(tmp_path_factory.mktemp("sshd")) as s:
        yield s


def target(server: sshd.SshServer, known_hosts: Path, **kw: object) -> SshTarget:
    return SshTarget(
        server.host,
        port=server.port,
        identity=server.client_key,
        known_hosts=known_hosts,
        ssh_config=Path(os.devnull),  # the test must not depend on ~/.ssh/config
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture()
def trusted(server: sshd.SshServer, tmp_path: Path) -> SshTarget:
    kh = tmp_path / "known_hosts"
    kh.write_text(server.known_hosts_line())
    return target(server, kh)


def _bundle(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.tflite").write_bytes(os.urandom(4096))
    (root / "artifact.json").write_text('{"format": "tflite"}\n')
    (root / "edge_runtime").mkdir()
    (root / "edge_runtime" / "__init__.py").write_text("")
    (root / "edge_runtime" / "__main__.py").write_text("print('bench')\n")
    return root


def test_run_quotes_every_argument(trusted: SshTarget, tmp_path: Path) -> None:
    done = trusted.run(["printf", "%s\\n", "a b", "$(id)", "`x`", "'q'", ";", "*"])
    assert done.stdout.splitlines() == ["a b", "$(id)", "`x`", "'q'", ";", "*"]
    cwd = tmp_path / NASTY
    cwd.mkdir()
    done = trusted.run(["python3", "-c", "import os; print(os.getcwd())"], cwd=str(cwd),
                       env={"X": "$(id) y"})
    assert done.stdout.strip() == str(cwd)
    assert remote_command(["a b"], env={"K": "v w"}) == "env 'K=v w' 'a b'"
    assert not list(tmp_path.rglob("PWNED*"))


@pytest.mark.parametrize("method", ["rsync", "manifest"])
def test_copy_run_and_resend_only_changes(
    trusted: SshTarget, tmp_path: Path, method: str
) -> None:
    bundle = _bundle(tmp_path / "bundle")
    remote = tmp_path / "remote" / NASTY / "deploy"  # sshd runs here: remote == local disk

    first = trusted.sync(bundle, str(remote), method=method)  # type: ignore[arg-type]
    assert first.method == method
    if method == "rsync":  # both ends have rsync here, so auto picks it
        assert trusted.sync(bundle, str(remote)).method == "rsync"
    assert sorted(first.sent) == ["artifact.json", "edge_runtime/__init__.py",
                                  "edge_runtime/__main__.py", "model/model.tflite"]
    assert trusted.sha256_manifest(str(remote)) == _local(bundle)
    # No __pycache__ on the device: the deployed folder stays byte-equal to the bundle.
    done = trusted.run(["python3", "-m", "edge_runtime"], cwd=str(remote),
                       env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert done.stdout.strip() == "bench"

    # Rebuild the bundle: same bytes with new mtimes, one changed file, one added, one removed.
    time.sleep(1.1)
    for p in bundle.rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes())
    (bundle / "artifact.json").write_text('{"format": "tflite", "v": 2}\n')
    (bundle / "extra.txt").write_text("new\n")
    (bundle / "edge_runtime" / "__init__.py").unlink()

    second = trusted.sync(bundle, str(remote), method=method)  # type: ignore[arg-type]
    assert sorted(second.sent) == ["artifact.json", "extra.txt"]
    assert second.deleted == ["edge_runtime/__init__.py"]
    assert second.unchanged == 2
    assert trusted.sha256_manifest(str(remote)) == _local(bundle)

    out = tmp_path / "fetched" / "a.json"
    trusted.fetch(str(remote / "artifact.json"), out)
    assert out.read_text() == (bundle / "artifact.json").read_text()
    assert not list(tmp_path.rglob("PWNED*"))
    assert not list(Path.home().glob("PWNED*"))


def _local(root: Path) -> dict[str, str]:
    from edgeship.devices.pi import local_manifest

    return local_manifest(root)


def test_remote_failure_is_one_line(trusted: SshTarget, tmp_path: Path) -> None:
    with pytest.raises(RemoteCommandError, match=r"exit 3.*boom"):
        trusted.run(["sh", "-c", "echo boom >&2; exit 3"])
    with pytest.raises(RemoteCommandError, match="not found on"):
        trusted.run(["no-such-command-xyz"])
    with pytest.raises(RemoteCommandError, match="cannot fetch"):
        trusted.fetch(str(tmp_path / "missing.json"), tmp_path / "x.json")


def test_unknown_host_key_refused_without_opt_in(server: sshd.SshServer, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    with pytest.raises(UnknownHostKeyError, match="--accept-new-host-key"):
        target(server, kh).check()
    assert not kh.exists() or kh.read_text() == ""

    target(server, kh, accept_new_host_key=True).check()
    assert f"[127.0.0.1]:{server.port}" in kh.read_text()
    target(server, kh).check()  # now known: strict checking passes


def test_changed_host_key_refused_even_with_accept_new(
    server: sshd.SshServer, tmp_path: Path
) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(server.known_hosts_line())
    target(server, kh).check()
    server.rotate_host_key()
    for accept in (False, True):
        with pytest.raises(ChangedHostKeyError, match=r"CHANGED.*ssh-keygen .*-R"):
            target(server, kh, accept_new_host_key=accept).check()
    with pytest.raises(ChangedHostKeyError):
        target(server, kh).sync(tmp_path, "x", method="rsync")


def test_wrong_key_is_authentication_error(server: sshd.SshServer, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(server.known_hosts_line())
    other = sshd.keygen(tmp_path / "other_key")
    t = SshTarget(server.host, port=server.port, identity=other, known_hosts=kh,
                  ssh_config=Path(os.devnull))
    with pytest.raises(AuthenticationError, match=r"refused the login.*--identity"):
        t.check()


def test_closed_port_fails_fast(tmp_path: Path) -> None:
    t = SshTarget("root@127.0.0.1", port=sshd.free_port(), known_hosts=tmp_path / "kh",
                  ssh_config=Path(os.devnull))
    start = time.monotonic()
    with pytest.raises(HostUnreachableError, match=r"cannot reach.*Connection refused"):
        t.check()
    assert time.monotonic() - start < 5


def test_silent_server_times_out_within_connect_timeout(tmp_path: Path) -> None:
    """A host that accepts TCP but never speaks SSH: fail after ConnectTimeout, not hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        held: list[socket.socket] = []
        threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
        t = SshTarget("root@127.0.0.1", port=listener.getsockname()[1], connect_timeout=2,
                      known_hosts=tmp_path / "kh", ssh_config=Path(os.devnull))
        start = time.monotonic()
        with pytest.raises(HostUnreachableError, match=r"timed out.*connect timeout 2 s"):
            t.check()
        assert time.monotonic() - start < 8
        for s in held:
            s.close()


def test_bad_arguments_are_input_errors(tmp_path: Path) -> None:
    from edgeship.core.errors import InputError

    for host in ("", "-oProxyCommand=x", "a b"):
        with pytest.raises(InputError):
            SshTarget(host)
    with pytest.raises(InputError, match="identity"):
        SshTarget("pi@pi", identity=tmp_path / "nope")
