"""The probes between two namespaces: every packet arrives, on an absolute schedule.

Also home of ``spawn_module``/``run_module`` (a module run in a namespace), which
test_pmip.py imports.
"""

from __future__ import annotations

import csv
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.netns import NetLab
from lab.paths import PY, REPO

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


def spawn_module(lab: NetLab, ns: str, module: str, *args: str, stderr: Path) -> subprocess.Popen:
    """``python -m MODULE ARGS`` in ``ns``, its stdout a pipe (for readiness lines)."""
    with stderr.open("w") as err:  # the child keeps its own copy of the descriptor
        return lab.spawn(
            ns, [PY, "-m", module, *args], stdout=subprocess.PIPE, stderr=err, text=True
        )


def run_module(
    lab: NetLab, ns: str, module: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in ``ns``, to its end."""
    return lab.run(ns, [PY, "-m", module, *args], timeout)


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
def pair(lab: NetLab) -> tuple[str, str]:
    a, b = lab.ns("a"), lab.ns("b")
    lab.link(a, "pmla0", b, "pmlb0")
    lab.addr(a, "pmla0", f"{SENDER}/64")
    lab.addr(b, "pmlb0", f"{RECEIVER}/64")
    return a, b


@pytest.mark.parametrize("mode", ["asm", "ssm"])
def test_every_probe_arrives_once_on_an_absolute_schedule(
    lab: NetLab, pair: tuple[str, str], tmp_path: Path, mode: str
) -> None:
    a, b = pair
    receivers = {"joined": [] if mode == "asm" else ["--source", SENDER]}
    if mode == "ssm":
        # Same group and port, another source: the kernel's per-socket filter drops it all.
        receivers["other-source"] = ["--source", "2001:db8:1::99"]
    procs = {}
    for name, extra in receivers.items():
        out = tmp_path / f"{name}.csv"
        procs[name] = spawn_module(
            lab,
            b,
            "experiments.probe",
            *cli("recv", group=GROUP, port=PORT, iface="pmlb0", out=out),
            *extra,
            stderr=tmp_path / f"{name}.err",
        )
        assert "joined" in wait_line(procs[name])

    # A datagram without the probe magic is counted, not logged.
    junk = (
        "from lab import mcsock as m; "
        f"m.open_sender(m.parse_group('{GROUP}'), 'pmla0').sendto(b'junk', ('{GROUP}', {PORT}))"
    )
    subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", junk], cwd=REPO, check=True)
    start_at = time.time_ns() + 2_000_000_000  # Python starts slowly on a busy machine
    sent = run_module(
        lab, a, "experiments.probe",
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
    pair: tuple[str, str], lab: NetLab, tmp_path: Path
) -> None:
    a, _ = pair
    done = run_module(
        lab,
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
