"""``python -m edge_runtime serve``: the artifacts of a bundle behind an HTTP API, on the device.

Standard library, numpy and the artifact's runtime only (Pillow for base64 images): never
TensorFlow, never edgeship. Layout: ``app`` (routes, JSON, metrics, admin), ``pool`` (the
bounded wait for one of N interpreter slots), ``models`` (versions, golden check,
atomic switch), ``metrics`` (Prometheus text format), ``errors`` (status codes), ``loopfront``
(the sockets: one epoll thread, one thread per interpreter; the default), ``httpfront`` and
``asgifront`` (the measured alternatives: a thread per connection, and uvicorn), ``framing``
(body lengths and answer bytes, shared by the first two).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError

DEFAULT_PORT = 8501  # TensorFlow Serving's REST port
DEFAULT_THREADS = 1  # runtime threads per worker: see default_workers
DEFAULT_MAX_QUEUE = 64
DEFAULT_DEADLINE_MS = 1000.0
DEFAULT_MAX_BATCH = 8  # measured: +35 % at the knee for MobileNetV2, no wait at low load (README)
DEFAULT_MAX_BODY = 4 << 20  # 4 MiB: a few camera frames as base64 PNG
FRONTS = ("loop", "stdlib", "uvicorn", "uvicorn-h11")


def default_workers() -> int:
    """One single-threaded interpreter per core, at most 4: measured on this project's models,
    N x 1 beat 1 x N for throughput at the same tail (README, "Serving")."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class ServeConfig:
    """What ``serve`` was asked for (typed, checked in ``check``)."""

    source: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = field(default_factory=default_workers)
    threads: int | None = DEFAULT_THREADS
    max_queue: int = DEFAULT_MAX_QUEUE
    deadline_ms: float = DEFAULT_DEADLINE_MS
    max_body_bytes: int = DEFAULT_MAX_BODY
    artifacts: list[str] = field(default_factory=list)
    front: str = "loop"  # or "stdlib", "uvicorn": the measured alternatives (README, "Serving")
    max_batch: int | None = None  # dynamic batching: instances per runtime call; None: DEFAULT_MAX_BATCH
    # on the loop front, 1 (off) on the others
    batch_timeout_ms: float = 0.0  # how long a call waits for more to batch
    log_dir: str | None = None  # None: default_log_dir(source); "" (--no-log): no request log
    log_sample: float = 1.0
    log_inputs: str = "summary"

    def check(self) -> None:
        for name, value, low in (("--workers", self.workers, 1), ("--max-queue", self.max_queue, 1),
                                 ("--max-body-bytes", self.max_body_bytes, 64)):
            if value < low:
                raise InputError(f"{name} must be at least {low}, got {value}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")
        if not (0 < self.deadline_ms < 600_000):
            raise InputError(f"--deadline-ms must be between 0 and 600000, got {self.deadline_ms:g}")
        from edge_runtime.serve.pool import MAX_INSTANCES

        if self.max_batch is None:
            self.max_batch = DEFAULT_MAX_BATCH if self.front == "loop" else 1
        if not (1 <= self.max_batch <= MAX_INSTANCES):
            raise InputError(f"--max-batch must be 1-{MAX_INSTANCES}, got {self.max_batch}")
        if not (0 <= self.batch_timeout_ms <= 1000):
            raise InputError(f"--batch-timeout-ms must be 0-1000, got {self.batch_timeout_ms:g}")
        if self.max_batch > 1 and self.front != "loop":
            raise InputError(f"--max-batch needs the default front (loop), not --front {self.front}")
        if self.front not in FRONTS:
            raise InputError(f"--front must be one of {', '.join(FRONTS)}, got {self.front!r}")
        if not (0 <= self.port <= 65535):
            raise InputError(f"--port must be 0-65535, got {self.port}")


def default_log_dir(source: str) -> Path:
    """``logs/`` beside the bundle (``DIR/bundle`` -> ``DIR/logs``): it outlives every redeploy,
    which switches the bundle link, so ``edgeship monitor`` finds one folder per device."""
    return Path(source).absolute().parent / "logs"


def is_wildcard(host: str) -> bool:
    h = host.strip()
    if h in ("", "0"):
        return True
    try:
        return ipaddress.ip_address(h.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def build_service(config: ServeConfig) -> Any:
    """The service with its models loaded (every artifact opened once per worker)."""
    from edge_runtime.serve.app import Service
    from edge_runtime.serve.models import ModelStore, discover

    config.check()
    named = discover(config.source, config.artifacts or None)
    from edge_runtime.serve.requestlog import LogConfig, RequestLog

    log_config = None
    if config.log_dir != "":
        folder = Path(config.log_dir) if config.log_dir else default_log_dir(config.source)
        log_config = LogConfig(folder, sample=config.log_sample, inputs=config.log_inputs)
        log_config.check()  # bad flags fail before the models load
    store = ModelStore(config.workers, config.threads)
    for name, path in named.items():
        store.add(name, path)
    service = Service(store, workers=config.workers, max_queue=config.max_queue,
                      deadline_s=config.deadline_ms / 1000.0, config=vars(config).copy(), front=config.front)
    if log_config is not None:
        try:
            service.attach_log(RequestLog(log_config))
        except OSError as e:
            raise InputError(f"cannot write the request log in {log_config.folder} ({e.strerror or e}): "
                             "give a writable --log-dir, or --no-log") from e
    return service


def build(config: ServeConfig) -> tuple[Any, Any]:
    """(service, http server), models loaded and the port bound, not yet serving."""
    from edge_runtime.serve import loopfront
    from edge_runtime.serve.httpfront import EdgeHTTPServer

    service = build_service(config)
    try:
        if config.front == "loop" and loopfront.available():
            httpd = loopfront.LoopServer((config.host, config.port), service,
                                         max_body_bytes=config.max_body_bytes,
                                         max_batch=config.max_batch or 1,
                                         batch_timeout_s=config.batch_timeout_ms / 1000)
        else:  # no epoll (not Linux): the thread-per-connection front, unbatched
            service.front = config.front = "stdlib"
            service.config.update(front="stdlib", max_batch=1)
            config.max_batch = 1
            httpd = EdgeHTTPServer((config.host, config.port), service, max_body_bytes=config.max_body_bytes)
    except OSError as e:
        service.stop()
        raise InputError(f"cannot listen on {config.host}:{config.port} ({e.strerror or e}): "
                         "pick another --port or stop what holds it") from e
    return service, httpd


def _ready_line(service: Any, config: ServeConfig, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in str(host) else host
    batch = (f", batches up to {config.max_batch} (waits {config.batch_timeout_ms:g} ms)"
             if (config.max_batch or 1) > 1 else "")
    return (f"serving {', '.join(service.store.names())} on http://{shown}:{port} (workers {config.workers} "
            f"x threads {config.threads or 'default'}, queue {config.max_queue}, deadline "
            f"{config.deadline_ms:g} ms, front {config.front}{batch})")


def serve(config: ServeConfig, *, out: Any = None) -> int:
    """Serve until SIGTERM or Ctrl-C; print one 'serving ... on URL' line when ready."""
    out = out or sys.stdout
    if is_wildcard(config.host):
        print(f"warning: --host {config.host or '0.0.0.0'} listens on every interface: anyone on the "
              "network can send requests (model updates stay loopback-only)", file=sys.stderr, flush=True)
    if config.front.startswith("uvicorn"):
        return _serve_uvicorn(config, out)
    service, httpd = build(config)
    host, port = httpd.server_address[:2]
    service.start()

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(_ready_line(service, config, host, port), file=out, flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
        httpd.server_close()
    return 0


def _serve_uvicorn(config: ServeConfig, out: Any) -> int:
    from edge_runtime.serve.asgifront import run_uvicorn

    service = build_service(config)
    service.start()
    http = "h11" if config.front == "uvicorn-h11" else "auto"
    try:
        run_uvicorn(service, config.host, config.port, config.max_body_bytes, http=http,
                    on_ready=lambda port: print(_ready_line(service, config, config.host, port), file=out,
                                                flush=True))
    finally:
        service.stop()
    return 0


def add_parser(sub: Any) -> None:
    """The ``serve`` subcommand for ``python -m edge_runtime``."""
    s = sub.add_parser("serve", help="Serve a bundle's artifacts over HTTP (TensorFlow Serving's REST "
                                     "shapes, /healthz, /readyz, /metrics).")
    s.add_argument("source", help="a bundle, an export folder (with artifact.json) or a run's exports/")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0: any free)")
    s.add_argument("--workers", type=int, default=None,
                   help="interpreters: at most this many requests run at once (default: cores, at most 4)")
    s.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"runtime threads per interpreter (default {DEFAULT_THREADS})")
    s.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help=f"requests waiting for an interpreter before 503 (default {DEFAULT_MAX_QUEUE})")
    s.add_argument("--deadline-ms", type=float, default=DEFAULT_DEADLINE_MS,
                   help=f"per-request deadline; past it 504 (default {DEFAULT_DEADLINE_MS:g})")
    s.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY,
                   help=f"largest request body; past it 413 (default {DEFAULT_MAX_BODY})")
    s.add_argument("--artifact", action="append", default=[], metavar="VARIANT/FOLDER",
                   help="serve only this artifact of the bundle (repeatable), e.g. base/tflite-float32")
    s.add_argument("--front", choices=FRONTS, default="loop",
                   help="HTTP front: loop (default, measured fastest; Linux, elsewhere stdlib), stdlib "
                        "(a thread per connection) or uvicorn (needs uvicorn)")
    s.add_argument("--max-batch", type=int, default=None,
                   help="dynamic batching: run up to this many queued instances of one model in one "
                        f"runtime call (default {DEFAULT_MAX_BATCH}; 1: off; measured, README 'Serving')")
    s.add_argument("--batch-timeout-ms", type=float, default=0.0,
                   help="with --max-batch: how long a call waits for more to batch (default 0: only "
                        "what is already queued)")
    s.add_argument("--log-dir", default=None,
                   help="request log folder (default: logs/ beside the bundle; rotating, size-capped)")
    s.add_argument("--log-sample", type=float, default=1.0,
                   help="fraction of predictions logged (default 1: all)")
    s.add_argument("--log-inputs", choices=("none", "summary", "raw"), default="summary",
                   help="what of each input the log keeps (default summary: bins and image statistics; "
                        "raw: the values, needed by train --add-feedback)")
    s.add_argument("--no-log", action="store_true", help="keep no request log (and take no feedback)")


def run_from_args(args: Any) -> int:
    config = ServeConfig(source=str(Path(args.source)), host=args.host, port=args.port,
                         workers=args.workers if args.workers is not None else default_workers(),
                         threads=args.threads, max_queue=args.max_queue, deadline_ms=args.deadline_ms,
                         max_body_bytes=args.max_body_bytes, artifacts=list(args.artifact),
                         front=args.front, max_batch=args.max_batch, batch_timeout_ms=args.batch_timeout_ms,
                         log_dir="" if args.no_log else args.log_dir,
                         log_sample=args.log_sample, log_inputs=args.log_inputs)
    return serve(config)
