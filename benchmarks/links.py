"""Fidelity benchmark of the link backends against Table I, and the namespace probe helpers.

``python -m benchmarks.links [--quick] [--backend auto|emulator|netem]`` builds one
link per Table I profile, each between two fresh namespaces, and runs all of them at once: 10
UDP flows per link at 100 packets/s for 30 s (3 s with ``--quick``). The sender puts its
CLOCK_REALTIME send time in the payload; the receiver takes the kernel's receive time
(SO_TIMESTAMPNS), so the one-way delay is measured on one clock. Control links measure the
machine rather than the profiles: each profile ``X`` runs with ``X0`` (its delay, no jitter,
2 flows, the same moments), and ``unshaped`` (no delay: the path's own noise) and ``fixed``
(50 ms, no jitter: that plus the delay element's timing noise) run as well. A profile that
misses a target by no more than its control's noise explains is marked noise-limited (it
still fails). With ``--at-once one`` (the default on one CPU) each profile and its control
run alone, one after another. It writes ``results/bench/links.json`` and
``results/bench/links-cdf.{png,pdf}`` (another directory with ``--results``); the figure is
drawn by ``analysis.benchfigures``.

Targets: the mean delay within 0.2 ms and the standard deviation within 5 % of the
configured distribution, and no packet lost but by the profile's own loss. The mean is
judged against the mean of the delays the emulator actually drew (its stats report them),
because with 30 000 uniform samples of UMTS's +-50 ms the sample mean itself wanders by
0.17 ms (one standard error): the target is the relay's timing, not the random draw. Where
draws are not reported (netem) the mean must lie within 0.2 ms plus three standard errors of
the configured delay.

Every packet is accounted for: the sender counts what it sent and its send errors (and how
late it sent against its schedule), the backend what its link delivered, lost by the
profile's loss and dropped otherwise, the receiving sockets their overflows (SO_RXQ_OVFL) and
the receiving namespace its UDP errors (/proc/net/snmp6). A profile with any loss not drawn
by its own loss fails, and the summary says where the packets went. The receiver waits for
the sender to finish, then for the longest delay plus a second. A missed target prints a
FAIL line and makes the exit status 1.

The probe helpers (``add_address``, ``static_neighbour``, ``enable_timestamps``,
``recv_with_timestamp``) and the statistics are shared with the link tests; namespaces and
their sockets come from ``lab.netns``.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import multiprocessing
import os
import random
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
from benchmarks.linkstats import (
    MEAN_TARGET_MS,
    SD_TARGET_PCT,
    account,
    cdf_panels,
    describe_delays,
    expected_reorder_rate,
    explain_by_noise,
    judge,
    reorder_rate,
)
from benchmarks.results import RESULTS
from lab.clean import remove_netns
from lab.mcsock import SO_TIMESTAMPNS
from lab.netns import make_netns, netns_socket, sh
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
FLOWS = 10
CONTROL_FLOWS = 2
RATE_PPS = 100
PORT_BASE = 40000
PAYLOAD = struct.Struct("!qIH")  # send time (CLOCK_REALTIME ns), sequence number, flow
PAYLOAD_SIZE = 64
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
# Links that measure the machine, not the profiles (not judged; reported beside them).
NOISE_PROFILES = (
    LinkProfile("unshaped", 0.0, 0.0),
    LinkProfile("fixed", 50.0, 0.0),
)

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


def recv_accounted(sock: socket.socket, size: int = 2048) -> tuple[bytes, int, int | None]:
    """One datagram, its kernel receive time (CLOCK_REALTIME ns) and the socket's count of
    datagrams dropped so far for want of buffer space (SO_RXQ_OVFL; None before the first)."""
    space = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)
    data, ancdata, _, _ = sock.recvmsg(size, space)
    stamp, dropped = time.time_ns(), None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", payload[:16])
            stamp = sec * 1_000_000_000 + nsec
        elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
            (dropped,) = struct.unpack("I", payload[:4])
    return data, stamp, dropped


def udp6_counters(netns: str) -> dict[str, int]:
    """The UDP counters of ``/proc/net/snmp6`` in ``netns`` (Udp6InDatagrams, ...Errors)."""
    text = sh(netns, "cat /proc/net/snmp6")
    return {
        name: int(value)
        for name, value in (line.split() for line in text.splitlines() if line.strip())
        if name.startswith("Udp6")
    }


def set_timer_slack_ns(ns: int = 1) -> None:
    _libc.prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0)


def sleep_until_ns(deadline_ns: int) -> None:
    """Sleep until CLOCK_MONOTONIC reaches ``deadline_ns`` (select: microsecond timeouts)."""
    remaining = deadline_ns - time.monotonic_ns()
    if remaining > 0:
        select.select([], [], [], remaining / 1e9)


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
    flows: int = FLOWS
    control: str | None = None  # the zero-jitter link measured at the same time
    tx_sock: socket.socket | None = None
    rx_socks: list[socket.socket] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.profile.name


def _addr(index: int, host: int) -> str:
    return f"2001:db8:{0xB00 + index:x}::{host}"


def _mac(index: int, host: int) -> str:
    return f"02:00:00:b0:{index:02x}:{host:02x}"


def with_controls(profiles: list[LinkProfile], seed: int) -> list[LinkProfile]:
    """``profiles`` and after each its control: the same base delay as that profile's link
    will draw (`LinkBackend.connect` resolves with the link's seed), no jitter."""
    out = []
    for index, profile in enumerate(profiles):
        delay = profile.resolve(random.Random(seed + 2 * index)).delay_ms
        out += [profile, LinkProfile(f"{profile.name}0", delay, 0.0)]
    return out


def build_links(
    backend: LinkBackend, prefix: str, profiles: list[LinkProfile], seed: int
) -> list[BenchLink]:
    """One link per profile between ``<prefix>-<name>-tx`` and ``-rx``, with static ND; a
    profile ``X0`` is the control of ``X`` (fewer flows)."""
    links = []
    names = {p.name for p in profiles}
    for index, profile in enumerate(profiles):
        tx_ns, rx_ns = f"{prefix}-{profile.name}-tx", f"{prefix}-{profile.name}-rx"
        tx = Endpoint(tx_ns, "eth0", _mac(index, 1))
        rx = Endpoint(rx_ns, "eth0", _mac(index, 2))
        link = BenchLink(index, profile, tx_ns, rx_ns, tx, rx, rx_addr=_addr(index, 2))
        if f"{profile.name}0" in names:
            link.control = f"{profile.name}0"
        if profile.name.endswith("0") and profile.name[:-1] in names:
            link.flows = CONTROL_FLOWS
        links.append(link)
        for ns, ep, host, peer in ((tx_ns, tx, 1, rx), (rx_ns, rx, 2, tx)):
            make_netns(ns)
            backend.add_endpoint(ep)
            add_address(ep, f"{_addr(index, host)}/64")
            static_neighbour(ep, _addr(index, 3 - host), peer)
        backend.connect(tx, rx, profile, seed + index)
        link.tx_sock = netns_socket(tx_ns, socket.AF_INET6, socket.SOCK_DGRAM)
        for flow in range(link.flows):
            sock = netns_socket(rx_ns, socket.AF_INET6, socket.SOCK_DGRAM)
            sock.bind((link.rx_addr, PORT_BASE + flow))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            enable_timestamps(sock)
            sock.setblocking(False)
            link.rx_socks.append(sock)
    return links


def send_flows(links: list[BenchLink], count: int, start_ns: int, report: Any) -> None:
    """Send ``count`` packets per flow, flows and links staggered evenly over each period;
    send to ``report`` (a pipe end) per link what was sent, what failed and how late."""
    set_timer_slack_ns(1)
    period = 1_000_000_000 // RATE_PPS
    slots = [(link, flow) for flow in range(FLOWS) for link in links if flow < link.flows]
    step = period // len(slots)
    pad = b"\0" * (PAYLOAD_SIZE - PAYLOAD.size)
    sent = {link.name: 0 for link in links}
    errors: dict[str, dict[str, int]] = {link.name: {} for link in links}
    lag_ns: dict[str, list[int]] = {link.name: [] for link in links}
    for seq in range(count):
        for slot, (link, flow) in enumerate(slots):
            due = start_ns + seq * period + slot * step
            sleep_until_ns(due)
            lag_ns[link.name].append(time.monotonic_ns() - due)
            payload = PAYLOAD.pack(time.time_ns(), seq, flow) + pad
            try:
                link.tx_sock.sendto(payload, (link.rx_addr, PORT_BASE + flow))
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                errors[link.name][name] = errors[link.name].get(name, 0) + 1
            else:
                sent[link.name] += 1
    end_s = (time.monotonic_ns() - start_ns) / 1e9
    summary = {}
    for link in links:
        lags = sorted(lag_ns[link.name])
        summary[link.name] = {
            "sent": sent[link.name],
            "send_errors": errors[link.name],
            "lag_p50_ms": lags[len(lags) // 2] / 1e6 if lags else None,
            "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] / 1e6 if lags else None,
            "lag_max_ms": lags[-1] / 1e6 if lags else None,
            "end_s": end_s,  # from the first scheduled send to the last send
        }
    report.send(summary)
    report.close()


@dataclass
class Received:
    """What the receiving sockets of one link got: (flow, seq, send_ns, recv_ns) in arrival
    order, and per socket the highest overflow count it reported."""

    samples: list[tuple[int, int, int, int]] = field(default_factory=list)
    overflows: dict[int, int] = field(default_factory=dict)

    @property
    def socket_drops(self) -> int:
        return sum(self.overflows.values())


def receive_flows(
    links: list[BenchLink], sender: Any, drain_ns: int, deadline_ns: int, expected: int
) -> tuple[dict[str, Received], dict[str, Any] | None]:
    """Receive until every packet came, or ``drain_ns`` after the sender reported its end
    (through the pipe end ``sender``), or at ``deadline_ns``; also the sender's report."""
    owner = {sock: link for link in links for sock in link.rx_socks}
    got: dict[str, Received] = {link.name: Received() for link in links}
    received, report, until = 0, None, deadline_ns
    while received < expected:
        remaining = until - time.monotonic_ns()
        if remaining <= 0:
            break
        waiting = [*owner, *([sender] if report is None else [])]
        for sock in select.select(waiting, [], [], remaining / 1e9)[0]:
            if sock is sender:
                report = sender.recv()
                until = min(deadline_ns, time.monotonic_ns() + drain_ns)
                continue
            into = got[owner[sock].name]
            while True:
                try:
                    data, recv_ns, dropped = recv_accounted(sock)
                except BlockingIOError:
                    break
                send_ns, seq, flow = PAYLOAD.unpack_from(data)
                into.samples.append((flow, seq, send_ns, recv_ns))
                if dropped is not None:
                    into.overflows[sock.fileno()] = dropped
                received += 1
    if report is None and sender.poll(max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)):
        report = sender.recv()
    return got, report


def analyse(
    link: BenchLink,
    resolved: LinkProfile,
    got: Received,
    sent: int,
    link_stats: dict[str, Any] | None,
    accounting: dict[str, Any],
) -> dict[str, Any]:
    samples = got.samples
    delays = [(recv - send) / 1e6 for _, _, send, recv in samples]
    per_flow: dict[int, list[int]] = {}
    for flow, seq, _, _ in samples:
        per_flow.setdefault(flow, []).append(seq)
    reordered = sum(reorder_rate(seqs) * len(seqs) for seqs in per_flow.values())
    sends: dict[int, list[tuple[int, int]]] = {}
    for flow, seq, send, _ in samples:
        sends.setdefault(flow, []).append((seq, send))
    model_reorder, model_sd = expected_reorder_rate(
        resolved, [[t for _, t in sorted(flow)] for flow in sends.values()]
    )
    # The same on the nominal schedule: what a sender that keeps time would see.
    period = 1_000_000_000 // RATE_PPS
    longest = max((len(f) for f in sends.values()), default=0)
    nominal = [[i * period for i in range(longest)]] * len(sends)
    nominal_reorder, _ = expected_reorder_rate(resolved, nominal, reps=3)
    stats = describe_delays(delays) if delays else {"n": 0}
    result: dict[str, Any] = {
        "profile": link.name,
        "configured": link.profile.to_dict(),
        "delay_ms": resolved.delay_ms,
        "jitter_ms": resolved.jitter_ms,
        "distribution": resolved.distribution,
        "noise": link.profile in NOISE_PROFILES or link.flows == CONTROL_FLOWS,
        "control": link.control,
        "sent": sent,
        "received": len(samples),
        "loss": 1 - len(samples) / sent if sent else 0.0,
        "reorder_rate": reordered / len(samples) if samples else 0.0,
        "reorder_model": model_reorder,
        "reorder_model_sd": model_sd,
        "reorder_nominal": nominal_reorder,
        "_sends": [[t for _, t in sorted(flow)] for flow in sends.values()],
        "accounting": accounting,
        **stats,
    }
    if delays:
        drawn = (link_stats or {}).get("drawn_mean_ms")
        result.update(judge(resolved, stats, drawn))
        result["pass"] = result["pass"] and accounting["loss_ok"]
    else:
        result["pass"] = False
    result["delays_ms"] = delays  # kept for the plot, dropped before writing JSON
    return result


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


def _measure(
    links: list[BenchLink], count: int, resolved: dict[str, LinkProfile]
) -> tuple[dict[str, Received], dict[str, Any] | None]:
    """Run the flows of ``links`` at the same time; what arrived and the sender's report."""
    start_ns = time.monotonic_ns() + 200_000_000
    report_r, report_w = multiprocessing.get_context("fork").Pipe(duplex=False)
    sender = multiprocessing.get_context("fork").Process(
        target=send_flows, args=(links, count, start_ns, report_w), daemon=True
    )
    sender.start()
    report_w.close()
    profiles = [resolved[link.name] for link in links]
    max_delay_ns = max(p.delay_ms + p.jitter_ms for p in profiles) * 1e6
    drain_ns = int(max_delay_ns + 1e9)
    # However late the sender runs, give up at ten times its schedule.
    deadline = start_ns + 10 * count * 1e9 / RATE_PPS + drain_ns
    try:
        expected = count * sum(link.flows for link in links)
        return receive_flows(links, report_r, drain_ns, int(deadline), expected)
    finally:
        sender.join(5)
        if sender.is_alive():
            sender.kill()
            sender.join()
        report_r.close()


def run_bench(
    duration_s: float,
    backend_name: str,
    seed: int = 1,
    together: bool = True,
) -> dict[str, Any]:
    profiles = with_controls(list(TABLE_I.values()), seed) + list(NOISE_PROFILES)
    prefix = f"pmlb{os.getpid()}"
    count = int(duration_s * RATE_PPS)
    with bench_network(backend_name, prefix, profiles, seed) as (backend, links):
        time.sleep(0.5)  # carrier up: let the stacks' own ND/MLD chatter pass
        resolved = {link.name: _resolved(backend, link) for link in links}
        udp_before = {link.name: udp6_counters(link.rx_ns) for link in links}
        got: dict[str, Received] = {}
        sender_report: dict[str, Any] = {}
        # All links at once, or one after another (a machine with one CPU cannot keep the
        # sender's schedule for all of them: see the README's fidelity section).
        # One link after another, each profile with its control (so that the control sees
        # the same moments), or all at once.
        by_name = {link.name: link for link in links}
        groups = [[link, by_name[link.control]] for link in links if link.control]
        groups += [[link] for link in links if link.profile in NOISE_PROFILES]
        for group in [links] if together else groups:
            measured, report_part = _measure(group, count, resolved)
            got.update(measured)
            sender_report.update(report_part or {})
        stats = backend.stats()
        udp_after = {link.name: udp6_counters(link.rx_ns) for link in links}
        description = backend.describe()
    results = []
    for link in links:
        link_stats = stats.get(direction_key(link.tx, link.rx))
        udp = {k: v - udp_before[link.name].get(k, 0) for k, v in udp_after[link.name].items()}
        accounting = account(
            link.profile,
            count * link.flows,
            len(got[link.name].samples),
            (sender_report or {}).get(link.name),
            link_stats,
            got[link.name].socket_drops,
            udp,
        )
        if sender_report:
            accounting["sender"] = sender_report[link.name]
        results.append(
            analyse(
                link,
                resolved[link.name],
                got[link.name],
                count * link.flows,
                link_stats,
                accounting,
            )
        )
    explain_by_noise(results)
    by_name = {r["profile"]: r for r in results}
    for r in results:
        ref = by_name.get(r["control"] or "")
        if ref is not None and ref["delays_ms"]:
            noise = [d - ref["delay_ms"] for d in ref["delays_ms"]]
            r["reorder_model_noisy"], _ = expected_reorder_rate(
                resolved[r["profile"]], r["_sends"], reps=3, noise_ms=noise
            )
    for r in results:
        del r["_sends"]
    report = {
        "machine": machine(),
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": duration_s,
        "flows_per_link": FLOWS,
        "rate_pps_per_flow": RATE_PPS,
        "seed": seed,
        "links_at_once": len(links) if together else 1,
        "cpus": os.cpu_count(),
        "guest": os.environ.get("PMIPLAB_GUEST") == "1",
        "targets": {"mean_error_ms": MEAN_TARGET_MS, "sd_error_pct": SD_TARGET_PCT, "loss": 0},
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
    """One line per profile; where packets went missing, a line saying where."""
    print(
        f"{'profile':9} {'delay':>8} {'jit':>5} {'n':>6} {'mean':>8} {'err':>7} {'bias':>7} "
        f"{'sd':>7} {'exp.sd':>7} {'sd err':>7} {'reord':>6} {'model':>6} {'loss':>6}  verdict"
    )
    ok = True
    for r in results:
        acc = r["accounting"]
        if r["n"] == 0:
            print(f"{r['profile']:9} no packets received  FAIL")
            ok = False
            continue
        bias = r["bias_vs_drawn_ms"]
        sd_err = "" if r["sd_error_pct"] is None else f"{r['sd_error_pct']:+6.2f}%"
        verdict = "pass" if r["pass"] else "FAIL"
        if r["noise"]:
            verdict = "(noise)"
        print(
            f"{r['profile']:9} {r['delay_ms']:8.3f} {r['jitter_ms']:5.1f} {r['n']:6d} "
            f"{r['mean_ms']:8.3f} {r['mean_error_ms']:+7.3f} "
            f"{'' if bias is None else format(bias, '+.3f'):>7} {r['sd_ms']:7.3f} "
            f"{r['expected_sd_ms']:7.3f} {sd_err:>7} {r['reorder_rate']:6.3f} "
            f"{r['reorder_model']:6.3f} "
            f"{r['loss']:6.4f}  {verdict}"
        )
        if acc["missing"] or not acc["loss_ok"]:
            print(
                f"{'':9} missing {acc['missing']} of {acc['scheduled']}: not sent "
                f"{acc['not_sent']}, send errors {acc['send_errors']}, link lost "
                f"{acc['link_lost']}, link drops {acc['link_drops']}, socket overflows "
                f"{acc['socket_drops']} (Udp6RcvbufErrors {acc['udp_rcvbuf_errors']}), "
                f"not located {acc['unlocated']}"
            )
        sender = acc.get("sender")
        if sender and sender["lag_p99_ms"] is not None and sender["lag_p99_ms"] > 1.0:
            print(
                f"{'':9} sender late: p50 {sender['lag_p50_ms']:.3f} ms, p99 "
                f"{sender['lag_p99_ms']:.3f} ms, max {sender['lag_max_ms']:.3f} ms"
            )
        if r.get("noise_limited"):
            n = r["noise_limited"]
            print(
                f"{'':9} noise-limited: with {n['control']}'s noise ({n['bias_ms']:+.3f} ms, "
                f"sd {n['sd_ms']:.3f} ms) expected mean {n['expected_mean_ms']:.3f} ms, "
                f"sd {n['expected_sd_ms']:.3f} ms"
            )
        if not r["noise"]:
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
        "--at-once",
        choices=["auto", "all", "one"],
        default="auto",
        help="run every link's flows at the same time, or one link after another "
        "(auto: one on a single CPU, else all)",
    )
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
        together = args.at_once == "all" or args.at_once == "auto" and (os.cpu_count() or 1) > 1
        duration = 3.0 if args.quick else 30.0
        outcome = run_bench(duration, args.backend, args.seed, together)
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
        failed = [r["profile"] for r in report["profiles"] if not r["pass"] and not r["noise"]]
        print(
            f"FAIL: link fidelity targets missed for {', '.join(failed)} "
            f"(|mean error| <= {MEAN_TARGET_MS} ms, |sd error| <= {SD_TARGET_PCT} %, "
            "no loss but the profile's own)"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
