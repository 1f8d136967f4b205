"""Control-plane latency: join, leave, and attach after a handover, on the wire.

Three arms run in one process, each its own testbed ``src -- rt -- listener`` (veth links):

- ``ours-v6``: pymcproxy with MLDv2, ``ours-v4``: pymcproxy with IGMPv3, both with the
  RFC 6636 mobility timers and a 100 ms last listener query interval (LMQT = 100 ms);
- ``igmpproxy-v4``: Debian's igmpproxy 0.3 (its compiled-in timers: LMQT = 2 x 10 s).

A source (``benchmarks.flowgen``) sends 64-byte datagrams to a fresh group per trial, so
the flow is already arriving upstream (for 80 ms) when the listener joins. The listener is
the Linux host stack: a socket joins and leaves the group, and the kernel sends its reports.
A packet capture on the listener's interface (``benchmarks.capture``) stamps the report as
it leaves for the wire and the data as it arrives from it:

- join: first join record of the group on the wire -> first data packet of the group;
- leave: the leave record (TO_IN{} / IGMPv2 leave) -> the last data packet forwarded;
- attach: a handover (the listener's interface goes down, the listener's membership moves
  to a new group while away, the interface comes up) from the link-up ioctl -> first data.

During the join the flow runs at 8000 packets/s (0.125 ms resolution); after the first packet
it drops to 1000 packets/s for the leave (1 ms resolution; 50 packets/s for igmpproxy, whose
leave takes seconds). Arms alternate in blocks of trials so that load changes on this shared
machine hit all of them alike; igmpproxy's leaves run in the background, overlapped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from analysis.benchfigures import latency_cdf_figure
from benchmarks.capture import Sniffer
from benchmarks.results import write_csv, write_json
from benchmarks.stats import describe
from benchmarks.testbed import OURS_TIMERS, BenchRun, start_proxy
from lab.mcsock import group_req
from lab.netns import NetLab, in_netns, netns_socket, set_link, wait_for
from lab.paths import PY
from proxy.upstream import MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP

ARMS = (("igmpproxy-v4", "igmpproxy", 4), ("ours-v6", "ours", 6), ("ours-v4", "ours", 4))
PORT = 5001
R_HIGH = 8000
PRE_S = 0.08
HOLD_S = 0.02
JOIN_TIMEOUT_S = 3.0
ATTACH_TIMEOUT_S = 8.0
FULL = {"trials": 200, "attach_trials": 200, "block": 20}
QUICK = {"trials": 12, "attach_trials": 8, "block": 12}
LMQT_MS = round(OURS_TIMERS.lmqt * 1e3, 3)
TARGETS = {"join_p50_ms": 2.0, "join_p99_ms": 10.0, "leave_ms": LMQT_MS + 10.0}
TARGETS["join_ratio_to_igmpproxy"] = 1.5


class FlowGen:
    """The flowgen process in the source namespace, one command at a time."""

    def __init__(self, lab: NetLab, ns: str, iface: str, family: int) -> None:
        args = [PY, "-m", "benchmarks.flowgen", "--iface", iface, "--port", str(PORT)]
        self.proc = lab.spawn(
            ns,
            [*args, "--family", str(family)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lock = threading.Lock()

    def cmd(self, line: str) -> None:
        with self.lock:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
            if self.proc.stdout.readline().strip() != b"ok":
                raise RuntimeError(f"flowgen refused {line!r}")


class Arm:
    """One testbed and its proxy; joins and leaves through kernel sockets in the listener."""

    def __init__(self, lab: NetLab, name: str, kind: str, family: int) -> None:
        tag = {"ours-v6": "o6", "ours-v4": "o4", "igmpproxy-v4": "i4"}[name]
        self.name, self.kind, self.family = name, kind, family
        self.src, self.rt, self.lst = (lab.ns(tag + n) for n in ("src", "rt", "l"))
        lab.link(self.src, "s0", self.rt, "u0")
        lab.link(self.rt, "d1", self.lst, "e0")
        if family == 6:
            plan = [(self.src, "s0", "2001:db8:1::1/64"), (self.rt, "u0", "2001:db8:1::fe/64")]
            plan += [(self.rt, "d1", "2001:db8:2::1/64"), (self.lst, "e0", "2001:db8:2::2/64")]
        else:
            plan = [(self.src, "s0", "198.18.1.1/24"), (self.rt, "u0", "198.18.1.254/24")]
            plan += [(self.rt, "d1", "198.19.1.1/24"), (self.lst, "e0", "198.19.1.2/24")]
        for ns, ifname, cidr in plan:
            lab.addr(ns, ifname, cidr)
        if family == 4:
            lab.sh(self.src, "ip route add default via 198.18.1.254")
        time.sleep(0.1)
        self.proxy = start_proxy(lab, self.rt, f"lat-{name}", kind, family, "u0", ["d1"])
        if kind == "ours":
            self.r_low, self.quiet_s, self.leave_timeout_s = 1000, 0.15, 5.0
            self.pipelined = False
        else:
            self.r_low, self.quiet_s, self.leave_timeout_s = 50, 1.0, 45.0
            self.pipelined = True
        self.flow = FlowGen(lab, self.src, "s0", family)
        self.sniffer = Sniffer(self.lst, "e0", PORT)
        self.ifindex = in_netns(self.lst, lambda: socket.if_nametoindex("e0"))
        self.level = socket.IPPROTO_IPV6 if family == 6 else socket.IPPROTO_IP
        self.af = socket.AF_INET6 if family == 6 else socket.AF_INET
        self.attach_sock: socket.socket | None = None
        self.pending: list[threading.Thread] = []
        self.joins: list[dict[str, Any]] = []
        self.attaches: list[dict[str, Any]] = []

    def group(self, kind: str, i: int) -> str:
        if self.family == 6:
            return f"ff0e::{1 if kind == 'join' else 2}:{i:x}"
        return f"239.{2 if kind == 'join' else 3}.{i >> 8}.{i & 255}"

    def member(self, sock: socket.socket, group: str, join: bool) -> None:
        opt = MCAST_JOIN_GROUP if join else MCAST_LEAVE_GROUP
        sock.setsockopt(self.level, opt, group_req(self.ifindex, ip_address(group)))

    def new_socket(self) -> socket.socket:
        return netns_socket(self.lst, self.af, socket.SOCK_DGRAM)

    # --- trials --------------------------------------------------------------------------

    def join_leave(self, i: int) -> None:
        g = self.group("join", i)
        seen = self.sniffer.seen(g)
        self.flow.cmd(f"start {g} {R_HIGH}")
        time.sleep(PRE_S)
        sock = self.new_socket()
        t_call = time.time_ns()
        self.member(sock, g, True)
        got = wait_for(lambda: seen.first_data_ns is not None, JOIN_TIMEOUT_S, 0.0005)
        self.flow.cmd(f"rate {g} {self.r_low}")
        time.sleep(HOLD_S)
        t_leave_call = time.time_ns()
        self.member(sock, g, False)
        sock.close()
        row = {"arm": self.name, "trial": i, "group": g, "t_join_call_ns": t_call}
        row["t_leave_call_ns"] = t_leave_call
        row["loadavg_1min"] = round(os.getloadavg()[0], 2)
        if not got:
            row["error"] = "no data within the join timeout"
        finish = threading.Thread(target=self._finish_leave, args=(g, seen, row), daemon=True)
        finish.start()
        if self.pipelined:
            self.pending.append(finish)
        else:
            finish.join()

    def _finish_leave(self, g: str, seen, row: dict[str, Any]) -> None:
        end = time.monotonic() + self.leave_timeout_s
        quiet = int(self.quiet_s * 1e9)
        while time.monotonic() < end:
            now = time.time_ns()
            last = seen.last_data_ns or 0
            if seen.leave_ns and now - max(last, seen.leave_ns) > quiet:
                break
            time.sleep(0.01 if not self.pipelined else 0.1)
        self.flow.cmd(f"stop {g}")
        row["join_report_ns"] = seen.join_ns
        row["first_data_ns"] = seen.first_data_ns
        row["leave_report_ns"] = seen.leave_ns
        row["last_data_ns"] = seen.last_data_ns
        row["data_packets"] = seen.data
        if seen.join_ns and seen.first_data_ns and seen.first_data_ns >= seen.join_ns:
            row["join_ms"] = (seen.first_data_ns - seen.join_ns) / 1e6
        if seen.leave_ns and seen.last_data_ns:
            row["leave_ms"] = max(0.0, (seen.last_data_ns - seen.leave_ns) / 1e6)
            if time.monotonic() >= end:
                row["leave_timeout"] = True
        self.joins.append(row)

    def attach(self, i: int) -> None:
        g = self.group("attach", i)
        seen = self.sniffer.seen(g)
        set_link(self.lst, "e0", False)
        if self.attach_sock is not None:
            self.attach_sock.close()  # leaves while away: nothing reaches the wire
        sock = self.attach_sock = self.new_socket()
        self.member(sock, g, True)
        self.flow.cmd(f"start {g} {R_HIGH}")
        time.sleep(PRE_S * 2)
        t_up = set_link(self.lst, "e0", True)
        got = wait_for(lambda: seen.first_data_ns is not None, ATTACH_TIMEOUT_S, 0.0005)
        time.sleep(HOLD_S)
        self.flow.cmd(f"stop {g}")
        row = {"arm": self.name, "trial": i, "group": g, "t_link_up_ns": t_up}
        row["loadavg_1min"] = round(os.getloadavg()[0], 2)
        row["first_report_ns"] = seen.join_ns
        row["first_data_ns"] = seen.first_data_ns
        if got and seen.first_data_ns:
            row["attach_ms"] = (seen.first_data_ns - t_up) / 1e6
            if seen.join_ns:
                row["report_after_up_ms"] = (seen.join_ns - t_up) / 1e6
        else:
            row["error"] = "no data within the attach timeout"
        self.attaches.append(row)

    def wait_pending(self) -> None:
        for t in self.pending:
            t.join()
        self.pending.clear()

    def close(self) -> None:
        self.sniffer.close()
        if self.attach_sock is not None:
            self.attach_sock.close()


def summarise(arms: list[Arm]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in arms:
        joins = sorted(arm.joins, key=lambda r: r["trial"])
        out[arm.name] = {
            "join_ms": describe([r["join_ms"] for r in joins if "join_ms" in r]),
            "leave_ms": describe([r["leave_ms"] for r in joins if "leave_ms" in r]),
            "attach_ms": describe([r["attach_ms"] for r in arm.attaches if "attach_ms" in r]),
            "attach_report_after_up_ms": describe(
                [r["report_after_up_ms"] for r in arm.attaches if "report_after_up_ms" in r]
            ),
            "join_failures": sum(1 for r in joins if "join_ms" not in r),
            "leave_failures": sum(1 for r in joins if "leave_ms" not in r),
            "attach_failures": sum(1 for r in arm.attaches if "attach_ms" not in r),
        }
    return out


def judge(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Target rows: measured value, target, pass, and by how much a miss misses."""
    rows = []

    def add(what: str, measured: float | None, target: float, kind: str = "<=") -> None:
        ok = measured is not None and measured <= target
        miss = None if ok or measured is None else measured - target
        rows.append(
            {"target": what, "limit": f"{kind} {target:g}", "measured": measured, "pass": ok}
            | ({"missed_by": miss} if miss is not None else {})
        )

    for arm in ("ours-v6", "ours-v4"):
        s = summary.get(arm)
        if not s:
            continue
        add(f"{arm} join p50 [ms]", s["join_ms"].get("p50"), TARGETS["join_p50_ms"])
        add(f"{arm} join p99 [ms]", s["join_ms"].get("p99"), TARGETS["join_p99_ms"])
        add(
            f"{arm} leave p99 [ms] (LMQT {LMQT_MS:g} ms + 10)",
            s["leave_ms"].get("p99"),
            TARGETS["leave_ms"],
        )
    ours, theirs = summary.get("ours-v4"), summary.get("igmpproxy-v4")
    if ours and theirs and theirs["join_ms"].get("p50"):
        ratio = ours["join_ms"]["p50"] / theirs["join_ms"]["p50"]
        add("join p50 ratio ours-v4 / igmpproxy-v4", ratio, TARGETS["join_ratio_to_igmpproxy"])
    return rows


def run(results: Path, quick: bool, log=print) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    bench = BenchRun("latency", results, quick)
    why_not = bench.without_igmpproxy
    arm_specs = [a for a in ARMS if not (why_not and a[1] == "igmpproxy")]
    arms: list[Arm] = []
    with bench.lab("l") as lab:
        try:
            for name, kind, family in arm_specs:
                arms.append(Arm(lab, name, kind, family))
            time.sleep(0.5)  # startup queries and the hosts' initial chatter pass
            blocks = -(-cfg["trials"] // cfg["block"])
            for b in range(blocks):
                order = arms[b % len(arms) :] + arms[: b % len(arms)]
                for arm in order:
                    for i in range(b * cfg["block"], min(cfg["trials"], (b + 1) * cfg["block"])):
                        arm.join_leave(i + 1)
                    log(f"latency: {arm.name} join/leave trials up to {i + 1}")
            ablocks = -(-cfg["attach_trials"] // cfg["block"])
            for b in range(ablocks):
                order = arms[b % len(arms) :] + arms[: b % len(arms)]
                for arm in order:
                    last = min(cfg["attach_trials"], (b + 1) * cfg["block"])
                    for i in range(b * cfg["block"], last):
                        arm.attach(i + 1)
                    log(f"latency: {arm.name} attach trials up to {last}")
            for arm in arms:
                arm.wait_pending()
        finally:
            for arm in arms:
                arm.close()
    summary = summarise(arms)
    targets = judge(summary)
    header = bench.finish(
        {
            "config": cfg,
            "rates_pps": {"join": R_HIGH, "leave_ours": 1000, "leave_igmpproxy": 50},
            "flow_before_join_ms": PRE_S * 1e3,
            "definitions": {
                "join": "first join record on the listener's wire -> first data packet there",
                "leave": "leave record on the wire -> last data packet forwarded",
                "attach": "link-up ioctl of the listener's interface -> first data packet",
            },
            "summary": summary,
            "targets": targets,
        }
    )
    trials = [r for a in arms for r in a.joins] + [r for a in arms for r in a.attaches]
    write_json(results / "latency.json", {**header, "trials": trials})
    cols = ["arm", "trial", "group", "join_ms", "leave_ms", "attach_ms", "report_after_up_ms"]
    cols += ["data_packets", "loadavg_1min", "error", "leave_timeout"]
    write_csv(results / "latency.csv", trials, cols)
    latency_cdf_figure(trials, results)
    return header
