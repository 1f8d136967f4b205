"""The probes between two namespaces: every packet arrives, on an absolute schedule.

Also home of the ``lab`` fixture (namespaces ``pmld<random>-<node>``, veth links made
directly inside them, processes it started), which test_pmip.py imports.
"""

from __future__ import annotations

import csv
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GROUP = "ff3e::db8:1"
PORT = 5001
SENDER = "2001:db8:1::1"
RECEIVER = "2001:db8:1::2"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
    ),
]


class Lab:
    """Namespaces, links and processes of one test; :meth:`close` removes all of them."""

    def __init__(self) -> None:
        self.tag = f"pmld{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []

    def ns(self, node: str) -> str:
        name = f"{self.tag}-{node}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def ip(self, ns: str, *args: str) -> str:
        done = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"ip -n {ns} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def link(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair created inside the two namespaces (never in the root namespace)."""
        add = f"ip link add {if_a} netns {ns_a} type veth peer name {if_b} netns {ns_b}"
        subprocess.run(add.split(), check=True)
        self.ip(ns_a, "link", "set", if_a, "up")
        self.ip(ns_b, "link", "set", if_b, "up")

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        self.ip(ns, "-6", "addr", "add", cidr, "dev", ifname, "nodad")

    def command(self, ns: str, module: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args]

    def run(
        self, ns: str, module: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(ns, module, *args),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, ns: str, module: str, *args: str, stderr: Path) -> subprocess.Popen:
        # `ip netns exec` execs the command, so the PID kept here is the Python process.
        with stderr.open("w") as err:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                self.command(ns, module, *args), cwd=REPO, stdout=subprocess.PIPE,
                stderr=err, text=True,
            )  # fmt: skip
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def cli(*words: str, **options: object) -> list[str]:
    """Command-line words: ``cli("send", source_if="a0")`` -> ``send --source-if a0``."""
    args = list(words)
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def wait_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """The first stdout line of ``proc`` (its readiness message)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no readiness line from {proc.args} within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"{proc.args} exited with {proc.wait()} before getting ready")
    return line


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM ``proc`` (by its PID) and return its exit status."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def pair(lab: Lab) -> tuple[str, str]:
    a, b = lab.ns("a"), lab.ns("b")
    lab.link(a, "pmla0", b, "pmlb0")
    lab.addr(a, "pmla0", f"{SENDER}/64")
    lab.addr(b, "pmlb0", f"{RECEIVER}/64")
    return a, b


@pytest.mark.parametrize("mode", ["asm", "ssm"])
def test_every_probe_arrives_once_on_an_absolute_schedule(
    lab: Lab, pair: tuple[str, str], tmp_path: Path, mode: str
) -> None:
    a, b = pair
    receivers = {"joined": [] if mode == "asm" else ["--source", SENDER]}
    if mode == "ssm":
        # Same group and port, another source: the kernel's per-socket filter drops it all.
        receivers["other-source"] = ["--source", "2001:db8:1::99"]
    procs = {}
    for name, extra in receivers.items():
        out = tmp_path / f"{name}.csv"
        procs[name] = lab.spawn(
            b,
            "experiments.probe",
            *cli("recv", group=GROUP, port=PORT, iface="pmlb0", out=out),
            *extra,
            stderr=tmp_path / f"{name}.err",
        )
        assert "joined" in wait_line(procs[name])

    # A datagram without the probe magic is counted, not logged.
    junk = (
        "from experiments import mcsock as m; "
        f"m.open_sender(m.parse_group('{GROUP}'), 'pmla0').sendto(b'junk', ('{GROUP}', {PORT}))"
    )
    subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", junk], cwd=REPO, check=True)
    start_at = time.time_ns() + 2_000_000_000  # Python starts slowly on a busy machine
    sent = lab.run(
        a, "experiments.probe",
        *cli("send", group=GROUP, port=PORT, source_if="pmla0", rate=100, count=100,
             start_at=start_at, out=tmp_path / "sender.csv"),
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    time.sleep(0.2)  # the last packet is in flight for microseconds; be generous
    for proc in procs.values():
        assert stop(proc) == 0  # SIGTERM flushes and exits 0

    sender = read_csv(tmp_path / "sender.csv")
    assert [int(r["seq"]) for r in sender] == list(range(100))
    send_ns = [int(r["send_ns"]) for r in sender]
    spacing = [b - a for a, b in zip(send_ns, send_ns[1:], strict=False)]
    schedule = f"{sent.stderr.strip()}; offsets from t0 + k*10 ms: " + " ".join(
        f"{(t - start_at - k * 10_000_000) / 1e6:.2f}" for k, t in enumerate(send_ns)
    )
    assert abs(sum(spacing) / len(spacing) - 10_000_000) < 100_000, schedule
    assert 0 <= send_ns[0] - start_at < 3_000_000, schedule
    # No cumulative drift: packet 99 leaves within a few ms of its slot t0 + 990 ms.
    assert abs(send_ns[-1] - (start_at + 99 * 10_000_000)) < 5_000_000, schedule

    got = read_csv(tmp_path / "joined.csv")
    assert [int(r["seq"]) for r in got] == list(range(100)), "loss, duplicates or reordering"
    assert [int(r["send_ns"]) for r in got] == send_ns
    assert all(int(r["recv_ns"]) > int(r["send_ns"]) for r in got)
    assert {r["hop_limit"] for r in got} == {"16"}
    assert "1 foreign" in (tmp_path / "joined.err").read_text()
    if mode == "ssm":
        assert read_csv(tmp_path / "other-source.csv") == []


def test_sender_names_a_missing_interface_in_one_line(
    pair: tuple[str, str], lab: Lab, tmp_path: Path
) -> None:
    a, _ = pair
    done = lab.run(
        a,
        "experiments.probe",
        "send",
        "--group",
        GROUP,
        "--port",
        str(PORT),
        "--source-if",
        "pmlnosuch0",
        "--count",
        "1",
        "--out",
        str(tmp_path / "s.csv"),
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "probe send: error: no such network interface: pmlnosuch0"
    ]
