"""PMIPv6 mobility in the testbed: the MAG daemon, the LMA agents, and handovers.

A MAG notices an MN the way a real one does: its access interface gets carrier (the L2
attach). ``python -m experiments.mobility mag`` watches the access interfaces of one MAG
through rtnetlink and, on attach, sends the Proxy Binding Update over the MAG-LMA path
(so it pays the tunnel delay), waits for the Ack and routes the home network prefix to
the MN; on detach it de-registers. The proxy on the same MAG sees the same carrier change
and starts querying at once (RFC 6224 §3). The testbed's driver only moves the L2 link.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.pmip import EventLog, Handoff, MagAgent
from proxy.netlink import LinkMonitor

if TYPE_CHECKING:
    from topologies.network import Network

PY = sys.executable


def lma_address(lma: int) -> str:
    """LMAA of LMA ``lma`` (on its loopback)."""
    return f"2001:db8:a::{lma}"


def mag_plan(net: Network, mag: int) -> dict[str, Any]:
    """What MAG ``mag``'s daemon needs: per access interface, the MN and its LMA."""
    spec = net.spec
    access = {}
    for n in spec.end_nodes():
        ifname = spec.access_if(n.name)
        if (n.role == "mn" or n.mag == mag) and n.lma:
            access[ifname] = {
                "mn_id": f"{n.name}@pmiplab.example",
                "hnp": n.hnp,
                "lma": lma_address(n.lma),
                "proxy_coa": f"{spec.tunnel_prefix(n.lma, mag)}2",
            }
    return {"node": f"mag{mag}", "access": access}


def start_agents(net: Network) -> None:
    """LMAAs, routes to them, the LMA agents and one MAG daemon per MAG."""
    spec = net.spec
    events = str(net.run_dir / "pmip-events.csv")
    for lma in range(1, spec.lmas + 1):
        node = f"lma{lma}"
        net.sh(node, f"ip addr add {lma_address(lma)}/128 dev lo")
        tunnels = []
        for m in range(1, spec.mags + 1):
            tunnels += ["--tunnel-if", f"t-mag{m}"]
            net.sh(
                f"mag{m}",
                f"ip -6 route add {lma_address(lma)}/128 via "
                f"{spec.tunnel_prefix(lma, m)}1 dev t-lma{lma}",
            )
        net.popen(
            node,
            [
                PY,
                "-m",
                "experiments.pmip",
                "lma",
                "--address",
                lma_address(lma),
                *tunnels,
                "--events",
                events,
                "--node",
                node,
            ],
            f"pmip-{node}.log",
        )
    for m in range(1, spec.mags + 1):
        plan = net.run_dir / f"pmip-mag{m}.json"
        plan.write_text(json.dumps(mag_plan(net, m), indent=1))
        net.popen(
            f"mag{m}",
            [PY, "-m", "experiments.mobility", "mag", "--plan", str(plan), "--events", events],
            f"pmip-mag{m}.log",
        )


def register_initial(net: Network, timeout: float = 10.0) -> None:
    """Wait until every attached node's binding is acknowledged (the MAG daemons do it)."""
    import time

    events = net.run_dir / "pmip-events.csv"
    wanted = {n.name for n in net.spec.end_nodes()}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = set()
        if events.exists():
            for line in events.read_text().splitlines():
                if ",route_added," in line:
                    devs = {tok.split("=", 1)[1] for tok in line.split() if tok.startswith("dev=")}
                    done |= {w for w in wanted if f"a-{w}" in devs}
        if done >= wanted:
            return
        for key, proc in net.procs.items():
            if key.startswith("pmip-") and proc.poll() is not None:
                raise RuntimeError(
                    f"{key} exited with {proc.returncode}: see {net.run_dir / (key + '.log')}"
                )
        time.sleep(0.05)
    raise RuntimeError(
        f"PMIPv6 registration of {sorted(wanted)} did not finish within {timeout:.0f} s"
    )


# --- the MAG daemon -------------------------------------------------------------------------


class MagDaemon:
    """Registers MNs when their access link comes up, de-registers them when it goes down."""

    def __init__(self, plan: dict[str, Any], events: Path | None) -> None:
        self.node = plan["node"]
        self.events = EventLog(events, self.node)
        self.access = plan["access"]
        self.agents: dict[str, MagAgent] = {}
        self.up: dict[str, bool] = {}
        self.lock = threading.Lock()

    def agent(self, coa: str) -> MagAgent:
        if coa not in self.agents:
            self.agents[coa] = MagAgent(IPv6Address(coa), events=self.events)
        return self.agents[coa]

    def link(self, ifname: str, up: bool) -> None:
        entry = self.access.get(ifname)
        if entry is None or self.up.get(ifname) == up:
            return
        first = ifname not in self.up
        self.up[ifname] = up
        if not up and first:
            return
        # One thread per exchange: a slow PBA for one MN must not delay another's.
        threading.Thread(
            target=self._exchange, args=(ifname, entry, up, first), daemon=True
        ).start()

    def _exchange(self, ifname: str, entry: dict[str, str], up: bool, first: bool) -> None:
        hnp, lma = IPv6Network(entry["hnp"]), IPv6Address(entry["lma"])
        with self.lock:
            agent = self.agent(entry["proxy_coa"])
        try:
            if up:
                self.events.emit("l2_attach_detected", f"{ifname} mn={entry['mn_id']}")
                handoff = Handoff.NEW_INTERFACE if first else Handoff.BETWEEN_MAGS
                agent.register(entry["mn_id"], hnp, lma, ifname, handoff=handoff)
            else:
                self.events.emit("l2_detach_detected", f"{ifname} mn={entry['mn_id']}")
                agent.deregister(entry["mn_id"], hnp, lma, access_if=ifname, wait=False)
        except Exception as exc:  # noqa: BLE001 - logged, the daemon keeps serving others
            self.events.emit("pmip_error", f"{ifname} {exc}")
            print(f"mag {self.node}: {ifname}: {exc}", file=sys.stderr, flush=True)

    def run(self) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        monitor = LinkMonitor()
        for st in monitor.dump().values():
            self.link(st.ifname, st.up)
        import select

        while not stop.is_set():
            ready, _, _ = select.select([monitor.sock], [], [], 0.2)
            if ready:
                for st in monitor.read():
                    self.link(st.ifname, st.up)
        monitor.close()
        for agent in self.agents.values():
            agent.close()
        self.events.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.mobility", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    mag = sub.add_parser("mag", help="run a MAG's PMIPv6 daemon until SIGTERM")
    mag.add_argument("--plan", type=Path, required=True, help="JSON: node and access interfaces")
    mag.add_argument("--events", type=Path, help="events CSV to append to")
    args = p.parse_args(argv)
    try:
        plan = json.loads(args.plan.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read plan {args.plan}: {exc}", file=sys.stderr)
        return 2
    MagDaemon(plan, args.events).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
