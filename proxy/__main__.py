"""Command line of the daemon: ``python -m proxy -f FILE`` (console script ``pymcproxy``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from proxy import __version__, ctl
from proxy import config as configmod
from proxy.ctl import DEFAULT_CTL
from proxy.daemon import Daemon
from proxy.events import EventLog
from proxy.instance import Tunables
from proxy.kernel import KernelError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        return ctl.main(argv[1:])
    p = argparse.ArgumentParser(
        prog="pymcproxy",
        description="IGMP/MLD proxy with instances, multiple upstreams, peering and filters "
        "(mcproxy.conf grammar). 'pymcproxy ctl show' asks a running daemon.",
    )
    p.add_argument("-f", "--file", help="configuration file to run")
    p.add_argument(
        "-c", "--check", metavar="FILE", help="only check FILE; exit 0 if valid, 2 if not"
    )
    p.add_argument("-d", "--debug", action="store_true", help="debug logging")
    p.add_argument(
        "-s", "--ctl", default=DEFAULT_CTL, help=f"control socket path (default {DEFAULT_CTL})"
    )
    p.add_argument("--log", help="log file (default: standard error)")
    p.add_argument("--events", help="append timestamped protocol events to this CSV file")
    p.add_argument("--node", default="", help="node name written in the events file")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds before an idle (S,G) entry is removed",
    )
    p.add_argument(
        "--poll-interval", type=float, default=0.1, help="seconds between MFC counter polls"
    )
    p.add_argument("--version", action="version", version=f"pymcproxy {__version__}")
    args = p.parse_args(argv)
    if args.check:
        try:
            cfg = configmod.load(args.check)
        except configmod.ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{args.check}: ok ({cfg.protocol}, {len(cfg.instances)} instance(s))")
        return 0
    if not args.file:
        p.error("give -f FILE (or -c FILE to check it)")
    try:
        cfg = configmod.load(args.file)
    except configmod.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print(
            "error: pymcproxy needs root (raw sockets and kernel multicast routing)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        filename=args.log,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    tun = Tunables(poll_interval=args.poll_interval, idle_timeout=args.idle_timeout)
    try:
        events = EventLog(Path(args.events), args.node) if args.events else None
        asyncio.run(Daemon(cfg, args.ctl, tun, events).run())
    except KernelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
