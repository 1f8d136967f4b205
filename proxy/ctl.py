"""The control socket: its protocol, the daemon's server end and the client ``pymcproxy-ctl``.

One request per connection: the client sends one JSON object on one line, the server
answers with one JSON object on one line and closes. Every reply has ``"ok"``; a failed
one has ``"error"``. ``pymcproxy-ctl show`` asks a running daemon what it is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable

DEFAULT_CTL = "/run/pymcproxy.sock"
COMMANDS = ("show", "reload", "add-downstream", "remove-downstream", "migrate", "stop")


def encode(message: dict) -> bytes:
    """One request or reply as it goes on the socket (values JSON cannot hold become text)."""
    return json.dumps(message, default=str).encode() + b"\n"


def decode(line: bytes) -> dict:
    """A request or reply read from the socket; an empty request means ``show``."""
    return json.loads(line or b"{}")


def request(path: str, req: dict, timeout: float = 5.0) -> dict:
    """Send one JSON request to the daemon's control socket and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(encode(req))
        buf = b""
        while chunk := s.recv(1 << 16):
            buf += chunk
    return decode(buf)


async def start_server(path: str, handle: Callable[[dict], dict]) -> asyncio.AbstractServer:
    """Listen on ``path`` (mode 0600, replacing a stale socket); ``handle`` answers requests.

    A request that ``handle`` rejects with ValueError, KeyError or TypeError (bad JSON, a
    missing or wrong field) gets ``{"ok": false, "error": ...}``.
    """

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                reply = handle(decode(line))
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(encode(reply))
            await writer.drain()
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(serve, path=path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


def render_text(reply: dict) -> str:
    """A human-readable view of ``show``."""
    lines = [f"pymcproxy pid {reply['pid']}  config {reply['config']}  drops {reply['drops']}"]
    for inst in reply["instances"]:
        lines.append(f"instance {inst['name']} (table {inst['table']})")
        for name, i in inst["interfaces"].items():
            state = "up" if i["up"] else ("down" if i["present"] else "absent")
            q = inst["queriers"].get(name)
            qs = ""
            if q:
                qs = (
                    "  querier"
                    if q.get("is_querier")
                    else f"  non-querier (querier {q.get('other_querier')})"
                )
            lines.append(f"  {i['role']:<10} {name:<16} {state:<6} vif {i['vif']}{qs}")
            for g, rec in sorted((q or {}).get("groups", {}).items()):
                lines.append(f"      group {g}: {rec.get('mode')} {rec.get('sources', '')}")
        sel = inst.get("selection")
        queriers = inst.get("upstream_queriers", {})
        if sel:
            lines.append(
                f"  upstream selection: revert {sel['revert']}, migrate {sel['migrate']}, "
                f"overlap {sel['overlap']}s, default {sel['default'] or '-'}"
            )
            for c in sel["candidates"]:
                q = queriers.get(c["interface"])
                heard = f"  querier {q['querier']} {q['age']}s ago" if q else ""
                default = "  default" if c["default"] else ""
                lines.append(
                    f"    candidate {c['interface']:<12} priority {c['priority']:<5} "
                    f"{c['state']}  takeover {c['takeover']}{default}{heard}"
                )
                for r in c["records"]:
                    lines.append(f"        select {r}")
            for ch in sel["channels"]:
                lines.append(
                    f"    request ({ch['source']}, {ch['group']}) from {ch['downstream']} -> "
                    f"{', '.join(ch['upstreams']) or '-'}: {ch['why']}"
                )
        else:
            for name, q in queriers.items():
                lines.append(f"  upstream {name}: querier {q['querier']} {q['age']}s ago")
        for m in inst["upstream"]:
            lines.append(f"  joined {m['group']} on {m['interface']}: {m['state']}")
        for e in inst["mfc"]:
            lines.append(
                f"  mfc ({e['source']}, {e['group']}) {e['iif']} -> {', '.join(e['oifs']) or '-'}"
                f"  {e['packets']} pkts"
            )
            if "upstreams" in e:
                mirrored = "  (arrives on several upstreams)" if e.get("mirrored") else ""
                lines.append(f"      served by {', '.join(e['upstreams']) or '-'}{mirrored}")
                for w in e["why"]:
                    lines.append(
                        f"      {w['downstream']} {w['request']} -> "
                        f"{', '.join(w['upstreams']) or '-'}: {w['why']}"
                    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pymcproxy-ctl", description=__doc__)
    p.add_argument(
        "-s", "--socket", default=DEFAULT_CTL, help=f"control socket (default {DEFAULT_CTL})"
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON reply")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("show", help="interfaces, queriers, groups, upstream joins and the MFC")
    sub.add_parser("reload", help="re-read the configuration, apply the difference")
    sub.add_parser("stop", help="stop the daemon cleanly")
    for name in ("add-downstream", "remove-downstream"):
        sp = sub.add_parser(name)
        sp.add_argument("instance")
        sp.add_argument("interface")
    sp = sub.add_parser(
        "migrate", help="move subscriptions kept on their old upstream to the selected one now"
    )
    sp.add_argument("instance")
    sp.add_argument("group", nargs="?", help="only this group (default: every group)")
    args = p.parse_args(argv)
    req = {"cmd": args.cmd or "show"}
    if args.cmd in ("add-downstream", "remove-downstream"):
        req |= {"instance": args.instance, "interface": args.interface}
    if args.cmd == "migrate":
        req |= {"instance": args.instance, "group": args.group}
    try:
        reply = request(args.socket, req)
    except OSError as exc:
        print(
            f"error: cannot reach pymcproxy at {args.socket}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    if args.json or req["cmd"] != "show" or not reply.get("ok"):
        print(json.dumps(reply, indent=2))
    else:
        print(render_text(reply))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
