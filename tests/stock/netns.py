"""Namespaces and veth pairs for the stock-kernel tests, removed whatever happens.

Every namespace is named ``pmls<random hex>-<name>``; nothing outside that prefix is touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    """Run a command (in namespace ns), return its stdout; raise with stderr on failure."""
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class Lab:
    """Named namespaces with a common random prefix; close() kills their processes, deletes them."""

    def __init__(self) -> None:
        self.prefix = f"pmls{secrets.token_hex(3)}"
        self.names: list[str] = []

    def ns(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", full)
        self.names.append(full)
        sh("ip", "link", "set", "lo", "up", ns=full)
        return full

    def veth(self, a: str, dev_a: str, b: str, dev_b: str) -> None:
        """A veth pair with one end in namespace a and the other in b (both up)."""
        tmp_a, tmp_b = f"{self.prefix}a", f"{self.prefix}b"
        sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        sh("ip", "link", "set", tmp_a, "netns", a, "name", dev_a)
        sh("ip", "link", "set", tmp_b, "netns", b, "name", dev_b)
        for ns, dev in ((a, dev_a), (b, dev_b)):
            sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0", ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)

    def close(self) -> None:
        for name in reversed(self.names):
            for pid in sh("ip", "netns", "pids", name, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
        self.names.clear()


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()


def ping_rtts(ns: str, dst: str, count: int = 10, interval: float = 0.2) -> list[float]:
    """Round-trip times in ms of count pings from ns to dst."""
    out = sh("ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", dst, ns=ns)
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]
