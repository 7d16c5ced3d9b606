"""A static server for a web bundle, with the headers multithreaded WebAssembly needs.

onnxruntime-web only uses more than one thread when the page is ``crossOriginIsolated``, which
needs COOP/COEP on every response; without them ``numThreads`` is silently ignored. Python's
``SimpleHTTPRequestHandler`` sends neither, lists directories and follows symlinks out of its
root, so this is a small handler of its own: GET/HEAD of regular files inside the bundle, and
404 for anything else (traversal, encoded traversal, symlinks escaping, dotfiles, folders).
The isolation headers go on every response, errors and refused methods included; each
connection times out after ``BundleHandler.timeout`` seconds, so a client that stalls cannot
hold a thread.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from edgeship.core.errors import InputError
from edgeship.core.names import is_wildcard

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".ort": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}


def resolve_inside(root: Path, url_path: str) -> Path | None:
    """The regular file ``url_path`` names inside ``root``, or None if it is not one.

    The path is percent-decoded once, so ``%2e%2e`` is ``..``; any ``..``/``.`` segment,
    dotfile, NUL or backslash is refused before touching the disk, and the resolved path
    (symlinks followed) must still lie inside the resolved root: checked again after a folder
    becomes its ``index.html``, which may itself be a symlink.
    """
    path = unquote(urlsplit(url_path).path, errors="strict")
    if "\x00" in path or "\\" in path or not path.startswith("/"):
        return None
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") or p.startswith(".") for p in parts):
        return None
    root = root.resolve()
    candidate = root.joinpath(*parts) if parts else root
    real = _resolved_inside(root, candidate)
    if real is not None and real.is_dir():
        real = _resolved_inside(root, real / "index.html")
    return real if real is not None and real.is_file() else None


def _resolved_inside(root: Path, path: Path) -> Path | None:
    """``path`` with every symlink followed, if it exists and lies in ``root`` (resolved)."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real == root or root in real.parents else None


class BundleHandler(BaseHTTPRequestHandler):
    """GET/HEAD of files inside ``server.root``; every response carries the isolation headers."""

    server: BundleHTTPServer
    server_version = "edgeship"
    sys_version = ""
    timeout = 30  # seconds of silence (reading the request or writing the reply) before closing
    # Errors found before the request line's version is read (a bad or 2.x version) would be
    # answered HTTP/0.9 style, a body with no status line or headers: answer as HTTP/1.0 instead.
    default_request_version = "HTTP/1.0"
    extra_headers: ClassVar[dict[str, str]] = {
        **ISOLATION_HEADERS,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        try:
            target = resolve_inside(self.server.root, self.path)
        except UnicodeDecodeError:
            target = None
        if target is None:
            self._send_error(HTTPStatus.NOT_FOUND, body)
            return
        ctype = MIME_TYPES.get(target.suffix.lower(), "application/octet-stream")
        try:
            data = target.read_bytes()
        except OSError:
            self._send_error(HTTPStatus.NOT_FOUND, body)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _send_error(self, status: HTTPStatus, body: bool) -> None:
        data = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def end_headers(self) -> None:
        """Every response ends its headers here, ``send_error``'s too (400, 414, 431, 501 for an
        unknown method, 505): so every one carries the isolation headers."""
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        super().end_headers()

    def _not_allowed(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")


class BundleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # only skips TIME_WAIT; a live listener still gives EADDRINUSE

    def __init__(self, address: tuple[str, int], root: Path, verbose: bool) -> None:
        self.root = root
        self.verbose = verbose
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, BundleHandler)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the OS says is free right now on ``host`` (for suggestions and tests)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BundleServer:
    """Serve one bundle folder; ``with BundleServer(dir, port=0) as s: s.url`` for tests.

    ``start()`` runs in a daemon thread, ``serve_forever()`` blocks (the CLI; Ctrl-C stops it),
    ``stop()`` shuts down and closes the socket. Port 0 picks a free port.
    """

    def __init__(
        self,
        root: str | Path,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        verbose: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"bundle folder {self.root} does not exist; build it first")
        if not (self.root / "index.html").is_file():
            raise InputError(f"{self.root} has no index.html; it is not a web bundle")
        try:
            self._httpd = BundleHTTPServer((host, port), self.root, verbose)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(
                    f"port {port} on {host} is in use; try --port {free_port(host)} "
                    "(or --port 0 to pick a free one)"
                ) from None
            if e.errno == errno.EACCES:
                raise InputError(
                    f"no permission to bind port {port} on {host}; use a port above 1023, "
                    f"e.g. --port {free_port(host)}"
                ) from None
            if e.errno in (errno.EADDRNOTAVAIL, socket.EAI_NONAME):
                raise InputError(f"cannot bind {host}: not an address of this machine") from None
            raise
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def every_interface(self) -> bool:
        """Whether the socket listens on every interface, however ``--host`` spelled it
        (``0.0.0.0``, ``::``, ``0``, an empty string...): judged from the address bound."""
        return is_wildcard(str(self._httpd.server_address[0]))

    @property
    def url(self) -> str:
        """The page's address (an IPv6 host in brackets, a wildcard bind shown as loopback)."""
        host = self.host
        if self.every_interface:
            host = "::1" if self._httpd.address_family == socket.AF_INET6 else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> BundleServer:
        """Serve in a background daemon thread and return at once."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"edgeship-web-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block until Ctrl-C, then close the socket (for ``edgeship demo``)."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        """Stop the background thread (if any) and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> BundleServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_bundle(
    root: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, verbose: bool = False
) -> BundleServer:
    """A started background server for ``root`` (stop it, or use ``BundleServer`` in ``with``)."""
    return BundleServer(root, host=host, port=port, verbose=verbose).start()


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ISOLATION_HEADERS",
    "MIME_TYPES",
    "BundleServer",
    "free_port",
    "is_wildcard",
    "resolve_inside",
    "serve_bundle",
]
