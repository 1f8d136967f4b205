"""What the benchmarks' testbeds share: the lab, the two proxies under test and tc shaping.

Every benchmark's namespaces are named ``pmlbn<id><tag>-<name>`` (``lab.clean`` finds them
by that prefix) and are removed again with every process in them when the lab closes.

The proxies are ``topologies.daemons`` objects: ours is a ``ProxyDaemon`` whose typed config
(one instance ``bench``, upstream ==> downstreams) carries the benchmark timers
``OURS_TIMERS``; igmpproxy is the ``IgmpProxy`` daemon below (its config is igmpproxy's
own format).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.results import finish_header, run_header
from lab.netns import NetLab
from lab.paths import write_pidfile
from proxy.instance import Tunables
from proxy.timers import MOBILITY
from topologies.daemons import Daemon, DaemonError, ProxyDaemon, proxy_config, stop_all
from topologies.spec import InstancePlan

D = TypeVar("D", bound=Daemon)

#: Timers of our proxy in every benchmark: RFC 6636 (mobile access) values, with the last
#: listener query interval shortened to 100 ms as for a fast-handover access network.
OURS_TIMERS = replace(MOBILITY, last_listener_query_interval=0.1)
OURS_POLL_INTERVAL_S = 0.1
OURS_TIMER_VALUES = {
    "profile": "mobility (RFC 6636)",
    "query_interval_s": OURS_TIMERS.query_interval,
    "query_response_interval_s": OURS_TIMERS.query_response_interval,
    "last_listener_query_interval_ms": round(OURS_TIMERS.last_listener_query_interval * 1e3),
    "last_listener_query_count": OURS_TIMERS.lmqc,
    "startup_query_interval_s": OURS_TIMERS.sqi,
    "robustness": OURS_TIMERS.robustness,
    "poll_interval_s": OURS_POLL_INTERVAL_S,
    "idle_timeout_s": Tunables().idle_timeout,
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


class BenchLab(NetLab):
    """A ``NetLab`` that also stops the daemons started in it (``started``) when it closes,
    so that their pid files and control sockets go with them."""

    def __init__(self, tmp: Path, prefix: str) -> None:
        super().__init__(tmp, prefix)
        self.daemons: list[Daemon] = []

    def close(self) -> None:
        try:
            stop_all(self.daemons, 3.0)
            self.daemons.clear()
        finally:
            super().close()


def started(daemon: D, timeout: float) -> D:
    """``daemon`` started and ready; stopped again (and ``DaemonError``) if it is not."""
    if isinstance(daemon.lab, BenchLab):
        daemon.lab.daemons.append(daemon)
    daemon.start()
    try:
        daemon.wait_ready(timeout)
    except DaemonError:
        daemon.stop()
        raise
    return daemon


def bench_lab(tmp: Path, tag: str) -> BenchLab:
    """A lab whose namespaces are ``pmlbn<id><tag>-<name>``, files in ``tmp``.

    ``<id>`` is random, or ``$PMIPLAB_BENCH_ID``: then whoever started the benchmark can
    remove what a killed run left (``python -m lab.clean --prefix pmlbn<id>``).
    """
    run_id = os.environ.get("PMIPLAB_BENCH_ID") or uuid.uuid4().hex[:4]
    return BenchLab(tmp, prefix=f"pmlbn{run_id}{tag}")


class BenchRun:
    """One run of a benchmark: its header, whether igmpproxy takes part, and its lab."""

    def __init__(self, name: str, results: Path, quick: bool) -> None:
        self.name, self.results = name, results
        self.header = run_header(name, quick)
        self.t0 = time.monotonic()
        #: why igmpproxy cannot run here (None: it can, and is measured too)
        self.without_igmpproxy = igmpproxy_available()

    def lab(self, tag: str) -> BenchLab:
        """The run's lab; its files (configs, logs) in ``<results>/tmp-<name>``."""
        return bench_lab(self.results / f"tmp-{self.name}", tag)

    def finish(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The header completed: end load, duration, both proxies' timers and ``fields``."""
        finish_header(self.header, self.t0)
        self.header["igmpproxy"] = self.without_igmpproxy or "ran"
        self.header["ours_timers"] = OURS_TIMER_VALUES
        self.header["igmpproxy_timers"] = IGMPPROXY_TIMER_VALUES
        self.header.update(fields)
        return self.header


# --- the two proxies -----------------------------------------------------------------------


class IgmpProxy(Daemon):
    """Debian's igmpproxy 0.3 in a namespace, in the foreground (``-n``).

    Ready once the kernel lists a multicast VIF for each of its interfaces.
    """

    BIN = "/usr/sbin/igmpproxy"

    def __init__(
        self, lab: NetLab, netns: str, name: str, upstream: str, downstreams: Sequence[str]
    ) -> None:
        super().__init__(lab, netns, name)
        self.upstream, self.downstreams = upstream, list(downstreams)

    def config_text(self) -> str:
        lines = [f"phyint {self.upstream} upstream ratelimit 0 threshold 1"]
        lines += ["  altnet 198.18.0.0/15"]
        lines += [f"phyint {d} downstream ratelimit 0 threshold 1" for d in self.downstreams]
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        return [self.BIN, "-n", str(self.conf_path)]

    def start(self) -> IgmpProxy:
        super().start()
        assert self.proc is not None
        write_pidfile(self.pidfile, self.proc.pid, self.BIN)  # not a ``-m`` module
        return self

    def is_ready(self) -> bool:
        return self._vifs() >= 1 + len(self.downstreams)

    def _vifs(self) -> int:
        assert self.proc is not None
        try:
            return len(Path(f"/proc/{self.proc.pid}/net/ip_mr_vif").read_text().splitlines()) - 1
        except OSError:
            return 0

    def restart(self) -> None:
        """A fresh daemon: no state left from earlier receivers (its leave takes 20 s)."""
        self.stop()
        self.lab.forget(self.proc)
        started(self, 10)


def igmpproxy_available() -> str | None:
    """None if igmpproxy can run here, else why not."""
    if not os.path.exists(IgmpProxy.BIN):
        return f"{IgmpProxy.BIN} not installed (Debian package igmpproxy)"
    return None


def ours_proxy(
    lab: NetLab,
    netns: str,
    name: str,
    family: int,
    upstream: str,
    downstreams: Sequence[str],
    table: int | None = None,
) -> ProxyDaemon:
    """pymcproxy with the benchmark timers, started and serving.

    Its INFO log goes to ``<tmp>/<name>.log``, a file as deployed (the daemon's standard
    error: the same file for a traceback, without two writers clobbering each other).
    """
    plan = InstancePlan("bench", (upstream,), tuple(downstreams), (), table)
    config = proxy_config("MLDv2" if family == 6 else "IGMPv3", [plan], OURS_TIMERS)
    return started(ProxyDaemon(lab, netns, name, config, poll_interval=OURS_POLL_INTERVAL_S), 15)


def start_proxy(
    lab: NetLab,
    netns: str,
    name: str,
    kind: str,
    family: int,
    upstream: str,
    downstreams: Sequence[str],
) -> Daemon:
    """``kind`` "ours" or "igmpproxy" (IPv4 only) on ``netns``, started and ready."""
    if kind == "ours":
        return ours_proxy(lab, netns, name, family, upstream, downstreams)
    if family != 4:
        raise ValueError("igmpproxy is IPv4 only")
    return started(IgmpProxy(lab, netns, name, upstream, downstreams), 10)


# --- shaping ---------------------------------------------------------------------------------


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
