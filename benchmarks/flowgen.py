"""A multicast traffic source with per-group rates, driven line by line on standard input.

``python -m benchmarks.flowgen --iface IF --port P`` (inside the source's namespace) reads
commands and answers each with ``ok`` once it is in effect:

    start GROUP RATE     send 64-byte UDP datagrams to GROUP at RATE packets/s
    rate GROUP RATE      change the rate of a running group
    stop GROUP           stop sending to GROUP
    quit

Every group has its own schedule (packet k at t0 + k/rate). A group that falls more than
20 ms behind its schedule skips ahead instead of bursting.
"""

from __future__ import annotations

import argparse
import heapq
import os
import select
import sys
import time

from lab import mcsock

PAYLOAD = 64
MAX_LAG_NS = 20_000_000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flowgen")
    p.add_argument("--iface", required=True)
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--family", type=int, choices=(4, 6), default=6)
    p.add_argument("--hops", type=int, default=16)
    args = p.parse_args(argv)
    probe = mcsock.parse_group("ff0e::1" if args.family == 6 else "239.0.0.1")
    sock = mcsock.open_sender(probe, args.iface, args.hops)
    sock.setblocking(False)
    payload = b"PMLB".ljust(PAYLOAD, b"\0")
    period: dict[str, int] = {}
    dest: dict[str, tuple] = {}
    heap: list[tuple[int, str]] = []
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    buf = b""
    out = sys.stdout
    while True:
        now = time.monotonic_ns()
        while heap and heap[0][0] <= now:
            due, g = heapq.heappop(heap)
            if g not in period:
                continue
            try:
                sock.sendto(payload, dest[g])
            except (BlockingIOError, OSError):
                pass
            nxt = due + period[g]
            if now - nxt > MAX_LAG_NS:
                nxt = now + period[g]
            heapq.heappush(heap, (nxt, g))
        timeout = max(0.0, (heap[0][0] - time.monotonic_ns()) / 1e9) if heap else 1.0
        ready, _, _ = select.select([stdin], [], [], min(timeout, 1.0))
        if not ready:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            return 0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            words = line.decode().split()
            if not words:
                continue
            cmd = words[0]
            if cmd == "quit":
                return 0
            g = words[1]
            if cmd in ("start", "rate"):
                first = g not in period
                period[g] = int(1e9 / float(words[2]))
                if g.count(":"):
                    dest[g] = (g, args.port, 0, 0)
                else:
                    dest[g] = (g, args.port)
                if first:
                    heapq.heappush(heap, (time.monotonic_ns(), g))
            elif cmd == "stop":
                period.pop(g, None)
                dest.pop(g, None)
            out.write("ok\n")
            out.flush()


if __name__ == "__main__":
    sys.exit(main())
