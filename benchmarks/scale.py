"""Scale: groups x listeners x downstreams, all as real reports on the wire.

Testbed: ``up(p0) -- (u0)rt(d1..dD) -- (h1..hD)hosts``, veth links. The router runs the
proxy; the ``hosts`` namespace holds the far end of every downstream link and sends the
listeners' reports from a packet socket: MLDv2 (IPv6) or IGMPv3 (IPv4) reports with
CHANGE_TO_EXCLUDE({}) records (ASM joins), 64 records per MLDv2 packet and 128 per IGMPv3
packet, as a host joining many groups sends them. The frames are built with scapy (one
template per block of groups) and stamped with each listener's own MAC and source address
(``fe80::100:<j>``, ``198.19.<d>.<10+j>``) and checksum.

The reports are offered as fast as the proxy takes them: the sender watches the receive
queue of the proxy's raw socket (``/proc/<pid>/net/raw6``) and keeps it below half of its
buffer, so no report is lost to a full socket (drops are counted and reported). After the
last report, one more report joins a sentinel group; since one socket receives all reports
in order, the sentinel's upstream join marks the moment every report was processed.

Per point: records processed per second; CPU seconds of the proxy per 1000 reports (and
per 1000 records); RSS after convergence (and its peak); the time until the upstream state
is correct (every group joined on the upstream interface, read from the kernel's host
state, /proc/net/igmp6 or /proc/net/igmp); and the rate at which MFC entries are installed
when a source then starts a flow to every group (one datagram per group, round robin, at
20 000 packets/s, until the kernel's table holds an entry with output interfaces for every
group; the kernel keeps at most 10 unresolved flows per table, so new flows are offered again
every round).

Our proxy is measured in IPv6 (MLDv2, the PMIPv6 case) over the whole grid and in IPv4,
and igmpproxy in IPv4 on the same points. igmpproxy joins every group upstream on one
socket, so its namespace gets ``net.ipv4.igmp_max_memberships`` raised to 20000 (the
default, 20, would cap its upstream state at 20 groups); our proxy opens further sockets by
itself and runs with the defaults.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from analysis.benchfigures import scale_figure
from benchmarks import profiling
from benchmarks.frames import V4_PER_PACKET, V6_PER_PACKET, ReportFactory
from benchmarks.procfs import (
    mfc_with_oifs,
    mrt_inode,
    proc_cpu_s,
    proc_status_kb,
    raw_queue,
    upstream_groups,
)
from benchmarks.results import write_csv, write_json
from benchmarks.testbed import BenchRun, start_proxy
from lab.netns import NetLab, in_netns, netns_socket
from topologies.daemons import Daemon

MFC_RATE = 20000
FULL = {
    "grid_v6": [(g, n, 1) for g in (1, 100, 1000, 10000) for n in (1, 10, 100)],
    "downstreams_v6": [(100, 10, d) for d in (1, 8, 16, 31, 32)],
    "grid_v4": [(g, n, 1) for g in (1, 100, 1000, 10000) for n in (1, 10)],
    "profile": (10000, 10, 1),
    "timeout_s": 120.0,
}
QUICK = {
    "grid_v6": [(g, 1, 1) for g in (1, 100, 1000, 10000)] + [(100, 10, 1)],
    "downstreams_v6": [(10, 2, 4)],
    "grid_v4": [(100, 1, 1)],
    "profile": None,
    "timeout_s": 30.0,
}
TARGET = {"groups": 10000, "listeners": 10, "converge_s": 10.0, "rss_mb": 150.0}
SENTINEL = {6: "ff0e::ffff:ffff", 4: "239.254.254.254"}
PROBE = {6: "ff0e::ffff:fffe", 4: "239.254.254.253"}
MAXVIFS = 32


def group_addr(family: int, n: int) -> str:
    if family == 6:
        return f"ff0e::{0x10 + (n >> 16):x}:{n & 0xFFFF:x}"
    return f"239.{10 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def has_sentinel(pid: int, family: int) -> bool:
    """The sentinel group is joined upstream: every report before it was processed."""
    if family == 6:
        return "ff0e00000000000000000000ffffffff" in upstream_groups(pid, 6)
    return "FEFEFEEF" in upstream_groups(pid, 4)


# --- the testbed ----------------------------------------------------------------------------


class ScaleBed:
    def __init__(self, lab: NetLab, tag: str, family: int, downstreams: int) -> None:
        self.lab, self.family, self.d = lab, family, downstreams
        self.up = lab.ns(f"{tag}up")
        self.rt = lab.ns(f"{tag}rt")
        self.hosts = lab.ns(f"{tag}h")
        lab.link(self.up, "p0", self.rt, "u0")
        if family == 6:
            lab.addr(self.up, "p0", "2001:db8:1::1/64")
            lab.addr(self.rt, "u0", "2001:db8:1::fe/64")
        else:
            lab.addr(self.up, "p0", "198.18.1.1/24")
            lab.addr(self.rt, "u0", "198.18.1.254/24")
            lab.sh(self.up, "ip route add default dev p0")
        for k in range(1, downstreams + 1):
            lab.link(self.rt, f"d{k}", self.hosts, f"h{k}")
            if family == 6:
                lab.addr(self.rt, f"d{k}", f"2001:db8:10:{k:x}::1/64")
            else:
                lab.addr(self.rt, f"d{k}", f"198.19.{k}.1/24")
        self.socks = {
            k: in_netns(self.hosts, lambda k=k: _packet_socket(f"h{k}"))
            for k in range(1, downstreams + 1)
        }
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        self.src_sock = netns_socket(self.up, af, socket.SOCK_DGRAM)
        if family == 6:
            self.src_sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 16)
            idx = in_netns(self.up, lambda: socket.if_nametoindex("p0"))
            self.src_sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
        else:
            self.src_sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 16)
        self.src_sock.setblocking(False)

    def close(self) -> None:
        for s in [*self.socks.values(), self.src_sock]:
            s.close()


def _packet_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    return s


def bed_proxy(bed: ScaleBed, kind: str, name: str) -> Daemon:
    downs = [f"d{k}" for k in range(1, bed.d + 1)]
    if kind == "igmpproxy":
        bed.lab.sh(bed.rt, "sysctl -qw net.ipv4.igmp_max_memberships=20000")
    return start_proxy(bed.lab, bed.rt, name, kind, bed.family, "u0", downs)


def send_paced(
    bed: ScaleBed, pid: int, inode: int, frames: list[tuple[int, bytes]], limit: int
) -> int:
    """Send (downstream, frame) pairs, keeping the proxy's socket queue under ``limit``;
    returns how often the sender gave up waiting (a proxy stalled for 5 s)."""
    stalls = 0
    for i, (k, frame) in enumerate(frames):
        if i % 4 == 0:
            end = time.monotonic() + 5.0
            while raw_queue(pid, bed.family, inode)[0] > limit:
                if time.monotonic() > end:
                    stalls += 1
                    break
                time.sleep(0.0005)
        bed.socks[k].send(frame)
    return stalls


def mfc_phase(bed: ScaleBed, pid: int, groups: list[str], timeout: float) -> dict[str, Any]:
    """A flow to every group, round robin at MFC_RATE pps, until all have an MFC entry."""
    stop = threading.Event()
    port = 5001
    dests = [(g, port, 0, 0) if bed.family == 6 else (g, port) for g in groups]
    payload = b"PMLB".ljust(64, b"\0")
    count = [0]

    def blast() -> None:
        period = 1.0 / MFC_RATE
        t_next = time.monotonic()
        i = 0
        while not stop.is_set():
            for _ in range(64):
                try:
                    bed.src_sock.sendto(payload, dests[i % len(dests)])
                except OSError:
                    pass
                i += 1
            count[0] = i
            t_next += 64 * period
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    want = len(groups)
    t0 = time.monotonic()
    th = threading.Thread(target=blast, daemon=True)
    th.start()
    done = False
    n = 0
    try:
        while time.monotonic() - t0 < timeout:
            n = mfc_with_oifs(pid, bed.family)
            if n >= want:
                done = True
                break
            time.sleep(0.002 if time.monotonic() - t0 < 0.2 else 0.02)
    finally:
        stop.set()
        th.join()
    dt = time.monotonic() - t0
    return {
        "mfc_entries": n,
        "mfc_complete": done,
        "mfc_time_s": round(dt, 4),
        "mfc_install_per_s": round(n / dt, 1) if dt > 0 else None,
        "mfc_datagrams_sent": count[0],
    }


def run_point(
    lab: NetLab,
    bed: ScaleBed,
    kind: str,
    groups_n: int,
    listeners: int,
    timeout: float,
    profile_to: Path | None = None,
    log=print,
) -> dict[str, Any]:
    """One point; with ``profile_to``, py-spy samples the report phase into
    ``<profile_to>-reports.txt`` and the MFC phase into ``<profile_to>-mfc.txt``."""
    fam = bed.family
    row: dict[str, Any] = {
        "proxy": kind,
        "family": f"IPv{fam}",
        "groups": groups_n,
        "listeners": listeners,
        "downstreams": bed.d,
    }
    name = f"sc-{kind}{fam}-{groups_n}-{listeners}-{bed.d}"
    groups = [group_addr(fam, n) for n in range(groups_n)]
    factory = ReportFactory(fam, groups)
    sentinel = ReportFactory(fam, [SENTINEL[fam]]).frames(1, 1)[0]
    probe = ReportFactory(fam, [PROBE[fam]]).frames(1, 1)[0]
    frames = []
    for j in range(listeners):
        for k in range(1, bed.d + 1):
            frames += [(k, f) for f in factory.frames(k, j + 1)]
    records = groups_n * listeners * bed.d
    row.update({"records": records, "reports": len(frames)})
    try:
        proxy = bed_proxy(bed, kind, name)
    except RuntimeError as exc:
        row["error"] = str(exc).strip().splitlines()[-1][:300]
        return row
    spy = None
    try:
        time.sleep(0.3)
        pid = proxy.proc.pid
        if proxy.proc.poll() is not None:
            raise RuntimeError("proxy exited at start")
        rss0 = proc_status_kb(pid, "VmRSS")
        inode = mrt_inode(pid, fam, lambda: bed.socks[1].send(probe))
        _, drops0 = raw_queue(pid, fam, inode)
        if profile_to is not None:
            spy = profiling.py_spy(pid, Path(f"{profile_to}-reports.txt"))
        cpu0 = proc_cpu_s(pid)
        t0 = time.monotonic()
        row["sender_stalls"] = send_paced(bed, pid, inode, frames, limit=96 * 1024)
        t_sent = time.monotonic()
        bed.socks[1].send(sentinel)
        t_up = t_done = None
        deadline = t0 + timeout
        while time.monotonic() < deadline and proxy.proc.poll() is None:
            now = time.monotonic()
            if t_up is None and len(upstream_groups(pid, fam)) >= groups_n:
                t_up = now
            if t_done is None and has_sentinel(pid, fam):
                t_done = now
            if t_up is not None and t_done is not None:
                break
            time.sleep(0.005 if now - t0 < 2 else 0.02)
        cpu1 = proc_cpu_s(pid)
        _, drops1 = raw_queue(pid, fam, inode)
        row["send_s"] = round(t_sent - t0, 4)
        if t_done is None:
            row["error"] = "reports not all processed within the timeout"
        else:
            row["processed_s"] = round(t_done - t0, 4)
            row["records_per_s"] = round(records / (t_done - t0), 1)
        if t_up is not None:
            row["upstream_converged_s"] = round(t_up - t0, 4)
        row["upstream_groups"] = len(upstream_groups(pid, fam))
        cpu = cpu1 - cpu0
        row["cpu_s"] = round(cpu, 3)
        row["cpu_s_per_1000_reports"] = round(cpu / len(frames) * 1000, 4)
        row["cpu_s_per_1000_records"] = round(cpu / records * 1000, 4)
        row["us_per_record"] = round(cpu / records * 1e6, 2)
        row["rss_mb"] = round(proc_status_kb(pid, "VmRSS") / 1024, 1)
        row["rss_peak_mb"] = round(proc_status_kb(pid, "VmHWM") / 1024, 1)
        row["rss_start_mb"] = round(rss0 / 1024, 1)
        row["socket_drops"] = drops1 - drops0
        if spy is not None:
            profiling.stop(spy)
            spy = None
        if kind == "ours" and proxy.proc.poll() is None:
            counters = proxy.show()["instances"][0]["counters"]
            # Our reports, the probe, the sentinel (and the proxy's own host stack's).
            row["proxy_rx_reports"] = counters.get("rx_report", 0)
            row["reports_lost"] = max(0, len(frames) + 2 - row["proxy_rx_reports"])
        if t_done is not None and proxy.proc.poll() is None:
            if profile_to is not None:
                spy = profiling.py_spy(pid, Path(f"{profile_to}-mfc.txt"))
            cpu2 = proc_cpu_s(pid)
            row.update(mfc_phase(bed, pid, groups, timeout))
            row["mfc_cpu_s"] = round(proc_cpu_s(pid) - cpu2, 3)
        if proxy.proc.poll() is not None:
            row["error"] = f"proxy exited ({proxy.proc.returncode})"
    except (OSError, RuntimeError) as exc:
        row["error"] = str(exc)[:300]
    finally:
        if spy is not None:
            profiling.stop(spy)
        t_stop = time.monotonic()
        proxy.stop()
        row["stop_s"] = round(time.monotonic() - t_stop, 2)
        lab.forget(proxy.proc)
    if "error" in row and kind == "ours":
        log_path = lab.tmp / f"{name}.log"
        if log_path.exists():
            errs = [ln for ln in log_path.read_text().splitlines() if "ERROR" in ln or "rror" in ln]
            if errs:
                row["proxy_log"] = errs[-1][-300:]
    row["loadavg_1min"] = round(os.getloadavg()[0], 2)
    return row


def run(results: Path, quick: bool, log=print) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    bench = BenchRun("scale", results, quick)
    why_not = bench.without_igmpproxy
    rows: list[dict[str, Any]] = []
    profile = None
    with bench.lab("s") as lab:
        plan: list[tuple[int, str, list[tuple[int, int, int]]]] = [
            (6, "ours", cfg["grid_v6"] + cfg["downstreams_v6"]),
            (4, "ours", cfg["grid_v4"]),
        ]
        if not why_not:
            plan.append((4, "igmpproxy", cfg["grid_v4"]))
        beds: dict[tuple[int, int], ScaleBed] = {}
        try:
            for fam, kind, points in plan:
                for groups_n, listeners, d in points:
                    key = (fam, min(d, MAXVIFS))
                    if key not in beds:
                        beds[key] = ScaleBed(lab, f"{fam}{d}", fam, d)
                    row = run_point(
                        lab, beds[key], kind, groups_n, listeners, cfg["timeout_s"], log=log
                    )
                    rows.append(row)
                    log(
                        f"scale {kind} IPv{fam} {groups_n}g x {listeners}l x {d}d: "
                        f"{row.get('records_per_s', '-')} rec/s, "
                        f"up {row.get('upstream_converged_s', '-')} s, "
                        f"rss {row.get('rss_mb', '-')} MB, "
                        f"mfc {row.get('mfc_install_per_s', '-')}/s {row.get('error', '')}"
                    )
            if cfg["profile"]:
                g, n, d = cfg["profile"]
                spy = results / "tmp-scale" / "pyspy"
                bed = beds.get((6, d)) or ScaleBed(lab, "6p", 6, d)
                prow = run_point(lab, bed, "ours", g, n, cfg["timeout_s"], spy, log)
                profile = {
                    "point": prow,
                    "py_spy": profiling.profile_summary(Path(f"{spy}-reports.txt")),
                    "py_spy_mfc": profiling.profile_summary(Path(f"{spy}-mfc.txt")),
                }
                log(f"scale profile: {profile['py_spy'].get('self', [])[:3]}")
                log(f"scale profile (MFC): {profile['py_spy_mfc'].get('self', [])[:3]}")
        finally:
            for b in beds.values():
                b.close()
    header = bench.finish(
        {
            "config": {k: v for k, v in cfg.items()},
            "records_per_packet": {"MLDv2": V6_PER_PACKET, "IGMPv3": V4_PER_PACKET},
            "mfc_offered_pps": MFC_RATE,
            "profile": profile,
            "targets": judge(rows),
        }
    )
    write_json(results / "scale.json", {**header, "rows": rows})
    cols = ["proxy", "family", "groups", "listeners", "downstreams", "records", "reports"]
    cols += ["records_per_s", "processed_s", "upstream_converged_s", "upstream_groups"]
    cols += ["cpu_s", "cpu_s_per_1000_reports", "cpu_s_per_1000_records", "us_per_record"]
    cols += ["rss_mb", "rss_peak_mb", "rss_start_mb", "mfc_entries", "mfc_install_per_s"]
    cols += ["mfc_time_s", "mfc_cpu_s", "socket_drops", "proxy_rx_reports", "reports_lost"]
    cols += ["send_s", "stop_s", "loadavg_1min"]
    cols += ["error"]
    write_csv(results / "scale.csv", rows, cols)
    scale_figure(rows, results)
    return {**header, "rows": rows}


def judge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if (r["proxy"], r["family"], r["groups"], r["listeners"], r["downstreams"]) != (
            "ours",
            "IPv6",
            TARGET["groups"],
            TARGET["listeners"],
            1,
        ):
            continue
        conv = r.get("processed_s")
        t_ok = conv is not None and conv < TARGET["converge_s"]
        out.append(
            {
                "target": "10000 groups x 10 listeners converge [s]",
                "limit": f"< {TARGET['converge_s']:g}",
                "measured": conv,
                "pass": t_ok,
            }
            | ({} if t_ok or conv is None else {"missed_by": conv - TARGET["converge_s"]})
        )
        rss = r.get("rss_peak_mb")
        r_ok = rss is not None and rss <= TARGET["rss_mb"]
        out.append(
            {
                "target": "10000 groups x 10 listeners peak RSS [MB]",
                "limit": f"<= {TARGET['rss_mb']:g}",
                "measured": rss,
                "pass": r_ok,
            }
            | ({} if r_ok or rss is None else {"missed_by": rss - TARGET["rss_mb"]})
        )
    return out
