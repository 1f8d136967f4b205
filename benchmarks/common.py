"""What every benchmark shares: namespaces, processes, /proc readers, statistics, result files.

Namespaces are named ``pmlbn<id>-<name>`` and are always removed again (``NetLab.close``
runs in ``finally``), together with every process started in them. Only processes this
module started are stopped, by their PID.
"""

from __future__ import annotations

import csv
import ctypes
import fcntl
import json
import math
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from topologies import clean

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
RESULTS = REPO / "results" / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1
_libc = ctypes.CDLL(None, use_errno=True)


# --- machine and run description -----------------------------------------------------------


def git_commit() -> str | None:
    res = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=40"],
        capture_output=True,
        text=True,
    )
    return res.stdout.strip() or None


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where and when the numbers were taken (every result file carries this)."""
    return {
        "uname": " ".join(os.uname()),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def tool_versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return "missing"
        return (
            (res.stdout or res.stderr).strip().splitlines()[0] if (res.stdout or res.stderr) else ""
        )

    dpkg = ["dpkg-query", "-W", "-f", "${Version}"]
    return {
        "iperf": first_line(["iperf", "-v"]),
        "igmpproxy": first_line([*dpkg, "igmpproxy"]),
        "kernel": os.uname().release,
    }


def run_header(name: str, quick: bool) -> dict[str, Any]:
    return {
        "benchmark": name,
        "quick": quick,
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "tools": tool_versions(),
    }


def finish_header(header: dict[str, Any], t0: float) -> None:
    header["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    header["duration_s"] = round(time.monotonic() - t0, 1)


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = columns or sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in columns})
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


# --- statistics ----------------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def describe(values: list[float]) -> dict[str, Any]:
    """n, p50/p95/p99, mean, min, max of ``values`` (all in the unit of the values)."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50": percentile(xs, 50),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
        "mean": sum(xs) / len(xs),
        "min": min(xs),
        "max": max(xs),
    }


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


# --- /proc readers (a process's files show its own network namespace) -----------------------


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


# --- namespaces and processes --------------------------------------------------------------


def in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a short-lived thread that joined namespace ``netns`` (see topologies.bench)."""
    from topologies.bench import in_netns as _in_netns

    return _in_netns(netns, fn)


def set_link(netns: str, ifname: str, up: bool) -> int:
    """Set ``ifname`` administratively up/down with one ioctl; returns CLOCK_REALTIME ns just
    before the call (the "link up" instant of a handover)."""

    def do() -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            req = struct.pack("16sH14x", ifname.encode(), 0)
            flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
            flags = flags | IFF_UP if up else flags & ~IFF_UP
            t = time.time_ns()
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(), flags))
            return t
        finally:
            s.close()

    return in_netns(netns, do)


class NetLab:
    """Namespaces ``pmlbn<id>-<name>``, veth links and processes, all removed by ``close``."""

    def __init__(self, tmp: Path, tag: str = "") -> None:
        self.prefix = f"pmlbn{uuid.uuid4().hex[:4]}{tag}"
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._anchors: dict[str, int] = {}

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, name: str, forwarding: bool = False) -> str:
        full = f"{self.prefix}-{name}"
        subprocess.run(["ip", "netns", "add", full], check=True)
        self.namespaces.append(full)
        knobs = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
        knobs += ["net.ipv6.conf.all.router_solicitations=0"]
        knobs += ["net.ipv6.conf.default.router_solicitations=0"]
        if forwarding:
            knobs += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
        self.sh(full, "ip link set lo up && sysctl -qw " + " ".join(knobs))
        return full

    def anchor(self, ns: str) -> int:
        """PID of a process that lives as long as ``ns`` (to read its /proc/PID/net files)."""
        if ns not in self._anchors:
            self._anchors[ns] = self.spawn(ns, ["sleep", "infinity"]).pid
        return self._anchors[ns]

    def sh(self, ns: str, cmd: str, check: bool = True) -> str:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True
        )
        if check and res.returncode:
            raise RuntimeError(f"[{ns}] {cmd}: {res.stderr.strip()}")
        return res.stdout

    def link(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair ``if_a`` (in ``ns_a``) <-> ``if_b`` (in ``ns_b``), both up."""
        subprocess.run(
            ["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b]
            + ["netns", ns_b],
            check=True,
        )
        self.sh(ns_a, f"ip link set {if_a} up")
        self.sh(ns_b, f"ip link set {if_b} up")

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        nodad = " nodad" if ":" in cidr else ""
        self.sh(ns, f"ip addr add {cidr} dev {ifname}{nodad}")

    def spawn(
        self, ns: str, args: list[str], log: str | None = None, **kw: Any
    ) -> subprocess.Popen:
        """Start ``args`` in ``ns`` (``ip netns exec`` execs it: the PID is the program's)."""
        out = open(self.tmp / log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=kw.pop("stdout", out),
            stderr=kw.pop("stderr", subprocess.STDOUT if log else subprocess.DEVNULL),
            cwd=REPO,
            **kw,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.procs):
            with suppress(Exception):
                self.stop(proc, 3.0)
        for ns in self.namespaces:
            clean.remove_netns(ns, log=lambda *_: None)
        self.namespaces.clear()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# --- the two proxies -----------------------------------------------------------------------

#: Timers of our proxy in every benchmark: RFC 6636 (mobile access) values, with the last
#: listener query interval shortened to 100 ms as for a fast-handover access network.
OURS_TIMERS = "timers profile mobility last-listener-query-interval 100ms"
OURS_TIMER_VALUES = {
    "profile": "mobility (RFC 6636)",
    "query_interval_s": 60,
    "query_response_interval_s": 5,
    "last_listener_query_interval_ms": 100,
    "last_listener_query_count": 1,
    "startup_query_interval_s": 1,
    "robustness": 2,
    "poll_interval_s": 0.1,
    "idle_timeout_s": 60,
}
#: igmpproxy 0.3 has no timer settings: these are its compiled-in values (igmpproxy.h,
#: config.c): LMQI = query response interval = 10 s, LMQC = robustness = 2.
IGMPPROXY_TIMER_VALUES = {
    "query_interval_s": 125,
    "query_response_interval_s": 10,
    "last_member_query_interval_s": 10,
    "last_member_query_count": 2,
    "startup_query_interval_s": 31,
    "robustness": 2,
    "quickleave": False,
    "note": "compiled-in, not configurable in igmpproxy 0.3",
}


def ours_config(family: int, upstream: str, downstreams: list[str], table: int | None) -> str:
    proto = "MLDv2" if family == 6 else "IGMPv3"
    tid = f"({table})" if table is not None else ""
    return (
        f"protocol {proto};\n"
        f"pinstance bench{tid}: {upstream} ==> {' '.join(downstreams)};\n"
        f"pinstance bench {OURS_TIMERS};\n"
    )


class OursProxy:
    """pymcproxy in a namespace (INFO logging to a file, as deployed)."""

    kind = "ours"

    def __init__(self, lab: NetLab, ns: str, conf: str, name: str, poll: float = 0.1) -> None:
        self.lab = lab
        self.path = lab.tmp / f"{name}.conf"
        self.path.write_text(conf)
        self.ctl = f"/run/pmiplab/{lab.prefix}-{name}.sock"
        os.makedirs("/run/pmiplab", exist_ok=True)
        self.proc = lab.spawn(
            ns,
            [PY, "-m", "proxy", "-f", str(self.path), "--ctl", self.ctl]
            + ["--poll-interval", str(poll), "--log", str(lab.tmp / f"{name}.log")],
            f"{name}.out",
        )
        if not wait_for(lambda: os.path.exists(self.ctl) or self.proc.poll() is not None, 15):
            raise RuntimeError(f"pymcproxy did not start in {ns}")
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"pymcproxy exited {self.proc.returncode}: {(lab.tmp / f'{name}.out').read_text()}"
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def show(self) -> dict:
        from proxy.ctl import request

        return request(self.ctl, {"cmd": "show"})

    def stop(self) -> None:
        NetLab.stop(self.proc)
        Path(self.ctl).unlink(missing_ok=True)  # left behind if the daemon had to be killed


class IgmpProxy:
    """Debian's igmpproxy 0.3 in a namespace, in the foreground (``-n``)."""

    kind = "igmpproxy"
    BIN = "/usr/sbin/igmpproxy"

    def __init__(
        self, lab: NetLab, ns: str, upstream: str, downstreams: list[str], name: str
    ) -> None:
        lines = [f"phyint {upstream} upstream ratelimit 0 threshold 1", "  altnet 198.18.0.0/15"]
        lines += [f"phyint {d} downstream ratelimit 0 threshold 1" for d in downstreams]
        self.lab, self.ns, self.name, self.want = lab, ns, name, 1 + len(downstreams)
        self.path = lab.tmp / f"{name}.conf"
        self.path.write_text("\n".join(lines) + "\n")
        self._start()

    def _start(self) -> None:
        self.proc = self.lab.spawn(self.ns, [self.BIN, "-n", str(self.path)], f"{self.name}.out")
        ok = wait_for(
            lambda: self.proc.poll() is not None or self._vifs() >= self.want, 10, interval=0.02
        )
        if not ok or self.proc.poll() is not None:
            out = (self.lab.tmp / f"{self.name}.out").read_text()
            raise RuntimeError(f"igmpproxy did not start in {self.ns}: {out}")

    def restart(self) -> None:
        """A fresh daemon: no state left from earlier receivers (its leave takes 20 s)."""
        self.stop()
        self.lab.procs = [p for p in self.lab.procs if p is not self.proc]
        self._start()

    def _vifs(self) -> int:
        try:
            return len(Path(f"/proc/{self.proc.pid}/net/ip_mr_vif").read_text().splitlines()) - 1
        except OSError:
            return 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        NetLab.stop(self.proc)


def igmpproxy_available() -> str | None:
    """None if igmpproxy can run here, else why not."""
    if not os.path.exists(IgmpProxy.BIN):
        return f"{IgmpProxy.BIN} not installed (Debian package igmpproxy)"
    return None


def shape(lab: NetLab, ns: str, ifname: str, rate_mbit: int) -> str:
    """HTB on the egress of ``ifname``: one class at ``rate_mbit`` (rate = ceil)."""
    burst = max(32, rate_mbit // 8)  # kbytes: about 1 ms at the rate
    cmd = (
        f"tc qdisc replace dev {ifname} root handle 1: htb default 1 && "
        f"tc class add dev {ifname} parent 1: classid 1:1 htb rate {rate_mbit}mbit "
        f"ceil {rate_mbit}mbit burst {burst}k cburst {burst}k && "
        f"tc qdisc add dev {ifname} parent 1:1 handle 10: pfifo limit 1000"
    )
    lab.sh(ns, cmd)
    return f"htb rate {rate_mbit}mbit ceil {rate_mbit}mbit burst {burst}k, pfifo limit 1000"


def tc_drops(lab: NetLab, ns: str, ifname: str) -> int:
    out = lab.sh(ns, f"tc -s qdisc show dev {ifname}", check=False)
    total = 0
    for line in out.splitlines():
        if "dropped" in line and line.strip().startswith("Sent"):
            with suppress(ValueError, IndexError):
                total = max(total, int(line.split("dropped")[1].split(",")[0]))
    return total
