"""The server as a service on the device: start, health-check, update, roll back, stop.

``edgeship deploy pi RUN --serve`` installs as usual, then runs ``python -m edge_runtime serve``
from the remote folder ``DIR`` (the bundle link, the venv link, ``DIR/logs`` for request logs):

- on the emulated Pi, a supervised process on this machine: a small native supervisor (the
  emulated Pi has no init system) runs the aarch64 server under QEMU and starts it again if it
  dies (at most 5 times a minute), in its own session, detached; ``DIR/serve.pid`` holds the
  supervisor's pid (stopping it stops the server), ``DIR/serve.log`` the output;
- on a real Pi, a systemd *user* unit ``~/.config/systemd/user/edgeship-serve.service``
  (``Restart=on-failure``, ``WantedBy=default.target``, output to the journal), started with
  ``systemctl --user enable --now``. Nothing runs with sudo; for the unit to start at boot
  without anyone logged in, lingering must be enabled once: ``sudo loginctl enable-linger USER``
  (the one step that needs root; the deploy prints it and never runs it).

Either way the server binds 127.0.0.1 and the deploy returns only once ``/readyz`` answers.
``DIR/serve.json`` records the port and what is served, so ``serve status|rollback|stop`` and
a re-deploy find the server again. A re-deploy to a serving device sends the new artifact to
the running server (``POST /v1/models/<name>:load``: loaded beside the old, golden-checked,
switched atomically; requests in flight finish on the old one): zero dropped requests, and a
refused model leaves the old one serving.

Admin requests must come from the device itself (the server accepts them from loopback only):
on the emulated Pi this machine *is* the device, so they go straight to 127.0.0.1; over SSH
they are sent by ``python3`` on the Pi.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.core.errors import EdgeshipError, InputError, RunError
from edgeship.core.fsutil import atomic_path
from edgeship.devices.errors import DeployError
from edgeship.devices.pi import Device, json_lines, last_line, remote_path
from edgeship.devices.pi.qemu import _program, check_qemu, guest_env
from edgeship.devices.serving.control import _HTTP_PY, _error, _stop_pid, alive, http_call

DEFAULT_PORT = 8501
STATE_FILE = "serve.json"
PID_FILE = "serve.pid"
LOG_FILE = "serve.log"
UNIT_NAME = "edgeship-serve.service"
UNIT_DIR = ".config/systemd/user"  # relative to the login's home
READY_TIMEOUT_S = 180.0  # an aarch64 Python under QEMU loads LiteRT in 10-40 s
LOG_MODES = ("none", "summary", "raw")
LINGER_NOTE = ("to start the server at boot without a login, run once on the Pi: "
               "sudo loginctl enable-linger {user}  (the only step that needs sudo)")


class ServeError(DeployError):
    """The server on the device did not start, answer or take an update."""


@dataclass
class ServeOptions:
    """How the device server runs (``deploy pi --serve``'s options)."""

    port: int = DEFAULT_PORT
    workers: int | None = None
    log_inputs: str = "summary"
    log_sample: float = 1.0
    artifacts: list[str] = field(default_factory=list)  # VARIANT/FOLDER, one per served name

    def check(self) -> None:
        if not 1 <= self.port <= 65535:
            raise InputError(f"--serve-port {self.port}: use a port in 1-65535 (default {DEFAULT_PORT})")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--serve-workers {self.workers}: use at least 1")
        if self.log_inputs not in LOG_MODES:
            raise InputError(f"--log-inputs {self.log_inputs}: use one of {', '.join(LOG_MODES)}")
        if not 0 < self.log_sample <= 1:
            raise InputError(f"--log-sample {self.log_sample}: use a fraction in (0, 1]")


def server_argv(options: ServeOptions, python: str = "venv/bin/python") -> list[str]:
    """The server's command, run with ``DIR`` as the working directory (paths relative to it)."""
    argv = [python, "-m", "edge_runtime", "serve", "bundle", "--host", "127.0.0.1",
            "--port", str(options.port), "--log-dir", "logs", "--log-inputs", options.log_inputs,
            "--log-sample", f"{options.log_sample:g}"]
    if options.workers is not None:
        argv += ["--workers", str(options.workers)]
    for art in options.artifacts:
        argv += ["--artifact", art]
    return argv


def unit_file(remote_dir: str, options: ServeOptions) -> str:
    """The systemd user unit for a real Pi. ``remote_dir`` relative to the home becomes ``%h/...``
    (systemd's home specifier), so the file holds no user name."""
    home_dir = remote_dir if remote_dir.startswith("/") else f"%h/{remote_dir}"
    argv = server_argv(options, python=f"{home_dir}/venv/bin/python")
    return "\n".join([
        "[Unit]",
        "Description=edgeship model server (python -m edge_runtime serve)",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={home_dir}",
        f"Environment=PYTHONPATH={home_dir}/bundle",
        "Environment=PYTHONDONTWRITEBYTECODE=1",
        "Environment=PYTHONUNBUFFERED=1",
        "ExecStart=" + " ".join(_systemd_quote(a) for a in argv),
        "Restart=on-failure",
        "RestartSec=2",
        "RestartPreventExitStatus=2",  # bad flags or a port in use: restarting cannot help
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def _systemd_quote(word: str) -> str:
    if word and all(c.isalnum() or c in "-_./%:=" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_commands(action: str) -> list[list[str]]:
    """The ``systemctl --user`` calls for ``start``/``stop`` (none needs sudo)."""
    if action == "start":
        return [["systemctl", "--user", "daemon-reload"],
                ["systemctl", "--user", "enable", UNIT_NAME],
                ["systemctl", "--user", "restart", UNIT_NAME]]
    if action == "stop":
        return [["systemctl", "--user", "disable", "--now", UNIT_NAME]]
    raise ValueError(action)


# A native process manager for the emulated Pi (which has no init): start the server, start it
# again when it dies (not after exit 0 or 2: a clean stop or bad input), pass SIGTERM on.
_SUPERVISOR_PY = """\
import signal, subprocess, sys, time
cmd, child, stopping, starts = sys.argv[1:], None, False, []
def stop(signum, frame):
    global stopping
    stopping = True
    if child is not None and child.poll() is None:
        child.terminate()
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
while not stopping:
    now = time.monotonic()
    starts = [t for t in starts if now - t < 60] + [now]
    if len(starts) > 5:
        print("supervisor: the server died 5 times within a minute; giving up", flush=True)
        sys.exit(1)
    child = subprocess.Popen(cmd)
    rc = child.wait()
    if stopping or rc in (0, 2):
        sys.exit(0 if stopping else rc)
    print("supervisor: the server exited with %d; starting it again" % rc, flush=True)
    time.sleep(1)
"""


class DeviceServer:
    """The server on one device folder: ``start``, ``state``, ``get``/``post``, ``stop``."""

    def __init__(self, device: Device, remote_dir: str):
        self.device = device
        self.rdir = remote_path(remote_dir)

    # ---------------------------------------------------------------- state

    def state(self) -> dict[str, Any] | None:
        """``DIR/serve.json`` (port, what is served, how it runs), or None if never started."""
        text = self._read(STATE_FILE)
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    @property
    def url(self) -> str:
        state = self.state()
        if not state:
            raise ServeError(f"no server was started in {self.device.name}:{self.rdir}: "
                             "deploy with --serve first")
        return f"http://127.0.0.1:{state['port']}"

    def _read(self, name: str) -> str | None:
        if self.device.emulated:
            path = self.device.path(posixpath.join(self.rdir, name))  # type: ignore[attr-defined]
            return path.read_text(encoding="utf-8") if path.is_file() else None
        done = self.device.run(["cat", "--", name], cwd=self.rdir, check=False, timeout=60)
        return done.stdout if done.returncode == 0 else None

    def _write(self, name: str, text: str) -> None:
        if self.device.emulated:
            with atomic_path(self.device.path(posixpath.join(self.rdir, name))) as tmp:  # type: ignore[attr-defined]
                Path(tmp).write_text(text, encoding="utf-8")
            return
        script = "import os,sys\nopen(sys.argv[1]+'.tmp','w').write(sys.stdin.read())\n" \
                 "os.replace(sys.argv[1]+'.tmp',sys.argv[1])"
        self.device.run(["python3", "-c", script, name], cwd=self.rdir, input=text, timeout=60)

    # ---------------------------------------------------------------- HTTP on the device

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120.0) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one request to the server, sent from the device; status
        0 when nothing answers."""
        url = self.url + path
        if self.device.emulated:
            return http_call(method, url, body, timeout)
        done = self.device.run(["python3", "-c", _HTTP_PY, method, url, json.dumps(body), str(timeout)],
                               check=False, timeout=timeout + 60)
        found = json_lines(done.stdout)
        if not found:
            raise ServeError(f"could not reach the server on {self.device.name} "
                             f"({last_line(done.stderr) or 'no answer'})")
        return int(found[-1]["status"]), found[-1]["body"]

    def healthy(self) -> bool:
        try:
            status, _ = self.request("GET", "/readyz", timeout=5.0)
        except (ServeError, EdgeshipError):
            return False
        return status == 200

    # ---------------------------------------------------------------- life

    def start(self, options: ServeOptions, *, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Start the server (stopping one this folder ran before) and wait for ``/readyz``."""
        options.check()
        if self.state() is not None:
            self.stop(quiet=True)
        state = {"schema": 1, "port": options.port, "artifacts": options.artifacts,
                 "log_dir": posixpath.join(self.rdir, "logs"), "log_inputs": options.log_inputs,
                 "started": time.time(),
                 "manager": "supervisor" if self.device.emulated else "systemd-user"}
        if self.device.emulated:
            state["pid"] = self._spawn_emulated(options)
        else:
            self._start_systemd(options)
        self._write(STATE_FILE, json.dumps(state, indent=1))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return state
            if self.device.emulated and not alive(int(state["pid"])):
                break
            time.sleep(0.5)
        why = self._last_log_line()
        self.stop(quiet=True)
        raise ServeError(f"the server on {self.device.name} did not become ready in {timeout_s:g} s "
                         f"({why or 'no output'}); see {posixpath.join(self.rdir, LOG_FILE)}")

    def _spawn_emulated(self, options: ServeOptions) -> int:
        dev: Any = self.device
        cwd = dev.path(self.rdir)
        argv = server_argv(options)
        cmd = [check_qemu(), "-cpu", dev.cpu, "-L", str(dev.rootfs), _program(argv[0], dev.rootfs, cwd),
               *argv[1:]]
        env = guest_env({"HOME": str(dev.home), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                         "EDGESHIP_EMULATED": "1"},  # its /readyz says so: QEMU timings are not a Pi's
                        [cwd / "bundle"])
        with open(cwd / LOG_FILE, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-c", _SUPERVISOR_PY, *cmd], cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        (cwd / PID_FILE).write_text(f"{proc.pid}\n", encoding="utf-8")
        return proc.pid

    def _start_systemd(self, options: ServeOptions) -> None:
        unit = unit_file(self.rdir, options)
        script = ("import os,sys\nd=os.path.expanduser(sys.argv[1])\nos.makedirs(d,exist_ok=True)\n"
                  "p=os.path.join(d,sys.argv[2])\nopen(p+'.tmp','w').write(sys.stdin.read())\n"
                  "os.replace(p+'.tmp',p)")
        self.device.run(["python3", "-c", script, f"~/{UNIT_DIR}", UNIT_NAME], input=unit, timeout=60)
        for argv in systemd_commands("start"):
            done = self.device.run(argv, check=False, timeout=120)
            if done.returncode != 0:
                raise ServeError(f"`{shlex.join(argv)}` failed on {self.device.name} "
                                 f"({last_line(done.stderr) or done.returncode}): is systemd the init "
                                 "there (a Raspberry Pi OS image is)?")

    def _last_log_line(self) -> str:
        if self.device.emulated:
            text = self._read(LOG_FILE) or ""
        else:
            done = self.device.run(["journalctl", "--user", "-u", UNIT_NAME, "-n", "20", "--no-pager"],
                                   check=False, timeout=60)
            text = done.stdout
        return last_line(text)

    def stop(self, *, quiet: bool = False) -> bool:
        """Stop the server (SIGTERM by pid, SIGKILL after ``STOP_TIMEOUT_S``); True if one ran."""
        state = self.state()
        if state is None:
            if quiet:
                return False
            raise ServeError(f"no server was started in {self.device.name}:{self.rdir}")
        ran = False
        if state.get("manager") == "supervisor":
            pid = int(state.get("pid") or 0)
            ran = pid > 0 and alive(pid) and _stop_pid(pid)
        else:
            for argv in systemd_commands("stop"):
                ran = self.device.run(argv, check=False, timeout=120).returncode == 0
        self._write(STATE_FILE, json.dumps({**state, "stopped": time.time()}, indent=1))
        if self.device.emulated:
            pid_file = self.device.path(posixpath.join(self.rdir, PID_FILE))  # type: ignore[attr-defined]
            pid_file.unlink(missing_ok=True)
        return ran

    def running(self) -> bool:
        state = self.state()
        return bool(state) and not state.get("stopped") and self.healthy()

    # ---------------------------------------------------------------- models

    def served(self) -> dict[str, str]:
        """``{model name: artifact path}`` the server serves now."""
        status, body = self.request("GET", "/v1/models", timeout=10.0)
        if status != 200:
            raise ServeError(f"the server on {self.device.name} does not answer /v1/models ({status})")
        out = {}
        for m in body.get("models", []):
            cur = (m.get("model_version_status") or [{}])[0]
            out[m["name"]] = str(cur.get("path", ""))
        return out

    def load(self, name: str, artifact: str) -> dict[str, Any]:
        """Send ``artifact`` (a path relative to ``DIR``, e.g. ``bundle/artifacts/base/tflite-int8``)
        to the running server as model ``name``: refused (``ServeError``) if it fails to load or
        fails its golden check, and then the old version keeps serving."""
        status, body = self.request("POST", f"/v1/models/{name}:load", {"path": artifact}, timeout=600.0)
        if status != 200:
            raise ServeError(f"the server on {self.device.name} refused {artifact} as {name!r}: "
                             f"{_error(body, status)}")
        return body

    def rollback(self, name: str) -> dict[str, Any]:
        status, body = self.request("POST", f"/v1/models/{name}:rollback", {}, timeout=120.0)
        if status != 200:
            raise ServeError(f"rollback of {name!r} on {self.device.name} refused: {_error(body, status)}")
        return body


# Run by python3 on a real Pi: one request to the server there (loopback: admin is allowed).
def artifacts_to_serve(remotes: Sequence[str]) -> list[str]:
    """One artifact per variant (``VARIANT/FOLDER``, the first deployed), so each variant is served
    under its own name: ``/v1/models/base:predict``."""
    chosen: dict[str, str] = {}
    for remote in remotes:
        variant, folder = remote.rstrip("/").split("/")[-2:]
        chosen.setdefault(variant, f"{variant}/{folder}")
    return list(chosen.values())


def serve_deployment(device: Device, remote_dir: str, remotes: Sequence[str], options: ServeOptions, *,
                     log: Any = None) -> dict[str, Any]:
    """After a deploy: start the server, or, if one already serves from ``remote_dir``, hand it
    the newly deployed artifacts one by one (``load``: golden-checked, zero dropped requests).

    ``remotes`` are the deployed artifacts' paths in the bundle (``artifacts/VARIANT/FOLDER``).
    Returns what was done: ``{"action": "started"|"updated"|"unchanged", "url", "models", ...}``.
    """
    say = log or (lambda _m: None)
    options.check()
    server = DeviceServer(device, remote_dir)
    wanted = options.artifacts or artifacts_to_serve(remotes)
    state = server.state()
    if state and not state.get("stopped") and server.healthy():
        if state.get("port") != options.port:
            raise InputError(f"a server already runs on port {state['port']} of {device.name}: "
                             f"deploy with --serve-port {state['port']}, or `edgeship serve stop` first")
        served = server.served()
        updated: dict[str, Any] = {}
        for art in wanted:
            name = art.split("/")[0]
            if name not in served:
                continue  # a new variant: served after the next start (`edgeship serve stop`, deploy)
            answer = server.load(name, posixpath.join("bundle", "artifacts", art))
            say(f"{name}: version {answer['model_version']} serves {art} (golden check passed; "
                f"previous version {answer.get('previous')} kept for rollback)")
            updated[name] = answer
        return {"action": "updated" if updated else "unchanged", "url": server.url, "models": updated,
                "manager": state.get("manager")}
    options.artifacts = wanted
    state = server.start(options)
    say(f"serving {', '.join(a.split('/')[0] for a in wanted)} on {server.url} "
        f"({'supervised process' if device.emulated else 'systemd user unit ' + UNIT_NAME})")
    out = {"action": "started", "url": server.url, "models": {a.split("/")[0]: a for a in wanted},
           "manager": state["manager"], "log_dir": state["log_dir"]}
    if device.emulated:
        out["pid"] = state["pid"]
        out["log_file"] = posixpath.join(server.rdir, LOG_FILE)
    else:
        out["note"] = LINGER_NOTE.format(user=getattr(device, "user", None) or "$USER")
    return out


def device_status(server: DeviceServer) -> dict[str, Any]:
    """``edgeship serve status`` for a device: what ``status.server_status`` reports, asked from
    the device itself, plus how the server is run there."""
    state = server.state()
    if not state or state.get("stopped"):
        raise RunError(f"no server runs in {server.device.name}:{server.rdir}: "
                       "start one with `edgeship deploy pi RUN --serve`")
    health, _ = server.request("GET", "/healthz", timeout=5.0)
    if health == 0:
        raise RunError(f"the server in {server.device.name}:{server.rdir} does not answer on port "
                       f"{state['port']} (see {posixpath.join(server.rdir, LOG_FILE)} or the journal)")
    ready, info = server.request("GET", "/readyz", timeout=5.0)
    info = info if ready == 200 and isinstance(info, dict) else {}
    code, body = server.request("GET", "/v1/models", timeout=10.0)
    models = body.get("models", []) if code == 200 and isinstance(body, dict) else []
    return {"url": server.url, "healthy": health == 200, "ready": ready == 200,
            "device_id": info.get("device_id"), "uptime_s": info.get("uptime_s"),
            "layout": info.get("layout"), "recent": info.get("recent"), "models": models,
            "device": server.device.name, "manager": state.get("manager"), "pid": state.get("pid")}
