"""``python -m edge_runtime.rpc_server``: a device in a fleet, through Apache TVM's RPC tracker.

It registers two TVM global functions, then runs TVM's own RPC server loop (the one
``python -m tvm.exec.rpc_server`` runs), registered with the tracker under ``--key``:

- ``edgeship.device_info()`` -> JSON: this device's facts, ``device_id``, board and which
  runtimes import here (the host picks the artifacts the device can run);
- ``edgeship.bench_session(request_json)`` -> JSON: unpacks the tar the host uploaded into the
  session's work folder and runs ``edge_runtime.rounds.bench_session`` on it: the method every
  device uses (interleaved rounds, intervals, accuracy on the test split measured here).

Why not ``tvm.rpc.Server``: it starts the server in a fresh interpreter (``PopenWorker``), and
on the emulated Pi a process started by an emulated program runs natively on the host, so it
cannot start. Here the listening loop runs in this process; TVM forks one worker per session
(``multiprocessing`` fork), and a forked worker keeps the functions registered before the fork.
MetaSchedule's ``RPCRunner`` uses the same server: a session loads the uploaded ``.so``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tarfile
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeRuntimeError, InputError
from edge_runtime.result import device_id
from edge_runtime.timing import device_facts, device_kind

RUNTIME_MODULES = {"tflite": ("ai_edge_litert", "tflite_runtime"), "onnx": ("onnxruntime",), "tvm": ("tvm",)}
BOARD_ENV = "EDGESHIP_BOARD"  # a board name for devices without /proc/device-tree (the emulated Pi)


def runtimes() -> list[str]:
    """The artifact formats this device has a runtime for (found, not imported)."""
    return [fmt for fmt, mods in RUNTIME_MODULES.items()
            if any(importlib.util.find_spec(m) is not None for m in mods)]


def device_info(on: str | None = None) -> dict[str, Any]:
    """What the host needs to pick artifacts and name results: facts, id, board, runtimes."""
    kind = device_kind(on)
    facts = device_facts()
    return {"on": kind, "device_id": device_id(kind, facts), "facts": facts,
            "board": facts.get("board") or os.environ.get(BOARD_ENV) or None,
            "machine": platform.machine(), "runtimes": runtimes(), "pid": os.getpid()}


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack the host's tar: regular files and folders only, every path inside ``dest``."""
    root = dest.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise InputError(f"refused archive member {member.name!r}: files inside the session only")
        for member in tar.getmembers():
            member.mode = 0o700 if member.isdir() else 0o600  # edge_runtime refuses writable .so folders
            tar.extract(member, dest)


def run_bench(request: dict[str, Any], workdir: Path, on: str | None = None) -> list[dict[str, Any]]:
    """One ``bench_session`` over the uploaded archive (see the module docstring)."""
    from edge_runtime.rounds import apply_threads_env, bench_session
    from edge_runtime.testset import read_testset

    dest = workdir / "bundle"
    dest.mkdir(mode=0o700, exist_ok=True)
    _safe_extract(workdir / str(request["archive"]), dest)
    threads = [t or None for t in request.get("threads") or [None]]
    apply_threads_env(threads)
    test = read_testset(dest / request["test"]) if request.get("test") else None
    warnings: list[str] = []
    results = bench_session([dest / a for a in request["artifacts"]], threads,
                            rounds=int(request.get("rounds", 5)), runs=int(request.get("runs", 200)),
                            warmup=int(request.get("warmup", 20)), on=on, test=test,
                            on_error=warnings.append)
    for r in results:  # name artifacts as the host sent them, not by this session's folder
        r["artifact"] = Path(r["artifact"]).resolve().relative_to(dest.resolve()).as_posix()
        r["notes"] = [*r.get("notes", []), *warnings]
    return results


def _register(on: str | None) -> None:
    """The two global functions; registered before the server forks its session workers."""
    import tvm_ffi

    @tvm_ffi.register_global_func("edgeship.device_info", override=True)
    def _info() -> str:
        return json.dumps(device_info(on))

    @tvm_ffi.register_global_func("edgeship.bench_session", override=True)
    def _bench(request_json: str) -> str:
        workpath = tvm_ffi.get_global_func("tvm.rpc.server.workpath")
        request = json.loads(request_json)
        try:
            results = run_bench(request, Path(workpath(".")), on)
        except EdgeRuntimeError as e:
            return json.dumps({"error": str(e)})
        return json.dumps({"results": results})


def serve(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090, port_end: int = 9199,
          custom_addr: str | None = None, on: str | None = None) -> None:
    """Register with the tracker and serve sessions until killed (TVM's own listening loop)."""
    from tvm.rpc.server import PopenRPCServerState

    port_end = max(port_end, port + 1)
    url, _, tport = tracker.rpartition(":")
    if not url or not tport.isdigit():
        raise InputError(f"--tracker takes HOST:PORT, got {tracker!r}")
    _register(on)
    state = PopenRPCServerState(host, port, port_end, tracker_addr=(url, int(tport)), key=key,
                                custom_addr=custom_addr)
    print(json.dumps({"listening": [host, state.port], "key": key, "tracker": tracker,
                      "pid": os.getpid()}), flush=True)
    state.thread.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_runtime.rpc_server",
                                description="A fleet device: TVM's RPC server with edgeship's bench session.")
    p.add_argument("--tracker", required=True, help="the RPC tracker, HOST:PORT")
    p.add_argument("--key", required=True, help="the device key, e.g. rpi4")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=9090, help="first port to try")
    p.add_argument("--port-end", type=int, default=9199, help="last port to try (exclusive)")
    p.add_argument("--custom-addr", default=None, help="the address the tracker gives clients")
    p.add_argument("--on", choices=("host", "pi"), default=None,
                   help="the results' 'on' (default: $EDGESHIP_DEVICE, else pi on a Pi board, else host)")
    args = p.parse_args(argv)
    try:
        serve(args.tracker, args.key, args.host, args.port, args.port_end, args.custom_addr, args.on)
    except (EdgeRuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
