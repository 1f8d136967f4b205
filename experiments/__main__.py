"""``python -m experiments``: run scenarios, list them, or open a topology in the Mininet CLI.

It only runs: the tables, figures and report come from ``python -m analysis`` afterwards
(``make experiment`` does both), since ``analysis`` sits above ``experiments``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from experiments import scenarios
from experiments.runner import plan, run_all
from lab import clean
from topologies import cli

REPO = Path(__file__).resolve().parents[1]


def _need_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("error: needs root (network namespaces); run as root or with sudo")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    scenario = scenarios.scenario(args.scenario)
    kinds = list(scenarios.KINDS) if args.kind == "all" else [args.kind]
    for k in kinds:
        if k not in scenarios.KINDS:
            raise ValueError(f"unknown kind {k!r} (valid: all, {', '.join(scenarios.KINDS)})")
    peerings = {"both": [False, True], "on": [True], "off": [False]}.get(args.peering)
    if peerings is None:
        raise ValueError(f"unknown peering {args.peering!r} (valid: on, off, both)")
    if args.reps < 1:
        raise ValueError("reps must be at least 1")
    params = scenarios.apply_settings(
        scenarios.Parameters(duration=args.duration, backend=args.backend, tunnels=args.tunnels),
        args.set,
    )
    _need_root()
    ours = (f"{args.prefix}a-", f"{args.prefix}b-")  # run_all alternates these two
    leftovers = [n for n in clean.list_netns(args.prefix) if n.startswith(ours)]
    if leftovers:
        raise ValueError(
            f"namespaces of an earlier run exist ({', '.join(leftovers[:3])}): run 'make clean'"
        )
    root = Path(args.results)
    keys = plan(scenario, kinds, peerings, args.reps)
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so the network is torn down.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        dirs, failures = run_all(
            scenario, keys, params, args.seed, root, resume=not args.force, prefix=args.prefix
        )
    except KeyboardInterrupt:
        print(
            "interrupted: finished runs are kept, the current one is marked incomplete",
            file=sys.stderr,
        )
        return 130
    for f in failures:
        print(f"failed: {f}", file=sys.stderr)
    print(f"{len(dirs)} complete run(s) under {root / scenario.name}", file=sys.stderr)
    return 1 if failures else 0


def cmd_topo(args: argparse.Namespace) -> int:
    _need_root()
    return cli.interactive(
        args.name, access=args.access, peering=args.peering == "on", backend=args.backend
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pmiplab", description="PMIPv6 multicast experiments")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a scenario")
    run.add_argument("scenario", help="see 'list'")
    run.add_argument("--kind", default="all", help="all or one of: " + ", ".join(scenarios.KINDS))
    run.add_argument("--peering", default="both", help="on, off or both")
    run.add_argument("--reps", type=int, default=10)
    run.add_argument("--duration", type=float, default=3.0, help="seconds of streaming per run")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--backend", default="auto", help="link backend: auto, netem, emulator")
    run.add_argument(
        "--tunnels", default="auto", help="MAG-LMA tunnels: auto (ip6tnl if present), ip6tnl, p2p"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter or a Table I field (see 'list')",
    )
    run.add_argument("--results", default=str(REPO / "results"), help="results root")
    run.add_argument("--prefix", default="pml", help="namespace name prefix (default pml)")
    g = run.add_mutually_exclusive_group()
    g.add_argument(
        "--resume", action="store_true", default=True, help="skip complete runs (default)"
    )
    g.add_argument("--force", action="store_true", help="rerun complete runs")
    sub.add_parser("list", help="scenarios, kinds and parameters")
    topo = sub.add_parser("topo", help="build a topology and open the Mininet CLI")
    topo.add_argument("name", nargs="?", default="single-lma", help="single-lma or multi-lma")
    topo.add_argument("--access", default="lte")
    topo.add_argument("--peering", default="on")
    topo.add_argument("--backend", default="auto")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            print(scenarios.describe())
            return 0
        if args.cmd == "topo":
            return cmd_topo(args)
        return cmd_run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
