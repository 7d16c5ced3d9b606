"""The measured alternative front: the same ``Service`` as a raw ASGI app under uvicorn.

Kept so the choice of front can be measured again on a device (``serve --front uvicorn``, needs
``pip install uvicorn``); the default front (``loopfront``) measured faster here and needs no
package (README, "Serving").
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge_runtime.errors import InputError
from edge_runtime.serve.app import Pending, Request, Response, Service, error_response
from edge_runtime.serve.errors import TooLarge


def make_app(service: Service, max_body_bytes: int) -> Any:
    executor = ThreadPoolExecutor(max_workers=service.pool.workers + service.pool.max_queue,
                                  thread_name_prefix="edge-request")
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        resp: Response | None = None
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            resp = error_response(TooLarge(f"the body is {declared} bytes; this server takes at most "
                                           f"{max_body_bytes} (--max-body-bytes)"))
        body = b""
        if resp is None:
            more = True
            while more:
                msg = await receive()
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(body) > max_body_bytes:
                    resp = error_response(TooLarge(f"the body is over {max_body_bytes} bytes "
                                                   "(--max-body-bytes)"))
                    break
        if resp is None:
            query = scope.get("query_string") or b""
            path = scope["path"] + ("?" + query.decode() if query else "")
            peer = (scope.get("client") or ("", 0))[0]
            out = service.handle(Request(scope["method"], path, body, headers, peer))
            if isinstance(out, Pending):  # blocking work: on the executor, never on the loop
                out = await asyncio.get_running_loop().run_in_executor(executor, service.execute, out)
            resp = out
        raw_headers = [(b"content-type", resp.content_type.encode()),
                       (b"content-length", str(len(resp.body)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in resp.headers.items()]
        await send({"type": "http.response.start", "status": resp.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": resp.body})

    return app


def run_uvicorn(service: Service, host: str, port: int, max_body_bytes: int, *, http: str = "auto",
                on_ready: Any = None) -> None:
    try:
        import uvicorn
    except ImportError:
        raise InputError("--front uvicorn needs uvicorn: pip install uvicorn "
                         "(or use --front stdlib)") from None
    config = uvicorn.Config(make_app(service, max_body_bytes), host=host, port=port, http=http,
                            log_level="warning", access_log=False, limit_concurrency=256,
                            timeout_keep_alive=30, lifespan="off")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.05)
        if on_ready is not None:
            sock = server.servers[0].sockets[0]
            on_ready(sock.getsockname()[1])
        await task

    asyncio.run(main())
