"""Timestamped multicast probes: the sender and receiver of the measured stream.

Each probe packet is a UDP payload of ``--size`` bytes::

    magic "PMLP" | u32 sequence (from 0) | u64 send time, ns CLOCK_REALTIME | zero padding

``send`` paces packets on an absolute schedule (packet k at t0 + k/rate), so sleep errors
never accumulate; a packet that misses its slot goes out at once and is counted as late,
never skipped. It writes ``seq,send_ns`` rows. ``recv`` joins through the kernel's MLD/IGMP
host stack (ASM, or SSM with ``--source``), takes the kernel receive time
(``SO_TIMESTAMPNS``) and the hop limit of every packet, duplicates included, and writes
``seq,send_ns,recv_ns,hop_limit`` rows. Both CSV files start with that header line and are
flushed at exit, including on SIGTERM/SIGINT (exit status 0).

Run inside a namespace: ``python -m experiments.probe send|recv ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import math
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from experiments import layout
from lab import mcsock

MAGIC = b"PMLP"
HEADER = struct.Struct("!4sIQ")
SENDER_COLUMNS = ",".join(layout.SENDER_COLUMNS)
RECEIVER_COLUMNS = ",".join(layout.RECEIVER_COLUMNS)
# A send more than this after its slot counts as late (1 ms: a tenth of the default period,
# well above the ~0.1 ms wake-up jitter of an idle machine).
LATE_NS = 1_000_000
# Longest single sleep of the sender: 20 ms oversleeps by at most the 50 us default slack.
MAX_WAIT_NS = 20_000_000
# How far in the past --start-at may lie: a slow process start is fine, a stale value is not.
MAX_START_LAG_NS = 1_000_000_000
_NS = 1_000_000_000


class ProbeError(Exception):
    """A problem the user can fix (bad argument, missing interface); printed as one line."""


def encode_probe(seq: int, send_ns: int, size: int) -> bytes:
    """One probe payload of ``size`` bytes."""
    return HEADER.pack(MAGIC, seq, send_ns).ljust(size, b"\0")


def decode_probe(payload: bytes) -> tuple[int, int] | None:
    """(seq, send_ns) of a probe payload, or None if it is not one of ours."""
    if len(payload) < HEADER.size:
        return None
    magic, seq, send_ns = HEADER.unpack_from(payload)
    if magic != MAGIC:
        return None
    return seq, send_ns


class Stopper:
    """Turns SIGTERM/SIGINT into a flag and wakes up whoever waits in :meth:`wait`."""

    def __init__(self) -> None:
        self.stopped = False
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        os.set_blocking(self._rfd, False)
        self._old_fd = signal.set_wakeup_fd(self._wfd)
        self._old = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopped = True

    def wait(self, timeout: float | None, sock: socket.socket | None = None) -> bool:
        """Wait up to ``timeout`` s (forever if None) for a signal or ``sock`` readable.

        Returns True if ``sock`` is readable. select() is used for its microsecond timeout
        (epoll/poll round to milliseconds, too coarse for the send schedule).
        """
        if self.stopped:
            return False
        fds = [self._rfd] if sock is None else [self._rfd, sock]
        ready, _, _ = select.select(fds, [], [], None if timeout is None else max(timeout, 0.0))
        if self._rfd in ready:
            with suppress(BlockingIOError):  # drain the wakeup bytes; none left is fine
                os.read(self._rfd, 512)
        return sock is not None and sock in ready

    def close(self) -> None:
        signal.set_wakeup_fd(self._old_fd)
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        os.close(self._rfd)
        os.close(self._wfd)


@contextmanager
def csv_writer(path: Path, columns: str) -> Iterator[TextIO]:
    """A buffered CSV file with its header written; flushed and closed on any exit."""
    try:
        out = open(path, "w", buffering=1 << 20)  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise ProbeError(f"cannot write {path}: {exc.strerror}") from None
    try:
        out.write(columns + "\n")
        yield out
    finally:
        out.close()


@dataclass
class SendStats:
    """What a send run did; ``late`` counts packets sent more than LATE_NS after their slot."""

    sent: int = 0
    late: int = 0
    max_late_ns: int = 0
    t0_ns: int = 0


def schedule_ns(t0_ns: int, k: int, rate: float) -> int:
    """Slot of packet ``k``: t0 + k/rate, computed from k (not by adding periods) so no drift."""
    return t0_ns + round(k * _NS / rate)


def send(
    sock: socket.socket,
    dest: tuple,
    *,
    rate: float,
    count: int,
    size: int,
    out: TextIO,
    t0_ns: int,
    stopper: Stopper,
    clock: Callable[[], int] = time.time_ns,
) -> SendStats:
    """Send ``count`` probes to ``dest`` on the schedule t0 + k/rate; log ``seq,send_ns``.

    Sleeping runs on CLOCK_MONOTONIC (immune to clock steps); the slot times and the
    timestamps in the packets are CLOCK_REALTIME, the clock shared with the receivers.
    """
    stats = SendStats(t0_ns=t0_ns)
    mono_offset = time.monotonic_ns() - clock()
    for seq in range(count):
        slot = schedule_ns(t0_ns, seq, rate)
        while not stopper.stopped:
            remaining = slot + mono_offset - time.monotonic_ns()
            if remaining <= 0:
                break
            # The kernel lets a select() of T seconds oversleep by T/1000 (timer slack), so
            # long waits (before packet 0, low rates) go in steps of at most MAX_WAIT_NS.
            stopper.wait(min(remaining, MAX_WAIT_NS) / _NS)
        if stopper.stopped:
            break
        send_ns = clock()
        try:
            sock.sendto(encode_probe(seq, send_ns, size), dest)
        except OSError as exc:
            raise mcsock.McSockError(exc.errno, f"send to {dest[0]}: {exc.strerror}") from None
        out.write(f"{seq},{send_ns}\n")
        stats.sent += 1
        lateness = send_ns - slot
        if lateness > LATE_NS:
            stats.late += 1
            stats.max_late_ns = max(stats.max_late_ns, lateness)
    return stats


@dataclass
class RecvStats:
    """What a receive run saw; ``foreign`` counts datagrams without the probe magic."""

    received: int = 0
    foreign: int = 0
    no_timestamp: int = 0
    seqs: set[int] = field(default_factory=set)


def receive(
    sock: socket.socket,
    *,
    out: TextIO,
    stopper: Stopper,
    deadline_mono: float | None,
    bufsize: int = 65535,
) -> RecvStats:
    """Log every probe arriving on ``sock`` as ``seq,send_ns,recv_ns,hop_limit`` until stopped."""
    stats = RecvStats()
    while not stopper.stopped:
        timeout = None if deadline_mono is None else deadline_mono - time.monotonic()
        if timeout is not None and timeout <= 0:
            break
        if not stopper.wait(timeout, sock):
            continue
        payload, ancdata, _flags, _addr = sock.recvmsg(bufsize, mcsock.ANCILLARY_SIZE)
        probe = decode_probe(payload)
        if probe is None:
            stats.foreign += 1
            continue
        meta = mcsock.parse_ancillary(ancdata)
        recv_ns = meta.recv_ns
        if recv_ns is None:  # never seen on Linux; keep the packet, count the fallback
            recv_ns = time.time_ns()
            stats.no_timestamp += 1
        seq, send_ns = probe
        hop = "" if meta.hop_limit is None else meta.hop_limit
        out.write(f"{seq},{send_ns},{recv_ns},{hop}\n")
        stats.received += 1
        stats.seqs.add(seq)
    return stats


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    return parse


def _group(text: str) -> mcsock.Address:
    try:
        return mcsock.parse_group(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> mcsock.Address:
    try:
        return mcsock.parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a UDP port: {text}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.probe", description="Timestamped multicast probes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    tx = sub.add_parser("send", help="send probes to a group")
    tx.add_argument("--group", type=_group, required=True)
    tx.add_argument("--port", type=_port, required=True)
    tx.add_argument("--source-if", metavar="IFNAME", help="multicast output interface")
    tx.add_argument("--rate", type=_positive(float), default=100.0, help="packets/s (100)")
    tx.add_argument(
        "--size", type=int, default=64, help=f"UDP payload bytes (64, at least {HEADER.size})"
    )
    amount = tx.add_mutually_exclusive_group(required=True)
    amount.add_argument("--duration", type=_positive(float), metavar="S")
    amount.add_argument("--count", type=_positive(int), metavar="N")
    tx.add_argument(
        "--start-at", type=int, metavar="NS", help="CLOCK_REALTIME ns of packet 0 (default: now)"
    )
    tx.add_argument("--hops", type=int, default=16, help="hop limit / TTL (16)")
    tx.add_argument("--out", type=Path, required=True, help="sender CSV (seq,send_ns)")

    rx = sub.add_parser("recv", help="join a group and log the probes")
    rx.add_argument("--group", type=_group, required=True)
    rx.add_argument("--port", type=_port, required=True)
    rx.add_argument("--iface", metavar="IFNAME", required=True, help="interface to join on")
    rx.add_argument(
        "--source",
        type=_address,
        action="append",
        default=[],
        help="SSM source (repeatable); without it the join is ASM",
    )
    rx.add_argument(
        "--duration", type=_positive(float), metavar="S", help="stop after S s (default: SIGTERM)"
    )
    rx.add_argument("--out", type=Path, required=True, help="receiver CSV")
    return parser


def _dest(group: mcsock.Address, port: int) -> tuple:
    return (str(group), port, 0, 0) if group.version == 6 else (str(group), port)


def run_send(args: argparse.Namespace) -> int:
    group = args.group
    if args.size < HEADER.size or args.size > 65507:
        raise ProbeError(f"--size must be between {HEADER.size} and 65507 bytes")
    if not 0 < args.hops < 256:
        raise ProbeError("--hops must be between 1 and 255")
    count = args.count if args.count else math.ceil(args.duration * args.rate - 1e-9)
    now = time.time_ns()
    t0 = now if args.start_at is None else args.start_at
    if t0 < now - MAX_START_LAG_NS:
        raise ProbeError(f"--start-at lies {(now - t0) / _NS:.1f} s in the past")
    sock = mcsock.open_sender(group, args.source_if, args.hops)
    stopper = Stopper()
    try:
        with csv_writer(args.out, SENDER_COLUMNS) as out:
            stats = send(
                sock,
                _dest(group, args.port),
                rate=args.rate,
                count=count,
                size=args.size,
                out=out,
                t0_ns=t0,
                stopper=stopper,
            )
    finally:
        stopper.close()
        sock.close()
    print(
        f"probe send: {stats.sent}/{count} packets to [{group}]:{args.port}, "
        f"{stats.late} late (max {stats.max_late_ns / 1e6:.3f} ms)",
        file=sys.stderr,
    )
    return 0


def run_recv(args: argparse.Namespace) -> int:
    group = args.group
    for source in args.source:
        if source.version != group.version:
            raise ProbeError(f"source {source} and group {group} are of different IP versions")
    stopper = Stopper()
    try:
        sock = mcsock.open_receiver(group, args.port, args.iface, args.source)
        try:
            with csv_writer(args.out, RECEIVER_COLUMNS) as out:
                mode = "SSM " + ",".join(map(str, args.source)) if args.source else "ASM"
                # The test harness and the runner wait for this line before sending.
                print(f"probe recv: joined {group} ({mode}) on {args.iface}", flush=True)
                deadline = None if args.duration is None else time.monotonic() + args.duration
                stats = receive(sock, out=out, stopper=stopper, deadline_mono=deadline)
        finally:
            sock.close()
    finally:
        stopper.close()
    print(
        f"probe recv: {stats.received} packets ({len(stats.seqs)} distinct), "
        f"{stats.foreign} foreign, {stats.no_timestamp} without kernel timestamp",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_send(args) if args.command == "send" else run_recv(args)
    except (ProbeError, ValueError, OSError) as exc:
        print(f"probe {args.command}: error: {mcsock.error_text(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
