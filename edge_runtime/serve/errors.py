"""HTTP errors of the device server: a status, a short machine code and a one-line message.

Every refusal is a JSON body ``{"error": message, "code": code}`` (TensorFlow Serving answers
``{"error": ...}``; ``code`` lets a client branch without parsing prose), so a client and a
load generator can tell overload (503) from a bad request (4xx) from a bug (500).
"""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError


class HTTPError(EdgeRuntimeError):
    """A request the server answers with ``status`` and a JSON error body."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = dict(headers or {})


class BadRequest(HTTPError):
    status, code = 400, "bad_request"


class Forbidden(HTTPError):
    status, code = 403, "forbidden"


class NotFound(HTTPError):
    status, code = 404, "not_found"


class MethodNotAllowed(HTTPError):
    status, code = 405, "method_not_allowed"


class Conflict(HTTPError):
    status, code = 409, "conflict"


class TooLarge(HTTPError):
    status, code = 413, "too_large"


class HeadTooLarge(HTTPError):
    status, code = 431, "head_too_large"


class UnsupportedMedia(HTTPError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(HTTPError):
    """A model update refused: it did not load or failed its golden check."""

    status, code = 422, "refused"


class Overloaded(HTTPError):
    """The queue is full: answered at once, with Retry-After, instead of queueing without bound."""

    status, code = 503, "overloaded"


class NotReady(HTTPError):
    status, code = 503, "not_ready"


class DeadlineExceeded(HTTPError):
    status, code = 504, "deadline_exceeded"
