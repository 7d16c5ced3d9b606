"""The service behind the HTTP front: routes, JSON bodies, metrics, the admin endpoints.

Transport-free on purpose: ``Service.handle`` takes a parsed request and returns a ``Response``
or, for a prediction, a ``Pending`` the front waits on (a thread blocks, an event loop awaits),
so the HTTP library is a thin, swappable layer (``http.py``) and could be measured against another.

Routes (TensorFlow Serving's REST shapes, plus health and metrics):

    POST /v1/models/<name>:predict    {"instances": [...]} -> {"predictions": [...], "model_version"}
    GET  /v1/models/<name>            {"model_version_status": [...]}
    GET  /v1/models                   every model
    POST /v1/models/<name>:load       {"path": ARTIFACT_DIR[, "golden": TESTSET]}   (loopback only)
    POST /v1/models/<name>:rollback                                                  (loopback only)
    POST /v1/models/<name>:feedback   {"request_id", "label"}: the true label, beside the request log
    GET  /healthz, /readyz, /metrics
"""

from __future__ import annotations

import collections
import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.result import device_id
from edge_runtime.serve.errors import (
    BadRequest,
    Forbidden,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Unprocessable,
)
from edge_runtime.serve.metrics import Registry
from edge_runtime.serve.models import ModelStore, UpdateRefused
from edge_runtime.serve.pool import Answer, Job, WorkerPool
from edge_runtime.timing import device_facts, device_kind

JSON = "application/json"
RECENT_WINDOW_S = 60.0  # "the last minute" of /readyz's "recent" (and `edgeship serve status`)
RECENT_MAX = 200_000  # predictions kept for it, whatever the rate

# One record per finished prediction goes to each observer (request logs, issue 20): called on the
# request's thread before its answer is sent, so an observer must not block (append to a bounded
# buffer and return).
Observer = Callable[[dict[str, Any]], None]


@dataclass
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    peer: str = "127.0.0.1"


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Pending:
    """A parsed, admitted prediction: the front runs it with ``service.execute`` on a thread that
    may block (the connection's own thread, or an executor's under an event loop)."""

    job: Job
    timeout: float
    started: float


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(), JSON, dict(headers or {}))


def error_response(e: HTTPError) -> Response:
    return json_response(e.status, {"error": str(e), "code": e.code}, e.headers)


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class Service:
    """Everything but the sockets."""

    def __init__(self, store: ModelStore, *, workers: int, max_queue: int, deadline_s: float,
                 config: dict[str, Any] | None = None, front: str = "stdlib"):
        self.store = store
        self.front = front
        self.deadline_s = deadline_s
        self.config = dict(config or {})
        self.ready = False
        self._info: dict[str, Any] | None = None
        self.started = time.time()
        self.observers: list[Observer] = []
        self.request_log: Any = None  # requestlog.RequestLog once attach_log is called
        m = self.metrics = Registry()
        self.requests = m.counter("edge_requests_total", "HTTP requests answered, by route and status code.",
                                  ("route", "code"))
        self.latency = m.histogram("edge_request_duration_seconds",
                                   "Prediction latency by part: queue, preprocess, invoke, total.",
                                   ("model", "part"))
        self.batch_instances = m.histogram(
            "edge_batch_instances", "Instances per runtime call (above 1 only with --max-batch).", ("model",),
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.inflight = m.gauge("edge_inflight_requests", "Predictions admitted and not yet answered.")
        self.queue_depth = m.gauge("edge_queue_depth", "Predictions waiting for a worker.")
        self.rejected = m.counter("edge_rejected_total", "Predictions refused, by reason.", ("reason",))
        self.model_info = m.gauge("edge_model_info", "The model version each name serves (value 1).",
                                  ("model", "version", "sha256", "state"))
        self.observer_errors = m.counter("edge_observer_errors_total",
                                         "Request records an observer (request log) failed to take.")
        self.updates = m.counter("edge_model_updates_total", "Model updates and rollbacks, by outcome.",
                                 ("model", "outcome"))
        self._inflight_lock = threading.Lock()
        self._recent: collections.deque[tuple[float, float, bool]] = collections.deque(maxlen=RECENT_MAX)
        self.pool = WorkerPool(store, workers, max_queue, on_done=self._done)

    # ------------------------------------------------------------ life

    def start(self) -> None:
        self.pool.start()
        self._publish_models()
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self.pool.stop()
        if self.request_log is not None:
            self.request_log.close()

    def attach_log(self, log: Any) -> None:
        """Log every prediction to ``log`` (a ``requestlog.RequestLog``) and take feedback for it:
        the log learns each model's artifact (its preprocessing) now and again on every switch."""
        self.request_log = log
        for name in self.store.names():
            v = self.store.get(name)
            if v is not None:
                log.set_artifact(name, v.artifact)
        self.observers.append(log.observe)
        self._log_lines = self.metrics.gauge(
            "edge_request_log_lines", "Request log lines since start, by kind (observed, sampled_out, "
            "dropped: the log's buffer was full, written, errors, feedback).", ("kind",))

    # ------------------------------------------------------------ requests

    def handle(self, req: Request) -> Response | Pending:
        """Route one request; every ``HTTPError`` becomes its JSON error response."""
        route = "other"
        try:
            route, handler = self._route(req)
            out = handler(req)
        except HTTPError as e:
            if route == "predict":
                self.rejected.inc(reason=e.code)
                self._recent.append((time.monotonic(), 0.0, False))
            self.requests.inc(route=route, code=str(e.status))
            return error_response(e)
        if isinstance(out, Response):
            self.requests.inc(route=route, code=str(out.status))
        return out

    def _route(self, req: Request) -> tuple[str, Callable[[Request], Response | Pending]]:
        path = req.path.split("?", 1)[0]
        simple = {"/healthz": ("health", self._healthz), "/readyz": ("health", self._readyz),
                  "/metrics": ("metrics", self._metrics), "/v1/models": ("status", self._list)}
        if path in simple:
            _need(req, "GET")
            return simple[path]
        prefix = "/v1/models/"
        if not path.startswith(prefix):
            raise NotFound(f"no route {path!r}: use /v1/models/<name>:predict, /healthz, /readyz or /metrics")
        rest = path[len(prefix):]
        name, _, verb = rest.partition(":")
        if not name or "/" in name:
            raise NotFound(f"no route {path!r}: use /v1/models/<name>[:predict]")
        if not verb:
            _need(req, "GET")
            return "status", lambda r: self._status(name)
        actions = {"predict": ("predict", self._predict), "load": ("admin", self._load),
                   "rollback": ("admin", self._rollback), "feedback": ("feedback", self._feedback)}
        if verb not in actions:
            raise NotFound(f"unknown verb {verb!r}: use :predict, :load, :rollback or :feedback")
        _need(req, "POST")
        route, fn = actions[verb]
        return route, lambda r: fn(r, name)

    def _healthz(self, req: Request) -> Response:
        return json_response(200, {"status": "ok"})

    def _readyz(self, req: Request) -> Response:
        if not self.ready:
            raise NotReady("the server is starting or stopping")
        return json_response(200, {"status": "ready", "models": self.store.names(), **self.server_info()})

    def server_info(self) -> dict[str, Any]:
        """Where this runs and how: a load generator records it beside its figures."""
        if self._info is None:
            facts = device_facts()
            self._info = {"device_id": device_id(device_kind(), facts), "device": facts}
        layout = {"workers": self.store.workers, "threads": self.store.threads,
                  "max_queue": self.pool.max_queue, "deadline_ms": self.deadline_s * 1000.0,
                  "front": self.front, "max_batch": int(self.config.get("max_batch") or 1),
                  "batch_timeout_ms": float(self.config.get("batch_timeout_ms") or 0.0)}
        return {**self._info, "layout": layout, "uptime_s": round(time.time() - self.started, 3),
                "recent": self.recent()}

    def recent(self, window_s: float = RECENT_WINDOW_S) -> dict[str, Any]:
        """The last ``window_s`` of predictions: rate, errors and p99 of the answered ones."""
        since = time.monotonic() - window_s
        window = [r for r in self._recent.copy() if r[0] >= since]  # copy(): atomic
        ok = sorted(r[1] for r in window if r[2])
        span = min(window_s, time.time() - self.started) or 1.0
        p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))] * 1000.0 if ok else None
        return {"window_s": window_s, "requests": len(window), "errors": len(window) - len(ok),
                "rate_per_s": len(window) / span, "p99_ms": p99}

    def _metrics(self, req: Request) -> Response:
        self.queue_depth.set(self.pool.depth)
        if self.request_log is not None:
            for kind, value in self.request_log.stats().items():
                if isinstance(value, int | float):
                    self._log_lines.set(value, kind=kind)
        return Response(200, self.metrics.exposition().encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _list(self, req: Request) -> Response:
        return json_response(200, {"models": [self._describe(n) for n in self.store.names()]})

    def _status(self, name: str) -> Response:
        if self.store.get(name) is None:
            raise NotFound(f"no model named {name!r}; serving: {', '.join(self.store.names()) or 'none'}")
        return json_response(200, self._describe(name))

    def _describe(self, name: str) -> dict[str, Any]:
        cur, prev = self.store.get(name), self.store.previous(name)
        status = [cur.describe("AVAILABLE")] if cur else []
        if prev is not None:
            status.append(prev.describe("LOADED"))  # kept for rollback, not serving
        return {"name": name, "model_version_status": status}

    def _predict(self, req: Request, name: str) -> Pending:
        if not self.ready:
            raise NotReady("the server is starting or stopping; retry shortly")
        self.pool.admit()  # a full queue refuses before the body is even parsed
        body = parse_json(req)
        if not isinstance(body, dict) or "instances" not in body:
            raise BadRequest('the body must be a JSON object {"instances": [...]}')
        instances = body["instances"]
        if not isinstance(instances, list):
            raise BadRequest(f'"instances" must be a list, got {type(instances).__name__}')
        now = time.perf_counter()
        rid = req.headers.get("x-request-id") or uuid.uuid4().hex
        job = Job(name, instances, now + self.deadline_s, rid[:64], enqueued=now)
        self.pool.check(job)
        return Pending(job, self.deadline_s, now)

    def execute(self, pending: Pending) -> Response:
        """Run a prediction on the calling thread (a slot's interpreter) and build its response."""
        return self.execute_batch([pending])[0]

    def execute_batch(self, pendings: list[Pending]) -> list[Response]:
        """Predictions of one model in one runtime call (dynamic batching), each answered alone."""
        n = len(pendings)
        with self._inflight_lock:
            self.inflight.inc(n)
        try:
            outcomes: list[Answer | Exception] = self.pool.run_batch([p.job for p in pendings])
        except Exception as e:  # overload or a bug: every job of the call gets the same answer
            outcomes = [e] * n
        finally:
            with self._inflight_lock:
                self.inflight.dec(n)
        answered = [o for o in outcomes if isinstance(o, Answer)]
        if answered:
            size = sum(len(a.predictions) for a in answered)
            self.batch_instances.observe(size, model=answered[0].version.name)
        return [self._respond(p, o) for p, o in zip(pendings, outcomes, strict=True)]

    def _respond(self, pending: Pending, outcome: Answer | Exception) -> Response:
        if isinstance(outcome, Exception):
            e = outcome
            if not isinstance(e, HTTPError):
                e = (BadRequest(str(e)) if isinstance(e, EdgeRuntimeError)
                     else HTTPError(f"inference failed: {type(e).__name__}: {e}"))  # a bug: a 500 saying so
            self.rejected.inc(reason=e.code)
            self.requests.inc(route="predict", code=str(e.status))
            self._recent.append((time.monotonic(), time.perf_counter() - pending.started, False))
            return error_response(e)
        answer, job = outcome, pending.job
        total = time.perf_counter() - pending.started
        self._recent.append((time.monotonic(), total, True))
        v = answer.version
        for part, secs in (("queue", answer.queue_s), ("preprocess", answer.preprocess_s),
                           ("invoke", answer.invoke_s), ("total", total)):
            self.latency.observe(secs, model=v.name, part=part)
        self.requests.inc(route="predict", code="200")
        return json_response(200, {"predictions": answer.predictions, "model_version": str(v.version),
                                   "model": v.name}, {"X-Request-Id": job.request_id})

    def _done(self, job: Job, answer: Answer | None, error: BaseException | None) -> None:
        """Called when a job ends, on its thread: the records for the observers."""
        if answer is None or not self.observers:
            return
        record = {"time": time.time(), "request_id": job.request_id, "model": job.model,
                  "version": answer.version.version, "sha256": answer.version.sha256,
                  "queue_s": answer.queue_s,
                  "preprocess_s": answer.preprocess_s, "invoke_s": answer.invoke_s,
                  "instances": job.instances, "predictions": answer.predictions,
                  "inputs": answer.inputs}  # so the log summarises them without decoding again
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # an observer's bug must not take a worker down: counted instead
                self.observer_errors.inc()

    def _feedback(self, req: Request, name: str) -> Response:
        """The true label of an answered request, stored beside the request log (issue 20)."""
        from edge_runtime.serve.requestlog import UnknownRequest

        if self.store.get(name) is None:
            raise NotFound(f"no model named {name!r}; serving: {', '.join(self.store.names()) or 'none'}")
        if self.request_log is None:
            raise NotFound("this server keeps no request log, so it cannot take feedback: start it without "
                           "--no-log")
        body = parse_json(req)
        if not isinstance(body, dict) or "request_id" not in body or "label" not in body:
            raise BadRequest('the body must be {"request_id": "<X-Request-Id of the answer>", "label": ...}')
        instance = body.get("instance")
        if instance is not None and not isinstance(instance, int):
            raise BadRequest(f'"instance" must be an integer, got {type(instance).__name__}')
        try:
            line = self.request_log.record_feedback(body["request_id"], body["label"], instance)
        except UnknownRequest as e:
            raise NotFound(str(e)) from e
        except EdgeRuntimeError as e:
            raise BadRequest(str(e)) from e
        return json_response(200, {"stored": line})

    # ------------------------------------------------------------ admin

    def _admin(self, req: Request) -> None:
        if not is_loopback(req.peer):
            raise Forbidden("model updates are accepted from this device only (loopback)")

    def _load(self, req: Request, name: str) -> Response:
        self._admin(req)
        body = parse_json(req)
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise BadRequest('the body must be {"path": "<artifact folder>"} (optional "golden": test split)')
        golden = body.get("golden")
        try:
            v = self.store.update(name, Path(body["path"]), Path(golden) if golden else None)
        except UpdateRefused as e:
            self.updates.inc(model=name, outcome="refused")
            raise Unprocessable(f"refused: {e}; version {self._serving(name)} keeps serving") from e
        except EdgeRuntimeError as e:
            self.updates.inc(model=name, outcome="refused")
            raise (NotFound if self.store.get(name) is None else BadRequest)(str(e)) from e
        self.updates.inc(model=name, outcome="updated")
        self._publish_models()
        self._log_artifact(name)
        return json_response(200, {"model": name, "model_version": str(v.version), "golden": v.golden,
                                   "previous": self._serving_prev(name)})

    def _rollback(self, req: Request, name: str) -> Response:
        self._admin(req)
        if self.store.get(name) is None:
            raise NotFound(f"no model named {name!r}; serving: {', '.join(self.store.names()) or 'none'}")
        try:
            v = self.store.rollback(name)
        except EdgeRuntimeError as e:
            raise BadRequest(str(e)) from e
        self.updates.inc(model=name, outcome="rolled_back")
        self._publish_models()
        self._log_artifact(name)
        return json_response(200, {"model": name, "model_version": str(v.version),
                                   "previous": self._serving_prev(name)})

    def _log_artifact(self, name: str) -> None:
        v = self.store.get(name)
        if self.request_log is not None and v is not None:
            self.request_log.set_artifact(name, v.artifact)

    def _serving(self, name: str) -> str:
        v = self.store.get(name)
        return str(v.version) if v else "none"

    def _serving_prev(self, name: str) -> str | None:
        v = self.store.previous(name)
        return str(v.version) if v else None

    def _publish_models(self) -> None:
        self.model_info.remove_all()
        for name in self.store.names():
            for state, v in (("serving", self.store.get(name)), ("previous", self.store.previous(name))):
                if v is not None:
                    self.model_info.set(1, model=name, version=str(v.version), sha256=v.sha256, state=state)


def _need(req: Request, method: str) -> None:
    if req.method != method:
        raise MethodNotAllowed(f"{req.path} takes {method}, not {req.method}", headers={"Allow": method})


def parse_json(req: Request) -> Any:
    ctype = req.headers.get("content-type", JSON).split(";", 1)[0].strip().lower()
    if ctype not in (JSON, "", "text/plain", "application/x-www-form-urlencoded"):  # curl -d sends the last
        raise BadRequest(f"the body is {ctype}; send JSON (Content-Type: application/json)")
    try:
        return json.loads(req.body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"the body is not valid JSON ({str(e).splitlines()[0][:80]})") from None
