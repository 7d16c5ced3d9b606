"""Harness overhead and cold start: edge_runtime against bare ai-edge-litert, in fresh processes.

Both compare what ``edge_runtime`` adds to a plain LiteRT interpreter on the same TFLite float32
model: the timing loop (``harness_overhead``) and a process that imports, loads and predicts
once (``cold_start``). Each figure is a median over alternating rounds, so neither side always
gets the warmer caches. The reference suite prints them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_runtime import EdgeModel
from edgeship.devices.host import _device_env as device_env

_HARNESS = """
import json, sys, time
from edge_runtime.model import EdgeModel
from edge_runtime.timing import percentile, time_calls
path, runs, warmup, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = EdgeModel.load(path, threads=1)
invoke = m.backend.invoker(m.prepare(m.preprocess(m.example_raw(1))))
bare_invoke = invoke.__self__.invoke  # the very interpreter the harness times
def bare(n, fn=bare_invoke, clock=time.perf_counter_ns):
    s = [0] * n
    for i in range(n):
        t0 = clock()
        fn()
        s[i] = clock() - t0
    return s
h, b = [], []
for r in range(rounds):  # alternate which goes first: neither gets the warmer caches every time
    for which in ((0, 1) if r % 2 == 0 else (1, 0)):
        if which == 0:
            h.append(percentile(time_calls(invoke, runs, warmup), 50))
        else:
            for _ in range(warmup):
                bare_invoke()
            b.append(percentile(bare(runs), 50))
print(json.dumps({"harness_ns": h, "bare_ns": b}))
"""


def harness_overhead(tflite_dir: Path, runs: int, warmup: int, rounds: int = 7) -> dict[str, float]:
    """Harness p50 / bare-loop p50 over the same interpreter, median of alternating rounds.

    The harness is ``edge_runtime.timing.time_calls`` over ``EdgeModel``'s invoker, exactly what
    ``benchmark`` times; the bare loop reads the clock around the same interpreter's ``invoke``.
    """
    done = subprocess.run([sys.executable, "-c", _HARNESS, str(tflite_dir), str(runs), str(warmup),
                           str(rounds)], capture_output=True, text=True, env=device_env(), check=True,
                          timeout=900)
    d = json.loads(done.stdout.strip().splitlines()[-1])
    h, b = statistics.median(d["harness_ns"]), statistics.median(d["bare_ns"])
    return {"harness_p50_ms": h / 1e6, "bare_p50_ms": b / 1e6, "ratio": h / b}


_COLD_EDGE = """
import sys
import numpy as np
from edge_runtime import EdgeModel
m = EdgeModel.load(sys.argv[1], threads=1)
m.predict(np.load(sys.argv[2]))
"""

_COLD_BARE = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
it.set_tensor(inp["index"], np.load(sys.argv[2]))
it.invoke()
it.get_tensor(out["index"])
"""


# Runs the cold-start children from a small process: Linux keeps a process's peak RSS across
# exec, so a child forked from this (TensorFlow-sized) process would report our peak, not its own.
_LAUNCHER = """
import json, os, subprocess, sys, time
jobs, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
def child(argv):
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status):
        sys.exit("cold-start child failed: " + err.strip()[-400:])
    return wall, usage.ru_maxrss / 1024
for argv in jobs.values():
    child(argv)  # warm the page cache for both
out = {k: {"s": [], "mb": []} for k in jobs}
for _ in range(rounds):
    for k, argv in jobs.items():
        wall, mb = child(argv)
        out[k]["s"].append(wall)
        out[k]["mb"].append(mb)
print(json.dumps(out))
"""


def cold_start(tflite_dir: Path, work: Path, rounds: int = 7) -> dict[str, float]:
    """edge_runtime (raw input, sha256 check, preprocess) against bare ai-edge-litert (the model
    input ready in a .npy), each a fresh process; medians of alternating rounds (wall time of the
    whole process, peak RSS from wait4)."""
    m = EdgeModel.load(tflite_dir, threads=1)
    raw = m.example_raw(1)
    ready = m.prepare(m.preprocess(raw))
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "raw.npy", np.asarray(raw))
    np.save(work / "ready.npy", ready)
    jobs = {"edge": ["-c", _COLD_EDGE, str(tflite_dir), str(work / "raw.npy")],
            "bare": ["-c", _COLD_BARE, str(m.model_file), str(work / "ready.npy")]}
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(jobs), str(rounds)], env=device_env(),
                          capture_output=True, text=True, check=False, timeout=900)
    if done.returncode:
        raise RuntimeError(done.stderr.strip()[-400:])
    d = json.loads(done.stdout.strip().splitlines()[-1])
    et, bt = statistics.median(d["edge"]["s"]), statistics.median(d["bare"]["s"])
    em, bm = statistics.median(d["edge"]["mb"]), statistics.median(d["bare"]["mb"])
    return {"edge_s": et, "bare_s": bt, "time_ratio": et / bt,
            "edge_rss_mb": em, "bare_rss_mb": bm, "memory_ratio": em / bm}
