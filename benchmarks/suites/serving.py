"""Serving on the device: what the HTTP server costs, how much of the bare rate it keeps, and
whether an update and a rollback under load drop a request.

    python -m edgeship.benchmarks.suites.serving [RUN] [--artifact base/tflite-float32]
    python -m edgeship.benchmarks.suites.serving --smoke   # a tiny digits CNN, short sweeps

(a) overhead: p50 of one request at a time (keep-alive, loopback) over the in-process
    preprocess + invoke p50 of the same artifact and raw input;
(b) capacity: the knee of ``edgeship load`` (highest rate with p99 under the SLO and < 1 %
    errors) over the bare in-process rate: ``workers`` threads, each with its own interpreter,
    preprocessing and invoking in a closed loop on the same cores;
(c) an update to another artifact of the run and a rollback, under steady load at half the knee:
    failed requests (target: zero).

Like the fleet suite, it drives what a user runs: ``python -m edge_runtime serve`` and
``edgeship load`` in their own processes, on 127.0.0.1 only; every server is stopped by its pid.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.runstore import RunStore

READY = re.compile(r"^serving (?P<names>.*) on (?P<url>http://\S+) ")


def _env() -> dict[str, str]:
    return dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


class _Server:
    """``python -m edge_runtime serve`` on 127.0.0.1, a free port; stopped by pid."""

    def __init__(self, exports: Path, artifact: str, workers: int, threads: int = 1):
        self.cmd = [sys.executable, "-m", "edge_runtime", "serve", str(exports), "--artifact", artifact,
                    "--port", "0", "--workers", str(workers), "--threads", str(threads), "--max-queue", "128"]

    def __enter__(self) -> _Server:
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.err, text=True, env=_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = READY.match(line)
        if not m:
            self.__exit__()
            raise RuntimeError(f"the server did not start: {' '.join(self.cmd)}")
        self.url, self.model = m["url"], m["names"].split(",")[0].strip()
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()

    def post(self, conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()


def _raw_inputs(run: Path, n: int) -> np.ndarray:
    with np.load(run / "data" / "test_raw.npz", allow_pickle=False) as f:
        return f["x"][:n].astype(np.float32)


def in_process(artifact_dir: Path, raw: np.ndarray, workers: int, calls: int,
               seconds: float) -> dict[str, float]:
    """Single-request p50 (preprocess + invoke) and the closed-loop rate with ``workers`` threads."""
    from edge_runtime.model import EdgeModel

    models = [EdgeModel.load(artifact_dir, threads=1) for _ in range(workers)]
    m = models[0]
    for i in range(20):
        m.predict(raw[i % len(raw)][None])
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        m.predict(raw[i % len(raw)][None])
        samples.append(time.perf_counter() - t0)
    counts = [0] * workers
    if seconds <= 0:
        return {"p50_ms": statistics.median(samples) * 1000.0, "rate": float("nan")}
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        mk, i = models[k], 0
        while time.perf_counter() < stop:
            mk.predict(raw[i % len(raw)][None])
            i += 1
        counts[k] = i

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"p50_ms": statistics.median(samples) * 1000.0, "rate": sum(counts) / wall}


def _instance(x: np.ndarray, raw_range: Any) -> Any:
    """A nested array for a small input, a base64 PNG for a camera-sized one (as edgeship load sends)."""
    if x.size <= 32 * 32 * 3:
        return x.tolist()

    from PIL import Image

    lo, hi = (float(v) for v in (raw_range or (0.0, 255.0)))
    u8 = np.clip(np.rint((x - lo) / max(hi - lo, 1e-9) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8).save(buf, "PNG")
    return {"b64": base64.b64encode(buf.getvalue()).decode("ascii")}


def served_p50(srv: _Server, raw: np.ndarray, calls: int, raw_range: Any = None) -> float:
    """p50 of one request at a time over one keep-alive connection (low load)."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    bodies = [json.dumps({"instances": [_instance(x, raw_range)]}).encode() for x in raw]
    path = f"/v1/models/{srv.model}:predict"
    for i in range(20):
        srv.post(conn, path, bodies[i % len(bodies)])
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        status, _ = srv.post(conn, path, bodies[i % len(bodies)])
        samples.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"the server answered {status} at low load")
    conn.close()
    return statistics.median(samples) * 1000.0


def edgeship_load(runs_dir: Path, run: str, args: Sequence[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "edgeship", "--runs-dir", str(runs_dir), "load", run,
                           "--json", *args], capture_output=True, text=True, env=_env(), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"edgeship load failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def update_under_load(runs_dir: Path, run: Path, artifact: str, other: str, workers: int, rate: float,
                      seconds: float) -> dict[str, Any]:
    """Steady load at ``rate`` while the server switches to ``other`` and rolls back."""
    with _Server(run / "exports", artifact, workers) as srv:
        out: dict[str, Any] = {}

        def load() -> None:
            out["doc"] = edgeship_load(runs_dir, run.name, [
                "--url", f"{srv.url}/v1/models/{srv.model}:predict", "--rates", f"{rate:g}",
                "--duration", f"{seconds:g}s", "--slo-ms", "1000"])

        t = threading.Thread(target=load)
        t.start()
        time.sleep(min(2.0, seconds / 4))
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=120)
        steps = []
        for verb, body in ((":load", {"path": str(run / "exports" / other)}), (":rollback", {})):
            status, data = srv.post(conn, f"/v1/models/{srv.model}{verb}", json.dumps(body).encode())
            steps.append((verb, status, json.loads(data).get("model_version")))
            time.sleep(min(1.5, seconds / 4))
        conn.close()
        t.join()
    r = out["doc"]["rates"][0]
    return {"sent": r["sent"], "failed": r["errors"], "statuses": r["statuses"], "steps": steps}


def _tiny_run(root: Path) -> Path:
    """A digits CNN trained briefly, exported to TFLite float32 and int8."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from edgeship.export.stage import ExportConfig, export_run
    from edgeship.training.stage import TrainConfig, train

    store = RunStore(root)
    run = train(store, TrainConfig(epochs=3, patience=2, seed=0)).run
    export_run(run, ExportConfig(formats="tflite", quantize="float32,int8"))
    return run.path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="a run folder with TFLite exports (default: train a tiny one)")
    parser.add_argument("--artifact", default="base/tflite-float32")
    parser.add_argument("--update-to", default="base/tflite-int8", help="the artifact of (c)'s update")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    parser.add_argument("--smoke", action="store_true", help="tiny model, short sweeps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration = 1.5
    with tempfile.TemporaryDirectory(prefix="edgeship-serving-suite-") as tmp:
        run = Path(args.run).resolve() if args.run else _tiny_run(Path(tmp) / "runs")
        runs_dir = run.parent
        raw = _raw_inputs(run, 64)
        art = run / "exports" / args.artifact
        calls = 200 if args.smoke else 1000
        bare = in_process(art, raw, args.workers, calls, 2.0 if args.smoke else 5.0)
        spec = json.loads((run / "manifest.json").read_text())["data"].get("preprocessing") or {}
        rounds = 2 if args.smoke else 5
        local_p50s, served_p50s = [bare["p50_ms"]], []
        with _Server(run / "exports", args.artifact, args.workers) as srv:
            for k in range(rounds):  # alternating rounds: a busy machine disturbs both sides alike
                served_p50s.append(served_p50(srv, raw, calls // rounds, spec.get("raw_range")))
                if k:
                    local_p50s.append(in_process(art, raw, 1, calls // rounds, 0.0)["p50_ms"])
        served = statistics.median(served_p50s)
        local = statistics.median(local_p50s)
        # geometric steps from 3 % of the bare rate: a server far below it still finds its knee
        fractions = ((0.25, 0.5, 0.75) if args.smoke
                     else (0.03, 0.05, 0.08, 0.12, 0.18, 0.27, 0.4, 0.6, 0.8, 1.0))
        rates = ",".join(f"{bare['rate'] * f:.0f}" for f in fractions)
        doc = edgeship_load(runs_dir, run.name, ["--artifact", args.artifact, "--workers", str(args.workers),
                                                 "--threads", "1", "--rates", rates, "--duration",
                                                 f"{args.duration:g}s", "--slo-ms", f"{args.slo_ms:g}"])
        knee = doc["knee"]
        half = (knee["rate"] if knee else float(rates.split(",")[0])) / 2
        upd = update_under_load(runs_dir, run, args.artifact, args.update_to, args.workers, half,
                                max(4.0, 2 * args.duration))
    print(f"serving {args.artifact} of {run.name} on {doc['device_id']}: workers {args.workers} x 1 thread, "
          f"stdlib front, SLO p99 < {args.slo_ms:g} ms")
    print(f"(a) overhead: one request p50 {served:.3f} ms over in-process preprocess+invoke p50 "
          f"{local:.3f} ms = {served / local:.2f}x (median of {rounds} alternating rounds; least "
          f"disturbed rounds: {min(served_p50s):.3f} / {min(local_p50s):.3f} ms = "
          f"{min(served_p50s) / min(local_p50s):.2f}x)")
    for r in doc["rates"]:
        lat = r["latency_ms"] or {}
        print(f"    {r['rate']:8.0f}/s offered: {r['achieved_rps']:8.1f}/s answered, "
              f"p50 {lat.get('p50', 0):7.2f} p99 {lat.get('p99', 0):8.2f} ms, errors {r['errors']}, "
              f"server CPU {r['server_cpu_cores'] or 0:.2f} cores{'  (meets SLO)' if r['meets_slo'] else ''}")
    if knee:
        print(f"(b) capacity: knee {knee['achieved_rps']:.1f}/s over bare in-process {bare['rate']:.1f}/s "
              f"= {knee['achieved_rps'] / bare['rate']:.2f}x")
    else:
        print(f"(b) capacity: no rate met the SLO (bare in-process {bare['rate']:.1f}/s)")
    print(f"(c) update to {args.update_to} and rollback under {half:.0f}/s: {upd['failed']} failed of "
          f"{upd['sent']} ({upd['statuses']}); steps {upd['steps']}")
    for note in doc["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
