"""Drift monitoring: how often the defaults alarm on clean traffic, and how fast they see a shift.

    python -m edgeship.benchmarks.suites.drift [--windows 50] [--shift-windows 4] [--epochs 60]
    python -m edgeship.benchmarks.suites.drift --smoke   # few windows, briefly trained models

Two runs are made with the ``edgeship`` command, as a user would: breast_cancer (MLP, test
split 40 % = 228 rows, so a window of 200 distinct held-out rows exists) exported as TFLite
float32, and digits (CNN, 270 test rows) exported as TFLite int8. Requests are replayed the
way the server logs them: each raw row or image is predicted by the exported artifact through
``edge_runtime`` and handed to ``edge_runtime.serve.requestlog.RequestLog.observe`` with its
timings. ``edgeship monitor --window 200`` then judges the log folder.

1. **False alarms.** Windows of 200 requests, each 200 distinct rows of the held-out test
   split in a fresh random order (sampling without replacement: a bootstrap of a 228-row split
   repeats rows, which a KS test rightly calls a different distribution). The figure is the
   fraction of windows that alert at the default thresholds; target <= 5 %. The windows
   overlap in rows, so they are not independent: the interval is wider than the count suggests.
2. **Shifted streams.** Requests until the first alert (target <= 2 windows = 400 requests) and
   what the first alert names: breast_cancer with ``mean radius`` x 1.5; breast_cancer with
   the class priors moved to 80 % malignant (rows of that class drawn with replacement);
   digits inverted (16 - x) with Gaussian noise (sigma 1.6, clipped to 0-16).

Also printed: the log writer's cost per line (``summary`` and ``raw``) in this replay.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.artifact import read_artifact
from edgeship.benchmarks.suites.smoke import parse_args

SMOKE = {"windows": 4, "shift_windows": 2, "epochs": 8}
WINDOW = 200
FEATURE = "mean radius"


def _edgeship(env: dict[str, str], *args: str, ok: Sequence[int] = (0,),
              timeout: float = 1800) -> dict[str, Any]:
    """``python -m edgeship ARGS --json``: its JSON object (exit codes in ``ok`` accepted)."""
    done = subprocess.run([sys.executable, "-m", "edgeship", *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode not in ok:
        raise SystemExit(f"edgeship {' '.join(args)} failed ({done.returncode}): "
                         f"{done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def _make_run(env: dict[str, str], dataset: str, quantize: str, epochs: int, *extra: str) -> Path:
    train = _edgeship(env, "train", "--dataset", dataset, "--epochs", str(epochs), *extra)
    run = Path(train["run_dir"])
    _edgeship(env, "export", str(run), "--format", "tflite", "--quantize", quantize)
    return run


def _rows(run: Path) -> tuple[list[dict[str, Any]], list[str]]:
    with open(run / "data" / "test_raw.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [r.pop("__label__") for r in rows]
    return [{k: float(v) for k, v in r.items()} for r in rows], labels


def _images(run: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run / "data" / "test_raw.npz") as npz:
        return npz["x"], npz["y"]


def train_deciles(run: Path) -> dict[str, list[float]]:
    """The train split's deciles per numeric column: the summary log's bin edges, as a deploy
    passes them to the device (``edgeship.devices.monitoring.reference.summary_bins``, which this
    floor cannot import)."""
    spec = json.loads((run / "manifest.json").read_text())["data"]["preprocessing"]
    if spec.get("kind") != "tabular":
        return {}
    with np.load(run / "data" / "splits.npz") as npz:
        x = npz["x_train"]
    out, j = {}, 0
    for col in spec["columns"]:
        if col["type"] == "categorical":
            j += len(col["vocabulary"])
            continue
        raw = x[:, j].astype(np.float64) * (col["std"] or 1.0) + col["mean"]
        out[col["name"]] = [float(c) for c in np.unique(np.quantile(raw, np.linspace(0, 1, 11)[1:-1]))]
        j += 1
    return out


class Replay:
    """Requests through the exported artifact into a request log, as the server would log them."""

    def __init__(self, artifact: Path, folder: Path, mode: str):
        from edge_runtime.model import EdgeModel
        from edge_runtime.serve.requestlog import LogConfig, RequestLog

        self.model = EdgeModel.load(artifact)
        bins = train_deciles(artifact.parents[2])
        self.log = RequestLog(LogConfig(folder, inputs=mode), {"base": self.model.artifact}, bins=bins)
        self.t = time.time()
        self.write_s = 0.0
        self.lines = 0

    def window(self, instances: list[Any]) -> None:
        """One window of requests, one instance each; then wait for the writer (a server is slower
        than this loop, so the log is given its time instead of dropping lines)."""
        for inst in instances:
            t0 = time.perf_counter()
            x = self.model.preprocess([inst] if isinstance(inst, dict) else np.asarray(inst)[None])
            t1 = time.perf_counter()
            probs = self.model.infer(x)[0]
            t2 = time.perf_counter()
            k = int(probs.argmax())
            self.t += 0.05
            self.log.observe({"time": self.t, "request_id": uuid.uuid4().hex, "model": "base", "version": 1,
                              "queue_s": 0.0, "preprocess_s": t1 - t0, "invoke_s": t2 - t1,
                              "instances": [inst], "predictions": [{
                                  "label": self.model.labels[k], "index": k, "confidence": float(probs[k])}]})
        t0 = time.perf_counter()
        self.log.flush(timeout=120)
        self.write_s += time.perf_counter() - t0
        self.lines += len(instances)

    def close(self) -> dict[str, Any]:
        self.log.close()
        return self.log.stats()


def _monitor(env: dict[str, str], run: Path, folder: Path) -> dict[str, Any]:
    return _edgeship(env, "monitor", str(run), "--from", str(folder), "--window", str(WINDOW), "--no-save",
                     ok=(0, 3))


def _false_alarms(env: dict[str, str], run: Path, artifact: Path, folder: Path, mode: str,
                  pool: list[Any], windows: int, rng: np.random.Generator) -> dict[str, Any]:
    replay = Replay(artifact, folder, mode)
    t0 = time.perf_counter()
    for _ in range(windows):
        idx = rng.permutation(len(pool))[:WINDOW]
        replay.window([pool[i] for i in idx])
    stats = replay.close()
    per_line_us = (time.perf_counter() - t0) / max(replay.lines, 1) * 1e6
    result = _monitor(env, run, folder)
    ws = result["results"][0]["windows"]
    alerts = [a for w in ws for a in w["alerts"]]
    return {"mode": mode, "windows": len(ws), "alerting": sum(1 for w in ws if w["alerts"]), "alerts": alerts,
            "dropped": stats["dropped"], "replay_us_per_request": round(per_line_us, 1)}


def _first_alert(env: dict[str, str], run: Path, artifact: Path, folder: Path, mode: str,
                 make: Callable[[np.random.Generator], list[Any]], windows: int,
                 rng: np.random.Generator) -> dict[str, Any]:
    replay = Replay(artifact, folder, mode)
    for _ in range(windows):
        replay.window(make(rng))
    replay.close()
    ws = _monitor(env, run, folder)["results"][0]["windows"]
    first = next((w for w in ws if w["alerts"]), None)
    return {"windows": len(ws), "first": None if first is None else first["index"] + 1,
            "requests": None if first is None else (first["index"] + 1) * WINDOW,
            "named": [] if first is None else first["alerts"]}


def _writer_cost(artifact: Path, folder: Path, pool: list[Any]) -> dict[str, float]:
    """Microseconds of the log writer's thread per line, by mode (the request path only enqueues)."""
    from edge_runtime.serve.requestlog import LogConfig, RequestLog

    out = {}
    records = [{"time": 0.0, "request_id": f"r{i}", "model": "base", "version": 1, "queue_s": 0.0,
                "preprocess_s": 0.0, "invoke_s": 0.0, "instances": [pool[i % len(pool)]],
                "predictions": [{"label": "0", "index": 0, "confidence": 0.9}]} for i in range(2000)]

    meta = read_artifact(artifact)
    for mode in ("none", "summary", "raw"):
        log = RequestLog(LogConfig(folder / mode, inputs=mode, queue_size=len(records) + 1), {"base": meta})
        t0 = time.perf_counter()
        for r in records:
            log.observe(r)
        enqueue = time.perf_counter() - t0
        log.flush(timeout=300)
        total = time.perf_counter() - t0
        log.close()
        out[mode] = {"observe_us": round(enqueue / len(records) * 1e6, 2),
                     "write_us": round(total / len(records) * 1e6, 1)}
    return out


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeship.benchmarks.suites.drift", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=50, help="clean windows of 200 per stream")
    parser.add_argument("--shift-windows", type=int, default=4, help="windows of 200 per shifted stream")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (early stopping applies)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parse_args(parser, argv, SMOKE)
    rng = np.random.default_rng(args.seed)
    figures: dict[str, Any] = {"window": WINDOW}
    with tempfile.TemporaryDirectory(prefix="edgeship-drift-suite-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "EDGESHIP_RUNS_DIR": str(root / "runs"), "TF_USE_LEGACY_KERAS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "160"}
        bc = _make_run(env, "breast_cancer", "float32", args.epochs, "--test-fraction", "0.4")
        digits = _make_run(env, "digits", "int8", args.epochs)
        bc_art, dg_art = bc / "exports/base/tflite-float32", digits / "exports/base/tflite-int8"
        rows, labels = _rows(bc)
        images, _ = _images(digits)
        pictures = [img[..., 0].tolist() for img in images]
        fa = figures["false_alarms"] = {
            "breast_cancer summary": _false_alarms(env, bc, bc_art, root / "bc-null-s", "summary", rows,
                                                   args.windows, rng),
            "breast_cancer raw": _false_alarms(env, bc, bc_art, root / "bc-null-r", "raw", rows,
                                               args.windows, rng),
            "digits summary": _false_alarms(env, digits, dg_art, root / "dg-null", "summary", pictures,
                                            args.windows, rng),
        }
        malignant = [r for r, lab in zip(rows, labels, strict=True) if lab == "malignant"]
        benign = [r for r, lab in zip(rows, labels, strict=True) if lab != "malignant"]

        def scaled(g: np.random.Generator) -> list[Any]:
            return [{**rows[i], FEATURE: rows[i][FEATURE] * 1.5} for i in g.permutation(len(rows))[:WINDOW]]

        def priors(g: np.random.Generator) -> list[Any]:
            pick = [malignant[i] for i in g.integers(len(malignant), size=int(0.8 * WINDOW))]
            pick += [benign[i] for i in g.integers(len(benign), size=WINDOW - len(pick))]
            return [pick[i] for i in g.permutation(len(pick))]

        def inverted(g: np.random.Generator) -> list[Any]:
            idx = g.permutation(len(images))[:WINDOW]
            noisy = np.clip(16.0 - images[idx] + g.normal(0, 1.6, images[idx].shape), 0, 16)
            return [img[..., 0].tolist() for img in noisy]

        sh = figures["shifted"] = {
            f"breast_cancer '{FEATURE}' x1.5": _first_alert(env, bc, bc_art, root / "bc-scaled", "summary",
                                                           scaled, args.shift_windows, rng),
            "breast_cancer priors 80% malignant": _first_alert(env, bc, bc_art, root / "bc-priors", "summary",
                                                               priors, args.shift_windows, rng),
            "digits inverted + noise": _first_alert(env, digits, dg_art, root / "dg-inverted", "summary",
                                                    inverted, args.shift_windows, rng),
        }
        expected = {f"breast_cancer '{FEATURE}' x1.5": f"feature '{FEATURE}'",
                    "breast_cancer priors 80% malignant": "prediction mix",
                    "digits inverted + noise": "feature 'image."}
        figures["writer"] = {"breast_cancer": _writer_cost(bc_art, root / "cost-bc", rows),
                             "digits": _writer_cost(dg_art, root / "cost-dg", pictures)}
    print(f"\nfalse alarms: windows of {WINDOW} from the held-out test split, default thresholds "
          "(target <= 5 %)")
    for name, f in fa.items():
        rate = f["alerting"] / max(f["windows"], 1)
        print(f"  {name:<24} {f['alerting']}/{f['windows']} windows = {rate:.1%}   "
              f"dropped log lines {f['dropped']}   {_verdict(rate <= 0.05)}")
        for a in f["alerts"][:3]:
            print(f"      alert: {a}")
    print(f"\nshifted streams: requests until the first alert (target <= 2 windows = {2 * WINDOW} requests)")
    for name, s in sh.items():
        named = next((a for a in s["named"] if expected[name] in a), s["named"][0] if s["named"] else "none")
        right = any(expected[name] in a for a in s["named"])
        when = "no alert" if s["first"] is None else f"{s['requests']} requests (window {s['first']})"
        print(f"  {name:<36} {when:<28} names the right statistic: {'yes' if right else 'no'}   "
              f"{_verdict(s['first'] is not None and s['first'] <= 2 and right)}")
        print(f"      first alert: {named}")
    print("\nrequest log cost per line (us): observe() on the request path / the writer thread")
    for model, modes in figures["writer"].items():
        print(f"  {model:<14} " + "   ".join(f"{m} {c['observe_us']:.1f} / {c['write_us']:.0f}"
                                            for m, c in modes.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
