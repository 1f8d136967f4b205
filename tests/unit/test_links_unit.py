"""Unit tests of link profiles, delay draws, FIFO scheduling, netem commands and bench maths."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import linkstats as bench
from lab import clean
from topologies import backends, links
from topologies.linkemu import Counters
from topologies.links import (
    TABLE_I,
    BackendUnavailable,
    Endpoint,
    LinkProfile,
    draw_delay_ns,
    profile_from,
    release_time_ns,
)

# ---------------------------------------------------------------------------------------------
# Profiles


def test_table_i_values() -> None:
    expected = {
        "umts": (200, 50, None),
        "lte": (5, 3, None),
        "tunnel": (30, 6, (20, 40)),
        "peering": (10, 3, (5, 15)),
        "backbone": (50, 12, (40, 60)),
    }
    got = {n: (p.delay_ms, p.jitter_ms, p.delay_range_ms) for n, p in TABLE_I.items()}
    assert got == expected
    assert all(p.distribution == "uniform" and p.reorder == "netem" for p in TABLE_I.values())


@pytest.mark.parametrize("name", ["tunnel", "peering", "backbone"])
def test_resolve_is_deterministic_and_in_range(name: str) -> None:
    profile = TABLE_I[name]
    first = profile.resolve(random.Random(7))
    again = profile.resolve(random.Random(7))
    assert first == again
    assert first.resolved and first.delay_range_ms is None
    low, high = profile.delay_range_ms
    draws = {profile.resolve(random.Random(seed)).delay_ms for seed in range(200)}
    assert all(low <= d <= high for d in draws)
    assert len(draws) == 200
    # Resolving twice keeps the drawn value: the resolved profile is concrete.
    assert first.resolve(random.Random(99)) == first


def test_resolve_keeps_fixed_profile() -> None:
    lte = TABLE_I["lte"]
    assert lte.resolve(random.Random(1)) is lte


def test_profile_from_overrides() -> None:
    fast = profile_from("tunnel", delay_ms=2.0)
    assert fast.delay_range_ms is None and fast.delay_ms == 2.0 and fast.jitter_ms == 6.0
    normal = profile_from("lte", distribution="normal", reorder="preserve", loss=0.01)
    assert (normal.distribution, normal.reorder, normal.loss) == ("normal", "preserve", 0.01)
    ranged = profile_from("tunnel", delay_range_ms=(1, 2))
    assert ranged.delay_range_ms == (1.0, 2.0)
    with pytest.raises(ValueError, match="unknown link profile"):
        profile_from("wifi")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay_ms": -1.0},
        {"jitter_ms": -1.0},
        {"delay_range_ms": (5.0, 1.0)},
        {"distribution": "pareto"},
        {"reorder": "never"},
        {"loss": 1.5},
    ],
)
def test_profile_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        profile_from("lte", **kwargs)


def test_profile_dict_round_trip() -> None:
    profile = TABLE_I["tunnel"]
    data = profile.to_dict()
    data["delay_range_ms"] = list(data["delay_range_ms"])  # as after JSON
    assert LinkProfile.from_dict(data) == profile


# ---------------------------------------------------------------------------------------------
# Delay draws


def _draws_ms(profile: LinkProfile, n: int = 100_000, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [draw_delay_ns(profile, rng) / 1e6 for _ in range(n)]


@pytest.mark.parametrize("name", list(TABLE_I))
def test_uniform_draws_match_table_i(name: str) -> None:
    profile = TABLE_I[name].resolve(random.Random(1))
    draws = _draws_ms(profile)
    d, j = profile.delay_ms, profile.jitter_ms
    assert min(draws) >= d - j - 1e-6 and max(draws) <= d + j + 1e-6
    se = j / math.sqrt(3) / math.sqrt(len(draws))
    assert abs(statistics.fmean(draws) - d) < 4 * se
    assert statistics.stdev(draws) == pytest.approx(j / math.sqrt(3), rel=0.01)
    # Uniform: each tenth of the interval holds a tenth of the draws.
    counts = [0] * 10
    for x in draws:
        counts[min(9, int((x - (d - j)) / (2 * j) * 10))] += 1
    assert all(abs(c / len(draws) - 0.1) < 0.006 for c in counts)


def test_normal_draws_use_jitter_as_sd() -> None:
    profile = profile_from("backbone", delay_ms=50.0, distribution="normal")
    draws = _draws_ms(profile)
    assert statistics.fmean(draws) == pytest.approx(50.0, abs=0.2)
    assert statistics.stdev(draws) == pytest.approx(12.0, rel=0.01)


def test_draws_are_clamped_at_zero() -> None:
    profile = LinkProfile("wide", 1.0, 5.0, distribution="normal")
    draws = _draws_ms(profile, 20_000)
    assert min(draws) == 0.0
    assert sum(1 for x in draws if x == 0.0) > 0.2 * len(draws)
    assert _draws_ms(LinkProfile("zero", 0.0, 0.0), 10) == [0.0] * 10


def test_draws_are_reproducible_per_direction() -> None:
    profile = TABLE_I["lte"]

    def stream(seed: int, direction: int) -> list[int]:
        rng = links.direction_rng(seed, direction)
        return [draw_delay_ns(profile, rng) for _ in range(200)]

    assert stream(5, 0) == stream(5, 0)
    assert stream(5, 0) != stream(5, 1)
    assert stream(5, 0) != stream(6, 0)
    assert abs(statistics.correlation(stream(5, 0), stream(5, 1))) < 0.3


# ---------------------------------------------------------------------------------------------
# Release times (reordering)


def _release_stream(reorder: str, n: int = 2000) -> list[tuple[int, int, int]]:
    """(arrival, delay, release) of a 100 packet/s stream through UMTS."""
    profile = profile_from("umts", reorder=reorder)
    rng = random.Random(11)
    previous, out = 0, []
    for i in range(n):
        arrival = i * 10_000_000
        delay = draw_delay_ns(profile, rng)
        previous = release_time_ns(arrival, delay, previous, profile.reorder)
        out.append((arrival, delay, previous))
    return out


def test_netem_semantics_reorder() -> None:
    stream = _release_stream("netem")
    assert all(release == arrival + delay for arrival, delay, release in stream)
    releases = [r for _, _, r in stream]
    assert bench.reorder_rate(sorted(range(len(releases)), key=releases.__getitem__)) > 0.3


def test_preserve_semantics_keep_fifo() -> None:
    stream = _release_stream("preserve")
    releases = [r for _, _, r in stream]
    assert releases == sorted(releases)
    assert all(release >= arrival + delay for arrival, delay, release in stream)
    # A packet is held back only to wait for its predecessor.
    for (_, _, before), (arrival, delay, release) in zip(stream, stream[1:], strict=False):
        assert release == max(arrival + delay, before)


def test_release_time_examples() -> None:
    assert release_time_ns(100, 50, 500, "netem") == 150
    assert release_time_ns(100, 50, 500, "preserve") == 500
    assert release_time_ns(100, 500, 50, "preserve") == 600


# ---------------------------------------------------------------------------------------------
# netem command construction


def test_netem_qdisc_commands() -> None:
    lte = TABLE_I["lte"]
    assert backends.netem_qdisc_cmd("pmlab12e0", lte) == [
        "tc", "qdisc", "replace", "dev", "pmlab12e0", "root", "netem", "limit", "20000",
        "delay", "5000us", "3000us",
    ]  # fmt: skip
    tunnel = TABLE_I["tunnel"].resolve(random.Random(1))
    cmd = backends.netem_qdisc_cmd("x", tunnel, seed=42)
    assert cmd[-2:] == ["seed", "42"]
    assert cmd[cmd.index("delay") + 1] == f"{round(tunnel.delay_ms * 1000)}us"
    special = profile_from("lte", distribution="normal", reorder="preserve", loss=0.005)
    tail = backends.netem_qdisc_cmd("x", special)[9:]
    assert tail == [
        "delay",
        "5000us",
        "3000us",
        "distribution",
        "normal",
        "loss",
        "0.5%",
        "rate",
        "10gbit",
    ]
    fixed = profile_from("lte", jitter_ms=0.0)
    assert backends.netem_qdisc_cmd("x", fixed)[-2:] == ["delay", "5000us"]
    with pytest.raises(ValueError, match="resolved"):
        backends.netem_qdisc_cmd("x", TABLE_I["tunnel"])


def test_netem_link_commands() -> None:
    lte = TABLE_I["lte"]
    (bridge,) = backends.netem_bridge_cmds("pmlbrab120")
    assert bridge.startswith("link add pmlbrab120 type bridge") and "mcast_snooping 0" in bridge
    tc, ip = backends.netem_connect_batches("br", "oa", "ob", lte, (1, 2), group=77)
    # a->b leaves through b's outer end and uses the a->b seed.
    assert [(line.split()[3], line.split()[-1]) for line in tc] == [("ob", "1"), ("oa", "2")]
    assert all(line.startswith("qdisc replace dev") for line in tc)
    # Ports and group change while the ends are down; both come up in the last request.
    assert ip == [
        "link set dev oa master br group 77",
        "link set dev ob master br group 77",
        "link set dev br up",
        "link set group 77 up",
    ]
    unseeded, _ = backends.netem_connect_batches("br", "oa", "ob", lte, None, group=77)
    assert all("seed" not in line for line in unseeded)
    assert backends.netem_break_cmds(77, "br") == ["link set group 77 down", "link del dev br"]
    assert backends.netem_remove_cmds(["br"], ["oa"]) == ["link del dev br", "link del dev oa"]


def test_netem_groups_are_private_and_stable() -> None:
    groups = {backends.netem_group("t", i) for i in range(1000)}
    assert len(groups) == 1000  # distinct per link
    assert all(0x40000000 <= g < 0x80000000 for g in groups)  # far from 0 (default) and small
    assert backends.netem_group("t", 3) == backends.netem_group("t", 3)
    assert backends.netem_group("t", 3) != backends.netem_group("u", 3)


def test_netem_names_fit_ifnamsiz() -> None:
    for tag in ("x", "a-very-long-tag-name-1234", "pmlc123456"):
        for index in (0, 999, 99999):
            assert backends.netem_outer_name(tag, index).startswith("pml")
            assert len(backends.netem_outer_name(tag, index)) <= 15
            assert backends.netem_bridge_name(tag, index).startswith("pmlbr")
            assert len(backends.netem_bridge_name(tag, index)) <= 15


def test_netem_direction_seeds_differ_and_repeat() -> None:
    assert backends.netem_direction_seed(3, 0) == backends.netem_direction_seed(3, 0)
    assert backends.netem_direction_seed(3, 0) != backends.netem_direction_seed(3, 1)
    assert 0 <= backends.netem_direction_seed(3, 1) < 2**63


LINK_JSON = (
    '[{"ifname":"oa","stats64":{"rx":{"packets":10,"bytes":900},"tx":{"packets":7,"bytes":700}}},'
    '{"ifname":"ob","stats64":{"rx":{"packets":8,"bytes":800},"tx":{"packets":6,"bytes":600}}},'
    '{"ifname":"lo"}]'
)
QDISC_JSON = (
    '[{"kind":"netem","dev":"ob","root":true,"packets":6,"drops":2,"qlen":1},'
    '{"kind":"noqueue","dev":"oa","root":true,"packets":0,"drops":5,"qlen":0}]'
)


def test_parse_counters_and_direction_counters() -> None:
    now = backends.parse_counters(LINK_JSON, QDISC_JSON)
    assert now["ob"] == {
        "rx": 8, "tx": 6, "tx_bytes": 600, "tx_dropped": 0,
        "netem_sent": 6, "netem_drops": 2, "netem_qlen": 1,
    }  # fmt: skip
    assert now["oa"]["netem_drops"] == 0  # not netem: its drops are not the link's
    assert now["lo"] == dict.fromkeys(backends.COUNTER_FIELDS, 0)
    zero = dict.fromkeys(backends.COUNTER_FIELDS, 0)
    # a->b: 10 entered, 6 delivered, 2 lost by netem, 1 queued: 1 dropped otherwise.
    ab = backends.direction_counters(now["oa"], now["ob"], zero, zero)
    assert ab == {
        "frames": 6, "bytes": 600, "drops": 1, "lost": 2, "drawn": 8,
        "drawn_mean_ms": None, "drawn_sd_ms": None,
    }  # fmt: skip
    base = {**zero, "rx": 4, "tx": 2, "tx_bytes": 200, "netem_sent": 2}
    since = backends.direction_counters(now["oa"], now["ob"], base, base)
    assert (since["frames"], since["drops"], since["bytes"]) == (4, 0, 400)
    # A frame that left netem after the links were read: no drop invented.
    later = {**now["ob"], "netem_sent": 7, "netem_qlen": 0}
    assert backends.direction_counters(now["oa"], later, zero, zero)["drops"] == 1
    # One the receiving end refused is a drop.
    refused = {**now["ob"], "tx_dropped": 1}
    assert backends.direction_counters(now["oa"], refused, zero, zero)["drops"] == 2
    total = backends.add_counters(ab, since)
    assert (total["frames"], total["drops"], total["lost"]) == (10, 1, 4)
    assert backends.add_counters(None, ab) == ab


# ---------------------------------------------------------------------------------------------
# Backend selection


def test_select_backend_netem_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "netem_available", lambda: False)
    with pytest.raises(BackendUnavailable) as info:
        backends.select_backend("netem")
    assert "\n" not in str(info.value) and "sch_netem" in str(info.value)
    assert isinstance(backends.select_backend("auto"), backends.EmulatorBackend)
    assert isinstance(backends.select_backend("emulator", tag="t"), backends.EmulatorBackend)
    with pytest.raises(ValueError, match="unknown link backend"):
        backends.select_backend("ovs")


def test_select_backend_prefers_netem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "netem_available", lambda: True)
    assert isinstance(backends.select_backend("auto"), backends.NetemBackend)


def test_backend_bookkeeping_without_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared half of LinkBackend, on a backend that records instead of acting."""
    waited: list[list[str]] = []
    monkeypatch.setattr(
        links, "wait_operational", lambda eps: waited.append([e.label for e in eps])
    )

    class Recorder(links.LinkBackend):
        name = "recorder"

        def __init__(self) -> None:
            super().__init__(tag="t")
            self.calls: list[tuple] = []

        def start(self) -> None: ...
        def stop(self) -> None: ...

        def _add_endpoint(self, ep: Endpoint, index: int) -> None:
            self.calls.append(("add", ep.label))

        def _connect(self, link) -> None:  # noqa: ANN001
            self.calls.append(("connect", link.a.label, link.b.label, link.resolved.delay_ms))

        def _disconnect(self, link) -> None:  # noqa: ANN001
            self.calls.append(("disconnect", link.a.label, link.b.label))

        def stats(self) -> dict:
            return {}

        def _describe_backend(self) -> dict:
            return {"version": "0"}

    be = Recorder()
    mn, mag1, mag2 = Endpoint("m", "eth0"), Endpoint("p1", "eth0"), Endpoint("p2", "eth0")
    for ep in (mn, mag1, mag2):
        be.add_endpoint(ep)
    with pytest.raises(links.LinkError):
        be.add_endpoint(Endpoint("m", "eth0", "02:00:00:00:00:01"))
    be.connect(mn, mag1, TABLE_I["tunnel"], seed=4)
    assert be.peer(mn) == mag1 and be.peer(mag2) is None
    with pytest.raises(links.LinkError, match="connected already"):
        be.connect(mag1, mag2, TABLE_I["lte"], seed=1)
    be.move(mn, mag2, TABLE_I["lte"], seed=5)
    assert be.peer(mn) == mag2 and be.peer(mag1) is None
    assert waited == [["m/eth0", "p1/eth0"], ["m/eth0", "p2/eth0"]]  # after each make
    assert be.calls[-2:] == [
        ("disconnect", "m/eth0", "p1/eth0"),
        ("connect", "m/eth0", "p2/eth0", 5.0),
    ]
    desc = be.describe()
    assert desc["backend"] == "recorder" and len(desc["links"]) == 2
    first = desc["links"][0]
    assert not first["connected"] and 20 <= first["delay_ms"] <= 40
    assert first["delay_ms"] == TABLE_I["tunnel"].resolve(random.Random(4)).delay_ms
    with pytest.raises(links.LinkError, match="not connected"):
        be.disconnect(mag1)


# ---------------------------------------------------------------------------------------------
# Emulator counters, bench maths, clean's pid files


def test_counters_report_drawn_statistics() -> None:
    c = Counters()
    for delay_ns in (4_000_000, 6_000_000):
        c.drawn += 1
        c.drawn_sum_ns += delay_ns
        c.drawn_sumsq_ms += (delay_ns / 1e6) ** 2
    d = c.as_dict()
    assert d["drawn_mean_ms"] == pytest.approx(5.0)
    assert d["drawn_sd_ms"] == pytest.approx(math.sqrt(2))
    assert Counters().as_dict()["drawn_mean_ms"] is None


def test_bench_statistics() -> None:
    assert bench.reorder_rate([0, 1, 2, 3]) == 0.0
    assert bench.reorder_rate([0, 2, 1, 3]) == 0.25
    assert bench.reorder_rate([]) == 0.0
    stats = bench.describe_delays([float(x) for x in range(1, 101)])
    assert stats["mean_ms"] == 50.5 and stats["p1_ms"] == 2.0 and stats["p99_ms"] == 99.0
    lte = TABLE_I["lte"]
    assert bench.configured_cdf(lte, 2.0) == 0.0
    assert bench.configured_cdf(lte, 5.0) == pytest.approx(0.5)
    assert bench.configured_cdf(lte, 8.0) == 1.0
    normal = profile_from("lte", distribution="normal")
    assert bench.configured_cdf(normal, 5.0 + 3.0) == pytest.approx(0.8413, abs=1e-4)


def test_bench_cdf_panels_carry_the_configured_curve() -> None:
    lte = TABLE_I["lte"]
    delays = [2.0 + 6.0 * i / 999 for i in range(1000)]
    (panel,) = bench.cdf_panels([{"profile": "lte", "delays_ms": delays}], {"lte": lte})
    assert (panel["delay_ms"], panel["jitter_ms"]) == (5.0, 3.0)
    xs, ys = panel["model_x"], panel["model_cdf"]
    assert len(xs) == len(ys) == 401 and xs == sorted(xs)
    assert xs[0] < 2.0 and xs[-1] > 8.0 and ys[0] == 0.0 and ys[-1] == 1.0
    assert ys == [bench.configured_cdf(lte, x) for x in xs]
    (empty,) = bench.cdf_panels([{"profile": "lte", "delays_ms": []}], {"lte": lte})
    assert "model_x" not in empty


def test_bench_judge() -> None:
    lte = TABLE_I["lte"]
    good = {"n": 30000, "mean_ms": 5.05, "sd_ms": 1.75}
    verdict = bench.judge(lte, good, drawn_mean_ms=4.99)
    assert verdict["pass"] and verdict["bias_vs_drawn_ms"] == pytest.approx(0.06)
    assert verdict["sd_error_pct"] == pytest.approx(100 * (1.75 / (3 / math.sqrt(3)) - 1))
    assert not bench.judge(lte, good, drawn_mean_ms=4.80)["pass"]
    assert not bench.judge(lte, {**good, "sd_ms": 1.9}, drawn_mean_ms=4.99)["pass"]
    # Without the draws (netem) the sampling error widens the mean's tolerance.
    assert bench.judge(lte, {**good, "mean_ms": 5.2}, drawn_mean_ms=None)["pass"]
    assert not bench.judge(lte, {**good, "mean_ms": 5.3}, drawn_mean_ms=None)["pass"]


def _wait_for_exec(pid: int, word: str) -> None:
    """Until exec() has replaced the command line the child inherited from the fork."""
    for _ in range(500):
        if word in Path(f"/proc/{pid}/cmdline").read_text():
            return
        time.sleep(0.01)


def test_pidfile_matching(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _wait_for_exec(child.pid, "sleep")
        pidfile = tmp_path / "x.pid"
        pidfile.write_text(f"{child.pid}\nimport time; time.sleep(30)\n")
        assert clean.pidfile_matches(pidfile) == child.pid
        pidfile.write_text(f"{child.pid}\ntopologies.linkemu\n")
        assert clean.pidfile_matches(pidfile) is None
        pidfile.write_text(f"{child.pid}\n")  # no marker: must name a project module
        assert clean.pidfile_matches(pidfile) is None
        pidfile.write_text("garbage\n")
        assert clean.pidfile_matches(pidfile) is None
    finally:
        child.kill()
        child.wait()
    pidfile.write_text(f"{child.pid}\nimport time\n")
    assert clean.pidfile_matches(pidfile) is None


def test_cleanup_refuses_foreign_prefix() -> None:
    with pytest.raises(ValueError, match="prefix"):
        clean.cleanup(prefix="eth")


def test_cleanup_with_a_narrow_prefix_spares_other_runs(tmp_path: Path) -> None:
    prefix = f"pmlu{os.getpid()}"
    script = "import time; time.sleep(30)"
    mine, theirs = (subprocess.Popen([sys.executable, "-c", script]) for _ in range(2))
    try:
        for child in (mine, theirs):
            _wait_for_exec(child.pid, "sleep")
        (tmp_path / f"linkemu-{prefix}.pid").write_text(f"{mine.pid}\n{script}\n")
        (tmp_path / "linkemu-pmlother.pid").write_text(f"{theirs.pid}\n{script}\n")
        removed = clean.cleanup(prefix, run_dir=tmp_path, log=lambda _: None)
        assert removed == [f"pid:{mine.pid}"]
        assert mine.wait(5) == -signal.SIGTERM
        assert theirs.poll() is None
        assert [p.name for p in tmp_path.iterdir()] == ["linkemu-pmlother.pid"]
    finally:
        for child in (mine, theirs):
            child.kill()
            child.wait()


class FakeKernel:
    """What NetemBackend asks of ip and tc, answered from a model of the outer ends."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.devices: dict[str, dict[str, int]] = {}
        self.qdiscs: dict[str, dict[str, int]] = {}

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        self.issued.append(" ".join(cmd))
        out = ""
        if cmd[:4] == ["ip", "-s", "-j", "link"]:
            out = json.dumps(
                [
                    {"ifname": n, "stats64": {"rx": {"packets": d["rx"]}, "tx": {"packets": d["tx"], "bytes": 100 * d["tx"]}}}
                    for n, d in self.devices.items()
                ]
            )  # fmt: skip
        elif cmd[:4] == ["tc", "-s", "-j", "qdisc"]:
            out = json.dumps(
                [{"kind": "netem", "dev": n, "root": True, **q} for n, q in self.qdiscs.items()]
            )
        return subprocess.CompletedProcess(cmd, 0, out, "")

    def batch(self, tool: str, lines: list[str], force: bool = False) -> None:
        for line in lines:
            self.issued.append(f"{tool} {line}")
            words = line.split()
            if tool == "ip" and words[:3] == ["link", "add", words[2]] and "veth" in words:
                self.devices[words[2]] = {"rx": 0, "tx": 0}
            if tool == "tc" and words[0] == "qdisc":
                self.qdiscs.setdefault(words[3], {"packets": 0, "drops": 0, "qlen": 0})

    def traffic(self, src: str, dst: str, entered: int, delivered: int, lost: int) -> None:
        self.devices[src]["rx"] += entered
        self.devices[dst]["tx"] += delivered
        self.qdiscs[dst]["packets"] += delivered
        self.qdiscs[dst]["drops"] += lost


def test_netem_backend_issues_the_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """NetemBackend end to end against a model (this kernel has no netem to run it)."""
    kernel = FakeKernel()
    monkeypatch.setattr(backends, "run_cmd", kernel.run)
    monkeypatch.setattr(backends, "_disable_ipv6", lambda dev: kernel.issued.append(f"no6 {dev}"))
    monkeypatch.setattr(
        backends.NetemBackend, "_batch", lambda self, *a, **k: kernel.batch(*a, **k)
    )
    monkeypatch.setattr(backends, "netem_available", lambda: True)
    monkeypatch.setattr(backends, "netem_seed_supported", lambda: False)
    monkeypatch.setattr(links, "wait_operational", lambda eps: None)
    be = backends.select_backend("netem", tag="unit")
    assert isinstance(be, backends.NetemBackend)
    mn, mag1, mag2 = (Endpoint(f"pml-{n}", "eth0") for n in ("mn", "mag1", "mag2"))
    outer = [backends.netem_outer_name("unit", i) for i in range(3)]
    bridge = [backends.netem_bridge_name("unit", i) for i in range(3)]
    group = [backends.netem_group("unit", i) for i in range(3)]
    key = links.direction_key
    with be:
        for ep in (mn, mag1, mag2):
            be.add_endpoint(ep)
        be.connect(mn, mag1, TABLE_I["lte"], seed=1)
        kernel.traffic(outer[0], outer[1], entered=10, delivered=7, lost=1)  # 2 in flight
        kernel.traffic(outer[1], outer[0], entered=5, delivered=5, lost=0)
        be.move(mn, mag2, TABLE_I["lte"], seed=2)  # the 2 in flight to mag1 are dropped
        kernel.traffic(outer[0], outer[2], entered=3, delivered=3, lost=0)
        stats = be.stats()
        # History stays: the finished link's directions with their last counters.
        assert set(stats) == {
            key(mn, mag1), key(mag1, mn), key(mn, mag2), key(mag2, mn),
        }  # fmt: skip
        assert stats[key(mn, mag1)] | {"drawn_mean_ms": 0} == {
            "frames": 7, "bytes": 700, "drops": 2, "lost": 1, "drawn": 9,
            "drawn_mean_ms": 0, "drawn_sd_ms": None,
        }  # fmt: skip
        assert (stats[key(mag1, mn)]["frames"], stats[key(mag1, mn)]["drops"]) == (5, 0)
        # The new link counts from its make: mn's earlier frames are not in it.
        assert (stats[key(mn, mag2)]["frames"], stats[key(mn, mag2)]["drops"]) == (3, 0)
        assert stats[key(mag2, mn)]["frames"] == 0
        be.move(mn, mag1, TABLE_I["lte"], seed=3)  # back: the same keys add up
        kernel.traffic(outer[0], outer[1], entered=4, delivered=4, lost=0)
        again = be.stats()
        assert (again[key(mn, mag1)]["frames"], again[key(mn, mag1)]["drops"]) == (11, 2)
        assert again[key(mn, mag2)]["frames"] == 3
    assert f"ip link add {outer[0]} type veth peer name eth0 netns pml-mn" in kernel.issued
    order = [
        f"ip link add {bridge[0]} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
        f"no6 {bridge[0]}",
        f"tc qdisc replace dev {outer[1]} root netem limit 20000 delay 5000us 3000us",
        f"ip link set dev {outer[0]} master {bridge[0]} group {group[0]}",
        f"ip link set group {group[0]} up",
        f"ip link set group {group[0]} down",
        f"ip link del dev {bridge[0]}",
        "ip -s -j link show",
        f"tc qdisc replace dev {outer[2]} root netem limit 20000 delay 5000us 3000us",
        f"ip link set group {group[1]} up",
        f"ip link del dev {bridge[2]}",
        f"ip link del dev {outer[2]}",
    ]
    positions = [kernel.issued.index(cmd) for cmd in order]
    assert positions == sorted(positions)
    assert not any("seed" in cmd for cmd in kernel.issued)
    be.stop()  # idempotent


def test_bench_accounting_counts_loss() -> None:
    lte = TABLE_I["lte"]
    sender = {"sent": 2990, "send_errors": {"ENOBUFS": 4}}
    acc = bench.account(lte, 3000, 2980, sender, {"lost": 0, "drops": 3}, 2, {})
    assert acc["missing"] == 20 and acc["not_sent"] == 6
    # 4 send errors, 3 link drops, 2 socket overflows located; 5 nowhere.
    assert acc["unlocated"] == 20 - 9 - 6
    assert not acc["loss_ok"] and acc["unexplained_loss"] == 20
    clean = bench.account(lte, 3000, 3000, {"sent": 3000, "send_errors": {}}, {}, 0, {})
    assert clean["loss_ok"] and clean["missing"] == 0 and clean["unlocated"] == 0
    # A profile's own loss explains what its link lost, and nothing else.
    lossy = profile_from("lte", loss=0.01)
    ok = bench.account(lossy, 3000, 2970, {"sent": 3000, "send_errors": {}}, {"lost": 30}, 0, {})
    assert ok["loss_ok"]
    bad = bench.account(lossy, 3000, 2969, {"sent": 3000, "send_errors": {}}, {"lost": 30}, 0, {})
    assert not bad["loss_ok"] and bad["unlocated"] == 1
    # Table I has no loss: even loss the link reports fails the profile.
    assert not bench.account(
        lte, 3000, 2999, {"sent": 3000, "send_errors": {}}, {"lost": 1}, 0, {}
    )["loss_ok"]
    assert not bench.account(lte, 3000, 3000, None, {}, 0, {})["loss_ok"]  # no sender report


def test_bench_expected_reorder_rate() -> None:
    # 10 ms apart: +-3 ms never reorders, +-50 ms (UMTS) mostly does; FIFO never does.
    sends = [[i * 10_000_000 for i in range(300)] for _ in range(3)]
    assert bench.expected_reorder_rate(TABLE_I["lte"], sends) == (0.0, 0.0)
    umts, sd = bench.expected_reorder_rate(TABLE_I["umts"], sends, reps=5)
    assert 0.5 < umts < 0.7 and 0 < sd < 0.05
    fifo = profile_from("umts", reorder="preserve")
    assert bench.expected_reorder_rate(fifo, sends)[0] == 0.0
    # Sent closer together, the same jitter reorders more.
    bunched = [[i * 2_000_000 for i in range(300)]]
    assert bench.expected_reorder_rate(TABLE_I["lte"], bunched)[0] > 0.1


def test_bench_noise_explains_only_what_it_can() -> None:
    def result(name: str, delay: float, exp_sd: float, mean: float, sd: float) -> dict:
        lte = profile_from("lte", delay_ms=delay, jitter_ms=exp_sd * math.sqrt(3))
        verdict = bench.judge(lte, {"n": 3000, "mean_ms": mean, "sd_ms": sd}, None)
        return {"profile": name, "delay_ms": delay, "n": 3000, "mean_ms": mean, "sd_ms": sd,
                "control": "fixed", **verdict}  # fmt: skip

    fixed = result("fixed", 50.0, 0.0, 50.5, 1.2)
    noisy = result("lte", 5.0, 1.732, 5.5, math.hypot(1.732, 1.2))  # exactly signal + noise
    worse = result("peer", 7.0, 1.732, 7.5, 2.6)  # more than the noise explains
    good = result("tun", 25.0, 3.464, 25.0, 3.47)
    results = [noisy, worse, good, fixed]
    bench.explain_by_noise(results)
    assert not noisy["pass"] and noisy["noise_limited"]["sd_ms"] == 1.2
    assert noisy["noise_limited"]["expected_mean_ms"] == pytest.approx(5.5)
    assert "noise_limited" not in worse and "noise_limited" not in good and good["pass"]
    alone = result("lte", 5.0, 1.732, 5.5, 2.1)
    bench.explain_by_noise([alone])  # its control was not measured: nothing to say
    assert "noise_limited" not in alone


def test_emulator_request_skips_the_reply_of_an_interrupted_one() -> None:
    class Sock:
        def __init__(self) -> None:
            self.sent: list[dict] = []

        def sendall(self, data: bytes) -> None:
            self.sent.append(json.loads(data))

    class Reader:
        def __init__(self, lines: list[bytes]) -> None:
            self.lines = lines

        def readline(self) -> bytes:
            return self.lines.pop(0) if self.lines else b""

    be = backends.EmulatorBackend(tag="unit")
    be._sock = Sock()  # type: ignore[assignment]
    be._seq = 4  # request 4 (say, a connect) was interrupted before its reply was read
    be._reader = Reader(
        [
            b'{"ok": true, "result": null, "id": 4}\n',
            b'{"ok": true, "result": {"version": "x"}, "id": 5}\n',
        ]
    )
    assert be._request("describe") == {"version": "x"}
    assert be._sock.sent == [{"op": "describe", "id": 5}]
    be._reader = Reader([b'{"ok": true, "result": null, "id": 3}\n'])
    with pytest.raises(links.LinkError, match="closed the control connection"):
        be._request("stats")
    be._sock = be._reader = None
