"""The userspace link emulator process: TAP endpoints, one relay loop for all links, control socket.

Run as ``python -m topologies.linkemu --control /run/pmiplab/linkemu-<tag>.sock`` (normally by
`topologies.links.EmulatorBackend`). Each endpoint is a TAP device (IFF_TAP | IFF_NO_PI)
created in the root namespace under a temporary ``pmlt...`` name and moved and renamed into
its namespace in one ``ip link set`` (the file descriptor stays valid across the move). The
relay reads every frame a TAP transmits, draws its delay with `links.draw_delay_ns`, keeps it
on a heap keyed by release time and writes it to the peer TAP when due. It is protocol
agnostic: ND, MLD, multicast data and mobility headers are all just frames.

Control protocol: JSON lines on a unix stream socket. Each request ``{"op": ..., ...}`` gets
one reply ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. Operations:
``own`` (the process exits when every connection that said ``own`` has closed, so a crashed
caller leaves no relay behind), ``add_endpoint {endpoint}``, ``connect {a, b, profile, seed}``,
``disconnect {endpoint}``, ``stats``, ``describe``, ``shutdown``.

Timing: the loop sleeps in ``select`` (microsecond timeouts; epoll rounds to milliseconds)
with 1 ns timer slack. A wake-up from a timeout comes late by a roughly constant latency, so
the loop aims that much early: it measures the latency at start-up and tracks it with an
exponentially weighted mean of how late each timed wake-up was.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import heapq
import itertools
import json
import math
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lab.netns import in_netns
from topologies.links import (
    Endpoint,
    LinkProfile,
    direction_key,
    direction_rng,
    draw_delay_ns,
    release_time_ns,
)

VERSION = "1"

T = TypeVar("T")
TUNSETIFF = 0x400454CA
TUNSETCARRIER = 0x400454E2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
PR_SET_TIMERSLACK = 29
FRAME_MAX = 65535
# Frames read from one TAP per wake-up before the others get their turn.
READ_BATCH = 256
# Wake-up latency: start-up probes, EWMA weight (1/32) and the range it may take.
CALIBRATION_SLEEPS = 100
EWMA_SHIFT = 5
EARLY_MAX_NS = 1_000_000
RT_PRIORITY = 10

monotonic_ns = time.monotonic_ns


@dataclass(slots=True)
class Counters:
    frames: int = 0
    bytes: int = 0
    drops: int = 0
    lost: int = 0
    drawn: int = 0
    drawn_sum_ns: int = 0
    drawn_sumsq_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        mean_ms = self.drawn_sum_ns / self.drawn / 1e6 if self.drawn else None
        sd_ms = None
        if self.drawn > 1 and mean_ms is not None:
            var = (self.drawn_sumsq_ms - self.drawn * mean_ms**2) / (self.drawn - 1)
            sd_ms = math.sqrt(max(0.0, var))
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "drops": self.drops,
            "lost": self.lost,
            "drawn": self.drawn,
            "drawn_mean_ms": mean_ms,
            "drawn_sd_ms": sd_ms,
        }


class Tap:
    """One endpoint: its TAP file descriptor and the direction its frames leave by."""

    __slots__ = ("ep", "fd", "out", "idle")

    def __init__(self, ep: Endpoint, fd: int, idle: Counters) -> None:
        self.ep = ep
        self.fd = fd
        self.out: Direction | None = None
        self.idle = idle  # counts frames it sends while unconnected


class Direction:
    """One direction of a link: profile, random stream, FIFO state and counters."""

    __slots__ = ("dst", "profile", "rng", "last_release", "counters", "active")

    def __init__(self, dst: Tap, profile: LinkProfile, seed: int, index: int, c: Counters):
        self.dst = dst
        self.profile = profile
        self.rng = direction_rng(seed, index)
        self.last_release = 0
        self.counters = c
        self.active = True


class Emulator:
    def __init__(self, control_path: Path) -> None:
        self.control_path = control_path
        self.taps: dict[str, Tap] = {}
        self.by_fd: dict[int, Tap] = {}
        self.counters: dict[str, Counters] = {}
        self.heap: list[tuple[int, int, Direction, bytes]] = []
        self.seq = itertools.count()
        self.epoll = select.epoll()
        self.carrier_ioctl = True
        self.early_ns = 0
        self.scheduling = "normal"
        self.stopping = False
        self.owners: set[socket.socket] = set()
        self.conns: dict[socket.socket, bytearray] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.wake_r, self.wake_w = socket.socketpair()

    # --- endpoints and links -----------------------------------------------------------------

    def counters_for(self, key: str) -> Counters:
        return self.counters.setdefault(key, Counters())

    def set_carrier(self, tap: Tap, up: bool) -> None:
        if self.carrier_ioctl:
            try:
                fcntl.ioctl(tap.fd, TUNSETCARRIER, struct.pack("i", int(up)))
                return
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTTY):
                    raise
                self.carrier_ioctl = False  # kernel before 4.15: fall back to admin state
        state = "up" if up else "down"
        _ip("-n", tap.ep.netns, "link", "set", "dev", tap.ep.ifname, state)

    def add_endpoint(self, ep: Endpoint) -> None:
        if ep.label in self.taps:
            raise ValueError(f"endpoint {ep.label} exists already")
        # The TAP is created inside its namespace: moving a device between namespaces costs
        # an RCU grace period (~30 ms here), creating it in place well under a millisecond.
        fd = in_netns(ep.netns, lambda: make_tap(ep.ifname, ep.mac))
        try:
            tap = Tap(ep, fd, self.counters_for(direction_key(ep, None)))
            self.set_carrier(tap, False)
        except BaseException:
            os.close(fd)  # a non-persistent TAP disappears with its last descriptor
            raise
        self.taps[ep.label] = tap
        self.by_fd[fd] = tap
        self.epoll.register(fd, select.EPOLLIN)

    def tap(self, data: dict[str, Any]) -> Tap:
        ep = Endpoint(**data)
        try:
            return self.taps[ep.label]
        except KeyError:
            raise ValueError(f"unknown endpoint {ep.label}") from None

    def connect(self, a: Tap, b: Tap, profile: LinkProfile, seed: int) -> None:
        if a is b or a.out is not None or b.out is not None:
            raise ValueError(f"cannot connect {a.ep.label} and {b.ep.label}")
        if not profile.resolved:
            raise ValueError(f"profile {profile.name} is not resolved")
        for index, (src, dst) in enumerate(((a, b), (b, a))):
            c = self.counters_for(direction_key(src.ep, dst.ep))
            src.out = Direction(dst, profile, seed, index, c)
        self.set_carrier(a, True)
        self.set_carrier(b, True)

    def disconnect(self, tap: Tap) -> None:
        if tap.out is None:
            raise ValueError(f"endpoint {tap.ep.label} is not connected")
        peer = tap.out.dst
        for end in (tap, peer):
            end.out.active = False
            end.out = None
            self.set_carrier(end, False)
        # The link is gone: every frame still in flight on it, either way, is dropped now.
        kept = []
        for entry in self.heap:
            if entry[2].active:
                kept.append(entry)
            else:
                entry[2].counters.drops += 1
        self.heap[:] = kept
        heapq.heapify(self.heap)

    def stats(self) -> dict[str, Any]:
        # Idle counters of endpoints that never sent while unconnected are noise.
        return {key: c.as_dict() for key, c in self.counters.items() if c != Counters()}

    def describe(self) -> dict[str, Any]:
        return {
            "version": f"linkemu {VERSION} (Python {sys.version.split()[0]})",
            "pid": os.getpid(),
            "wakeup_compensation_us": self.early_ns / 1000,
            "carrier": "TUNSETCARRIER" if self.carrier_ioctl else "link up/down",
            "scheduling": self.scheduling,
            "pending_frames": len(self.heap),
        }

    # --- control -----------------------------------------------------------------------------

    def handle(self, conn: socket.socket, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "own":
            self.owners.add(conn)
        elif op == "add_endpoint":
            self.add_endpoint(Endpoint(**request["endpoint"]))
        elif op == "connect":
            profile = LinkProfile.from_dict(request["profile"])
            self.connect(self.tap(request["a"]), self.tap(request["b"]), profile, request["seed"])
        elif op == "disconnect":
            self.disconnect(self.tap(request["endpoint"]))
        elif op == "stats":
            return self.stats()
        elif op == "describe":
            return self.describe()
        elif op == "shutdown":
            self.stopping = True
        else:
            raise ValueError(f"unknown op {op!r}")
        return None

    def serve(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.close_conn(conn)
            return
        buf = self.conns[conn]
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            request: dict[str, Any] = {}
            try:
                request = json.loads(line)
                reply = {"ok": True, "result": self.handle(conn, request)}
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if isinstance(request, dict) and "id" in request:
                reply["id"] = request["id"]
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close_conn(self, conn: socket.socket) -> None:
        self.conns.pop(conn, None)
        conn.close()
        if conn in self.owners:
            self.owners.discard(conn)
            if not self.owners:
                self.stopping = True

    # --- relay -------------------------------------------------------------------------------

    def read_tap(self, tap: Tap) -> None:
        # The frames waiting now arrived at the latest now: stamping them at the start of the
        # read is what a NIC timestamp would give, less the time we took to wake up.
        now = monotonic_ns()
        fd, heap, out = tap.fd, self.heap, tap.out
        for _ in range(READ_BATCH):
            try:
                frame = os.read(fd, FRAME_MAX)
            except BlockingIOError:
                return
            except OSError:  # the namespace went away under us
                self.epoll.unregister(fd)
                return
            if out is None:
                tap.idle.drops += 1
                continue
            c, profile, rng = out.counters, out.profile, out.rng
            if profile.loss and rng.random() < profile.loss:
                c.lost += 1
                continue
            delay = draw_delay_ns(profile, rng)
            c.drawn += 1
            c.drawn_sum_ns += delay
            c.drawn_sumsq_ms += (delay / 1e6) ** 2
            due = release_time_ns(now, delay, out.last_release, profile.reorder)
            out.last_release = due
            heapq.heappush(heap, (due, next(self.seq), out, frame))

    def deliver_due(self) -> None:
        heap = self.heap
        horizon = monotonic_ns() + self.early_ns
        while heap and heap[0][0] <= horizon:
            _, _, out, frame = heapq.heappop(heap)
            c = out.counters
            if not out.active:
                c.drops += 1
                continue
            try:
                os.write(out.dst.fd, frame)
            except OSError:
                c.drops += 1
                continue
            c.frames += 1
            c.bytes += len(frame)

    def calibrate(self) -> None:
        """Measure how late a short timed sleep wakes up, to start the estimate from."""
        late = []
        for _ in range(CALIBRATION_SLEEPS):
            target = monotonic_ns() + 500_000
            select.select([], [], [], 0.0005)
            late.append(monotonic_ns() - target)
        late.sort()
        self.early_ns = min(late[len(late) // 2], EARLY_MAX_NS)

    def run(self) -> None:
        epfd, listener, wake = self.epoll.fileno(), self.listener, self.wake_r
        while not self.stopping:
            self.deliver_due()
            rlist = [epfd, listener, wake, *self.conns]
            target = None
            timeout = None
            if self.heap:
                target = self.heap[0][0] - self.early_ns
                timeout = max(0, target - monotonic_ns()) / 1e9
            ready = select.select(rlist, [], [], timeout)[0]
            if not ready:
                if timeout:
                    # Only true sleeps teach us the wake-up latency.
                    late = monotonic_ns() - target
                    self.early_ns += (late - self.early_ns) >> EWMA_SHIFT
                    self.early_ns = min(max(self.early_ns, 0), EARLY_MAX_NS)
                continue
            for obj in ready:
                if obj is epfd:
                    for fd, _ in self.epoll.poll(0):
                        self.read_tap(self.by_fd[fd])
                elif obj is listener:
                    conn, _ = listener.accept()
                    self.conns[conn] = bytearray()
                elif obj is wake:
                    self.stopping = True
                else:
                    self.serve(obj)

    # --- process -----------------------------------------------------------------------------

    def open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        self.control_path.parent.mkdir(parents=True, exist_ok=True)
        self.listener.bind(str(self.control_path))
        os.chmod(self.control_path, 0o600)
        self.listener.listen(8)

    def close(self) -> None:
        for tap in self.taps.values():
            with contextlib.suppress(OSError):
                os.close(tap.fd)
        self.taps.clear()
        for conn in list(self.conns):
            conn.close()
        self.listener.close()
        self.epoll.close()
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()


SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFHWADDR = 0x8913, 0x8914, 0x8924
IFF_UP = 0x1
ARPHRD_ETHER = 1


def make_tap(ifname: str, mac: str | None) -> int:
    """A TAP device ``ifname`` in this thread's namespace, with ``mac``, up; its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
        with contextlib.suppress(OSError):  # no carrier before it is up (pre-4.15: see below)
            fcntl.ioctl(fd, TUNSETCARRIER, struct.pack("i", 0))
        with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM) as s:
            name = ifname.encode().ljust(16, b"\0")
            if mac:
                hw = bytes.fromhex(mac.replace(":", ""))
                fcntl.ioctl(
                    s.fileno(), SIOCSIFHWADDR, name + struct.pack("=H14s", ARPHRD_ETHER, hw)
                )
            flags = struct.unpack_from(
                "=H", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, name + bytes(16)), 16
            )[0]
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, name + struct.pack("=H14x", flags | IFF_UP))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _tune_process(realtime: bool) -> str:
    """Timer slack, descriptor limit and scheduling; returns the scheduling in force."""
    # 1 ns timer slack: the default 50 us would be added to every timed wake-up.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    # Two descriptors per link; hundreds of links exceed the default soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if not realtime:
        return "normal"
    # Measured on 2 cores with sender and receiver busy: as a normal task the relay waits
    # behind them for a time slice now and then (p99 +3.5 ms, mean +0.27 ms at 5 ms);
    # SCHED_FIFO wakes it at once (p99 +0.11 ms). It never busy-waits, and the kernel's RT
    # throttling bounds it anyway. RESET_ON_FORK keeps the `ip` children ordinary.
    try:
        policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
        os.sched_setscheduler(0, policy, os.sched_param(RT_PRIORITY))
        return f"SCHED_FIFO {RT_PRIORITY}"
    except OSError:
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        return "nice -10"
    except OSError:
        return "normal"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topologies.linkemu", description=__doc__)
    parser.add_argument("--control", required=True, type=Path, help="unix socket to listen on")
    parser.add_argument("--no-realtime", action="store_true", help="do not ask for SCHED_FIFO")
    args = parser.parse_args(argv)
    scheduling = _tune_process(realtime=not args.no_realtime)
    emu = Emulator(args.control)
    emu.scheduling = scheduling
    emu.wake_w.setblocking(False)
    signal.set_wakeup_fd(emu.wake_w.fileno(), warn_on_full_buffer=False)
    # A Python-level handler (not SIG_DFL) so that SIGTERM wakes select via the wakeup fd.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    emu.calibrate()
    emu.open()
    try:
        emu.run()
    finally:
        emu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
