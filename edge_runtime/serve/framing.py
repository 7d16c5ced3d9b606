"""HTTP/1.1 framing both fronts share: how long a request body may be, and an answer's bytes."""

from __future__ import annotations

from http import HTTPStatus

from edge_runtime.serve.app import Response
from edge_runtime.serve.errors import BadRequest, TooLarge


def body_length(transfer_encoding: str | None, content_length: str | None, limit: int) -> int:
    """The body's byte count from its headers, checked before a byte of it is read: chunked
    bodies and a length that is not a count are ``BadRequest``, one over ``limit`` ``TooLarge``."""
    if (transfer_encoding or "").lower() == "chunked":
        raise BadRequest("chunked bodies are not accepted: send Content-Length")
    if content_length is None:  # no body (a POST of :rollback needs none)
        return 0
    try:
        length = int(content_length)
        if length < 0:
            raise ValueError
    except ValueError:
        raise BadRequest(f"Content-Length {content_length!r} is not a byte count") from None
    if length > limit:
        raise TooLarge(f"the body is {length} bytes; this server takes at most {limit} "
                       "(--max-body-bytes): send fewer or smaller instances")
    return length


def http_bytes(resp: Response, *, close: bool) -> bytes:
    """Status line, headers and body as one write (with Nagle off: no delayed-ACK wait)."""
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:
        reason = ""
    head = [f"HTTP/1.1 {resp.status} {reason}", "Server: edge_runtime", f"Content-Type: {resp.content_type}",
            f"Content-Length: {len(resp.body)}"]
    head += [f"{k}: {v}" for k, v in resp.headers.items()]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body
