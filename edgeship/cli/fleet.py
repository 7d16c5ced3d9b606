"""``edgeship fleet``: TVM's RPC tracker on this machine and the devices joined to it.

Parse, call ``edgeship.devices.fleet``, print. Benchmarks use it as ``bench --on fleet``,
tuning as ``export --tracker``.
"""

from __future__ import annotations

from typing import Any

import click

from edgeship.cli.options import PORT, json_option
from edgeship.core import console
from edgeship.core.errors import InputError
from edgeship.devices.fleet import join as j
from edgeship.devices.fleet.join import joined
from edgeship.devices.fleet.join import leave as do_leave
from edgeship.devices.fleet.tracker import queue, resolve_tracker, start_tracker, stop_tracker
from edgeship.devices.fleet.tracker import tracker_status as status


@click.group()
def fleet() -> None:
    """A fleet of devices through Apache TVM's RPC tracker.

    \b
    Example:
      edgeship fleet tracker start                 # 127.0.0.1:9190
      edgeship fleet join --emulated --key rpi4    # the emulated Pi
      edgeship fleet join --local --key host       # this machine
      edgeship fleet join pi@pi1.local --key rpi4 --tracker 192.168.1.10:9190
      edgeship fleet list
      edgeship bench latest --on fleet --key rpi4
      edgeship fleet leave --all
    """


@fleet.group()
def tracker() -> None:
    """Start, stop or check the tracker (python -m tvm.exec.rpc_tracker) on this machine."""


@tracker.command("start")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; devices on other machines need this machine's LAN address.")
@click.option("--port", type=PORT, default=9190, show_default=True, help="Port to listen on.")
@json_option
def tracker_start(host: str, port: int, as_json: bool) -> None:
    """Start the tracker, detached: it runs until `edgeship fleet tracker stop`."""
    info = start_tracker(host, port, warn=console.warn)
    if as_json:
        console.emit_json({"tracker": info.addr, "pid": info.pid, "log": info.log})
        return
    console.out.print(f"tracker on {info.addr} (pid {info.pid}); log {info.log}", markup=False)
    console.out.print("next: edgeship fleet join --local --key host   (or --emulated, or USER@HOST)",
                      markup=False)


@tracker.command("stop")
def tracker_stop() -> None:
    """Stop the tracker this machine started (devices stay up and re-register on its return)."""
    info = stop_tracker()
    console.out.print(f"stopped the tracker on {info.addr}" if info else "no tracker was running here",
                      markup=False)


@tracker.command("status")
@json_option
def tracker_status(as_json: bool) -> None:
    """Whether the tracker started here runs, and on which address (exit 1 if not)."""
    info = status()
    if as_json:
        console.emit_json({"tracker": info.addr if info else None, "running": bool(info and info.running),
                           "pid": info.pid if info else None})
    else:
        console.out.print(f"tracker on {info.addr}: {'running' if info.running else 'not running'} "
                          f"(pid {info.pid})" if info else "no tracker started here", markup=False)
    if not (info and info.running):
        raise SystemExit(1)


@fleet.command("join")
@click.argument("target", metavar="[USER@HOST]", required=False)
@click.option("--key", required=True, help="The device key, e.g. rpi4, rpi5, host.")
@click.option("--emulated", is_flag=True, help="Join the emulated Pi (QEMU, on this machine).")
@click.option("--local", "local", is_flag=True, help="Join this machine.")
@click.option("--tracker", "tracker_addr", metavar="HOST:PORT",
              help="The tracker (default: the one started here). A Pi needs an address it can reach.")
@click.option("--name", default=None, help="--local: a name for a second server of this machine.")
@click.option("--port", type=PORT, help="USER@HOST: SSH port.")
@click.option("--identity", type=click.Path(dir_okay=False), help="USER@HOST: SSH private key file.")
@click.option("--accept-new-host-key", is_flag=True, help="USER@HOST: trust the host key on first contact.")
@click.option("--offline", is_flag=True, help="USER@HOST: ship the runtime's wheels (Pi without internet).")
@json_option
def join(target: str | None, key: str, emulated: bool, local: bool, tracker_addr: str | None,
         name: str | None, port: int | None, identity: str | None, accept_new_host_key: bool, offline: bool,
         as_json: bool) -> None:
    """Install the runtime on a device and start its RPC server, registered under --key."""
    chosen = [w for w, v in (("USER@HOST", target), ("--emulated", emulated), ("--local", local)) if v]
    if len(chosen) != 1:
        raise InputError("join one device: USER@HOST, --emulated or --local"
                         + (f" (got {' and '.join(chosen)})" if chosen else ""))
    ssh_given = [k for k, v in (("--port", port), ("--identity", identity),
                                ("--accept-new-host-key", accept_new_host_key), ("--offline", offline)) if v]
    if not target and ssh_given:
        raise InputError(f"{ssh_given[0]} goes with USER@HOST")
    if name and not local:
        raise InputError("--name goes with --local")
    if local:
        record = j.join_local(key, tracker_addr, name=name, log=console.warn)
    elif emulated:
        with console.progress("joining the emulated Pi", total=None):
            record = j.join_emulated(key, tracker_addr, log=console.info)
    else:
        record = j.join_ssh(str(target), key, tracker_addr, offline=offline, log=console.info, port=port,
                            identity=identity, accept_new_host_key=accept_new_host_key)
    if as_json:
        console.emit_json(record)
        return
    console.out.print(f"{record['name']} joined {record['tracker']} as {key} (pid {record['pid']}); "
                      f"log {record['log']}", markup=False)


@fleet.command("list")
@click.option("--tracker", "tracker_addr", metavar="HOST:PORT",
              help="The tracker (default: the one started here).")
@json_option
def list_(tracker_addr: str | None, as_json: bool) -> None:
    """The tracker's queue (keys, free and busy devices) and the servers started here."""
    host, port = resolve_tracker(tracker_addr)
    rows = queue(host, port)
    mine = joined()
    if as_json:
        console.emit_json({"tracker": f"{host}:{port}", "keys": rows, "joined_here": mine})
        return
    console.out.print(f"tracker {host}:{port}", markup=False)
    if not rows:
        console.out.print("  no devices: edgeship fleet join --local --key host", markup=False)
    for r in rows:
        console.out.print(f"  {r['key']}: {r['free']} free, {r['busy']} busy, {r['pending']} waiting  "
                          f"({', '.join(r['servers']) or 'no servers'})", markup=False)
    for d in mine:
        state = {True: "running", False: "stopped", None: "remote"}[d["running"]]
        console.out.print(f"  joined here: {d['name']} ({d['kind']}, key {d['key']}, pid {d['pid']}, "
                          f"{state})", markup=False)


@fleet.command("leave")
@click.argument("name", metavar="[NAME|USER@HOST]", required=False)
@click.option("--key", default=None, help="Only the devices of this key.")
@click.option("--emulated", is_flag=True, help="The emulated Pi.")
@click.option("--local", "local", is_flag=True, help="This machine's servers.")
@click.option("--all", "all_", is_flag=True, help="Every device server started here.")
def leave(name: str | None, key: str | None, emulated: bool, local: bool, all_: bool) -> None:
    """Stop device servers this machine started (fleet join); they leave the tracker."""
    which = name or ("emulated" if emulated else "local" if local else None)
    if which is None and not (all_ or key):
        raise InputError("say which: NAME, USER@HOST, --emulated, --local, --key KEY or --all")
    left: list[Any] = do_leave(which, key)
    console.out.print(f"left: {', '.join(left)}" if left else "no matching device server was started here",
                      markup=False)
