"""Serving on the device: what the HTTP server costs, how much of the bare rate it keeps, and
whether an update and a rollback under load drop a request.

    python -m edgeship.benchmarks.suites.serving [RUN] [--artifact base/tflite-float32]
    python -m edgeship.benchmarks.suites.serving --smoke   # a tiny digits CNN, short sweeps

(a) overhead: p50 of one request at a time (keep-alive, loopback) over the in-process
    preprocess + invoke p50 of the same artifact and raw input;
(b) capacity: the knee of ``edgeship load`` (highest rate with p99 under the SLO and < 1 %
    errors; the coarse sweep is refined between the knee and the next rate) over the bare
    in-process rate: ``workers`` threads, each with its own interpreter, preprocessing and
    invoking in a closed loop on the same cores. Also over the same request bodies handled
    in-process (JSON, PNG decode, preprocess, invoke): what the server does, minus HTTP;
(c) an update to another artifact of the run and a rollback, under steady load at half the knee:
    failed requests (target: zero).

Like the fleet suite, it drives what a user runs: ``python -m edge_runtime serve`` and
``edgeship load`` in their own processes, on 127.0.0.1 only; every server is stopped by its pid.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.core.runstore import RunDir, RunStore
from edgeship.devices.serving.load import MAX_RATE
from edgeship.devices.serving.load import knee as load_knee
from edgeship.devices.serving.results import request_bodies

READY = re.compile(r"^serving (?P<names>.*) on (?P<url>http://\S+) ")


def _env() -> dict[str, str]:
    return dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


class _Server:
    """``python -m edge_runtime serve`` on 127.0.0.1, a free port; stopped by pid."""

    def __init__(self, exports: Path, artifact: str, workers: int, threads: int = 1, front: str = "loop",
                 batch: Sequence[str] = ()):
        self.cmd = [sys.executable, "-m", "edge_runtime", "serve", str(exports), "--artifact", artifact,
                    "--port", "0", "--workers", str(workers), "--threads", str(threads), "--max-queue", "128",
                    "--front", front, *batch]

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


def threads_rate(workers: int, seconds: float, step: Callable[[int, int], Any]) -> float:
    """``workers`` threads each calling ``step(k, i)`` in a closed loop for ``seconds``: calls a second."""
    counts = [0] * workers
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            step(k, i)
            i += 1
        counts[k] = i

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


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
    rate = (threads_rate(workers, seconds, lambda k, i: models[k].predict(raw[i % len(raw)][None]))
            if seconds > 0 else float("nan"))
    return {"p50_ms": statistics.median(samples) * 1000.0, "rate": rate}


def in_process_requests(artifact_dir: Path, bodies: Sequence[bytes], workers: int,
                        seconds: float) -> float:
    """The server's own work on the same request bodies, without HTTP: JSON, decoding (a PNG for
    a camera-sized input), preprocessing and invoke, ``workers`` threads in a closed loop."""
    from edge_runtime.model import EdgeModel
    from edge_runtime.serve.pool import decode_instances

    models = [EdgeModel.load(artifact_dir, threads=1) for _ in range(workers)]

    def step(k: int, i: int) -> None:
        models[k].infer(decode_instances(models[k], json.loads(bodies[i % len(bodies)])["instances"]))

    for i in range(20):
        step(0, i)
    return threads_rate(workers, seconds, step)


def served_p50(srv: _Server, bodies: Sequence[bytes], calls: int) -> float:
    """p50 of one request at a time over one keep-alive connection (low load)."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
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


def closed_loop(srv: _Server, bodies: Sequence[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` keep-alive connections, each sending its next request when the last is
    answered, for ``seconds``: the most the server answers, and its CPU per request."""
    path = f"/v1/models/{srv.model}:predict"
    counts, errors = [0] * clients, [0] * clients
    cpu0 = _server_cpu(srv)
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
        i = k
        while time.perf_counter() < stop:
            status, _ = srv.post(conn, path, bodies[i % len(bodies)])
            counts[k] += status == 200
            errors[k] += status != 200
            i += clients
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    answered = sum(counts)
    return {"rate": answered / wall, "errors": float(sum(errors)),
            "cpu_ms": (_server_cpu(srv) - cpu0) / max(answered, 1) * 1000.0}


def _server_cpu(srv: _Server) -> float:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return float(re.search(r"^process_cpu_seconds_total (\S+)$", text, re.M)[1])  # type: ignore[index]


def compare(run: Path, artifact: str, bodies: Sequence[bytes], seconds: float, rounds: int) -> None:
    """Fronts and worker layouts side by side: 16 clients in a closed loop, interleaved rounds."""
    cores = os.cpu_count() or 1
    layouts = [(1, 1), (cores, 1), (1, cores), (2 * cores, 1)]
    setups = [(front, w, t) for front in ("loop", "stdlib") for w, t in dict.fromkeys(layouts)]
    results: dict[tuple[str, int, int], list[dict[str, float]]] = {s: [] for s in setups}
    for _ in range(rounds):
        for front, w, t in setups:
            with _Server(run / "exports", artifact, w, t, front=front) as srv:
                closed_loop(srv, bodies, 4, 1.0)  # warm-up
                results[(front, w, t)].append(closed_loop(srv, bodies, 16, seconds))
    print(f"fronts and layouts, {artifact}: 16 clients in a closed loop, {seconds:g} s x {rounds} "
          "interleaved rounds (median)")
    for (front, w, t), rs in results.items():
        rate = statistics.median(r["rate"] for r in rs)
        cpu = statistics.median(r["cpu_ms"] for r in rs)
        print(f"    {front:7s} {w} worker(s) x {t} thread(s): {rate:8.1f}/s, server CPU {cpu:.2f} ms "
              f"a request, errors {sum(r['errors'] for r in rs):.0f}")


def edgeship_load(runs_dir: Path, run: str, args: Sequence[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "edgeship", "--runs-dir", str(runs_dir), "load", run,
                           "--json", *args], capture_output=True, text=True, env=_env(), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"edgeship load failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def update_under_load(runs_dir: Path, run: Path, artifact: str, other: str, workers: int, rate: float,
                      seconds: float, front: str) -> dict[str, Any]:
    """Steady load at ``rate`` while the server switches to ``other`` and rolls back."""
    with _Server(run / "exports", artifact, workers, front=front) as srv:
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


def refine(sweep: Sequence[dict[str, Any]], n: int) -> list[int]:
    """``n`` rates spaced geometrically between the highest passing rate and the next one tried."""
    passing = [r["rate"] for r in sweep if r["meets_slo"]]
    if not passing:
        return []
    lo = max(passing)
    above = [r["rate"] for r in sweep if r["rate"] > lo]
    if not above:
        return []
    hi = min(above)
    steps = [round(lo * (hi / lo) ** (k / (n + 1))) for k in range(1, n + 1)]
    return sorted({r for r in steps if lo < r < hi})


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
    parser.add_argument("--front", default="loop", help="the server's HTTP front (serve --front)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="serve --max-batch (dynamic batching; default: the server's)")
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0, help="serve --batch-timeout-ms")
    parser.add_argument("--compare", action="store_true",
                        help="only compare fronts and worker layouts (closed loop), then stop")
    parser.add_argument("--smoke", action="store_true", help="tiny model, short sweeps")
    args = parser.parse_args(argv)
    batch = (["--max-batch", str(args.max_batch)] if args.max_batch else []) + [
        "--batch-timeout-ms", f"{args.batch_timeout_ms:g}"]
    if args.smoke:
        args.duration = 1.5
    with tempfile.TemporaryDirectory(prefix="edgeship-serving-suite-") as tmp:
        run = Path(args.run).resolve() if args.run else _tiny_run(Path(tmp) / "runs")
        runs_dir = run.parent
        raw = _raw_inputs(run, 64)
        bodies = request_bodies(RunDir(run))  # what edgeship load sends: a PNG for a camera-sized input
        art = run / "exports" / args.artifact
        if args.compare:
            compare(run, args.artifact, bodies, 2.0 if args.smoke else 5.0, 1 if args.smoke else 2)
            return 0
        calls = 200 if args.smoke else 1000
        seconds = 2.0 if args.smoke else 5.0
        bare = in_process(art, raw, args.workers, calls, seconds)
        bare_requests = in_process_requests(art, bodies, args.workers, seconds)
        rounds = 2 if args.smoke else 5
        local_p50s, served_p50s = [bare["p50_ms"]], []
        with _Server(run / "exports", args.artifact, args.workers, front=args.front) as srv:
            for k in range(rounds):  # alternating rounds: a busy machine disturbs both sides alike
                served_p50s.append(served_p50(srv, bodies, calls // rounds))
                if k:
                    local_p50s.append(in_process(art, raw, 1, calls // rounds, 0.0)["p50_ms"])
        served = statistics.median(served_p50s)
        local = statistics.median(local_p50s)
        # geometric steps from 3 % of the bare rate: a server far below it still finds its knee
        fractions = ((0.05, 0.15, 0.4) if args.smoke
                     else (0.03, 0.05, 0.08, 0.12, 0.18, 0.27, 0.4, 0.6, 0.8, 1.0))
        # within the generator's bound: a tiny model's bare rate can be over it on a fast machine
        rates = sorted({min(round(bare["rate"] * f), int(MAX_RATE)) for f in fractions})
        sweep: list[dict[str, Any]] = []
        with _Server(run / "exports", args.artifact, args.workers, front=args.front, batch=batch) as srv:
            url = f"{srv.url}/v1/models/{srv.model}:predict"
            doc = edgeship_load(runs_dir, run.name, ["--url", url, "--rates", ",".join(map(str, rates)),
                                                     "--duration", f"{args.duration:g}s",
                                                     "--slo-ms", f"{args.slo_ms:g}"])
            sweep += doc["rates"]
            between = refine(sweep, 2 if args.smoke else 4)
            if between:  # the coarse steps are up to 1.5x apart: look between the knee and the next
                sweep += edgeship_load(runs_dir, run.name, [
                    "--url", url, "--rates", ",".join(map(str, between)), "--duration", f"{args.duration:g}s",
                    "--slo-ms", f"{args.slo_ms:g}"])["rates"]
        sweep.sort(key=lambda r: r["rate"])
        knee = load_knee(sweep)
        # (c) at half the knee; with no knee, at a quarter of the most it answered: a load it held
        half = knee["rate"] / 2 if knee else max(r["achieved_rps"] for r in sweep) / 4
        upd = update_under_load(runs_dir, run, args.artifact, args.update_to, args.workers, half,
                                max(4.0, 2 * args.duration), args.front)
    layout = doc.get("layout") or {}
    batching = (f", batches up to {layout['max_batch']} (waits {layout.get('batch_timeout_ms', 0):g} ms)"
                if (layout.get("max_batch") or 1) > 1 else ", unbatched")
    print(f"serving {args.artifact} of {run.name} on {doc['device_id']}: workers {args.workers} x 1 thread, "
          f"{args.front} front{batching}, SLO p99 < {args.slo_ms:g} ms")
    print(f"(a) overhead: one request p50 {served:.3f} ms over in-process preprocess+invoke p50 "
          f"{local:.3f} ms = {served / local:.2f}x (median of {rounds} alternating rounds; least "
          f"disturbed rounds: {min(served_p50s):.3f} / {min(local_p50s):.3f} ms = "
          f"{min(served_p50s) / min(local_p50s):.2f}x)")
    for r in sweep:
        lat = r["latency_ms"] or {}
        print(f"    {r['rate']:8.0f}/s offered: {r['achieved_rps']:8.1f}/s answered, "
              f"p50 {lat.get('p50', 0):7.2f} p99 {lat.get('p99', 0):8.2f} ms, errors {r['errors']}, "
              f"server CPU {r['server_cpu_cores'] or 0:.2f} cores{'  (meets SLO)' if r['meets_slo'] else ''}")
    most = max(r["achieved_rps"] for r in sweep)
    print(f"    most answered: {most:.1f}/s")
    if knee:
        print(f"(b) capacity: knee {knee['achieved_rps']:.1f}/s over bare in-process {bare['rate']:.1f}/s "
              f"= {knee['achieved_rps'] / bare['rate']:.2f}x; over the same requests decoded in-process "
              f"(JSON, image decode, preprocess, invoke; no HTTP) {bare_requests:.1f}/s = "
              f"{knee['achieved_rps'] / bare_requests:.2f}x")
    else:
        print(f"(b) capacity: no rate met the SLO (bare in-process {bare['rate']:.1f}/s)")
    print(f"(c) update to {args.update_to} and rollback under {half:.0f}/s: {upd['failed']} failed of "
          f"{upd['sent']} ({upd['statuses']}); steps {upd['steps']}")
    for note in doc["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
