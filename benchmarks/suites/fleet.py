"""A fleet through TVM's RPC tracker: does a second device pay, and does tuning on the device?

    python -m edgeship.benchmarks.suites.fleet [--artifacts 6] [--rounds 5] [--runs 2000] [--trials 16]
        [--width 8]
    python -m edgeship.benchmarks.suites.fleet --smoke   # 2 artifacts, short sessions, no tuning

Everything runs through the ``edgeship`` command, as a user would, in a fleet folder of its own
(``$EDGESHIP_FLEET_DIR``) with a tracker on a free port of 127.0.0.1:

1. **1 vs 2 devices.** A digits CNN of width ``--width`` (8: calls slow enough that the work,
   not the command's ~3 s start-up, is measured) exported to N artifacts is measured with
   ``bench --on fleet --split`` (each artifact once, on whichever device is free) with one device
   of the key, then with two (two servers of this machine, one thread each on its two cores);
   the figure is the wall time of the ``bench`` command. Target (issue 14): >= 1.6x with two.
2. **Tuned vs untuned on the device.** The emulated Pi joins as ``rpi4``; the rpi4 TVM build of
   the digits CNN (width 1) is measured untuned, then tuned with ``export --trials T --tracker
   --key rpi4`` (candidates measured on the emulated Pi; the export then times both builds there
   and ships the faster) and the shipped build measured again. Emulated: QEMU on another CPU,
   not Raspberry Pi latency, and labelled so.

Every process it starts is stopped at the end (``fleet leave --all``, ``fleet tracker stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeship.benchmarks.suites.smoke import parse_args

SMOKE = {"artifacts": 2, "rounds": 2, "runs": 50, "trials": 0, "width": 1.0}
# Enough work per artifact that the command's fixed start-up (Python, TVM import, the test split,
# the tracker queries: ~3 s) does not hide the devices' parallel work.
QUANTIZE = "float32,float16,dynamic,int8"


def _edgeship(env: dict[str, str], *args: str, timeout: float = 1800) -> dict[str, Any]:
    """``python -m edgeship ARGS --json``: its JSON object, or a clear failure."""
    done = subprocess.run([sys.executable, "-m", "edgeship", *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"edgeship {' '.join(args)} failed ({done.returncode}): "
                         f"{done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_run(env: dict[str, str], n: int, width: float) -> tuple[str, list[str]]:
    """A digits run with at least ``n`` exports a machine of this arch runs; their folder names."""
    run = _edgeship(env, "train", "--dataset", "digits", "--epochs", "3", "--width", str(width))["run_id"]
    _edgeship(env, "export", run, "--format", "tflite", "--quantize", QUANTIZE)
    if n > 4:
        _edgeship(env, "export", run, "--format", "onnx", "--quantize", "float32,int8")
    if n > 6:
        _edgeship(env, "export", run, "--format", "tvm", "--target", "host")
    names = sorted(p.name for p in (Path(env["EDGESHIP_RUNS_DIR"]) / run / "exports" / "base").iterdir()
                   if p.is_dir() and not p.name.endswith(".failed") and (p / "artifact.json").is_file())
    if len(names) < n:
        raise SystemExit(f"only {len(names)} exports for --artifacts {n}: {', '.join(names)}")
    return run, names[:n]


def _wall(env: dict[str, str], run: str, key: str, tracker: str, names: Sequence[str], args: Any) -> float:
    t0 = time.perf_counter()
    out = _edgeship(env, "bench", run, "--on", "fleet", "--key", key, "--tracker", tracker, "--split",
                    "--format", ",".join(names), "--threads", "1", "--rounds", str(args.rounds),
                    "--runs", str(args.runs), "--warmup", "10")
    seconds = time.perf_counter() - t0
    if len(out["results"]) != len(names):
        raise SystemExit(f"{len(out['results'])} results for {len(names)} artifacts")
    return seconds


def _scaling(env: dict[str, str], run: str, tracker: str, names: Sequence[str], args: Any) -> dict[str, Any]:
    """Wall time of one bench with one device of the key, then with two."""
    _edgeship(env, "fleet", "join", "--local", "--key", "bench", "--tracker", tracker)
    _wall(env, run, "bench", tracker, names[:1], args)  # warm-up: first loads of every runtime, not counted
    one = _wall(env, run, "bench", tracker, names, args)
    _edgeship(env, "fleet", "join", "--local", "--key", "bench", "--tracker", tracker,
              "--name", "local-bench-2")
    time.sleep(3)  # the first server re-registers after its last session
    two = _wall(env, run, "bench", tracker, names, args)
    return {"artifacts": len(names), "one_device_s": one, "two_devices_s": two, "speedup": one / two}


def _p50(env: dict[str, str], run: str, tracker: str) -> dict[int, float]:
    """The rpi4 build's p50 on the emulated Pi at 1 and 2 threads (QEMU is slow: short sessions)."""
    out = _edgeship(env, "bench", run, "--on", "fleet", "--key", "rpi4", "--tracker", tracker, "--format",
                    "tvm-rpi4", "--threads", "1,2", "--rounds", "3", "--runs", "100")
    return {int(r["threads"]): float(r["latency_ms"]["p50"]) for r in out["results"]}


def _tuning(env: dict[str, str], tracker: str, args: Any) -> dict[str, Any]:
    """p50 of the rpi4 build of the digits CNN (width 1) on the emulated Pi, untuned, then tuned
    there through the tracker."""
    run = _edgeship(env, "train", "--dataset", "digits", "--epochs", "3")["run_id"]
    _edgeship(env, "export", run, "--format", "tvm", "--target", "rpi4")
    _edgeship(env, "fleet", "join", "--emulated", "--key", "rpi4", "--tracker", tracker)
    untuned = _p50(env, run, tracker)
    t0 = time.perf_counter()
    _edgeship(env, "export", run, "--format", "tvm", "--target", "rpi4", "--trials", str(args.trials),
              "--tracker", tracker, "--key", "rpi4")
    tune_s = time.perf_counter() - t0
    folder = Path(env["EDGESHIP_RUNS_DIR"]) / run / "exports/base/tvm-rpi4"
    art = json.loads((folder / "artifact.json").read_text())
    tuned = _p50(env, run, tracker)
    t = art["tuning"]
    return {"untuned_ms": untuned, "shipped_ms": tuned, "tune_s": tune_s,
            "measured": t["measured"], "shipped": t.get("shipped"), "timed_on": t.get("timed_on"),
            "export_untuned_ms": t.get("untuned_ms"), "export_tuned_ms": t.get("tuned_ms")}


def _report(scaling: dict[str, Any], tuning: dict[str, Any] | None, trials: int) -> None:
    s = scaling
    met = "MET" if s["speedup"] >= 1.6 else "NOT MET"
    print(f"fleet: {s['artifacts']} artifacts, bench --on fleet --split, wall time of the command")
    print(f"  1 device  {s['one_device_s']:.1f} s")
    print(f"  2 devices {s['two_devices_s']:.1f} s")
    print(f"  target 2 devices >= 1.6x faster: {s['speedup']:.2f}x: {met}")
    if tuning is None:
        print("tuned vs untuned rpi4 build: skipped (--trials 0)")
        return
    t = tuning
    devices = ", ".join(f"{d}: {n}" for d, n in t["measured"]["devices"].items())
    print(f"tvm-rpi4 on the emulated Pi (EMULATED: QEMU on another CPU, not Raspberry Pi latency), "
          f"{trials} trials in {t['tune_s']:.0f} s, candidates measured on {devices}")
    gain = t["export_tuned_ms"] / t["export_untuned_ms"]
    print(f"  export, both builds timed there: untuned {t['export_untuned_ms']:.4f} ms, tuned "
          f"{t['export_tuned_ms']:.4f} ms: tuned / untuned = {gain:.2f}x (emulated); shipped {t['shipped']}")
    for n in sorted(t["untuned_ms"]):
        u, v = t["untuned_ms"][n], t["shipped_ms"][n]
        print(f"  bench --on fleet, {n} thread(s): untuned p50 {u:.4f} ms, shipped ({t['shipped']}) p50 "
              f"{v:.4f} ms: {v / u:.2f}x (emulated)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=int, default=6, help="artifacts measured (1 vs 2 devices)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per bench session")
    parser.add_argument("--runs", type=int, default=2000, help="timed samples per round")
    parser.add_argument("--trials", type=int, default=16, help="tuning trials on the device (0: skip tuning)")
    parser.add_argument("--width", type=float, default=8.0,
                        help="the digits CNN's width: wider, slower calls, more work per artifact")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parse_args(parser, argv, SMOKE)
    with tempfile.TemporaryDirectory(prefix="edgeship-fleet-suite-") as tmp:
        env = {**os.environ, "EDGESHIP_RUNS_DIR": str(Path(tmp) / "runs"),
               "EDGESHIP_FLEET_DIR": str(Path(tmp) / "fleet"), "TF_USE_LEGACY_KERAS": "1",
               "XDG_CACHE_HOME": str(Path(tmp) / "cache"),  # a tuning database of its own: tuned here
               "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "160"}
        port = _free_port()
        tracker = f"127.0.0.1:{port}"
        _edgeship(env, "fleet", "tracker", "start", "--port", str(port))
        try:
            run, names = _make_run(env, args.artifacts, args.width)
            scaling = _scaling(env, run, tracker, names, args)
            tuning = _tuning(env, tracker, args) if args.trials else None
        finally:
            subprocess.run([sys.executable, "-m", "edgeship", "fleet", "leave", "--all"], env=env,
                           capture_output=True, timeout=300, check=False)
            subprocess.run([sys.executable, "-m", "edgeship", "fleet", "tracker", "stop"], env=env,
                           capture_output=True, timeout=120, check=False)
    _report(scaling, tuning, args.trials)
    if args.json:
        Path(args.json).write_text(json.dumps({"scaling": scaling, "tuning": tuning}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
