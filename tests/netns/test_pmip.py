"""PMIPv6 signalling between namespaces: an LMA and two MAGs over point-to-point "tunnels".

    mag1 up0 [2001:db8:a1::2] --- tun1 [2001:db8:a1::1]  lma  (LMAA 2001:db8:ff::1 on lo)
    mag2 up0 [2001:db8:a2::2] --- tun2 [2001:db8:a2::1]  lma
    Each MAG also has an access link acc0 for the MN (its peer end stays unused).

The LMA runs as the daemon (``python -m pmip lma``), the MAGs as one-shots, all
appending to one events CSV; the checks read the kernels' routing tables.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from lab.netns import NetLab as Lab
from lab.paths import REPO
from tests.netns.test_probe import cli, pytestmark, run_module  # noqa: F401
from topologies.daemons import LmaDaemon

LMAA = "2001:db8:ff::1"
HNP = "2001:db8:100::/64"
MN = "mn1@pmip.example"
DELETE_DELAY = 0.5  # MinDelayBeforeBCEDelete, shortened from RFC 5213's 10 s
MAGS = {"mag1": ("tun1", "2001:db8:a1"), "mag2": ("tun2", "2001:db8:a2")}


PRIMED = (
    "import sys; from pmip.__main__ import main; sys.stdin.readline(); sys.exit(main(sys.argv[1:]))"
)


@dataclass
class Domain:
    lab: Lab
    lma: str
    mags: dict[str, str]
    events: Path
    daemon: LmaDaemon

    def lma_route(self) -> str:
        return self.lab.ip(self.lma, "-6", "route", "show", HNP).strip()

    def mag_route(self, mag: str) -> str:
        return self.lab.ip(self.mags[mag], "-6", "route", "show", HNP).strip()

    def mag_args(self, command: str, mag: str, *extra: str) -> list[str]:
        prefix = MAGS[mag][1]
        options = cli(
            command,
            proxy_coa=f"{prefix}::2",
            lma=LMAA,
            mn_id=MN,
            hnp=HNP,
            access_if="acc0",
            events=self.events,
            node=mag,
            max_timeout=4,
        )
        return [*options, *extra]

    def run_mag(self, command: str, mag: str, *extra: str) -> subprocess.CompletedProcess:
        args = self.mag_args(command, mag, *extra)
        return run_module(self.lab, self.mags[mag], "pmip", *args)

    def mag(self, command: str, mag: str, *extra: str) -> None:
        done = self.run_mag(command, mag, *extra)
        assert done.returncode == 0, f"{command} {mag}: {done.stderr}\n{self.dump()}"

    def primed_mag(self, command: str, mag: str, *extra: str) -> subprocess.Popen:
        """A MAG one-shot, started and imported, that runs when a line arrives on stdin.

        It keeps Python's start-up time (up to a second on a busy machine) out of the
        sequence a test times against the shortened MinDelayBeforeBCEDelete.
        """
        cmd = [
            "ip", "netns", "exec", self.mags[mag], sys.executable, "-c", PRIMED,
            *self.mag_args(command, mag, *extra),
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lab.procs.append(proc)
        return proc

    def timeline(self) -> list[tuple[str, str]]:
        """(event, node) of every logged event, in time order."""
        with self.events.open() as f:
            rows = sorted(csv.DictReader(f), key=lambda r: int(r["t_ns"]))
        return [(r["event"], r["node"]) for r in rows]

    def dump(self) -> str:
        return self.events.read_text() if self.events.exists() else "(no events file)"


@pytest.fixture
def domain(lab: Lab, tmp_path: Path) -> Domain:
    lma = lab.ns("l")
    lab.ip(lma, "-6", "addr", "add", f"{LMAA}/128", "dev", "lo")
    mags = {}
    for name, (tunnel, prefix) in MAGS.items():
        ns = mags[name] = lab.ns(name[-1])
        lab.link(lma, tunnel, ns, "up0")
        lab.addr(lma, tunnel, f"{prefix}::1/64")
        lab.addr(ns, "up0", f"{prefix}::2/64")
        lab.ip(ns, "-6", "route", "add", f"{LMAA}/128", "via", f"{prefix}::1", "dev", "up0")
        lab.link(ns, "acc0", ns, "mn0")  # the access link; the MN end stays unused
    events = tmp_path / "events.csv"
    daemon = LmaDaemon(lab, lma, "lma", IPv6Address(LMAA), ["tun1", "tun2"], events, DELETE_DELAY)
    daemon.start().wait_ready()
    return Domain(lab, lma, mags, events, daemon)


def exchange(mag: str, sent: str = "pbu_sent", route: str = "route_added") -> list:
    """The events of one accepted PBU/PBA exchange started by ``mag``."""
    lma_side = [("pbu_received", "lma"), ("bce_updated", "lma")]
    if route:
        lma_side.append((route, "lma"))
    return [(sent, mag), *lma_side, ("pba_sent", "lma"), ("pba_received", mag)]


def test_registration_routes_the_hnp_to_the_mag_and_a_second_mag_moves_it(
    domain: Domain,
) -> None:
    domain.mag("mag-register", "mag1")
    assert domain.lma_route().startswith(f"{HNP} via 2001:db8:a1::2 dev tun1")
    assert domain.mag_route("mag1").startswith(f"{HNP} dev acc0")

    domain.mag("mag-register", "mag2", "--handoff", "3")
    assert domain.lma_route().startswith(f"{HNP} via 2001:db8:a2::2 dev tun2")
    assert len(domain.lma_route().splitlines()) == 1

    assert domain.timeline() == [
        *exchange("mag1"),
        ("route_added", "mag1"),
        *exchange("mag2", route="route_moved"),
        ("route_added", "mag2"),
    ], domain.dump()


def test_deregistration_keeps_the_binding_for_the_delay_unless_another_mag_registers(
    domain: Domain,
) -> None:
    domain.mag("mag-register", "mag1")
    handover = domain.primed_mag("mag-register", "mag2", "--handoff", "3")
    domain.mag("mag-deregister", "mag1")
    dereg_done = time.monotonic()
    assert domain.mag_route("mag1") == ""
    assert domain.lma_route().startswith(f"{HNP} via 2001:db8:a1::2 dev tun1")

    _, err = handover.communicate("go\n", timeout=30)
    assert handover.returncode == 0, err
    assert time.monotonic() - dereg_done < DELETE_DELAY, "too slow to test the delay"
    time.sleep(DELETE_DELAY + 0.3)
    assert domain.lma_route().startswith(f"{HNP} via 2001:db8:a2::2 dev tun2")

    domain.mag("mag-deregister", "mag2")
    assert domain.lma_route().startswith(f"{HNP} via 2001:db8:a2::2 dev tun2")
    time.sleep(DELETE_DELAY + 0.3)
    assert domain.lma_route() == ""

    assert domain.timeline() == [
        *exchange("mag1"),
        ("route_added", "mag1"),
        ("route_deleted", "mag1"),
        *exchange("mag1", "dereg_sent", route=""),
        *exchange("mag2", route="route_moved"),
        ("route_added", "mag2"),
        ("route_deleted", "mag2"),
        *exchange("mag2", "dereg_sent", route=""),
        ("bce_deleted", "lma"),
    ], domain.dump()


def test_mag_retransmits_with_doubling_timeouts_and_gives_up_in_one_line(domain: Domain) -> None:
    assert domain.daemon.stop() == 0  # the LMA leaves on SIGTERM with status 0
    done = domain.run_mag(
        "mag-register", "mag1", "--initial-timeout", "0.2", "--max-timeout", "0.8"
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"pmip mag-register: error: no PBA from LMA {LMAA} for {MN} after 3 PBUs"
    ]
    with domain.events.open() as f:
        sent = [int(r["t_ns"]) for r in csv.DictReader(f) if r["event"] == "pbu_sent"]
    gaps = [(b - a) / 1e9 for a, b in zip(sent, sent[1:], strict=False)]
    assert len(sent) == 3 and gaps == pytest.approx([0.2, 0.4], abs=0.05), gaps


CONCURRENT = """
import sys, threading
from ipaddress import IPv6Address as A, IPv6Network as N
from pmip.mag import MagAgent
from proxy.events import EventLog
mag = MagAgent(A("2001:db8:a1::2"), events=EventLog(None, "mag1"), max_timeout=1.0)
done = {}
def register(i):
    mn = f"mn{i}@pmip.example"
    done[mn] = mag.register(mn, N(f"2001:db8:10{i}::/64"), A(sys.argv[1]), "acc0").attempts
threads = [threading.Thread(target=register, args=(i,)) for i in range(1, 5)]
for t in threads: t.start()
for t in threads: t.join()
print(sorted(done.values()))
"""


def test_concurrent_exchanges_of_one_mag_each_get_their_own_pba(domain: Domain) -> None:
    # One try each (max_timeout = initial timeout): a PBA read by the wrong thread would fail.
    cmd = ["ip", "netns", "exec", domain.mags["mag1"], sys.executable, "-c", CONCURRENT, LMAA]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "[1, 1, 1, 1]", done.stderr
    routes = domain.lab.ip(domain.lma, "-6", "route", "show", "dev", "tun1")
    assert all(f"2001:db8:10{i}::/64 via 2001:db8:a1::2" in routes for i in range(1, 5)), routes
