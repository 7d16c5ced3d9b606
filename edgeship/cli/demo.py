"""``edgeship demo``: serve a run's web bundle (page, models, LiteRT.js and onnxruntime-web) on this machine.

The library does the work (``export.web.bundle_dir`` finds the bundle, ``edgeship.devices.browser.server``
serves it with the cross-origin isolation headers multithreaded WebAssembly needs); this
module parses, prints the address and blocks until Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
import webbrowser
from typing import Any

import click

from edgeship.cli.options import json_option, pass_app
from edgeship.core.console import emit_json, err, escape, out
from edgeship.devices.browser.server import BundleServer
from edgeship.export.web import bundle_dir


@click.command()
@click.argument("run")
@click.option("--variant", default="base", show_default=True, help="Which variant's bundle to serve.")
@click.option("--quantize", type=click.Choice(["float32", "int8"]), default=None,
              help="Serve web (float32) or web-int8. Default: web, else web-int8.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port; 0 picks a free one.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the demo to your network.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--verbose", is_flag=True, help="Log each request on stderr.")
@json_option
@pass_app
def demo(app: Any, run: str, variant: str, quantize: str | None, port: int, host: str,
         open_browser: bool, verbose: bool, as_json: bool) -> None:
    """Serve the in-browser demo of a run's web bundle until Ctrl-C.

    \b
    Examples:
      edgeship export latest --format web
      edgeship demo latest                 # then open http://127.0.0.1:8000/
      edgeship demo latest --quantize int8 --port 0 --open
    """
    run_dir = app.store.resolve(run)
    folder = bundle_dir(run_dir, variant, quantize)
    server = BundleServer(folder, host=host, port=port, verbose=verbose)
    info = {"url": server.url, "bundle": str(folder), "run_id": run_dir.id, "variant": variant,
            "host": host, "port": server.port}
    if as_json:
        emit_json(info)
    else:
        out.print(f"serving {folder}", markup=False)
        out.print(f"open [bold]{escape(server.url)}[/]  (Ctrl-C stops)")
    if server.every_interface:  # 0.0.0.0, ::, 0, "" ... judged from the address actually bound
        err.print("[yellow]warning:[/] listening on every interface: anyone on your network can load it")
    if open_browser and not webbrowser.open(server.url):
        err.print(f"no browser could be started here; open {server.url} yourself", markup=False)
    _sigterm_stops()
    server.serve_forever()
    err.print("stopped")


def _sigterm_stops() -> None:
    """SIGTERM (a service manager, ``kill``) stops the server like Ctrl-C: socket closed, exit 0."""
    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
