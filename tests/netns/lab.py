"""Namespaces, veth links and processes for tests, all removed again even when a test fails."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from pathlib import Path

from topologies import clean

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


class Lab:
    """A set of named namespaces (prefix ``pmlt<id>-``) and what runs inside them."""

    def __init__(self, tmp: Path) -> None:
        self.tag = "pmlt" + uuid.uuid4().hex[:5]
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, name: str) -> str:
        full = f"{self.tag}-{name}"
        subprocess.run(["ip", "netns", "add", full], check=True)
        self.namespaces.append(full)
        self.sh(full, "ip link set lo up")
        # No DAD delays, no router solicitations: the tests want addresses usable at once.
        for knob in ("accept_dad=0", "dad_transmits=0", "router_solicitations=0"):
            self.sh(full, f"sysctl -qw net.ipv6.conf.default.{knob} net.ipv6.conf.all.{knob}")
        return full

    def sh(self, ns: str, cmd: str, check: bool = True) -> str:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True
        )
        if check and res.returncode:
            raise RuntimeError(f"[{ns}] {cmd}: {res.stderr.strip()}")
        return res.stdout

    def link(self, ns_a: str, if_a: str, ns_b: str, if_b: str, up: bool = True) -> None:
        """A veth pair ``if_a`` in ``ns_a`` <-> ``if_b`` in ``ns_b``."""
        subprocess.run(
            [
                "ip",
                "-n",
                ns_a,
                "link",
                "add",
                if_a,
                "type",
                "veth",
                "peer",
                "name",
                if_b,
                "netns",
                ns_b,
            ],
            check=True,
        )
        if up:
            self.sh(ns_a, f"ip link set {if_a} up")
            self.sh(ns_b, f"ip link set {if_b} up")

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        self.sh(
            ns,
            f"ip addr add {cidr} dev {ifname} nodad"
            if ":" in cidr
            else f"ip addr add {cidr} dev {ifname}",
        )

    def spawn(self, ns: str, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.tmp / log, "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text()

    def close(self) -> None:
        for proc in reversed(self.procs):
            with suppress(Exception):
                self.stop(proc, 3.0)
        for ns in self.namespaces:
            clean.remove_netns(ns, log=lambda *_: None)


# --- the proxy and the probes -------------------------------------------------------------


class Proxy:
    """A pymcproxy daemon running in a namespace of a ``Lab``."""

    def __init__(
        self, lab: Lab, ns: str, conf: str, name: str = "proxy", extra: list[str] | None = None
    ):
        self.lab = lab
        self.ns = ns
        self.path = lab.tmp / f"{name}.conf"
        self.path.write_text(conf)
        self.ctl = f"/run/pmiplab/{lab.tag}-{name}.sock"
        self.logname = f"{name}.log"
        self.proc = lab.spawn(
            ns,
            [PY, "-m", "proxy", "-d", "-f", str(self.path), "--ctl", self.ctl, *(extra or [])],
            self.logname,
        )
        wait_for(lambda: os.path.exists(self.ctl) or self.proc.poll() is not None, 10)
        if self.proc.poll() is not None:
            raise RuntimeError(f"pymcproxy exited {self.proc.returncode}:\n{lab.log(self.logname)}")

    def show(self) -> dict:
        from proxy.ctl import request

        return request(self.ctl, {"cmd": "show"})

    def instance(self, name: str) -> dict:
        return next(i for i in self.show()["instances"] if i["name"] == name)

    def stop(self) -> int:
        return self.lab.stop(self.proc)


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def receiver(
    lab: Lab,
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
    lab: Lab,
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


def rows(lab: Lab, name: str) -> list[dict]:
    path = lab.tmp / f"{name}.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)
