"""``python -m edge_runtime``: predict and bench on a device, with argparse only.

Errors are one line on stderr (``error: ...``) and exit code 2, as in the edgeship CLI.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError, InputError
from edge_runtime.serve import add_parser as add_serve_parser

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".tif", ".tiff"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge_runtime",
        description="Run and time an exported edgeship model (an export folder with artifact.json).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="Predict labels for raw inputs.")
    p.add_argument("artifact", help="export folder (holds artifact.json and the model file)")
    p.add_argument("input", help=".npy of raw inputs, a CSV of raw rows with a header, or an image file")
    p.add_argument("--preprocessed", action="store_true",
                   help="the .npy already holds model inputs (skip the preprocessing spec)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: runtime's choice)")
    p.add_argument("--top", type=int, default=1, help="classes to show per input (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    b = sub.add_parser("bench", help="Time artifacts in interleaved rounds on synthetic raw inputs; "
                                     "--json prints one result per line in the schema of "
                                     "edge_runtime/result.py.")
    b.add_argument("artifacts", nargs="+", metavar="artifact",
                   help="export folder(s) (each holds artifact.json and the model file)")
    b.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    b.add_argument("--runs", type=int, default=200, help="timed samples per round (default 200)")
    b.add_argument("--warmup", type=int, default=20, help="discarded warm-up calls per round (default 20)")
    b.add_argument("--threads", default=None,
                   help="runtime threads, comma-separated, e.g. 1,2 (default: runtime's choice)")
    b.add_argument("--test", default=None, metavar="FILE",
                   help="a test split (.npz or .json, see edge_runtime/testset.py): measure accuracy here")
    b.add_argument("--no-e2e", action="store_true", help="skip the end-to-end timing")
    b.add_argument("--on", choices=("host", "pi"), default=None,
                   help="where this runs, recorded as the result's 'on' (default: $EDGESHIP_DEVICE, "
                        "else pi on a Raspberry Pi board, else host)")
    b.add_argument("--no-samples", action="store_true",
                   help="leave the raw timings (samples_ms) out of the JSON")
    b.add_argument("--progress", action="store_true",
                   help="print one 'progress DONE/TOTAL STATUS' line per measurement on stderr")
    b.add_argument("--json", action="store_true", help="print one JSON object per result, one per line")

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "serve":
            from edge_runtime.serve import run_from_args

            return run_from_args(args)
        return _bench(args)
    except EdgeRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------- predict


def _predict(args: argparse.Namespace) -> int:
    from edge_runtime.model import EdgeModel

    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}")
    model = EdgeModel.load(args.artifact, threads=args.threads)
    path = Path(args.input)
    if path.is_dir():
        raise InputError(f"input {path} is a folder: pass one .npy, .csv or image file")
    if not path.is_file():
        raise InputError(f"input {path} does not exist")
    if args.preprocessed:
        if path.suffix.lower() != ".npy":
            raise InputError("--preprocessed needs a .npy file of model inputs")
        probs = model.infer(_load_npy(path))
    else:
        probs = model.infer(model.preprocess(read_raw_input(model, path)))
    if len(probs) == 0:
        raise InputError(f"{path.name} holds no inputs (an empty batch): nothing to predict")
    labels = model.labels
    rows = []
    for p in probs:
        order = np.argsort(-p, kind="stable")[: args.top]
        rows.append({
            "label": labels[int(order[0])],
            "index": int(order[0]),
            "confidence": float(p[order[0]]),
            "top": [{"label": labels[int(k)], "probability": float(p[k])} for k in order],
            "probabilities": [float(v) for v in p],
        })
    if args.json:
        print(json.dumps({"artifact": str(model.path), "predictions": rows}))
    else:
        for i, r in enumerate(rows):
            shown = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
            print(f"{i}\t{shown}")
    return 0


def read_raw_input(model: Any, path: Path) -> Any:
    """A raw batch from a .npy, a CSV with a header, or an image file."""
    suffix = path.suffix.lower()
    spec = model.preprocessing
    if suffix == ".npy":
        arr = _load_npy(path)
        if spec.get("kind") == "image":
            single = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4)
                                      and arr.shape[:2] == (spec["height"], spec["width"]))
            return arr[None] if single else arr
        return arr[None] if arr.ndim == 1 else arr
    if suffix == ".csv":
        if spec.get("kind") != "tabular":
            raise InputError("a CSV input needs a tabular model; this one takes images")
        return _read_csv(path, model.columns)
    if suffix in IMAGE_SUFFIXES:
        if spec.get("kind") != "image":
            raise InputError("an image input needs an image model; this one takes table rows (CSV)")
        return read_image(path, spec)[None]
    raise InputError(f"cannot read {path.name}: use .npy, .csv (with a header) or an image file")


def _load_npy(path: Path) -> np.ndarray:
    """One numeric array from a ``.npy``; an ``.npz`` (np.load sniffs the zip), an empty or a
    truncated file, or pickled objects are each one InputError."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{path} is not a numeric .npy ({reason}); save numbers only with numpy.save, "
            "or use a CSV for mixed rows"
        ) from e
    if not isinstance(arr, np.ndarray):  # an NpzFile: a .npz archive under a .npy name
        names = ", ".join(arr.files)
        arr.close()
        raise InputError(
            f"{path} is an .npz archive (arrays: {names or 'none'}), not a .npy: save one array "
            "with numpy.save"
        )
    if arr.size == 0:
        raise InputError(f"{path} holds an empty array {tuple(arr.shape)}: nothing to predict")
    return arr


def _read_csv(path: Path, columns: list[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise InputError(f"{path.name} lacks column(s) {', '.join(missing)}; its header "
                                 f"needs: {', '.join(columns)}")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise InputError(f"{path.name} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                         f"{e.start}): save the CSV as UTF-8") from e
    except csv.Error as e:
        raise InputError(f"{path.name} is not a readable CSV ({e})") from e
    if not rows:
        raise InputError(f"{path.name} has a header but no rows")
    return rows


def read_image(path: Path, spec: dict[str, Any]) -> np.ndarray:
    """An 8- or 16-bit image file -> (H, W, C) raw intensities rescaled to the spec's ``raw_range``.

    Read by ``edge_runtime.images``, as training reads image folders: 16-bit greyscale scaled
    to 0-255, 32-bit and float images and decompression bombs refused.
    """
    if importlib.util.find_spec("PIL") is None:
        raise InputError("reading image files needs Pillow: pip install pillow (or pass a .npy)")
    from edge_runtime.images import ImageRefused, image_array, open_image

    mode = "L" if int(spec["channels"]) == 1 else "RGB"
    size = (int(spec["width"]), int(spec["height"]))
    try:
        with open_image(path) as img:
            arr = image_array(img, mode, size)
    except ImageRefused as e:
        raise InputError(str(e)) from e
    except OSError as e:
        raise InputError(f"{path} is not a readable image ({e})") from e
    if arr.ndim == 2:
        arr = arr[..., None]
    lo, hi = (float(v) for v in spec.get("raw_range", [0, 255]))
    return (lo + arr / 255.0 * (hi - lo)).astype(np.float32)


# ---------------------------------------------------------------- bench


def _parse_threads(text: str | None) -> list[int | None]:
    if text is None or not text.strip():
        return [None]
    out: list[int | None] = []
    for part in text.split(","):
        try:
            n = int(part)
        except ValueError:
            raise InputError(f"--threads takes numbers like 1,2; got {part!r}") from None
        if n < 1:
            raise InputError(f"--threads must be 1 or more, got {n}")
        if n not in out:
            out.append(n)
    return out


def _bench(args: argparse.Namespace) -> int:
    from edge_runtime.rounds import apply_threads_env, bench_session
    from edge_runtime.testset import read_testset

    threads = _parse_threads(args.threads)
    apply_threads_env(threads)
    test = read_testset(args.test) if args.test else None

    def progress(done: int, total: int, status: str) -> None:
        print(f"progress {done}/{total} {status}", file=sys.stderr, flush=True)

    results = bench_session(args.artifacts, threads, rounds=args.rounds, runs=args.runs,
                            warmup=args.warmup, on=args.on, test=test, end_to_end=not args.no_e2e,
                            keep_samples=not args.no_samples,
                            progress=progress if args.progress else None,
                            on_error=lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
    for result in results:
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            _print_result(result)
    return 0


def _print_result(result: dict[str, Any]) -> None:
    lat = result["latency_ms"]
    dev = result["device"]
    ci = result["p50_ci_ms"]
    print(f"[{result['device_id']}] {result['format']} {result['quantize']} via {result['backend']}"
          f" {result['backend_version']} on {dev['cpu_model']} ({dev['arch']}, {dev['cores']} cores"
          f"{', EMULATED' if dev['emulated'] else ''}); threads={result['threads'] or 'default'}"
          f" rounds={result['rounds']} runs={result['runs']} k={result['calls_per_sample']}")
    level = f" at {result['ci_level']:.2%}" if result.get("ci_level") else ""
    interval = f" [{ci[0]:.4f}, {ci[1]:.4f}]{level}" if ci else " (one round: no interval)"
    print(f"  invoke      p50 {lat['p50']:.4f} ms{interval}  p90 {lat['p90']:.4f}"
          f"  mean {lat['mean']:.4f} +- {lat['std']:.4f}")
    tail = result.get("tail_ms")
    if tail:
        print(f"  tail        p99 {tail['p99']:.4f} ms  max {tail['max']:.4f} ({tail['label']})")
    if result["end_to_end_ms"]:
        e2e = result["end_to_end_ms"]
        print(f"  end to end  p50 {e2e['p50']:.4f} ms  p90 {e2e['p90']:.4f}  p99 {e2e['p99']:.4f}")
    acc = "" if result["accuracy"] is None else f"  accuracy {result['accuracy']:.4f} (measured here)"
    print(f"  init {result['init_ms']:.1f} ms  first {result['first_ms']:.3f} ms  "
          f"peak RSS {result['peak_rss_mb']:.1f} MB  model {result['bytes']} bytes{acc}")
