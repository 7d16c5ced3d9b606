"""A device server started on this machine: ``python -m edge_runtime serve`` as a child process.

Used by ``edgeship load`` without ``--url`` and by the serving benchmarks: the server runs in its
own process (as on a device), bound to 127.0.0.1 on a free port, and is stopped by its pid.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from edgeship.core.errors import RunError

READY_LINE = re.compile(r"^serving (?P<names>.*) on (?P<url>http://\S+) ")


class HostServer:
    """``with HostServer(source, ...) as srv: srv.url`` - started, ready, and always stopped."""

    def __init__(self, source: str | Path, *, artifacts: Sequence[str] = (), workers: int | None = None,
                 threads: int | None = None, max_queue: int | None = None, deadline_ms: float | None = None,
                 extra: Sequence[str] = (), start_timeout_s: float = 60.0):
        self.cmd = [sys.executable, "-m", "edge_runtime", "serve", str(source), "--host", "127.0.0.1",
                    "--port", "0"]
        for a in artifacts:
            self.cmd += ["--artifact", a]
        for flag, value in (("--workers", workers), ("--threads", threads), ("--max-queue", max_queue),
                            ("--deadline-ms", deadline_ms)):
            if value is not None:
                self.cmd += [flag, str(value)]
        self.cmd += list(extra)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.models: list[str] = []

    def __enter__(self) -> HostServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - a file, not a pipe: never fills
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     env=env)
        deadline = time.monotonic() + self.start_timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = READY_LINE.match(line)
            if m:
                self.url = m["url"]
                self.models = [n.strip() for n in m["names"].split(",")]
                return
        self.stop(close_log=False)
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().splitlines() if ln.strip()]
        self._stderr.close()
        err = lines[-1] if lines else ""
        raise RunError(f"the server did not start ({err or 'no ready line in time'}): {' '.join(self.cmd)}")

    def stop(self, timeout_s: float = 10.0, *, close_log: bool = True) -> None:
        """SIGTERM by pid, then SIGKILL if it has not gone."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout_s)
        if p.stdout is not None:
            p.stdout.close()
        if close_log:
            self._stderr.close()
