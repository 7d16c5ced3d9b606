"""The event-loop front: one thread reads and parses every connection, one thread per interpreter
runs predictions and writes their answers.

Why: the thread-per-connection front (``httpfront``) spent most of a MobileNetV2 request's CPU
outside the model, in thread switches and lock hand-offs between up to 64 connection threads
contending for the GIL; its knee was 724 requests/s where this front's is 1,079-1,181/s
unbatched, on the same 2 cores (README, "Serving"). Here the threads are fixed (one loop,
``workers`` predictors, one for admin and feedback), and a request changes threads once: the
loop hands it to a predictor, which answers on the socket itself.

Connections sit in an ``epoll`` set with ``EPOLLONESHOT``: whoever takes an event owns the
connection until it re-arms it, so the loop and a predictor never touch one at once, and a
connection's requests are answered in order. Overload is answered by the loop: a prediction
that finds ``max_queue`` others waiting and every interpreter busy gets 503 before its body is
parsed. Linux only (epoll); elsewhere ``serve`` falls back to the standard-library front.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.serve.app import Pending, Request, Response, Service, error_response
from edge_runtime.serve.errors import BadRequest, HeadTooLarge, HTTPError, Overloaded
from edge_runtime.serve.framing import body_length, http_bytes

IDLE_TIMEOUT_S = 30.0  # a keep-alive connection idle this long is closed
MAX_HEAD_BYTES = 64 << 10  # request line and headers
SEND_TIMEOUT_S = 10.0  # a client that does not read its answer this long is dropped
_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT if hasattr(select, "epoll") else 0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def available() -> bool:
    return hasattr(select, "epoll")


@dataclass
class _Conn:
    sock: socket.socket
    peer: str
    buf: bytearray = field(default_factory=bytearray)
    last: float = field(default_factory=time.monotonic)
    continued: bool = False  # a 100 Continue already went out for the request in the buffer
    busy: bool = False  # owned by a predictor or the admin thread, not the loop


@dataclass
class _Parsed:
    request: Request
    keep_alive: bool


class LoopServer:
    """``serve_forever`` on the calling thread; ``shutdown`` from any other."""

    def __init__(self, address: tuple[str, int], service: Service, *, max_body_bytes: int,
                 max_connections: int = 256, max_batch: int = 1, batch_timeout_s: float = 0.0):
        self.service = service
        self.max_batch, self.batch_timeout_s = max_batch, batch_timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=128)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._ep = select.epoll()
        self._ep.register(self.socket.fileno(), select.EPOLLIN)
        self._conns: dict[int, _Conn] = {}
        self._lock = threading.Lock()  # guards _conns and epoll registration
        self._jobs: queue.SimpleQueue[tuple[_Conn, Any] | None] = queue.SimpleQueue()
        self._admin: queue.SimpleQueue[tuple[_Conn, _Parsed] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ life

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        n = self.service.pool.workers
        self._threads = [threading.Thread(target=self._predictor, name=f"edge-predict-{i}", daemon=True)
                         for i in range(n)]
        self._threads.append(threading.Thread(target=self._admin_loop, name="edge-admin", daemon=True))
        for t in self._threads:
            t.start()
        next_sweep = time.monotonic() + 1.0
        try:
            while not self._stop.is_set():
                for fd, events in self._ep.poll(poll_interval):
                    if fd == self.socket.fileno():
                        self._accept()
                    else:
                        conn = self._conns.get(fd)
                        if conn is not None:
                            self._readable(conn, events)
                if time.monotonic() >= next_sweep:
                    self._sweep_idle()
                    next_sweep = time.monotonic() + 1.0
        finally:
            for _ in range(n):
                self._jobs.put(None)
            self._admin.put(None)
            for t in self._threads:
                t.join(timeout=5.0)
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait(10.0)

    def server_close(self) -> None:
        with self._lock:
            for conn in list(self._conns.values()):
                self._forget(conn)
        self._ep.close()
        self.socket.close()

    # ------------------------------------------------------------ the loop's side

    def _accept(self) -> None:
        for _ in range(64):  # bounded: other connections' requests wait behind a burst of accepts
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if not full:
                    conn = _Conn(sock, str(addr[0]))
                    self._conns[sock.fileno()] = conn
                    self._ep.register(sock.fileno(), _IN)
            if full:
                e = Overloaded("too many open connections; retry later", headers={"Retry-After": "1"})
                with contextlib.suppress(OSError):
                    sock.send(http_bytes(error_response(e), close=True))
                sock.close()
                self.service.rejected.inc(reason="connections")

    def _readable(self, conn: _Conn, events: int) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            self._rearm(conn)
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.buf += data
        conn.last = time.monotonic()
        self._dispatch(conn)

    def _dispatch(self, conn: _Conn) -> None:
        """Take every complete request in the buffer: answer it here, or hand it on (and stop)."""
        while True:
            try:
                parsed = self._parse(conn)
            except HTTPError as e:
                self._answer(conn, error_response(e), close=True, route="other")
                return
            if parsed is None:
                self._rearm(conn)
                return
            req = parsed.request
            if req.method == "POST" and not req.path.split("?", 1)[0].endswith(":predict"):
                conn.busy = True
                self._admin.put((conn, parsed))  # :load, :rollback, :feedback: may take seconds
                return
            out = self.service.handle(req)
            if isinstance(out, Pending):
                conn.busy = True
                self.service.pool.queued(+1)
                self._jobs.put((conn, (out, parsed.keep_alive)))
                return
            if not self._answer(conn, out, close=not parsed.keep_alive):
                return

    def _parse(self, conn: _Conn) -> _Parsed | None:
        """A complete request off the front of the buffer, or None for 'need more bytes'."""
        buf = conn.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise HeadTooLarge(f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise BadRequest(f"a malformed request line {lines[0][:80]!r}") from None
        if not version.startswith("HTTP/1."):
            raise BadRequest(f"{version[:20]!r} is not HTTP/1.x")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest(f"a malformed header line {line[:80]!r}")
            headers[name.lower()] = value.strip()
        length = body_length(headers.get("transfer-encoding"), headers.get("content-length"),
                             self.max_body_bytes)
        start = end + 4
        if len(buf) < start + length:
            if headers.get("expect", "").lower() == "100-continue" and not conn.continued:
                conn.continued = True
                self._send(conn, _CONTINUE, SEND_TIMEOUT_S)
            return None
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        conn.continued = False
        connection = headers.get("connection", "").lower()
        keep = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        return _Parsed(Request(method, target, body, headers, conn.peer), keep)

    def _sweep_idle(self) -> None:
        cutoff = time.monotonic() - IDLE_TIMEOUT_S
        for conn in [c for c in list(self._conns.values()) if not c.busy and c.last < cutoff]:
            self._close(conn)

    # ------------------------------------------------------------ the predictors' side

    def _predictor(self) -> None:
        pool = self.service.pool
        carry = None
        while True:
            item, carry = (carry, None) if carry is not None else (self._jobs.get(), None)
            if item is None:
                return
            batch = [item]
            if self.max_batch > 1:
                batch, carry = self._gather(item)
            pool.queued(-len(batch))
            answers = self.service.execute_batch([pending for _, (pending, _) in batch])
            for (conn, (_, keep)), resp in zip(batch, answers, strict=True):
                self._finish(conn, resp, keep)

    def _gather(self, first: Any) -> tuple[list[Any], Any]:
        """Dynamic batching: ``first`` and the predictions of the same model queued behind it (waiting
        up to ``batch_timeout_s`` for more), up to ``max_batch`` instances; one that would not fit
        is carried to the next call."""
        batch, model = [first], first[1][0].job.model
        size = len(first[1][0].job.instances)
        end = time.perf_counter() + self.batch_timeout_s
        while size < self.max_batch:
            left = end - time.perf_counter()
            try:
                item = self._jobs.get(timeout=left) if left > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is None:  # shutting down: leave the sentinel for this thread's next turn
                self._jobs.put(None)
                break
            job = item[1][0].job
            if job.model != model or size + len(job.instances) > self.max_batch:
                return batch, item
            batch.append(item)
            size += len(job.instances)
        return batch, None

    def _admin_loop(self) -> None:
        while True:
            item = self._admin.get()
            if item is None:
                return
            conn, parsed = item
            out = self.service.handle(parsed.request)
            if isinstance(out, Pending):  # not reached: predictions go to the predictors
                out = self.service.execute(out)
            self._finish(conn, out, parsed.keep_alive)

    def _finish(self, conn: _Conn, resp: Response, keep: bool) -> None:
        """Answer a handed-on request, then give the connection back to the loop (or take its next)."""
        conn.last = time.monotonic()
        if self._send(conn, http_bytes(resp, close=not keep), SEND_TIMEOUT_S) and keep:
            conn.busy = False
            if conn.buf:
                self._dispatch(conn)  # a pipelined request already read: keep the order
            else:
                self._rearm(conn)
        else:
            self._close(conn)

    # ------------------------------------------------------------ sockets

    def _answer(self, conn: _Conn, resp: Response, *, close: bool, route: str | None = None) -> bool:
        """Answer on the loop; False if the connection is gone or closed after it. A client that
        does not read can hold the loop up to a second here: answers are small, and the socket's
        buffer takes them whole unless the client stopped reading."""
        if route is not None:
            self.service.requests.inc(route=route, code=str(resp.status))
        if self._send(conn, http_bytes(resp, close=close), 1.0) and not close:
            return True
        self._close(conn)
        return False

    def _send(self, conn: _Conn, data: bytes, timeout: float) -> bool:
        view, end = memoryview(data), time.monotonic() + timeout
        while view:
            try:
                view = view[conn.sock.send(view):]
            except (BlockingIOError, InterruptedError):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                select.select([], [conn.sock], [], min(left, 0.5))
            except OSError:
                return False
        return True

    def _rearm(self, conn: _Conn) -> None:
        with self._lock:
            if self._conns.get(conn.sock.fileno()) is conn:
                try:
                    self._ep.modify(conn.sock.fileno(), _IN)
                except OSError:
                    self._forget(conn)

    def _close(self, conn: _Conn) -> None:
        with self._lock:
            self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0 and self._conns.get(fd) is conn:
            del self._conns[fd]
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)
        with contextlib.suppress(OSError):
            conn.sock.close()
