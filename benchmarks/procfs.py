"""/proc readers: a process's CPU time and memory, and the network state of its namespace.

A process's ``/proc/<pid>/net`` files show the namespace it lives in, so these read a
namespace's counters, multicast state and sockets through any process in it (the lab's
``anchor`` or the proxy itself).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the process -----------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` (schedstat: nanoseconds, not clock ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    if total:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --- its namespace ---------------------------------------------------------------------------


def snmp(pid: int, proto: str = "Udp") -> dict[str, int]:
    """The ``proto`` counters of /proc/net/snmp (or snmp6) in the namespace of ``pid``."""
    if proto.startswith("Udp6"):
        out = {}
        for line in Path(f"/proc/{pid}/net/snmp6").read_text().splitlines():
            k, v = line.split()
            if k.startswith(proto):
                out[k[len(proto) :]] = int(v)
        return out
    lines = [ln.split() for ln in Path(f"/proc/{pid}/net/snmp").read_text().splitlines()]
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head[0] == proto + ":":
            return dict(zip(head[1:], map(int, vals[1:]), strict=True))
    return {}


def upstream_groups(pid: int, family: int, ifname: str = "u0") -> set[str]:
    """Groups the kernel's host stack holds on ``ifname`` (the proxy's upstream state).

    IPv6 groups as /proc/net/igmp6 spells them (32 hex digits), IPv4 ones in 239/8 as
    /proc/net/igmp does (8 hex digits, host byte order).
    """
    out: set[str] = set()
    if family == 6:
        for line in Path(f"/proc/{pid}/net/igmp6").read_text().splitlines():
            f = line.split()
            if len(f) >= 3 and f[1] == ifname and f[2].startswith("ff0e"):
                out.add(f[2])
        return out
    dev = None
    for line in Path(f"/proc/{pid}/net/igmp").read_text().splitlines():
        if not line.startswith("\t"):
            f = line.split()
            dev = f[1] if len(f) > 1 and f[0].isdigit() else dev
            continue
        if dev == ifname:
            hexaddr = line.split()[0]
            if hexaddr.endswith("EF"):  # 239/8, host byte order
                out.add(hexaddr)
    return out


def mfc_with_oifs(pid: int, family: int) -> int:
    """MFC entries that have output interfaces."""
    path = f"/proc/{pid}/net/ip6_mr_cache" if family == 6 else f"/proc/{pid}/net/ip_mr_cache"
    n = 0
    for line in Path(path).read_text().splitlines()[1:]:
        fields = line.split()
        if fields and ":" in fields[-1]:  # "vif:ttl" pairs: the entry has output interfaces
            n += 1
    return n


def _raw_path(pid: int, family: int) -> str:
    return f"/proc/{pid}/net/raw6" if family == 6 else f"/proc/{pid}/net/raw"


def mrt_inode(pid: int, family: int, probe: Callable[[], object]) -> int:
    """Inode of the proxy's receiving raw socket.

    pymcproxy has a second raw socket of the same protocol (its query sender) that also
    gets a copy of every report and is never read, so ``probe()`` sends one report and the
    socket that drained it is the one.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))

    def queues() -> dict[int, int]:
        out = {}
        for ln in Path(_raw_path(pid, family)).read_text().splitlines()[1:]:
            f = ln.split()
            if int(f[9]) in inodes:
                out[int(f[9])] = int(f[4].split(":")[1], 16)
        return out

    if not queues():
        raise RuntimeError("the proxy has no raw socket")
    probe()
    time.sleep(0.2)
    q = queues()
    return min(q, key=lambda inode: (q[inode], -inode))


def raw_queue(pid: int, family: int, inode: int) -> tuple[int, int]:
    """(receive queue in bytes, drops) of the raw socket ``inode`` in ``pid``'s namespace."""
    for line in Path(_raw_path(pid, family)).read_text().splitlines()[1:]:
        f = line.split()
        if len(f) > 9 and int(f[9]) == inode:
            return int(f[4].split(":")[1], 16), int(f[-1])
    return 0, 0
