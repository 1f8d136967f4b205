"""Command line of the daemon: ``pymcproxy -f FILE``, with mcproxy's flags and their meanings.

mcproxy's ``-f``, ``-d``, ``-v``/``-vv``, ``-s``, ``-c``, ``-r`` and ``-h`` mean what they
mean there; the configuration check is ``-t``/``--check`` (as nginx and sshd have it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from ipaddress import ip_network
from pathlib import Path

from proxy import __version__, ctl, service
from proxy import config as configmod
from proxy.ctl import DEFAULT_CTL
from proxy.daemon import Daemon
from proxy.events import EventLog
from proxy.instance import Tunables
from proxy.kernel import KernelError

DEFAULT_CONFIG = "/etc/pymcproxy.conf"
MCPROXY_CONFIG = "/etc/mcproxy.conf"  # mcproxy's default, read when ours is not there


def default_config() -> str:
    return (
        MCPROXY_CONFIG
        if not os.path.exists(DEFAULT_CONFIG) and os.path.exists(MCPROXY_CONFIG)
        else DEFAULT_CONFIG
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pymcproxy",
        description="IGMP/MLD proxy with instances, multiple upstreams, peering and filters "
        "(mcproxy.conf grammar). 'pymcproxy ctl show' asks a running daemon.",
    )
    p.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help=f"configuration file (default {DEFAULT_CONFIG}, else {MCPROXY_CONFIG})",
    )
    p.add_argument(
        "-t",
        "--check",
        nargs="?",
        const="",
        metavar="FILE",
        help="only check the configuration (FILE, else -f's); exit 0 if valid, 2 if not",
    )
    p.add_argument("-d", "--debug", action="store_true", help="debug logging (mcproxy's -d)")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log messages; twice (-vv) also logs every IGMP/MLD message received",
    )
    p.add_argument(
        "-s",
        "--status",
        action="store_true",
        help="print the proxy's status on standard output every 2 seconds (mcproxy's -s)",
    )
    p.add_argument(
        "-c",
        "--check-kernel",
        action="store_true",
        help="check the kernel features the proxy needs and exit (mcproxy's -c)",
    )
    p.add_argument(
        "-r",
        "--reset-rp-filter",
        action="store_true",
        help="turn the IPv4 reverse path filter off on the proxy's interfaces (mcproxy's -r)",
    )
    p.add_argument("--ctl", default=DEFAULT_CTL, help=f"control socket (default {DEFAULT_CTL})")
    p.add_argument("--pidfile", metavar="PATH", help="write the daemon's pid to PATH")
    p.add_argument("--log", metavar="FILE", help="log to FILE (default: standard error)")
    p.add_argument("--syslog", action="store_true", help="log to syslog (facility daemon)")
    p.add_argument(
        "--ssm-range",
        action="append",
        metavar="PREFIX",
        help="source-specific multicast range (repeatable; default ff3x::/32 for every "
        "scope x, or 232.0.0.0/8; 'none' turns the SSM rules off)",
    )
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
    return p


def _load(path: str) -> configmod.Config | int:
    """The configuration, or the exit status after its one line was printed."""
    try:
        return configmod.load(path)
    except configmod.ConfigDisabled as exc:
        print(exc)
        return 0
    except configmod.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        return ctl.main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    if args.check_kernel:
        print("Check the currently available kernel features.")
        print("\n".join(service.check_kernel_features()))
        return 0
    path = args.check or args.file or default_config()
    cfg = _load(path)
    if isinstance(cfg, int):
        return cfg
    if args.check is not None:
        print(f"{path}: ok ({cfg.protocol}, {len(cfg.instances)} instance(s))")
        return 0
    try:
        ssm = _ssm_ranges(args.ssm_range, cfg.family)
    except ValueError as exc:
        p.error(f"--ssm-range: {exc}")
    if os.geteuid() != 0:
        print(
            "error: pymcproxy needs root (raw sockets and kernel multicast routing)",
            file=sys.stderr,
        )
        return 2
    verbose = args.verbose + (1 if args.debug else 0)
    service.setup_logging(logging.DEBUG if verbose else logging.INFO, args.log, args.syslog)
    tun = Tunables(poll_interval=args.poll_interval, idle_timeout=args.idle_timeout, ssm=ssm)
    try:
        with (
            _maybe(args.pidfile and service.PidFile(args.pidfile)),
            _maybe(
                args.reset_rp_filter
                and cfg.family == 4
                and service.RpFilterReset(
                    sorted({n for i in cfg.instances for n in i.interfaces()})
                )
            ),
        ):
            events = EventLog(Path(args.events), args.node) if args.events else None
            daemon = Daemon(cfg, args.ctl, tun, events)
            daemon.trace = args.verbose >= 2
            daemon.status_every = 2.0 if args.status else None
            asyncio.run(daemon.run())
    except (KernelError, service.PidFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


class _maybe:
    """``with _maybe(x)``: enter ``x`` if it is a context manager, else do nothing."""

    def __init__(self, cm: object) -> None:
        self.cm = cm if hasattr(cm, "__enter__") else None

    def __enter__(self) -> object:
        return self.cm.__enter__() if self.cm else None

    def __exit__(self, *exc: object) -> None:
        if self.cm:
            self.cm.__exit__(*exc)


def _ssm_ranges(given: list[str] | None, family: int) -> tuple | None:
    """None for the default ranges, () for 'none', else the networks (checked)."""
    if not given:
        return None
    if given == ["none"]:
        return ()
    nets = tuple(ip_network(g, strict=False) for g in given)
    for net in nets:
        if net.version != family or not net.network_address.is_multicast:
            raise ValueError(f"{net} is not an IPv{family} multicast prefix")
    return nets


if __name__ == "__main__":
    sys.exit(main())
