"""``python -m pmip``: the LMA agent, the MAG daemon and one-shot MAG exchanges."""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import sys
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from lab import mcsock
from pmip.lma import LmaAgent
from pmip.mag import MagAgent, MagDaemon, MagPlan, SignallingError
from pmip.mh import (
    DEFAULT_LIFETIME_S,
    INITIAL_BINDACK_TIMEOUT_S,
    MAX_BINDACK_TIMEOUT_S,
    MAX_LIFETIME_S,
    MIN_DELAY_BEFORE_BCE_DELETE_S,
    AccessTech,
    Handoff,
)
from pmip.routes import RouteError
from proxy.events import EventLog


def _ipv6(text: str) -> IPv6Address:
    try:
        return IPv6Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv6 address: {text}") from None


def _prefix(text: str) -> IPv6Network:
    try:
        return IPv6Network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IPv6 prefix: {exc}") from None


def _byte(text: str) -> int:
    if not text.isdigit() or int(text) > 255:
        raise argparse.ArgumentTypeError(f"not a value in 0..255: {text}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _lifetime(text: str) -> int:
    if not text.isdigit() or int(text) % 4 or not 0 < int(text) <= MAX_LIFETIME_S:
        raise argparse.ArgumentTypeError(
            f"lifetime must be a positive multiple of 4 s up to {MAX_LIFETIME_S}: {text}"
        )
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pmip", description="RFC 5213 PBU/PBA signalling emulation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    lma = sub.add_parser("lma", help="run the LMA agent until SIGTERM")
    lma.add_argument("--address", type=_ipv6, required=True, help="LMAA, the LMA's address")
    lma.add_argument(
        "--tunnel-if",
        action="append",
        required=True,
        metavar="IF|COA=IF",
        help="MAG link accepted for PBUs (repeatable); COA=IF pins a Proxy-CoA to a link",
    )
    lma.add_argument(
        "--bce-delete-delay",
        type=_seconds,
        default=MIN_DELAY_BEFORE_BCE_DELETE_S,
        metavar="S",
        help="MinDelayBeforeBCEDelete (10 s)",
    )
    lma.add_argument("--max-lifetime", type=_lifetime, default=MAX_LIFETIME_S, metavar="S")

    daemon = sub.add_parser("mag", help="run a MAG's daemon until SIGTERM (attach -> PBU)")
    daemon.add_argument("--plan", type=Path, required=True, help="JSON: node and access links")

    agents = {
        "mag-register": "register an MN (one-shot)",
        "mag-deregister": "de-register an MN with a lifetime-0 PBU (one-shot)",
    }
    mags = {name: sub.add_parser(name, help=text) for name, text in agents.items()}
    for name, mag in mags.items():
        mag.add_argument("--proxy-coa", type=_ipv6, required=True, help="this MAG's address")
        mag.add_argument("--lma", type=_ipv6, required=True, help="LMAA")
        mag.add_argument("--mn-id", required=True, help="MN identifier (NAI)")
        mag.add_argument("--hnp", type=_prefix, required=True, help="home network prefix")
        mag.add_argument(
            "--access-if",
            required=name == "mag-register",
            help="MN's access link (the host route goes here)",
        )
        mag.add_argument(
            "--handoff",
            type=_byte,
            default=Handoff.NEW_INTERFACE if name == "mag-register" else Handoff.UNKNOWN,
            help="Handoff Indicator: 1 new interface, 3 between MAGs, 4 unknown",
        )
        mag.add_argument(
            "--att",
            type=_byte,
            default=AccessTech.IEEE_802_3,
            help="Access Technology Type (3 = IEEE 802.3)",
        )
        mag.add_argument(
            "--initial-timeout", type=_seconds, default=INITIAL_BINDACK_TIMEOUT_S, metavar="S"
        )
        mag.add_argument("--max-timeout", type=_seconds, default=MAX_BINDACK_TIMEOUT_S, metavar="S")
    mags["mag-deregister"].add_argument(
        "--no-wait", action="store_true", help="send one PBU, do not wait for the PBA"
    )
    mags["mag-register"].add_argument(
        "--lifetime", type=_lifetime, default=DEFAULT_LIFETIME_S, metavar="S"
    )
    for command in (lma, daemon, *mags.values()):
        command.add_argument("--events", type=Path, help="events CSV to append to")
        command.add_argument("--node", help="node name in the events (default: the role)")
    return parser


def _tunnels(specs: list[str]) -> tuple[list[str], dict[IPv6Address, str]]:
    names, pinned = [], {}
    for spec in specs:
        coa, sep, ifname = spec.rpartition("=")
        if not sep:
            names.append(spec)
            continue
        try:
            pinned[IPv6Address(coa)] = ifname
        except ValueError:
            raise ValueError(f"--tunnel-if {spec}: {coa!r} is not an IPv6 address") from None
    for ifname in [*names, *pinned.values()]:
        mcsock.ifindex(ifname)  # fail now, with the interface's name, not at the first PBU
    return names, pinned


def run_lma(args: argparse.Namespace, events: EventLog) -> int:
    names, pinned = _tunnels(args.tunnel_if)
    agent = LmaAgent(
        args.address,
        tunnel_ifs=names,
        coa_tunnels=pinned,
        events=events,
        bce_delete_delay=args.bce_delete_delay,
        max_lifetime_s=args.max_lifetime,
    )

    def ready() -> None:
        # Harnesses wait for this line before the first PBU.
        print(
            f"pmip lma: listening on {args.address}, tunnels {', '.join(args.tunnel_if)}",
            flush=True,
        )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.serve(stop, ready)

    asyncio.run(serve())
    return 0


def run_mag(args: argparse.Namespace, events: EventLog) -> int:
    with MagAgent(
        args.proxy_coa,
        events=events,
        access_tech=args.att,
        initial_timeout=args.initial_timeout,
        max_timeout=args.max_timeout,
    ) as mag:
        if args.command == "mag-register":
            done = mag.register(
                args.mn_id,
                args.hnp,
                args.lma,
                args.access_if,
                handoff=args.handoff,
                lifetime_s=args.lifetime,
            )
        else:
            done = mag.deregister(
                args.mn_id,
                args.hnp,
                args.lma,
                access_if=args.access_if,
                handoff=args.handoff,
                wait=not args.no_wait,
            )
    if done is None:
        print(f"pmip {args.command}: {args.mn_id} {args.hnp}: PBU sent to {args.lma}")
    else:
        print(
            f"pmip {args.command}: {args.mn_id} {args.hnp} accepted by {args.lma}, "
            f"PBU->PBA {done.rtt_ns / 1e6:.3f} ms, {done.attempts} PBU(s)"
        )
    return 0


def run_mag_daemon(args: argparse.Namespace, events: EventLog) -> int:
    try:
        plan = MagPlan.from_json(args.plan.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read plan {args.plan}: {exc}") from None
    events.close()  # the daemon keeps its own log, named after the plan's node
    MagDaemon(plan, args.events).run()
    return 0


RUNNERS = {"lma": run_lma, "mag": run_mag_daemon}


def _one_line(exc: Exception) -> str:
    hint = ""
    if isinstance(exc, OSError) and exc.errno == errno.EPERM:
        hint = " (raw sockets and routes need root)"
    return mcsock.error_text(exc) + hint


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    role = "lma" if args.command == "lma" else "mag"
    run = RUNNERS.get(args.command, run_mag)
    try:
        events = EventLog(args.events, args.node or role)
    except OSError as exc:
        print(
            f"pmip {args.command}: error: cannot open {args.events}: {_one_line(exc)}",
            file=sys.stderr,
        )
        return 1
    try:
        return run(args, events)
    except (SignallingError, RouteError, ValueError, OSError) as exc:
        print(f"pmip {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pmip {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(main())
