"""Admission and the interpreters: a bounded wait for one of N interpreter slots.

Overload is an answer: at most ``max_queue`` requests wait for a slot; one more raises
``Overloaded`` at once (the server's 503 with Retry-After) instead of letting latency grow
without bound. A request that cannot get a slot before its deadline gets ``DeadlineExceeded``
(504) without spending a runtime call. Slot ``i`` preprocesses and invokes on interpreter ``i``
of the version it resolves when it starts, so an update never runs a request on two models.
"""

from __future__ import annotations

import base64
import binascii
import io
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.preprocess import raw_from_u8
from edge_runtime.serve.errors import BadRequest, DeadlineExceeded, HTTPError, NotFound, Overloaded
from edge_runtime.serve.models import ModelStore, ModelVersion

MAX_INSTANCES = 256  # per request: a larger batch is a client bug or an attempt to hog a worker


@dataclass
class Job:
    """One predict request between admission and its answer."""

    model: str
    instances: list[Any]
    deadline: float  # time.perf_counter() seconds
    request_id: str
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Answer:
    """A finished job: the JSON predictions and where the time went (seconds)."""

    predictions: list[dict[str, Any]]
    version: ModelVersion
    queue_s: float
    preprocess_s: float
    invoke_s: float
    inputs: np.ndarray | None = None  # the preprocessed batch: the request log's input summary


class WorkerPool:
    """``workers`` interpreter slots; a request runs on the thread that received it, once it holds one.

    Measured: handing each request to a worker thread and back cost two thread wake-ups, about
    0.9 ms per request on a busy 2-core machine, more than the digits CNN's whole preprocess and
    invoke (0.25 ms). So the connection's thread waits for a free slot (at most ``max_queue``
    threads wait; past that ``Overloaded`` at once), then preprocesses and invokes on the slot's
    interpreter. Slot ``i`` always uses interpreter ``i`` of a version: no interpreter is ever
    used by two threads at once.
    """

    def __init__(self, store: ModelStore, workers: int, max_queue: int,
                 on_done: Callable[[Job, Answer | None, BaseException | None], None] | None = None):
        self.store, self.workers = store, workers
        self._max_queue = max_queue
        self._slots: queue.LifoQueue[int] = queue.LifoQueue()  # LIFO: the warmest interpreter first
        for i in range(workers):
            self._slots.put(i)
        self._on_done = on_done
        self._waiting = 0
        self._busy = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Nothing to start: requests run on their connection's thread."""

    def stop(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout`` s) for the requests in progress to finish."""
        end = time.monotonic() + timeout
        while (self._busy or self._waiting) and time.monotonic() < end:
            time.sleep(0.01)

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @property
    def depth(self) -> int:
        return self._waiting

    @property
    def busy(self) -> int:
        return self._busy

    def queued(self, delta: int) -> None:
        """A front that holds admitted predictions in its own queue (``loopfront``) counts them here,
        so ``admit`` and ``depth`` see them as waiting."""
        with self._lock:
            self._waiting += delta

    def admit(self) -> None:
        """``Overloaded`` if the queue is full now (``run`` checks again, under the lock)."""
        if self._waiting >= self._max_queue and self._slots.empty():
            raise self._overloaded()

    def _overloaded(self) -> Overloaded:
        return Overloaded(f"the queue is full ({self._max_queue} requests waiting); retry later",
                          headers={"Retry-After": "1"})

    def check(self, job: Job) -> None:
        if self.store.get(job.model) is None:
            names = ", ".join(self.store.names()) or "none"
            raise NotFound(f"no model named {job.model!r}; serving: {names}")
        if len(job.instances) > MAX_INSTANCES:
            raise BadRequest(f"{len(job.instances)} instances in one request; send at most {MAX_INSTANCES}")

    def run(self, job: Job) -> Answer:
        """Wait for a slot (bounded queue, the job's deadline), then answer on its interpreter."""
        out = self.run_batch([job])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def run_batch(self, jobs: list[Job]) -> list[Answer | Exception]:
        """Jobs of one model on one slot and one runtime call (dynamic batching; one job without).

        Each job gets its own answer or its own error: a bad instance in one request never fails
        another. Jobs past their deadline get ``DeadlineExceeded`` without a runtime call.
        """
        out: list[Answer | Exception | None] = [None] * len(jobs)
        for k, job in enumerate(jobs):
            try:
                self.check(job)
            except HTTPError as e:
                out[k] = e
        live = [k for k in range(len(jobs)) if out[k] is None]
        if not live:
            return out  # type: ignore[return-value]
        with self._lock:
            if self._waiting >= self._max_queue and self._slots.empty():
                raise self._overloaded()
            self._waiting += 1
        try:
            now = time.perf_counter()
            for k in [k for k in live if jobs[k].deadline < now]:  # waited out in a front's queue
                out[k] = _late()
            live = [k for k in live if out[k] is None]
            if not live:
                return out  # type: ignore[return-value]
            index = self._slots.get(timeout=max(0.0, max(jobs[k].deadline for k in live) - now))
        except queue.Empty:
            for k in live:
                out[k] = _late()
            return out  # type: ignore[return-value]
        finally:
            with self._lock:
                self._waiting -= 1
        started = time.perf_counter()
        with self._lock:
            self._busy += 1
        try:
            for k in live:
                if jobs[k].deadline < started:
                    out[k] = _late()
            live = [k for k in live if out[k] is None]
            try:
                answers = self._answer(index, [jobs[k] for k in live], started) if live else []
                for k, answer in zip(live, answers, strict=True):
                    out[k] = answer
            except Exception as e:  # a runtime bug: every job of the call gets it (the front's 500)
                for k in live:
                    out[k] = e
            return out  # type: ignore[return-value]
        finally:
            with self._lock:
                self._busy -= 1
            self._slots.put(index)
            if self._on_done is not None:
                for job, o in zip(jobs, out, strict=True):
                    self._on_done(job, o if isinstance(o, Answer) else None,
                                  o if isinstance(o, BaseException) else None)

    def _answer(self, index: int, jobs: list[Job], started: float) -> list[Answer | Exception]:
        """Decode each job, run them all in one call, split the probabilities back per job."""
        version = self.store.get(jobs[0].model)
        if version is None:
            return [NotFound(f"model {jobs[0].model!r} is no longer served") for _ in jobs]
        model = version.models[index]
        out: list[Answer | Exception | None] = [None] * len(jobs)
        xs: list[np.ndarray] = []
        took: list[float] = []
        for k, job in enumerate(jobs):
            t0 = time.perf_counter()
            try:
                xs.append(decode_instances(model, job.instances))
                took.append(time.perf_counter() - t0)
            except HTTPError as e:
                out[k] = e
        if not xs:
            return out  # type: ignore[return-value]
        t1 = time.perf_counter()
        try:
            probs = model.infer(xs[0] if len(xs) == 1 else np.concatenate(xs))
        except EdgeRuntimeError as e:
            return [o if o is not None else BadRequest(str(e)) for o in out]
        invoke_s = time.perf_counter() - t1
        labels = model.labels
        row = 0
        ok = [k for k in range(len(jobs)) if out[k] is None]
        for k, x, pre in zip(ok, xs, took, strict=True):
            preds = []
            for p in probs[row:row + len(x)]:
                c = int(np.argmax(p))
                preds.append({"label": labels[c], "index": c, "confidence": float(p[c]),
                              "probabilities": [round(float(v), 7) for v in p]})
            row += len(x)
            out[k] = Answer(preds, version, started - jobs[k].enqueued, pre, invoke_s, x)
        return out  # type: ignore[return-value]


def _late() -> DeadlineExceeded:
    return DeadlineExceeded("no interpreter was free within the deadline; retry later or raise --deadline-ms")


class _Named(io.BytesIO):
    """Image bytes that name the instance in Pillow and edge_runtime.images messages."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self._label = name

    def __str__(self) -> str:
        return self._label


def decode_instances(model: Any, instances: list[Any]) -> np.ndarray:
    """Raw JSON instances -> the model's float32 batch, or ``BadRequest`` naming the instance."""
    if not instances:
        raise BadRequest('"instances" is empty: send at least one input')
    spec = model.preprocessing
    try:
        if spec.get("kind") != "image":
            for i, row in enumerate(instances):
                if not isinstance(row, dict | list):
                    raise BadRequest(f"instances[{i}] is a {type(row).__name__}: send a row object "
                                     f"{{column: value}} or a list of {len(model.columns)} values")
            return model.preprocess(instances)
        parts = []
        for i, inst in enumerate(instances):
            arr = _image_instance(spec, inst, i)  # decoded 8-bit images take the lookup
            parts.append(model.preprocess_u8(arr) if arr.dtype == np.uint8 else model.preprocess(arr))
        return np.concatenate(parts)
    except EdgeRuntimeError as e:
        if isinstance(e, BadRequest):
            raise
        raise BadRequest(str(e)) from e


def _image_instance(spec: dict[str, Any], inst: Any, i: int) -> np.ndarray:
    """One image instance as a batch of one: ``{"b64": ...}`` or a base64 string (PNG/JPEG/...),
    or a nested array of raw intensities (H x W or H x W x C)."""
    if isinstance(inst, dict):
        if set(inst) != {"b64"}:
            raise BadRequest(f'instances[{i}] is an object with keys {sorted(inst)}: send {{"b64": "<base64 '
                             'PNG or JPEG>"}, a base64 string or a nested array')
        inst = inst["b64"]
    if isinstance(inst, str):
        return _decode_image(spec, inst, i)[None]
    if not isinstance(inst, list):
        raise BadRequest(f"instances[{i}] is a {type(inst).__name__}: send a base64 image or a nested array")
    try:
        arr = np.asarray(inst, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadRequest(f"instances[{i}] is not a numeric array of equal-length rows") from None
    if arr.ndim not in (2, 3):
        raise BadRequest(f"instances[{i}] has shape {tuple(arr.shape)}: send one image as H x W or H x W x C "
                         f"(the model takes {spec['height']} x {spec['width']} x {spec['channels']})")
    return arr[None]


def _decode_image(spec: dict[str, Any], text: str, i: int) -> np.ndarray:
    """A base64 image at the model's size and colour mode: uint8 (H, W, C) for an 8-bit one,
    raw-range float32 for a 16-bit one."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"instances[{i}] is not valid base64") from None
    try:
        from PIL import UnidentifiedImageError

        from edge_runtime.images import ImageRefused, image_array, image_u8, open_image
    except ImportError:
        raise BadRequest("this server cannot decode images (Pillow is not installed): send nested "
                         "arrays, or install edge_runtime/requirements-image.txt") from None
    mode = "L" if int(spec["channels"]) == 1 else "RGB"
    size = (int(spec["width"]), int(spec["height"]))
    try:
        with open_image(_Named(data, f"instances[{i}]")) as img:  # type: ignore[arg-type]
            arr = image_u8(img, mode, size)
            if arr is None:  # 16-bit: scaled to 0-255 in floating point
                arr = raw_from_u8(spec, image_array(img, mode, size))
    except ImageRefused as e:
        raise BadRequest(str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadRequest(f"instances[{i}] is not a readable image: send a base64 PNG or JPEG") from None
    return arr[..., None] if arr.ndim == 2 else arr
