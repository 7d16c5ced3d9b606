"""The thread-per-connection front on the standard library: ``ThreadingHTTPServer``, HTTP/1.1
keep-alive (``serve --front stdlib``; the fallback where epoll is missing).

The default front (``loopfront``) measured faster: here every connection has a thread, and up
to 64 of them contend for the GIL and hand a slot to each other (README, "Serving"). A
connection cap answers 503 at once past ``max_connections`` so threads stay bounded too.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_runtime.serve.app import Pending, Request, Response, Service, error_response
from edge_runtime.serve.errors import HTTPError, Overloaded
from edge_runtime.serve.framing import body_length, http_bytes

IDLE_TIMEOUT_S = 30.0  # a keep-alive connection idle this long is closed


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in one write with Nagle off: two small writes on a keep-alive
    # connection otherwise wait for the client's delayed ACK, ~40 ms per request (measured).
    disable_nagle_algorithm = True
    server_version = "edge_runtime"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    server: EdgeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is issue 20's (Service.observers), not stderr

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        service = self.server.service
        try:
            body = self._read_body(method)
        except HTTPError as e:
            self.close_connection = True  # the unread body would be taken for the next request
            service.requests.inc(route="other", code=str(e.status))
            self._send(error_response(e))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        out = service.handle(Request(method, self.path, body, headers, self.client_address[0]))
        if isinstance(out, Pending):
            out = service.execute(out)
        self._send(out)

    def _read_body(self, method: str) -> bytes:
        """The body by Content-Length, refused past ``max_body_bytes`` before reading it."""
        length = body_length(self.headers.get("Transfer-Encoding"), self.headers.get("Content-Length"),
                             self.server.max_body_bytes)
        return self.rfile.read(length) if length else b""

    def _send(self, resp: Response) -> None:
        try:
            self.wfile.write(http_bytes(resp, close=self.close_connection))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class EdgeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], service: Service, *, max_body_bytes: int,
                 max_connections: int = 256):
        self.service = service
        self.max_body_bytes = max_body_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, up to ``max_connections``; past that a 503 and close."""
        if not self._slots.acquire(blocking=False):
            try:
                e = Overloaded("too many open connections; retry later", headers={"Retry-After": "1"})
                request.sendall(http_bytes(error_response(e), close=True))
            except OSError:
                pass
            self.service.rejected.inc(reason="connections")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
