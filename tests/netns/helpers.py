"""What the namespace tests share: the proxy started from config text, the probes, their rows.

Namespaces, links and processes come from ``lab.netns.NetLab`` (the ``lab`` fixture), the
proxy from ``topologies.daemons.ProxyDaemon``: the same objects the testbed uses.
"""

from __future__ import annotations

import csv
import json
import subprocess

from lab.netns import NetLab, wait_for
from lab.paths import PY, REPO
from proxy.config import parse
from topologies.daemons import ProxyDaemon

__all__ = ["PY", "REPO", "NetLab", "dump", "receiver", "rows", "sender", "start_proxy", "wait_for"]


def start_proxy(
    lab: NetLab,
    ns: str,
    conf: str,
    name: str = "proxy",
    extra: list[str] | None = None,
    wait: bool = True,
    **kw,
) -> ProxyDaemon:
    """``pymcproxy -d`` in ``ns`` with the configuration ``conf`` (mcproxy grammar)."""
    daemon = ProxyDaemon(lab, ns, name, parse(conf, name), debug=True, extra=extra or (), **kw)
    daemon.start()
    return daemon.wait_ready(10) if wait else daemon


def receiver(
    lab: NetLab,
    ns: str,
    iface: str,
    group: str,
    name: str,
    sources: list[str] = (),
    port: int = 5001,
    duration: float | None = None,
) -> subprocess.Popen:
    args = [
        PY,
        "-m",
        "experiments.probe",
        "recv",
        "--group",
        group,
        "--port",
        str(port),
        "--iface",
        iface,
        "--out",
        str(lab.tmp / f"{name}.csv"),
    ]
    for s in sources:
        args += ["--source", s]
    if duration:
        args += ["--duration", str(duration)]
    return lab.spawn(ns, args, f"{name}.log")


def sender(
    lab: NetLab,
    ns: str,
    iface: str,
    group: str,
    name: str,
    duration: float,
    rate: float = 100,
    port: int = 5001,
) -> subprocess.Popen:
    args = [
        PY,
        "-m",
        "experiments.probe",
        "send",
        "--group",
        group,
        "--port",
        str(port),
        "--source-if",
        iface,
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--hops",
        "16",
        "--out",
        str(lab.tmp / f"{name}.csv"),
    ]
    return lab.spawn(ns, args, f"{name}.log")


def rows(lab: NetLab, name: str) -> list[dict]:
    path = lab.tmp / f"{name}.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)
