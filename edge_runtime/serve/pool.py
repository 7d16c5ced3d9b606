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
from edge_runtime.serve.errors import BadRequest, DeadlineExceeded, NotFound, Overloaded
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
        self.check(job)
        with self._lock:
            if self._waiting >= self._max_queue and self._slots.empty():
                raise self._overloaded()
            self._waiting += 1
        try:
            index = self._slots.get(timeout=max(0.0, job.deadline - time.perf_counter()))
        except queue.Empty:
            raise DeadlineExceeded("no interpreter was free within the deadline; retry later or raise "
                                   "--deadline-ms") from None
        finally:
            with self._lock:
                self._waiting -= 1
        started = time.perf_counter()
        answer: Answer | None = None
        error: BaseException | None = None
        with self._lock:
            self._busy += 1
        try:
            answer = self._answer(index, job, started)
            return answer
        except BaseException as e:
            error = e
            raise
        finally:
            with self._lock:
                self._busy -= 1
            self._slots.put(index)
            if self._on_done is not None:
                self._on_done(job, answer, error)

    def _answer(self, index: int, job: Job, started: float) -> Answer:
        version = self.store.get(job.model)
        if version is None:
            raise NotFound(f"model {job.model!r} is no longer served")
        model = version.models[index]
        t0 = time.perf_counter()
        x = decode_instances(model, job.instances)
        t1 = time.perf_counter()
        try:
            probs = model.infer(x)
        except EdgeRuntimeError as e:
            raise BadRequest(str(e)) from e
        t2 = time.perf_counter()
        labels = model.labels
        preds = []
        for p in probs:
            k = int(np.argmax(p))
            preds.append({"label": labels[k], "index": k, "confidence": float(p[k]),
                          "probabilities": [round(float(v), 7) for v in p]})
        return Answer(preds, version, started - job.enqueued, t1 - t0, t2 - t1, x)


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
        parts = [model.preprocess(_image_instance(spec, inst, i)) for i, inst in enumerate(instances)]
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
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"instances[{i}] is not valid base64") from None
    try:
        from PIL import UnidentifiedImageError

        from edge_runtime.images import ImageRefused, image_array, open_image
    except ImportError:
        raise BadRequest("this server cannot decode images (Pillow is not installed): send nested "
                         "arrays, or install edge_runtime/requirements-image.txt") from None
    mode = "L" if int(spec["channels"]) == 1 else "RGB"
    size = (int(spec["width"]), int(spec["height"]))
    try:
        with open_image(_Named(data, f"instances[{i}]")) as img:  # type: ignore[arg-type]
            arr = image_array(img, mode, size)
    except ImageRefused as e:
        raise BadRequest(str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadRequest(f"instances[{i}] is not a readable image: send a base64 PNG or JPEG") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    lo, hi = (float(v) for v in spec.get("raw_range", [0, 255]))
    return (lo + arr / 255.0 * (hi - lo)).astype(np.float32)
