"""Named network namespaces, veth links and the processes inside them, removed again on close.

``NetLab`` is the one namespace toolkit of the project: the topology builder, the namespace
tests and the benchmarks all make their namespaces, links and processes through it, so that
everything carries the lab's prefix (``lab.clean`` finds it by that name) and ``close()``
removes it even when the caller failed half-way.

``in_netns`` runs a function in a thread that entered a named namespace: sockets made there
stay in that namespace for their whole life, whichever thread uses them later.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from lab import clean
from lab.paths import REPO

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1
_LIBC = ctypes.CDLL(None, use_errno=True)

#: sysctls of every new namespace: addresses usable at once, no router solicitations.
QUIET_IPV6 = tuple(
    f"net.ipv6.conf.{scope}.{knob}"
    for knob in ("accept_dad=0", "dad_transmits=0", "router_solicitations=0")
    for scope in ("all", "default")
)
FORWARDING = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")


class CommandError(RuntimeError):
    """A command in a namespace failed; the message names the namespace and the command."""


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a short-lived thread that joined the named network namespace."""
    result: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _LIBC.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result.append((False, exc))

    thread = threading.Thread(target=target, name=f"setns-{netns}")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def netns_socket(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket living in network namespace ``netns``."""
    return in_netns(netns, lambda: socket.socket(family, kind, proto))


def set_link(netns: str, ifname: str, up: bool) -> int:
    """Set ``ifname`` administratively up or down with one ioctl.

    Returns CLOCK_REALTIME ns just before the call: the "link up" instant of a handover.
    """

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


def sh(netns: str, cmd: str, check: bool = True) -> str:
    """Run shell command ``cmd`` inside ``netns``; its stdout (CommandError if it fails)."""
    res = subprocess.run(
        ["ip", "netns", "exec", netns, "sh", "-c", cmd], capture_output=True, text=True
    )
    if check and res.returncode:
        raise CommandError(f"[{netns}] {cmd}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def make_netns(name: str, forwarding: bool = False, knobs: tuple[str, ...] = QUIET_IPV6) -> None:
    """A fresh namespace with loopback up and the given sysctls set."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    wanted = [*knobs, *(FORWARDING if forwarding else ())]
    sh(name, "ip link set lo up" + (f" && sysctl -qw {' '.join(wanted)}" if wanted else ""))


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str, up: bool = True) -> None:
    """A veth pair ``if_a`` in ``ns_a`` <-> ``if_b`` in ``ns_b``."""
    subprocess.run(
        ["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b]
        + ["netns", ns_b],
        check=True,
    )
    if up:
        sh(ns_a, f"ip link set {if_a} up")
        sh(ns_b, f"ip link set {if_b} up")


def add_address(netns: str, ifname: str, cidr: str) -> None:
    """An address on ``ifname``; IPv6 ones usable at once (no DAD)."""
    nodad = " nodad" if ":" in cidr else ""
    sh(netns, f"ip addr add {cidr} dev {ifname}{nodad}")


def stop_process(proc: subprocess.Popen, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
    """Signal ``proc`` (SIGTERM by default), SIGKILL it after ``timeout``; its exit code."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class NetLab:
    """Namespaces ``<prefix>-<name>``, veth links and processes, all removed by ``close``.

    ``prefix`` must start with ``pml`` (what ``lab.clean`` removes); by default it is
    ``pmlt`` plus a random suffix, so that several labs (tests, benchmarks) coexist.
    Process output goes to files in ``tmp``.
    """

    def __init__(self, tmp: Path, prefix: str | None = None) -> None:
        self.prefix = prefix or "pmlt" + uuid.uuid4().hex[:5]
        if not self.prefix.startswith(clean.PREFIX):
            raise ValueError(f"a lab prefix must start with {clean.PREFIX!r}")
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.namespaces: list[str] = []
        self.adopted: list[str] = []  # names given to other tools' namespaces (Mininet's)
        self.procs: list[subprocess.Popen] = []
        self._anchors: dict[str, int] = {}

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def name(self, node: str) -> str:
        """The namespace name of ``node``."""
        return f"{self.prefix}-{node}"

    def ns(self, node: str, forwarding: bool = False, knobs: tuple[str, ...] = QUIET_IPV6) -> str:
        """Make the namespace of ``node`` with ``knobs`` set; its full name."""
        full = self.name(node)
        make_netns(full, forwarding, knobs)
        self.namespaces.append(full)
        return full

    def adopt(self, node: str, pid: int) -> str:
        """Name the namespace of process ``pid`` (a Mininet host's shell) ``<prefix>-<node>``,
        so that everything here works in it; ``close`` removes the name, not the namespace."""
        full = self.name(node)
        res = subprocess.run(["ip", "netns", "attach", full, str(pid)], capture_output=True)
        if res.returncode != 0:
            raise CommandError(f"ip netns attach {full} {pid}: {res.stderr.decode().strip()}")
        self.adopted.append(full)
        return full

    def sh(self, ns: str, cmd: str, check: bool = True) -> str:
        return sh(ns, cmd, check)

    def ip(self, ns: str, *args: str) -> str:
        """``ip -n NS ARGS...``; its stdout (CommandError if it fails)."""
        res = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
        if res.returncode:
            raise CommandError(f"ip -n {ns} {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def run(self, ns: str, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``args`` in ``ns`` to its end, capturing its output as text."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def link(self, ns_a: str, if_a: str, ns_b: str, if_b: str, up: bool = True) -> None:
        veth(ns_a, if_a, ns_b, if_b, up)

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        add_address(ns, ifname, cidr)

    def anchor(self, ns: str) -> int:
        """PID of a process that lives as long as ``ns`` (to read its /proc/PID/net files)."""
        if ns not in self._anchors:
            self._anchors[ns] = self.spawn(ns, ["sleep", "infinity"]).pid
        return self._anchors[ns]

    def spawn(
        self, ns: str, args: list[str], log: str | None = None, **kw: Any
    ) -> subprocess.Popen:
        """Start ``args`` in ``ns``; ``ip netns exec`` execs it, so the PID is the program's.

        Its output goes to ``tmp/log`` (nowhere without ``log``).
        """
        out = open(self.tmp / log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *args],
                stdout=kw.pop("stdout", out),
                stderr=kw.pop("stderr", subprocess.STDOUT if log else subprocess.DEVNULL),
                cwd=kw.pop("cwd", REPO),
                **kw,
            )
        finally:
            if log:
                out.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
        return stop_process(proc, timeout, sig)

    def forget(self, proc: subprocess.Popen) -> None:
        """Stop tracking ``proc`` (it was stopped and replaced)."""
        self.procs = [p for p in self.procs if p is not proc]

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text()

    def close(self) -> None:
        """Stop every process (newest first), then delete every namespace; idempotent."""
        for proc in reversed(self.procs):
            with suppress(Exception):
                stop_process(proc, 3.0)
        self.procs.clear()
        for ns in self.namespaces:
            clean.remove_netns(ns, log=lambda *_: None)
        self.namespaces.clear()
        for ns in self.adopted:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.adopted.clear()
