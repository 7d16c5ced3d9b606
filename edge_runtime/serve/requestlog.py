"""Request logs on the device: what the model saw and said, for drift monitoring and feedback.

The server hands every finished prediction to ``RequestLog.observe`` on a worker thread. That
call only samples and appends to a bounded in-memory queue: when the queue is full the line is
dropped and counted (``stats()["dropped"]``, for ``/metrics``), so logging never blocks a
request. One background thread drains the queue, turns each instance into one JSON line and
appends it to ``requests-<seq>.jsonl`` in the log folder; a file that reaches ``max_bytes`` is
closed and a new one started, and only the newest ``max_files`` are kept (the oldest are
deleted), so the folder never grows past about ``max_bytes * max_files``.

The input is recorded in one of three modes (``--log-inputs``):

- ``none``: nothing of the input;
- ``summary`` (default): tabular models, per numeric feature the index of its bin (fixed edges:
  the train split's deciles, from the artifact's ``monitoring.bins``, passed in, or else the
  deciles of a normal with the train mean and std recorded in the preprocessing spec), per
  categorical feature its value (``__other__`` outside the vocabulary): bin counts that merge
  by addition across lines and windows; image models, the per-image mean and std and an 8-bin
  intensity histogram of ``raw * scale`` (what the model sees, before standardisation);
- ``raw``: tabular, the raw feature values (what ``edgeship train --add-feedback`` retrains on);
  images, the raw intensities as a nested list, plus the summary statistics.

For int8 artifacts every mode but ``none`` also records ``clipped``: the fraction of the
input's values outside the range the input quantisation can represent.

Feedback (``record_feedback``) appends ``{"request_id", "label", "time"}`` to
``feedback-<seq>.jsonl`` beside the log (same rotation); an id the log never held raises
``UnknownRequest`` (the server answers 404).

Pure numpy and the standard library: this runs on the device.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError, InputError
from edge_runtime.serve.inputstats import (  # noqa: F401 (the log's public names)
    IMAGE_BINS,
    MISSING,
    NORMAL_DECILES,
    OTHER,
    InputRecorder,
    bin_index,
    clipped_fraction,
    default_bins,
    image_edges,
    image_stats,
)

LOG_SCHEMA = 1
MODES = ("none", "summary", "raw")
DEFAULT_MODE = "summary"
DEFAULT_MAX_BYTES = 4 << 20  # 4 MiB a file
DEFAULT_MAX_FILES = 8  # at most ~32 MiB of request logs on the device
DEFAULT_QUEUE = 4096  # instances waiting for the writer; more are dropped and counted
REQUEST_PREFIX = "requests-"
FEEDBACK_PREFIX = "feedback-"
BINS_FILE = "bins.json"  # the bin edges the summary lines index into, written once per folder
# Deciles of the standard normal: the fallback bin edges, mean + std * z.
DRAIN_BATCH = 256  # records the writer takes per wake-up
DRAIN_PAUSE_S = 0.005  # its pause after a partial batch: lets records gather under load
_KNOWN_IDS = 200_000  # request ids remembered for feedback without reading the files


class UnknownRequest(EdgeRuntimeError):
    """Feedback for a request id the log does not hold (never logged, sampled out or rotated away)."""


@dataclass(frozen=True)
class LogConfig:
    """Where and how much to log (``serve --log-dir --log-sample --log-inputs``)."""

    folder: Path
    sample: float = 1.0
    inputs: str = DEFAULT_MODE
    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES
    queue_size: int = DEFAULT_QUEUE
    seed: int | None = None

    def check(self) -> None:
        if not (isinstance(self.sample, int | float) and 0 < self.sample <= 1):
            raise InputError(f"--log-sample {self.sample}: use a fraction in (0, 1], e.g. 0.1 for one in ten")
        if self.inputs not in MODES:
            raise InputError(f"--log-inputs {self.inputs}: use one of {', '.join(MODES)}")
        if self.max_bytes < 4096:
            raise InputError(f"log file size {self.max_bytes} bytes: use at least 4096")
        if self.max_files < 2:
            raise InputError(f"log file cap {self.max_files}: keep at least 2 files")
        if self.queue_size < 1:
            raise InputError(f"log queue size {self.queue_size}: use at least 1")


# ---------------------------------------------------------------- the input record


class RotatingFile:
    """Append-only JSON lines in ``<prefix><seq>.jsonl``: a new file past ``max_bytes``, the
    oldest deleted past ``max_files``. Used by one thread at a time (the caller locks)."""

    def __init__(self, folder: Path, prefix: str, max_bytes: int, max_files: int):
        self.folder, self.prefix = folder, prefix
        self.max_bytes, self.max_files = max_bytes, max_files
        self._fh: Any = None
        self._size = 0
        self.deleted = 0
        existing = self.files()
        self._seq = _seq(existing[-1], prefix) if existing else 0

    def files(self) -> list[Path]:
        """This stream's files, oldest first."""
        found = [p for p in self.folder.glob(f"{self.prefix}*.jsonl") if _seq(p, self.prefix) >= 0]
        return sorted(found, key=lambda p: _seq(p, self.prefix))

    def write(self, line: str) -> None:
        data = line.encode("utf-8") + b"\n"
        if self._fh is None or (self._size and self._size + len(data) > self.max_bytes):
            self._rotate()
        self._fh.write(data)
        self._size += len(data)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _rotate(self) -> None:
        self.close()
        self._seq += 1
        path = self.folder / f"{self.prefix}{self._seq:06d}.jsonl"
        self._fh = open(path, "ab")  # noqa: SIM115 - held open across writes, closed on rotate/close
        self._size = path.stat().st_size
        for old in self.files()[:-self.max_files]:
            old.unlink(missing_ok=True)
            self.deleted += 1


def _seq(path: Path, prefix: str) -> int:
    stem = path.name[len(prefix):-len(".jsonl")]
    return int(stem) if stem.isdigit() else -1


# ---------------------------------------------------------------- the log


class RequestLog:
    """The server's request log: ``observe`` on the request path, one writer thread behind it.

    ``artifacts`` maps a model name to its artifact.json (``models.ModelVersion.artifact``): the
    preprocessing spec and input quantisation the input record needs. ``bins`` overrides the
    numeric bin edges (``{column: edges}``).
    """

    def __init__(self, config: LogConfig, artifacts: Mapping[str, Mapping[str, Any]] | None = None,
                 bins: Mapping[str, Sequence[float]] | None = None):
        config.check()
        self.config = config
        self.folder = Path(config.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._bins = bins
        self._recorders: dict[str, InputRecorder] = {}
        self._artifacts: dict[str, Mapping[str, Any]] = dict(artifacts or {})
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=config.queue_size)
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()  # counters and the files
        self._requests = RotatingFile(self.folder, REQUEST_PREFIX, config.max_bytes, config.max_files)
        self._feedback = RotatingFile(self.folder, FEEDBACK_PREFIX, config.max_bytes, config.max_files)
        self._known: OrderedDict[str, None] = OrderedDict()
        self.counts = {"observed": 0, "sampled_out": 0, "queued": 0, "dropped": 0, "written": 0,
                       "errors": 0, "feedback": 0}
        self._thread = threading.Thread(target=self._drain, name="request-log", daemon=True)
        self._thread.start()

    # -------------------------------------------------------- the request path

    def set_artifact(self, model: str, artifact: Mapping[str, Any]) -> None:
        """A model name's artifact (a new version after an update)."""
        with self._lock:
            self._artifacts[model] = artifact
            self._recorders.pop(model, None)

    def observe(self, record: Mapping[str, Any]) -> None:
        """The server's observer: sample, then enqueue without waiting (full: drop and count).

        ``record`` (``serve.app``): time, request_id, model, version, queue_s, preprocess_s,
        invoke_s, instances, predictions; optionally sha256, total_s and ``inputs`` (the
        preprocessed batch, which saves the writer redoing the preprocessing).
        """
        with self._lock:
            self.counts["observed"] += 1
            if self.config.sample < 1 and self._rng.random() >= self.config.sample:
                self.counts["sampled_out"] += 1
                return
        try:
            self._queue.put_nowait(dict(record))
        except queue.Full:
            with self._lock:
                self.counts["dropped"] += 1
            return
        with self._lock:
            self.counts["queued"] += 1

    def stats(self) -> dict[str, Any]:
        """Counters for ``/metrics``: observed, sampled out, dropped, written, errors, feedback, files."""
        with self._lock:
            return {**self.counts, "pending": self._queue.qsize(),
                    "files": len(self._requests.files()), "files_deleted": self._requests.deleted}

    # -------------------------------------------------------- feedback

    def record_feedback(self, request_id: str, label: Any, instance: int | None = None) -> dict[str, Any]:
        """Store the true label of a logged request beside the log; ``UnknownRequest`` if never logged."""
        request_id = str(request_id)
        if not request_id or len(request_id) > 200:
            raise InputError("feedback needs the request id the prediction answered with (X-Request-Id)")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise InputError('feedback needs a "label": the true class name')
        self.flush()
        if not self._is_known(request_id):
            raise UnknownRequest(f"request id {request_id!r} is not in the request log (never logged, "
                                 "sampled out by --log-sample, or rotated away)")
        line = {"schema": LOG_SCHEMA, "time": time.time(), "request_id": request_id, "label": str(label)}
        if instance is not None:
            line["instance"] = int(instance)
        with self._lock:
            self._feedback.write(json.dumps(line, separators=(",", ":")))
            self._feedback.flush()
            self.counts["feedback"] += 1
        return line

    def _is_known(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._known:
                return True
            files = self._requests.files()
        needle = f'"request_id":{json.dumps(request_id)}'.encode()
        for path in reversed(files):  # bounded: at most max_files * max_bytes
            try:
                if needle in path.read_bytes():
                    return True
            except OSError:
                continue
        return False

    # -------------------------------------------------------- the writer

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until every queued record is written and the file flushed."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.001)
        with self._lock:
            self._requests.flush()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (waiting up to ``timeout`` s), stop the writer, close the files.

        A writer still busy after ``timeout`` closes the files itself when it reaches the end.
        """
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close_files()

    def _close_files(self) -> None:
        with self._lock:
            self._requests.close()
            self._feedback.close()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self) -> None:
        """Write what is queued, a batch at a time, then pause briefly: under load one wake-up
        serves many requests instead of one each, and a line still reaches the file within
        ``DRAIN_PAUSE_S``."""
        while True:
            batch = [self._queue.get()]
            while len(batch) < DRAIN_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            try:
                self._write([r for r in batch if r is not None])
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                self._close_files()
                return
            if len(batch) < DRAIN_BATCH:
                time.sleep(DRAIN_PAUSE_S)

    def _write(self, records: list[dict[str, Any]]) -> None:
        lines: list[str] = []
        errors = 0
        for record in records:
            try:
                lines += self._lines(record)
            except (EdgeRuntimeError, ValueError, TypeError, KeyError, AttributeError, OSError):
                errors += 1  # a record the writer cannot read: counted, never fatal to serving
        with self._lock:
            self.counts["errors"] += errors
            try:
                for line in lines:
                    self._requests.write(line)
                self.counts["written"] += len(lines)
                if self._queue.empty():
                    self._requests.flush()
            except OSError:
                self.counts["errors"] += 1

    def _recorder(self, model: str) -> InputRecorder:
        with self._lock:
            rec = self._recorders.get(model)
            if rec is None:
                rec = InputRecorder(self._artifacts.get(model) or {}, self.config.inputs, self._bins)
                self._recorders[model] = rec
                self._write_bins(model, rec)
        return rec

    def _write_bins(self, model: str, rec: InputRecorder) -> None:
        path = self.folder / BINS_FILE
        try:
            known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            known = {}
        known[model] = rec.describe()
        tmp = path.with_name(f".{BINS_FILE}.tmp")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        os.replace(tmp, path)

    def _lines(self, record: Mapping[str, Any]) -> list[str]:
        """One JSON line per instance of a finished request."""
        model = str(record.get("model", ""))
        rec = self._recorder(model)
        artifact = self._artifacts.get(model) or {}
        request_id = str(record.get("request_id", ""))
        instances = list(record.get("instances") or [])
        predictions = list(record.get("predictions") or [])
        inputs = record.get("inputs")
        parts = {k: record.get(f"{k}_s") for k in ("queue", "preprocess", "invoke", "total")}
        if parts["total"] is None and None not in (parts["queue"], parts["preprocess"], parts["invoke"]):
            parts["total"] = parts["queue"] + parts["preprocess"] + parts["invoke"]
        latency = {k: round(float(v) * 1000, 4) for k, v in parts.items() if v is not None}
        version = {"name": model, "version": str(record.get("version", "")),
                   "sha256": str(record.get("sha256") or artifact.get("sha256", ""))}
        lines = []
        for i, pred in enumerate(predictions):
            instance = instances[i] if i < len(instances) else None
            x = None if inputs is None else np.asarray(inputs[i], dtype=np.float32)
            try:
                inp = rec.record(instance, x) if instance is not None or x is not None else {"mode": "none"}
            except (EdgeRuntimeError, ValueError, TypeError, OSError):
                inp = {"mode": "error"}
                with self._lock:
                    self.counts["errors"] += 1
            line = {"schema": LOG_SCHEMA, "time": float(record.get("time", time.time())),
                    "request_id": request_id, "instance": i, "model": version, "latency_ms": latency,
                    "prediction": {"label": pred.get("label"), "index": pred.get("index")},
                    "confidence": round(float(pred.get("confidence", float("nan"))), 6),
                    "input": inp}
            lines.append(json.dumps(line, separators=(",", ":")))
        with self._lock:
            self._known[request_id] = None
            while len(self._known) > _KNOWN_IDS:
                self._known.popitem(last=False)
        return lines
