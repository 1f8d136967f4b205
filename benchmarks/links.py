"""Fidelity benchmark of the link backends against Table I, and the namespace probe helpers.

``python -m benchmarks.links [--quick] [--backend auto|emulator|netem]`` builds one link per
Table I profile, each between two fresh namespaces, and runs all of them at once: 10 UDP
flows per link at 100 packets/s for 30 s (3 s with ``--quick``). The sender puts its
CLOCK_REALTIME send time in the payload; the receiver takes the kernel's receive time
(SO_TIMESTAMPNS), so the one-way delay is measured on one clock. It writes
``results/bench/links.json`` and ``results/bench/links-cdf.{png,pdf}`` (another directory
with ``--results``); the figure is drawn by ``analysis.benchfigures``.

Targets: the mean delay within 0.2 ms and the standard deviation within 5 % of the
configured distribution. The mean is judged against the mean of the delays the emulator
actually drew (its stats report them), because with 30 000 uniform samples of UMTS's +-50 ms
the sample mean itself wanders by 0.17 ms (one standard error): the target is the relay's
timing, not the random draw. Where draws are not reported (netem) the mean must lie within
0.2 ms plus three standard errors of the configured delay. A missed target prints a FAIL
line but does not change the exit status.

The probe helpers (``add_address``, ``static_neighbour``, ``enable_timestamps``,
``recv_with_timestamp``) and the statistics are shared with the link tests; namespaces and
their sockets come from ``lab.netns``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.benchfigures import links_cdf_figure
from benchmarks.results import RESULTS
from lab.clean import remove_netns
from lab.mcsock import SO_TIMESTAMPNS
from lab.netns import make_netns, netns_socket
from lab.provenance import git_commit, machine
from topologies.backends import run_cmd, select_backend
from topologies.links import (
    TABLE_I,
    BackendUnavailable,
    Endpoint,
    LinkBackend,
    LinkProfile,
    direction_key,
)

PR_SET_TIMERSLACK = 29
MEAN_TARGET_MS = 0.2
SD_TARGET_PCT = 5.0
FLOWS = 10
RATE_PPS = 100
PORT_BASE = 40000
PAYLOAD = struct.Struct("!qIH")  # send time (CLOCK_REALTIME ns), sequence number, flow
PAYLOAD_SIZE = 64

_libc = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------------------------
# Probe helpers (also used by tests/netns)


def add_address(ep: Endpoint, cidr: str) -> None:
    """An IPv6 address on ``ep``, usable at once (no DAD)."""
    run_cmd(f"ip -n {ep.netns} addr add {cidr} dev {ep.ifname} nodad".split())


def static_neighbour(ep: Endpoint, address: str, peer: Endpoint) -> None:
    """``address`` is ``peer``'s, permanently: no ND round trip over a delayed link first."""
    if peer.mac is None:
        raise ValueError(f"{peer.label} has no fixed MAC address")
    cmd = (
        f"ip -n {ep.netns} neigh replace {address} lladdr {peer.mac} dev {ep.ifname} nud permanent"
    )
    run_cmd(cmd.split())


def enable_timestamps(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def recv_with_timestamp(sock: socket.socket, size: int = 2048) -> tuple[bytes, int, Any]:
    """One datagram, its kernel receive time (CLOCK_REALTIME ns) and the sender address."""
    data, ancdata, _, addr = sock.recvmsg(size, socket.CMSG_SPACE(16))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", payload[:16])
            return data, sec * 1_000_000_000 + nsec, addr
    return data, time.time_ns(), addr  # no timestamp: should not happen once enabled


def set_timer_slack_ns(ns: int = 1) -> None:
    _libc.prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0)


def sleep_until_ns(deadline_ns: int) -> None:
    """Sleep until CLOCK_MONOTONIC reaches ``deadline_ns`` (select: microsecond timeouts)."""
    remaining = deadline_ns - time.monotonic_ns()
    if remaining > 0:
        select.select([], [], [], remaining / 1e9)


# --------------------------------------------------------------------------------------------
# Statistics (pure)


def describe_delays(delays_ms: list[float]) -> dict[str, float]:
    ordered = sorted(delays_ms)
    n = len(ordered)
    mean = sum(ordered) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in ordered) / (n - 1)) if n > 1 else 0.0

    def pct(p: float) -> float:
        return ordered[min(n - 1, max(0, round(p / 100 * (n - 1))))]

    return {
        "n": n,
        "mean_ms": mean,
        "sd_ms": sd,
        "min_ms": ordered[0],
        "p1_ms": pct(1),
        "p99_ms": pct(99),
        "max_ms": ordered[-1],
    }


def reorder_rate(seqs_in_arrival_order: list[int]) -> float:
    """Share of packets that arrive after a packet sent later (RFC 4737's reordered)."""
    highest, late = -1, 0
    for seq in seqs_in_arrival_order:
        if seq < highest:
            late += 1
        highest = max(highest, seq)
    return late / len(seqs_in_arrival_order) if seqs_in_arrival_order else 0.0


def configured_cdf(profile: LinkProfile, x_ms: float) -> float:
    """CDF of one packet's delay under the resolved ``profile`` (clamp at zero included)."""
    d, j = profile.delay_ms, profile.jitter_ms
    if x_ms < 0:
        return 0.0
    if j == 0:
        return 1.0 if x_ms >= d else 0.0
    if profile.distribution == "uniform":
        return min(1.0, max(0.0, (x_ms - (d - j)) / (2 * j)))
    return 0.5 * (1 + math.erf((x_ms - d) / (j * math.sqrt(2))))


def judge(
    profile: LinkProfile, stats: dict[str, float], drawn_mean_ms: float | None
) -> dict[str, Any]:
    """Errors of measured delays against the configured distribution, and pass/fail."""
    expected_sd = profile.expected_sd_ms()
    se = expected_sd / math.sqrt(stats["n"])
    mean_error = stats["mean_ms"] - profile.delay_ms
    sd_error_pct = 100 * (stats["sd_ms"] - expected_sd) / expected_sd if expected_sd else None
    if drawn_mean_ms is not None:
        bias = stats["mean_ms"] - drawn_mean_ms
        mean_ok = abs(bias) <= MEAN_TARGET_MS
    else:
        bias = None
        mean_ok = abs(mean_error) <= MEAN_TARGET_MS + 3 * se
    sd_ok = sd_error_pct is None or abs(sd_error_pct) <= SD_TARGET_PCT
    return {
        "expected_sd_ms": expected_sd,
        "mean_error_ms": mean_error,
        "sampling_se_ms": se,
        "drawn_mean_ms": drawn_mean_ms,
        "bias_vs_drawn_ms": bias,
        "sd_error_pct": sd_error_pct,
        "mean_ok": mean_ok,
        "sd_ok": sd_ok,
        "pass": mean_ok and sd_ok,
    }


# --------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class BenchLink:
    index: int
    profile: LinkProfile
    tx_ns: str
    rx_ns: str
    tx: Endpoint
    rx: Endpoint
    rx_addr: str = ""
    tx_sock: socket.socket | None = None
    rx_socks: list[socket.socket] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.profile.name


def _addr(index: int, host: int) -> str:
    return f"2001:db8:{0xB00 + index:x}::{host}"


def _mac(index: int, host: int) -> str:
    return f"02:00:00:b0:{index:02x}:{host:02x}"


def build_links(
    backend: LinkBackend, prefix: str, profiles: list[LinkProfile], seed: int
) -> list[BenchLink]:
    """One link per profile between ``<prefix>-<name>-tx`` and ``-rx``, with static ND."""
    links = []
    for index, profile in enumerate(profiles):
        tx_ns, rx_ns = f"{prefix}-{profile.name}-tx", f"{prefix}-{profile.name}-rx"
        tx = Endpoint(tx_ns, "eth0", _mac(index, 1))
        rx = Endpoint(rx_ns, "eth0", _mac(index, 2))
        link = BenchLink(index, profile, tx_ns, rx_ns, tx, rx, rx_addr=_addr(index, 2))
        links.append(link)
        for ns, ep, host, peer in ((tx_ns, tx, 1, rx), (rx_ns, rx, 2, tx)):
            make_netns(ns)
            backend.add_endpoint(ep)
            add_address(ep, f"{_addr(index, host)}/64")
            static_neighbour(ep, _addr(index, 3 - host), peer)
        backend.connect(tx, rx, profile, seed + index)
        link.tx_sock = netns_socket(tx_ns, socket.AF_INET6, socket.SOCK_DGRAM)
        for flow in range(FLOWS):
            sock = netns_socket(rx_ns, socket.AF_INET6, socket.SOCK_DGRAM)
            sock.bind((link.rx_addr, PORT_BASE + flow))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            enable_timestamps(sock)
            sock.setblocking(False)
            link.rx_socks.append(sock)
    return links


def send_flows(links: list[BenchLink], count: int, start_ns: int) -> None:
    """Send ``count`` packets per flow, flows and links staggered evenly over each period."""
    set_timer_slack_ns(1)
    period = 1_000_000_000 // RATE_PPS
    slots = [(link, flow) for flow in range(FLOWS) for link in links]
    step = period // len(slots)
    pad = b"\0" * (PAYLOAD_SIZE - PAYLOAD.size)
    for seq in range(count):
        for slot, (link, flow) in enumerate(slots):
            sleep_until_ns(start_ns + seq * period + slot * step)
            payload = PAYLOAD.pack(time.time_ns(), seq, flow) + pad
            link.tx_sock.sendto(payload, (link.rx_addr, PORT_BASE + flow))


def receive_flows(
    links: list[BenchLink], deadline_ns: int, expected: int
) -> dict[str, list[tuple[int, int, int, int]]]:
    """(flow, seq, send_ns, recv_ns) per link, in arrival order, until all came or deadline."""
    owner = {sock: link for link in links for sock in link.rx_socks}
    samples: dict[str, list[tuple[int, int, int, int]]] = {link.name: [] for link in links}
    received = 0
    while received < expected:
        remaining = deadline_ns - time.monotonic_ns()
        if remaining <= 0:
            break
        for sock in select.select(list(owner), [], [], remaining / 1e9)[0]:
            while True:
                try:
                    data, recv_ns, _ = recv_with_timestamp(sock)
                except BlockingIOError:
                    break
                send_ns, seq, flow = PAYLOAD.unpack_from(data)
                samples[owner[sock].name].append((flow, seq, send_ns, recv_ns))
                received += 1
    return samples


def analyse(
    link: BenchLink,
    resolved: LinkProfile,
    samples: list[tuple[int, int, int, int]],
    sent: int,
    link_stats: dict[str, Any] | None,
) -> dict[str, Any]:
    delays = [(recv - send) / 1e6 for _, _, send, recv in samples]
    per_flow: dict[int, list[int]] = {}
    for flow, seq, _, _ in samples:
        per_flow.setdefault(flow, []).append(seq)
    reordered = sum(reorder_rate(seqs) * len(seqs) for seqs in per_flow.values())
    stats = describe_delays(delays) if delays else {"n": 0}
    result: dict[str, Any] = {
        "profile": link.name,
        "configured": link.profile.to_dict(),
        "delay_ms": resolved.delay_ms,
        "jitter_ms": resolved.jitter_ms,
        "distribution": resolved.distribution,
        "sent": sent,
        "received": len(samples),
        "loss": 1 - len(samples) / sent if sent else 0.0,
        "reorder_rate": reordered / len(samples) if samples else 0.0,
        **stats,
    }
    if delays:
        drawn = (link_stats or {}).get("drawn_mean_ms")
        result.update(judge(resolved, stats, drawn))
    else:
        result["pass"] = False
    result["delays_ms"] = delays  # kept for the plot, dropped before writing JSON
    return result


def configured_curve(
    profile: LinkProfile, delays_ms: list[float], points: int = 400
) -> tuple[list[float], list[float]]:
    """The configured CDF over the x range of a plot of ``delays_ms``.

    The range is the configured support plus the bulk of the measurements: a few late
    packets must not squeeze the distribution into a corner.
    """
    delays = sorted(delays_ms)
    n = len(delays)
    half = profile.jitter_ms * (1.1 if profile.distribution == "uniform" else 3.0)
    lo = min(profile.delay_ms - half, delays[n // 1000])
    hi = max(profile.delay_ms + half, delays[-1 - n // 1000])
    lo, hi = max(0.0, lo - 0.02 * (hi - lo)), hi + 0.02 * (hi - lo)
    xs = [lo + (hi - lo) * i / points for i in range(points + 1)]
    return xs, [configured_cdf(profile, x) for x in xs]


def cdf_panels(
    results: list[dict[str, Any]], profiles: dict[str, LinkProfile]
) -> list[dict[str, Any]]:
    """What ``analysis.benchfigures.links_cdf_figure`` draws: per link the measured delays
    and the configured CDF of its resolved profile."""
    panels = []
    for res in results:
        profile = profiles[res["profile"]]
        panel = {
            "profile": res["profile"],
            "delay_ms": profile.delay_ms,
            "jitter_ms": profile.jitter_ms,
            "delays_ms": res["delays_ms"],
        }
        if res["delays_ms"]:
            panel["model_x"], panel["model_cdf"] = configured_curve(profile, res["delays_ms"])
        panels.append(panel)
    return panels


@contextmanager
def bench_network(
    backend_name: str, prefix: str, profiles: list[LinkProfile], seed: int
) -> Iterator[tuple[LinkBackend, list[BenchLink]]]:
    """Backend and links, removed again however the block ends."""
    backend = select_backend(backend_name, tag=prefix)
    links: list[BenchLink] = []
    try:
        backend.start()
        links = build_links(backend, prefix, profiles, seed)
        yield backend, links
    finally:
        for link in links:
            for sock in [link.tx_sock, *link.rx_socks]:
                if sock is not None:
                    sock.close()
        backend.stop()
        for profile in profiles:
            for side in ("tx", "rx"):
                name = f"{prefix}-{profile.name}-{side}"
                if Path(f"/run/netns/{name}").exists():
                    remove_netns(name, log=lambda _: None)


def run_bench(duration_s: float, backend_name: str, seed: int = 1) -> dict[str, Any]:
    profiles = list(TABLE_I.values())
    prefix = f"pmlb{os.getpid()}"
    count = int(duration_s * RATE_PPS)
    with bench_network(backend_name, prefix, profiles, seed) as (backend, links):
        time.sleep(0.5)  # carrier up: let the stacks' own ND/MLD chatter pass
        resolved = {link.name: _resolved(backend, link) for link in links}
        start_ns = time.monotonic_ns() + 200_000_000
        sender = multiprocessing.get_context("fork").Process(
            target=send_flows, args=(links, count, start_ns), daemon=True
        )
        sender.start()
        max_delay_ns = max(p.delay_ms + p.jitter_ms for p in resolved.values()) * 1e6
        deadline = start_ns + count * 1e9 / RATE_PPS + max_delay_ns + 1e9
        samples = receive_flows(links, int(deadline), count * FLOWS * len(links))
        sender.join()
        stats = backend.stats()
        description = backend.describe()
    results = [
        analyse(
            link,
            resolved[link.name],
            samples[link.name],
            count * FLOWS,
            stats.get(direction_key(link.tx, link.rx)),
        )
        for link in links
    ]
    report = {
        "machine": machine(),
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": duration_s,
        "flows_per_link": FLOWS,
        "rate_pps_per_flow": RATE_PPS,
        "seed": seed,
        "targets": {"mean_error_ms": MEAN_TARGET_MS, "sd_error_pct": SD_TARGET_PCT},
        "backend": description,
        "profiles": results,
    }
    return {"report": report, "resolved": resolved}


def _resolved(backend: LinkBackend, link: BenchLink) -> LinkProfile:
    for entry in backend.describe()["links"]:
        if entry["a"] == link.tx.label and entry["connected"]:
            return LinkProfile.from_dict(
                {**entry["configured"], "delay_ms": entry["delay_ms"], "delay_range_ms": None}
            )
    raise RuntimeError(f"link of {link.name} not found in the backend description")


def print_summary(results: list[dict[str, Any]]) -> bool:
    print(
        f"{'profile':9} {'delay':>8} {'jit':>5} {'n':>6} {'mean':>8} {'err':>7} {'bias':>7} "
        f"{'sd':>7} {'exp.sd':>7} {'sd err':>7} {'reord':>6} {'loss':>6}  verdict"
    )
    ok = True
    for r in results:
        if r["n"] == 0:
            print(f"{r['profile']:9} no packets received  FAIL")
            ok = False
            continue
        bias = r["bias_vs_drawn_ms"]
        print(
            f"{r['profile']:9} {r['delay_ms']:8.3f} {r['jitter_ms']:5.1f} {r['n']:6d} "
            f"{r['mean_ms']:8.3f} {r['mean_error_ms']:+7.3f} "
            f"{'' if bias is None else format(bias, '+.3f'):>7} {r['sd_ms']:7.3f} "
            f"{r['expected_sd_ms']:7.3f} {r['sd_error_pct']:+6.2f}% {r['reorder_rate']:6.3f} "
            f"{r['loss']:6.4f}  {'pass' if r['pass'] else 'FAIL'}"
        )
        ok = ok and r["pass"]
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.links",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="3 s instead of 30 s")
    parser.add_argument("--backend", default="auto", choices=["auto", "emulator", "netem"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--results",
        "--out",
        dest="out",
        metavar="DIR",
        type=Path,
        default=RESULTS,
        help=f"output directory (default {RESULTS})",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the link bench needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        outcome = run_bench(3.0 if args.quick else 30.0, args.backend, args.seed)
    except BackendUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report, resolved = outcome["report"], outcome["resolved"]
    args.out.mkdir(parents=True, exist_ok=True)
    plots = links_cdf_figure(cdf_panels(report["profiles"], resolved), args.out)
    for r in report["profiles"]:
        del r["delays_ms"]
    json_path = args.out / "links.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"backend: {report['backend']['backend']} ({report['backend'].get('version')})")
    ok = print_summary(report["profiles"])
    print(f"wrote {json_path}, {', '.join(str(p) for p in plots)}")
    if not ok:
        failed = [r["profile"] for r in report["profiles"] if not r["pass"]]
        print(
            f"FAIL: link fidelity targets missed for {', '.join(failed)} "
            f"(|mean error| <= {MEAN_TARGET_MS} ms, |sd error| <= {SD_TARGET_PCT} %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
