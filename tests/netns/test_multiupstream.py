"""Multiple upstreams: one test per use case of the paper, with real routers and listeners.

Every test builds the same kind of network: the proxy under test ``px`` with candidate
upstreams ``up1``, ``up2`` (``up3``), each a link to an upstream router ``r1``, ``r2``
(``r3``). The routers are pymcproxy instances themselves (upstream ``c`` towards their
provider's core, downstream ``x`` towards ``px``): real MLD queriers on px's upstream links
that forward a group only where px joined it. Behind them are real senders (``experiments
.probe send``, 100 packets/s), either on one shared core (the same channels reach px through
every router: fast switching, load balancing, migration, robust reception) or one core per
provider (wholesale, network merging). Downstream of px are kernel listeners.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass

import pytest

from lab.netns import NetLab as Lab
from proxy.config import parse
from proxy.ctl import render_text
from tests.netns.helpers import PY, dump, receiver, rows, sender, wait_for
from topologies.daemons import ProxyDaemon

PX_TIMERS = (
    "timers query-interval 20 query-response-interval 1 last-listener-query-interval 100ms "
    "last-listener-query-count 2 startup-query-interval 1 startup-query-count 2"
)
QRI = 1.0  # px's query response interval: the bound for a takeover gap
ROUTER_TIMERS = (
    "timers query-interval 1 query-response-interval 500ms last-listener-query-interval 100ms "
    "last-listener-query-count 2 startup-query-interval 250ms startup-query-count 2"
)
SRC = "2001:db8:c::100"  # the source on the shared core
PERIOD_NS = 10_000_000  # 100 packets/s


class Daemon(ProxyDaemon):
    """A pymcproxy started without waiting (several start at once), its events kept."""

    def __init__(self, lab: Lab, ns: str, conf: str, name: str) -> None:
        super().__init__(
            lab, ns, name, parse(conf, name), debug=True,
            events=lab.tmp / f"{name}-events.csv", node=name,
        )  # fmt: skip
        self.start()

    def ready(self) -> bool:
        self.check_alive()
        return self.is_ready()

    def instance(self) -> dict:
        return self.show()["instances"][0]

    def reload_text(self, conf: str) -> dict:
        return self.reload(parse(conf, self.name))


@dataclass
class Net:
    lab: Lab
    px: str
    routers: list[str]
    sources: list[str]  # one shared source, or one per provider
    listeners: list[str]
    proxy: Daemon | None = None
    router_daemons: list[Daemon] | None = None
    v4: bool = False

    def start(self, conf: str) -> Daemon:
        """Start px with ``conf`` and the routers; wait until all answer."""
        self.router_daemons = [
            Daemon(self.lab, r, router_conf(self.v4), f"r{i}")
            for i, r in enumerate(self.routers, 1)
        ]
        self.proxy = Daemon(self.lab, self.px, conf, "px")
        daemons = [self.proxy, *self.router_daemons]
        assert wait_for(lambda: all(d.ready() for d in daemons), 15), "daemons did not start"
        return self.proxy

    def router(self, i: int) -> Daemon:
        assert self.router_daemons is not None
        return self.router_daemons[i - 1]

    def router_has(self, i: int, group: str) -> bool:
        """Whether router ``i`` heard px join ``group`` (its querier state on ``x``)."""
        q = self.router(i).instance()["queriers"]["x"]
        return group in q["groups"]


def router_conf(v4: bool = False) -> str:
    proto = "IGMPv3" if v4 else "MLDv2"
    return f"protocol {proto};\npinstance r(10): c ==> x;\npinstance r {ROUTER_TIMERS};\n"


def build(lab: Lab, routers: int, shared_core: bool, listeners: int = 1, v4: bool = False) -> Net:
    """px with ``routers`` upstream routers and ``listeners`` listener links.

    IPv6: core 2001:db8:c::/64 (or 2001:db8:cI::/64 per provider), router links
    2001:db8:aI::/64, listener links 2001:db8:N::/64. IPv4: 198.18.100.0/24 (198.18.10I.0/24),
    198.18.I.0/24 and 198.19.N.0/24.
    """
    px = lab.ns("px")
    names, sources = [], []

    def addr(ns: str, ifname: str, v6: str, v4addr: str) -> None:
        lab.addr(ns, ifname, v4addr if v4 else v6)

    def source(ns: str, v6: str, v4addr: str) -> None:
        addr(ns, "e0", v6, v4addr)
        if v4:
            lab.sh(ns, "ip route add default dev e0")
        sources.append(ns)

    if shared_core:
        core = lab.ns("core")
        lab.sh(core, "ip link add br0 type bridge mcast_snooping 0 && ip link set br0 up")
        src = lab.ns("src")
        lab.link(core, "bs", src, "e0")
        lab.sh(core, "ip link set bs master br0")
        source(src, f"{SRC}/64", "198.18.100.100/24")
    for i in range(1, routers + 1):
        r = lab.ns(f"r{i}")
        names.append(r)
        if shared_core:
            lab.link(core, f"b{i}", r, "c")
            lab.sh(core, f"ip link set b{i} master br0")
            addr(r, "c", f"2001:db8:c::{i}/64", f"198.18.100.{i}/24")
        else:
            s = lab.ns(f"s{i}")
            lab.link(s, "e0", r, "c")
            source(s, f"2001:db8:c{i}::100/64", f"198.18.10{i}.100/24")
            addr(r, "c", f"2001:db8:c{i}::1/64", f"198.18.10{i}.1/24")
        lab.link(r, "x", px, f"up{i}")
        addr(r, "x", f"2001:db8:a{i}::1/64", f"198.18.{i}.1/24")
        addr(px, f"up{i}", f"2001:db8:a{i}::2/64", f"198.18.{i}.2/24")
    hosts = []
    for n in range(1, listeners + 1):
        host = lab.ns(f"l{n}")
        lab.link(px, f"d{n}", host, "e0")
        addr(px, f"d{n}", f"2001:db8:{n}::1/64", f"198.19.{n}.1/24")
        addr(host, "e0", f"2001:db8:{n}::2/64", f"198.19.{n}.2/24")
        hosts.append(host)
    return Net(lab, px, names, sources, hosts, v4=v4)


def px_conf(routers: int, listeners: int, extra: str, v4: bool = False) -> str:
    ups = " ".join(f"up{i}" for i in range(1, routers + 1))
    downs = " ".join(f"d{n}" for n in range(1, listeners + 1))
    lines = [line.strip() for line in extra.strip().splitlines() if line.strip()]
    body = "".join(f"pinstance px {line}\n" for line in lines)
    proto = "IGMPv3" if v4 else "MLDv2"
    return f"protocol {proto};\npinstance px(10): {ups} ==> {downs};\npinstance px {PX_TIMERS};\n{body}"


def px_groups(proxy: Daemon, ifname: str) -> set[str]:
    return set(proxy.instance()["queriers"].get(ifname, {}).get("groups", {}))


def joined(proxy: Daemon) -> set[tuple[str, str]]:
    """(upstream, group) pairs px holds."""
    return {(m["interface"], m["group"]) for m in proxy.instance()["upstream"]}


def mfc(proxy: Daemon, group: str, source: str | None = None) -> dict | None:
    return next(
        (
            e
            for e in proxy.instance()["mfc"]
            if e["group"] == group and source in (None, e["source"])
        ),
        None,
    )


def events(lab: Lab, name: str) -> list[tuple[int, str, str, str]]:
    """Rows of a daemon's event log (t_ns, event, node, detail)."""
    return [
        (int(r["t_ns"]), r["event"], r["node"], r["detail"]) for r in rows(lab, f"{name}-events")
    ]


def stop_receiver(lab: Lab, name: str) -> list[dict]:
    for proc in lab.procs:
        if f"{name}.csv" in " ".join(proc.args):
            lab.stop(proc)
    return rows(lab, name)


def seqs(rs: list[dict]) -> list[int]:
    return [int(r["seq"]) for r in rs]


def gap_report(rs: list[dict], after_ns: int) -> dict:
    """Loss around an event at ``after_ns``: missing sequence numbers between the first and
    the last received, and the longest silence after the event beyond one packet period."""
    got = sorted(set(seqs(rs)))
    missing = sorted(set(range(got[0], got[-1] + 1)) - set(got)) if got else []
    times = sorted(int(r["recv_ns"]) for r in rs)
    silences = [b - a for a, b in zip(times, times[1:], strict=False) if b > after_ns]
    longest = max(silences, default=0)
    return {
        "received": len(rs),
        "unique": len(got),
        "duplicates": len(rs) - len(got),
        "missing": len(missing),
        "missing_seqs": missing[:20],
        "gap_ms": round(len(missing) * PERIOD_NS / 1e6, 1),
        "longest_silence_ms": round(longest / 1e6, 1),
    }


def record(lab: Lab, name: str, data: dict) -> None:
    """Measurements of a test, for whoever reads the run (pytest -s shows them too)."""
    (lab.tmp / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(f"\n{name}: {json.dumps(data)}")


def stream_from_both_providers(net: Net, ga: str, gb: str) -> None:
    """Once px joined ``ga`` at provider 1 and ``gb`` at provider 2, each source sends 1 s."""
    (sa, sb), lab = net.sources, net.lab
    wait_joined(net, 1, ga)
    wait_joined(net, 2, gb)
    a = sender(lab, sa, "e0", ga, "sa", duration=1.0, port=5001)
    b = sender(lab, sb, "e0", gb, "sb", duration=1.0, port=5002)
    a.wait(10), b.wait(10)
    time.sleep(0.3)


def wait_joined(net: Net, router: int, group: str, timeout: float = 8) -> None:
    assert wait_for(lambda: net.router_has(router, group), timeout), dump(
        {"px": net.proxy.instance() if net.proxy else None, "r": net.router(router).instance()}
    )


# --- the use cases ------------------------------------------------------------------------


RECORDS = "upstream up1 select group ff0e::a:0/112;\nupstream up2 select group ff0e::b:0/112;"


def test_wholesale_each_group_is_joined_only_at_its_provider(lab):
    """Two providers with different groups; a listener subscribes to both offers."""
    net = build(lab, routers=2, shared_core=False, listeners=2)
    ga, gb = "ff0e::a:1", "ff0e::b:1"
    proxy = net.start(px_conf(2, 2, RECORDS))
    l1, l2 = net.listeners
    receiver(lab, l1, "e0", ga, "l1a", port=5001)
    receiver(lab, l1, "e0", gb, "l1b", port=5002)
    receiver(lab, l2, "e0", gb, "l2b", port=5002)
    stream_from_both_providers(net, ga, gb)
    inst = proxy.instance()
    assert {(u, g) for u, g in joined(proxy) if g in (ga, gb)} == {("up1", ga), ("up2", gb)}
    # The providers' own routers: each saw only its own group.
    assert net.router_has(1, ga) and not net.router_has(1, gb)
    assert net.router_has(2, gb) and not net.router_has(2, ga)
    assert mfc(proxy, ga)["iif"] == "up1" and mfc(proxy, gb)["iif"] == "up2", dump(inst["mfc"])
    why = {(c["downstream"], c["group"]): c for c in inst["selection"]["channels"]}
    assert why[("d1", ga)]["record"] == "group ff0e::a:0/112"
    assert why[("d1", gb)]["record_of"] == "up2"
    # A reload through the control socket that adds a third offer and changes timers
    # touches neither the joins nor the MFC entries of the first two (listeners still on).
    before = proxy.instance()
    more = "upstream up2 select group ff0e::c:0/112;\n" + RECORDS
    reply = proxy.reload_text(px_conf(2, 2, more).replace("query-interval 20", "query-interval 30"))
    assert reply == {"ok": True, "changed": ["~px"], "details": {"px": ["timers", "selection"]}}
    after = proxy.instance()
    assert after["upstream"] == before["upstream"]
    assert [(e["source"], e["group"], e["iif"], e["oifs"]) for e in after["mfc"]] == [
        (e["source"], e["group"], e["iif"], e["oifs"]) for e in before["mfc"]
    ]
    assert after["counters"].get("upstream_changes") == before["counters"].get("upstream_changes")
    assert after["queriers"]["d1"]["query_interval"] == 30
    l1a, l1b, l2b = (len(set(seqs(stop_receiver(lab, n)))) for n in ("l1a", "l1b", "l2b"))
    assert l1a >= 98 and l1b >= 98 and l2b >= 98, (l1a, l1b, l2b)


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("robust", [False, True], ids=["standby", "robust"])
def test_fast_switching_when_the_primary_link_goes_down(lab, robust, where):
    """Active/standby (priorities 10 and 5) or robust reception (equal priorities): the
    link to the upstream carrying the flow goes down in the middle of a 100 packets/s
    stream. The gap stays within one query response interval, and is 0 with robust
    reception, where the other copy is already there and the proxy only moves the entry.

    ``local``: px's own interface goes down, which the kernel reports at once. ``remote``:
    the router's end goes down, px sees its carrier go; Linux's link watcher may report
    that up to a second late, so px reads the carrier itself every poll interval (and
    with robust reception also notices the silent parent from the MFC counters): the gap
    is then bounded by the poll interval, not 0.

    Until px has moved the entry (its reaction to the link event, well under a
    millisecond when the CPU is free), the kernel drops the other upstream's copies. The
    fault is timed to come half-way between two packets (the sender starts at a set time,
    the fault is timed inside the namespace), so "0" means that the switch completed
    before the next packet. On a busy CPU the sender or the fault can slip onto a packet:
    a packet sent during px's reaction window is reported apart and not counted as gap."""
    net = build(lab, routers=2, shared_core=True)
    g = "ff0e::5:1"
    prio = "5" if robust else "10"
    proxy = net.start(px_conf(2, 1, f"upstream up1 priority {prio};\nupstream up2 priority 5;"))
    (l1,), (src,) = net.listeners, net.sources
    receiver(lab, l1, "e0", g, "l1")
    wait_joined(net, 1, g)
    if robust:
        wait_joined(net, 2, g)
    else:
        assert not net.router_has(2, g) and ("up2", g) not in joined(proxy)
    t0 = time.time_ns() + 400_000_000
    snd = timed_sender(lab, src, g, "snd", t0, count=200)
    assert wait_for(lambda: (mfc(proxy, g) or {}).get("packets", 0) >= 30, 5), dump(
        proxy.instance()
    )
    primary = mfc(proxy, g)["iif"]  # robust: whichever copy won the entry
    other = "up2" if primary == "up1" else "up1"
    t_down = t0 + 100 * PERIOD_NS + PERIOD_NS // 2
    if where == "local":
        fault = link_down_at(lab, net.px, primary, t_down)
    else:
        fault = link_down_at(lab, net.routers[int(primary[-1]) - 1], "x", t_down)
    fault.wait(10)
    snd.wait(10)
    time.sleep(0.3)
    rs = stop_receiver(lab, "l1")
    report = gap_report(rs, t_down)
    assert fault.returncode == 0, lab.log("fault.log")
    t_fault = int(lab.log("fault.log").split()[0])
    moved = [t for t, ev, _n, _d in events(lab, "px") if ev == "mfc_moved" and t >= t_fault]
    sent = {int(r["seq"]): int(r["send_ns"]) for r in rows(lab, "snd")}
    # Sent from 1 ms before the fault (in flight) until px moved the entry.
    window = (t_fault - 1_000_000, moved[0] if moved else t_fault)
    in_window = [q for q in report["missing_seqs"] if window[0] <= sent[q] <= window[1]]
    report |= {
        "fault_late_ms": round((t_fault - t_down) / 1e6, 3),
        "reaction_ms": round((window[1] - t_fault) / 1e6, 3) if moved else None,
        "lost_in_reaction": len(in_window),
    }
    inst = proxy.instance()
    record(lab, f"fast_switching_{'robust' if robust else 'standby'}_{where}", report)
    assert mfc(proxy, g)["iif"] == other, dump(inst["mfc"])
    assert report["duplicates"] == 0, report
    assert report["received"] >= 170, report  # the stream went on after the switch
    assert report["longest_silence_ms"] <= QRI * 1000, report
    if robust and where == "local":
        # The gap is 0: nothing is lost but what reached px while it was moving the
        # entry, and it moved it at once.
        assert report["missing"] == report["lost_in_reaction"], report
        assert report["reaction_ms"] is not None and report["reaction_ms"] < 100, report
    if not robust:
        channel = inst["selection"]["channels"][0]
        assert channel["upstreams"] == [other]
        assert "takeover" in channel["why"] and "link down" in channel["why"], channel


def timed_sender(lab: Lab, ns: str, group: str, name: str, t0_ns: int, count: int):
    """A 100 packets/s sender whose packet k leaves at ``t0_ns`` + k * 10 ms."""
    args = [PY, "-m", "experiments.probe", "send", "--group", group, "--port", "5001"]
    args += ["--source-if", "e0", "--rate", "100", "--count", str(count), "--hops", "16"]
    args += ["--start-at", str(t0_ns), "--out", str(lab.tmp / f"{name}.csv")]
    return lab.spawn(ns, args, f"{name}.log")


def link_down_at(lab: Lab, ns: str, ifname: str, t_ns: int):
    """Set ``ifname`` down in ``ns`` at CLOCK_REALTIME ``t_ns`` (SIOCSIFFLAGS, no fork)."""
    script = (
        "import fcntl,socket,struct,time\n"
        f"t={t_ns}\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"name=struct.pack('16s',b'{ifname}')\n"
        "flags=struct.unpack_from('H',fcntl.ioctl(s,0x8913,name+bytes(24)),16)[0]\n"
        "while time.time_ns()<t-3_000_000: time.sleep(0.001)\n"
        "while time.time_ns()<t: pass\n"
        "before=time.time_ns()\n"
        "fcntl.ioctl(s,0x8914,name+struct.pack('H',flags&~1)+bytes(22))\n"
        "print(before,time.time_ns())\n"
    )
    return lab.spawn(ns, [PY, "-c", script], "fault.log")


def test_load_balancing_splits_channels_across_upstreams(lab):
    """Three upstreams on one core that could each carry every channel; source+group
    records put each channel on one of them, and a default takes the rest."""
    net = build(lab, routers=3, shared_core=True)
    c1, c2, asm = "ff3e::1:1", "ff3e::2:1", "ff0e::3:1"
    proxy = net.start(
        px_conf(
            3,
            1,
            f"""upstream up1 select source {SRC} group ff3e::1:0/112;
            upstream up2 select source {SRC} group ff3e::2:0/112;
            upstream up3 select group ff3e::/16;
            upstream up3 default;""",
        )
    )
    (l1,), (src,) = net.listeners, net.sources
    receiver(lab, l1, "e0", c1, "l1c1", sources=[SRC], port=5001)
    receiver(lab, l1, "e0", c2, "l1c2", sources=[SRC], port=5002)
    receiver(lab, l1, "e0", asm, "l1g3", port=5003)
    wait_joined(net, 1, c1)
    wait_joined(net, 2, c2)
    wait_joined(net, 3, asm)
    senders = [
        sender(lab, src, "e0", grp, f"s{port}", duration=1.0, port=port)
        for grp, port in ((c1, 5001), (c2, 5002), (asm, 5003))
    ]
    for s in senders:
        s.wait(10)
    time.sleep(0.3)
    ours = {(u, g) for u, g in joined(proxy) if g in (c1, c2, asm)}
    assert ours == {("up1", c1), ("up2", c2), ("up3", asm)}, ours
    for i, grp in ((1, c1), (2, c2), (3, asm)):
        assert mfc(proxy, grp)["iif"] == f"up{i}", dump(proxy.instance()["mfc"])
        others = [j for j in (1, 2, 3) if j != i]
        assert not any(net.router_has(j, grp) for j in others), grp
    why = {c["group"]: c for c in proxy.instance()["selection"]["channels"]}
    assert why[c1]["record"] == f"source {SRC} group ff3e::1:0/112"
    assert "default upstream up3" in why[asm]["why"]
    text = render_text(proxy.show())  # what "pymcproxy ctl show" prints
    assert (
        f"request ({SRC}, {c2}) from d1 -> up2: record 'source {SRC} group ff3e::2:0/112'" in text
    )
    assert f"mfc ({SRC}, {c1}) up1 -> d1" in text and "served by up1" in text, text
    for name in ("l1c1", "l1c2", "l1g3"):
        got = seqs(stop_receiver(lab, name))
        assert len(got) == len(set(got)) >= 98, (name, len(got))


@pytest.mark.parametrize("v4", [False, True], ids=["mldv2", "igmpv3"])
def test_network_merging_maps_each_customer_base_to_its_provider(lab, v4):
    """Two merged providers use the same group address for their own channel; the
    subscriber prefix of each customer base picks its provider, and neither base gets the
    other provider's stream. The customer bases are told apart by the prefixes of their
    links (read from the interfaces)."""
    net = build(lab, routers=2, shared_core=False, listeners=2, v4=v4)
    g = "233.252.0.77" if v4 else "ff0e::77"
    sub1, sub2 = (
        ("198.19.1.0/24", "198.19.2.0/24") if v4 else ("2001:db8:1::/48", "2001:db8:2::/48")
    )
    src1, src2 = (
        ("198.18.101.100", "198.18.102.100") if v4 else ("2001:db8:c1::100", "2001:db8:c2::100")
    )
    records = f"upstream up1 select subscriber {sub1};\nupstream up2 select subscriber {sub2};"
    proxy = net.start(px_conf(2, 2, records, v4=v4))
    l1, l2 = net.listeners
    for host, name in ((l1, "l1"), (l2, "l2")):
        receiver(lab, host, "e0", g, f"{name}a", port=5001)  # provider A's stream
        receiver(lab, host, "e0", g, f"{name}b", port=5002)  # provider B's stream
    stream_from_both_providers(net, g, g)
    inst = proxy.instance()
    assert {(u, gg) for u, gg in joined(proxy) if gg == g} == {("up1", g), ("up2", g)}
    entries = {e["source"]: e for e in inst["mfc"] if e["group"] == g}
    assert entries[src1]["iif"] == "up1" and entries[src1]["oifs"] == ["d1"], dump(entries)
    assert entries[src2]["iif"] == "up2" and entries[src2]["oifs"] == ["d2"], dump(entries)
    why = {c["downstream"]: c for c in inst["selection"]["channels"]}
    assert why["d1"]["record"] == f"subscriber {sub1}", dump(why)
    assert why["d2"]["upstreams"] == ["up2"]
    counts = {n: len(stop_receiver(lab, n)) for n in ("l1a", "l1b", "l2a", "l2b")}
    assert counts["l1a"] >= 98 and counts["l2b"] >= 98, counts
    assert counts["l1b"] == 0 and counts["l2a"] == 0, counts


def test_migration_by_live_reload_keeps_existing_listeners(lab):
    """A reload moves a channel from up1 to up2 while it streams: the existing listener
    keeps up1 and loses nothing, a new listener is served through up2, and when the old
    listener leaves, the flow moves to up2 without a gap for the new one."""
    net = build(lab, routers=2, shared_core=True, listeners=2)
    g = "ff0e::9:1"
    before = "upstream up1 select group ff0e::9:0/112;\nupstream up2 select group ff0e::8:0/112;"
    after = "upstream up1 select group ff0e::8:0/112;\nupstream up2 select group ff0e::9:0/112;"
    proxy = net.start(px_conf(2, 2, before))
    (l1, l2), (src,) = net.listeners, net.sources
    receiver(lab, l1, "e0", g, "old")
    wait_joined(net, 1, g)
    snd = sender(lab, src, "e0", g, "snd", duration=4.0)
    assert wait_for(lambda: (mfc(proxy, g) or {}).get("packets", 0) >= 30, 5)
    installs = proxy.instance()["counters"].get("upcall_nocache", 0)
    proxy.conf_path.write_text(px_conf(2, 2, after))
    t_reload = time.time_ns()
    proxy.proc.send_signal(signal.SIGHUP)  # a live reload
    assert wait_for(lambda: "reloaded" in lab.log(proxy.log_name), 3)
    assert "~px(selection)" in lab.log(proxy.log_name)
    time.sleep(0.3)
    inst = proxy.instance()
    (channel,) = [c for c in inst["selection"]["channels"] if c["group"] == g]
    assert channel["upstreams"] == ["up1"] and "kept on up1" in channel["why"], channel
    assert ("up1", g) in joined(proxy) and ("up2", g) not in joined(proxy)
    new = receiver(lab, l2, "e0", g, "new")
    wait_joined(net, 2, g)  # the new subscription goes to the new upstream
    assert ("up1", g) in joined(proxy)
    assert wait_for(lambda: "d2" in (mfc(proxy, g) or {}).get("oifs", []), 3), dump(
        proxy.instance()
    )
    time.sleep(0.5)
    t_leave = time.time_ns()
    old_rows = stop_receiver(lab, "old")  # the old listener leaves: up1 is no longer needed
    assert wait_for(lambda: (mfc(proxy, g) or {}).get("iif") == "up2", 3), dump(proxy.instance())
    assert wait_for(lambda: ("up1", g) not in joined(proxy), 3)
    snd.wait(10)
    time.sleep(0.3)
    new_rows = stop_receiver(lab, "new")
    old_report, new_report = gap_report(old_rows, t_reload), gap_report(new_rows, t_leave)
    record(lab, "migration", {"existing": old_report, "new": new_report})
    assert old_report["missing"] == 0 and old_report["duplicates"] == 0, old_report
    assert new_report["missing"] == 0 and new_report["duplicates"] == 0, new_report
    assert new_report["received"] >= 100 and new.returncode is not None
    # The reload did not touch the running flow: no new MFC install for it.
    assert proxy.instance()["counters"].get("upcall_nocache", 0) == installs


def test_robust_reception_joins_both_and_delivers_each_packet_once(lab):
    """Two upstreams with equal priority both carry the channel: both are joined, the
    kernel takes one copy (the entry's parent) and drops the other, the listener gets every
    packet exactly once."""
    net = build(lab, routers=2, shared_core=True)
    g = "ff3e::6:1"
    proxy = net.start(
        px_conf(2, 1, "upstream up1 priority 7;\nupstream up2 priority 7;\nupstream * overlap 0;")
    )
    (l1,), (src,) = net.listeners, net.sources
    receiver(lab, l1, "e0", g, "l1", sources=[SRC])
    wait_joined(net, 1, g)
    wait_joined(net, 2, g)
    sender(lab, src, "e0", g, "snd", duration=1.5).wait(10)
    time.sleep(0.3)
    rs = stop_receiver(lab, "l1")
    report = gap_report(rs, 0)
    entry = mfc(proxy, g, SRC)
    record(lab, "robust_reception", {**report, "wrong_if": entry["wrong_if"]})
    assert {("up1", g), ("up2", g)} <= joined(proxy)
    assert entry["packets"] >= 2 * 140 and entry["wrong_if"] >= 140, entry  # both copies came
    assert report["duplicates"] == 0 and report["unique"] >= 148, report
    (channel,) = proxy.instance()["selection"]["channels"]
    assert channel["upstreams"] == ["up1", "up2"]
    assert channel["why"].startswith("robust reception: up1, up2 tie"), channel


def test_querier_loss_hands_over_and_revert_waits_to_restore(lab):
    """``takeover no-querier``: the primary router dies (no more queries, no more data);
    px takes over to the standby once its querier has been silent for the configured time.
    With ``revert after``, the restarted primary gets the channel back only once it has
    been usable again for that long."""
    net = build(lab, routers=2, shared_core=True)
    g = "ff0e::4:1"
    proxy = net.start(
        px_conf(
            2,
            1,
            """upstream up1 priority 10;
            upstream up2 priority 5;
            upstream * takeover no-querier 2s;
            upstream * revert after 1s;""",
        )
    )
    (l1,), (src,) = net.listeners, net.sources
    receiver(lab, l1, "e0", g, "l1")
    wait_joined(net, 1, g)
    r1 = net.router(1)
    r1.proc.send_signal(signal.SIGTERM)
    r1.proc.wait(5)
    t_dead = time.monotonic()
    assert wait_for(lambda: ("up2", g) in joined(proxy), 6), dump(proxy.instance())
    took = time.monotonic() - t_dead
    assert ("up1", g) not in joined(proxy)
    cand = {c["interface"]: c for c in proxy.instance()["selection"]["candidates"]}
    assert cand["up1"]["state"].startswith("failed: no querier"), cand
    # The primary comes back: usable again only after 2 s of being heard.
    net.router_daemons[0] = Daemon(lab, net.routers[0], router_conf(), "r1b")
    assert wait_for(lambda: "restoring" in proxy_state(proxy, "up1"), 4), dump(proxy.instance())
    assert ("up2", g) in joined(proxy)
    assert wait_for(lambda: ("up1", g) in joined(proxy), 5), dump(proxy.instance())
    assert wait_for(lambda: ("up2", g) not in joined(proxy), 3)  # after the overlap
    record(lab, "querier_loss", {"takeover_s": round(took, 2)})
    assert 0.9 <= took <= 4.0, took  # T after the last query, which came up to 1 s before
    sender(lab, src, "e0", g, "snd", duration=0.5).wait(10)
    time.sleep(0.3)
    assert len(stop_receiver(lab, "l1")) >= 48
    assert mfc(proxy, g)["iif"] == "up1"


def proxy_state(proxy: Daemon, ifname: str) -> str:
    cands = proxy.instance()["selection"]["candidates"]
    return next(c["state"] for c in cands if c["interface"] == ifname)
