"""Build and run a ``TopologySpec``: namespaces, shaped links, addresses, routes and daemons.

Every node is a named network namespace (``<prefix>-<node>``), so that ``clean`` finds
everything by name; the Mininet CLI attaches to the same namespaces for interactive use.
The proxies (one daemon per MAG with one instance per LMA, one per LMA) and the PMIPv6
agents are started with the network and stopped with it, their logs kept in ``run_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from lab import clean
from lab.netns import QUIET_IPV6, CommandError, NetLab
from pmip.mag import AccessLink, MagPlan
from proxy.config import Config
from proxy.timers import MOBILITY, Timers
from topologies.backends import select_backend
from topologies.daemons import (
    Daemon,
    DaemonError,
    LmaDaemon,
    MagDaemon,
    ProxyDaemon,
    proxy_config,
    stop_all,
)
from topologies.links import (
    Endpoint,
    LinkBackend,
    LinkError,
    LinkProfile,
    profile_from,
)
from topologies.spec import MAG_ACCESS_LL, MAG_ACCESS_MAC, TopologySpec
from topologies.tunnels import TunnelMode, resolve_mode, transport_if, transport_prefix, tunnel_cmds

log = logging.getLogger("pmiplab.network")
LOCAL_PEERING = LinkProfile("local-peering", 0.0, 0.0)
#: RFC 6636-style short timers: a MAG must learn an arriving MN's memberships within the
#: radio round trip, so the query response interval is near zero (RFC 7161 App. A).
TESTBED_TIMERS = replace(
    MOBILITY,
    query_response_interval=0.010,
    last_listener_query_interval=0.100,
    startup_query_count=2,
)


class NetworkError(RuntimeError):
    """Building or running the network failed (one line, fit for a terminal)."""


@dataclass(frozen=True)
class ProxySettings:
    """How the MAG and LMA proxies run in the testbed (typed; rendered into their configs)."""

    protocol: str = "MLDv2"
    timers: Timers = TESTBED_TIMERS
    poll_interval: float = 0.02
    debug: bool = False


def lma_address(lma: int) -> IPv6Address:
    """LMAA of LMA ``lma`` (on its loopback)."""
    return IPv6Address(f"2001:db8:a::{lma}")


def _addresses(ifname: str, address: str, link_local: str) -> list[str]:
    """Commands giving ``ifname`` a /64 ``address`` and ``link_local``, without DAD."""
    return [
        f"ip addr add {address}/64 dev {ifname} nodad",
        f"ip addr add {link_local}/64 dev {ifname} nodad",
    ]


def _mac(*parts: object) -> str:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


@dataclass
class Network:
    """A running PMIPv6 domain built from ``spec``.

    Its namespaces (``<prefix>-<node>``) and processes belong to one ``NetLab`` whose
    directory is ``run_dir``; the daemons the spec calls for are ``topologies.daemons``
    objects in ``daemons`` (by name: ``proxy-<node>``, ``pmip-<node>``).
    """

    spec: TopologySpec
    run_dir: Path
    prefix: str = "pml"
    backend_name: str = "auto"
    tunnel_mode: str = "auto"  # MAG-LMA tunnels: auto, ip6tnl, p2p (topologies.tunnels)
    seed: int = 1
    proxy: ProxySettings = field(default_factory=ProxySettings)
    backend: LinkBackend | None = None
    lab: NetLab | None = None
    daemons: dict[str, Daemon] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # probes and tools
    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    attached: dict[str, int] = field(default_factory=dict)  # end node -> MAG number
    configs: dict[str, str] = field(default_factory=dict)
    _backend_error: Exception | None = None
    moves: int = 0  # L2 attaches so far: each new radio link gets its own seed
    tunnels: TunnelMode = "p2p"  # what build() made of the MAG-LMA "tunnel" links

    # --- naming ---------------------------------------------------------------------------

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def sh(self, node: str, cmd: str, check: bool = True) -> str:
        """Run a shell command inside ``node``'s namespace."""
        try:
            return self._lab().sh(self.ns(node), cmd, check)
        except CommandError as exc:
            raise NetworkError(str(exc)) from None

    def popen(self, node: str, args: list[str], logname: str) -> subprocess.Popen:
        """Start a process in ``node`` (a probe, a tool); its output goes to ``run_dir/logname``."""
        proc = self._lab().spawn(self.ns(node), args, logname, start_new_session=True)
        self.procs[logname.rsplit(".", 1)[0]] = proc
        return proc

    def _lab(self) -> NetLab:
        if self.lab is None:
            self.lab = NetLab(self.run_dir, self.prefix)
        return self.lab

    # --- build ----------------------------------------------------------------------------

    def build(self) -> None:
        """Namespaces, links, addresses and routes (no daemons yet)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        leftovers = clean.list_netns(self.prefix + "-")
        if leftovers:
            raise NetworkError(
                f"namespaces of an earlier run exist ({', '.join(leftovers[:3])}...): "
                "run 'make clean' first"
            )
        try:
            self.tunnels = resolve_mode(self.tunnel_mode)
        except ValueError as exc:
            raise NetworkError(str(exc)) from None
        try:
            self.backend = select_backend(self.backend_name, tag=self.prefix)
            # The emulator process starts (and calibrates) while the namespaces are made.
            starting = threading.Thread(target=self._start_backend, daemon=True)
            starting.start()
            for node in self.spec.nodes:
                self._make_namespace(node.name, node.role)
            starting.join()
            if self._backend_error is not None:
                raise self._backend_error
            self._make_links()
            self._address()
        except (LinkError, NetworkError, subprocess.CalledProcessError):
            self.stop()
            raise

    def _start_backend(self) -> None:
        try:
            self.backend.start()
        except (LinkError, OSError) as exc:
            self._backend_error = exc

    def _make_namespace(self, node: str, role: str) -> None:
        knobs = (*QUIET_IPV6, "net.ipv6.conf.default.accept_ra=0")
        if role in ("mag", "lma"):
            # Routers get hand-made link-locals (fe80::1 on every access link, RFC 5213).
            knobs += ("net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.addr_gen_mode=1")
        self._lab().ns(node, knobs=knobs)

    def _endpoint(self, node: str, ifname: str) -> Endpoint:
        key = (node, ifname)
        if key not in self.endpoints:
            mac = MAG_ACCESS_MAC if ifname.startswith("a-") else _mac(self.prefix, node, ifname)
            ep = Endpoint(self.ns(node), ifname, mac)
            assert self.backend is not None
            self.backend.add_endpoint(ep)
            self.endpoints[key] = ep
        return self.endpoints[key]

    def profile(self, kind: str) -> LinkProfile:
        if kind == "local-peering":
            return LOCAL_PEERING
        return profile_from(kind, **self.spec.profiles.get(kind, {}))

    def link_seed(self, index: int) -> int:
        return self.seed * 100_003 + index

    def _make_links(self) -> None:
        assert self.backend is not None
        for i, link in enumerate(self.spec.links):
            a_if, b_if = link.a_if, link.b_if
            if link.kind == "tunnel" and self.tunnels == "ip6tnl":
                a_if, b_if = transport_if(a_if), transport_if(b_if)
            a, b = self._endpoint(link.a, a_if), self._endpoint(link.b, b_if)
            if link.connected:
                self.backend.connect(a, b, self.profile(link.kind), self.link_seed(i))
        for n in self.spec.end_nodes():
            self.attached[n.name] = n.mag

    def _tunnel_end(self, lma: int, mag: int, at_lma: bool) -> list[str]:
        """Commands for one end of the MAG-LMA tunnel: its device and addresses (the LMA is
        ::1 and fe80::1, the MAG ::2 and fe80::2), with the transport link under an ip6tnl."""
        host = 1 if at_lma else 2
        tunnel = f"t-mag{mag}" if at_lma else f"t-lma{lma}"
        cmds = []
        if self.tunnels == "ip6tnl":
            ends = (str(lma_address(lma)), self.proxy_coa(lma, mag))
            local, remote = ends if at_lma else ends[::-1]
            transport = f"{transport_prefix(lma, mag)}{host}"
            cmds += _addresses(transport_if(tunnel), transport, f"fe80::{host}")
            cmds += tunnel_cmds(tunnel, local, remote)
        return cmds + _addresses(
            tunnel, f"{self.spec.tunnel_prefix(lma, mag)}{host}", f"fe80::{host}"
        )

    def _address(self) -> None:
        spec = self.spec
        for lma in range(1, spec.lmas + 1):
            node = f"lma{lma}"
            cmds = []
            for m in range(1, spec.mags + 1):
                cmds += self._tunnel_end(lma, m, at_lma=True)
            if lma == 1:
                cmds += [
                    "ip link add core type veth peer name core-stub",
                    "ip link set core-stub up",
                    "ip link set core up",
                    *_addresses("core", "2001:db8:c::1", "fe80::1"),
                ]
                for other in range(2, spec.lmas + 1):
                    cmds += _addresses(f"bb-lma{other}", "2001:db8:2::1", "fe80::1")
                    cmds += [
                        f"ip -6 route add {n.hnp} via 2001:db8:2::{other} dev bb-lma{other}"
                        for n in spec.end_nodes()
                        if n.lma == other
                    ]
            else:
                cmds += _addresses("bb-lma1", f"2001:db8:2::{lma}", "fe80::2")
                cmds.append("ip -6 route add default via 2001:db8:2::1 dev bb-lma1")
            self.sh(node, " && ".join(cmds))
        for m in range(1, spec.mags + 1):
            node = f"mag{m}"
            cmds = []
            for lma in range(1, spec.lmas + 1):
                cmds += self._tunnel_end(lma, m, at_lma=False)
                p = spec.tunnel_prefix(lma, m)
                cmds.append(f"ip -6 route add default via {p}1 dev t-lma{lma} table {100 + lma}")
            for owner, ifname in self.endpoints:
                if owner != node:
                    continue
                if ifname.startswith("a-"):
                    cmds.append(f"ip addr add {MAG_ACCESS_LL}/64 dev {ifname} nodad")
            for link in spec.links:
                for owner, ifname, lma in link.ends() if link.is_peering else ():
                    if owner == node:
                        cmds.append(f"ip addr add fe80::10:{m}{lma}/64 dev {ifname} nodad")
            # Specific routes (MNs attached here, tunnel prefixes) first; only what has no
            # route of its own goes up the tunnel of the node's LMA.
            cmds.append("ip -6 rule add lookup main suppress_prefixlength 0 pref 100")
            for n in spec.end_nodes():
                cmds.append(f"ip -6 rule add from {n.hnp} lookup {100 + n.lma} pref 200")
            self.sh(node, " && ".join(cmds))
        for n in spec.end_nodes():
            self.sh(
                n.name,
                f"ip addr add {n.address}/64 dev eth0 nodad && "
                f"ip -6 route add default via {MAG_ACCESS_LL} dev eth0",
            )

    # --- daemons --------------------------------------------------------------------------

    def proxy_config(self, node: str) -> Config:
        """The typed configuration of ``node``'s proxy (one instance per LMA on a MAG)."""
        role = self.spec.node(node).role
        if role == "mag":
            plans = self.spec.mag_instances(int(node[3:]))
        else:
            plans = [self.spec.lma_instance(int(node[3:]))]
        return proxy_config(self.proxy.protocol, plans, self.proxy.timers)

    def proxy_daemon(self, node: str) -> ProxyDaemon:
        return ProxyDaemon(
            self._lab(),
            self.ns(node),
            f"proxy-{node}",
            self.proxy_config(node),
            events=self.run_dir / "proxy-events.csv",
            node=node,
            poll_interval=self.proxy.poll_interval,
            debug=self.proxy.debug,
        )

    def proxy_coa(self, lma: int, mag: int) -> str:
        """MAG ``mag``'s Proxy-CoA towards LMA ``lma``: its end of the tunnel (ip6tnl) or link."""
        if self.tunnels == "ip6tnl":
            return f"{transport_prefix(lma, mag)}2"
        return f"{self.spec.tunnel_prefix(lma, mag)}2"

    def mag_plan(self, mag: int) -> MagPlan:
        """What MAG ``mag``'s PMIPv6 daemon needs: per access interface, the MN and its LMA."""
        spec, access = self.spec, {}
        for n in spec.end_nodes():
            if (n.role == "mn" or n.mag == mag) and n.lma:
                access[spec.access_if(n.name)] = AccessLink(
                    mn_id=f"{n.name}@pmiplab.example",
                    hnp=n.hnp,
                    lma=str(lma_address(n.lma)),
                    proxy_coa=self.proxy_coa(n.lma, mag),
                )
        return MagPlan(f"mag{mag}", access)

    def pmip_daemons(self) -> list[Daemon]:
        """LMA agents and MAG daemons; adds the LMAAs and the MAGs' routes to them."""
        spec, events = self.spec, self.run_dir / "pmip-events.csv"
        out: list[Daemon] = []
        for lma in range(1, spec.lmas + 1):
            node = f"lma{lma}"
            self.sh(node, f"ip addr add {lma_address(lma)}/128 dev lo")
            tunnels = []
            for m in range(1, spec.mags + 1):
                # PBU and PBA travel outside the tunnel (RFC 5213 §6.10), on the transport.
                if self.tunnels == "ip6tnl":
                    gateway, dev = f"{transport_prefix(lma, m)}1", f"x-lma{lma}"
                    tunnels.append(f"{self.proxy_coa(lma, m)}=t-mag{m}")
                else:
                    gateway, dev = f"{spec.tunnel_prefix(lma, m)}1", f"t-lma{lma}"
                    tunnels.append(f"t-mag{m}")
                self.sh(
                    f"mag{m}", f"ip -6 route add {lma_address(lma)}/128 via {gateway} dev {dev}"
                )
            out.append(
                LmaDaemon(
                    self._lab(), self.ns(node), f"pmip-{node}", lma_address(lma), tunnels, events
                )
            )
        for m in range(1, spec.mags + 1):
            node = f"mag{m}"
            out.append(
                MagDaemon(self._lab(), self.ns(node), f"pmip-{node}", self.mag_plan(m), events)
            )
        return out

    def start(self) -> None:
        """Start the LMA and MAG proxies and the PMIPv6 agents; register the nodes."""
        try:
            routers = [n.name for n in self.spec.by_role("lma") + self.spec.by_role("mag")]
            proxies = [self.proxy_daemon(node) for node in routers]
            for d in [*proxies, *self.pmip_daemons()]:
                self.daemons[d.name] = d.start()
                if isinstance(d, ProxyDaemon):
                    self.configs[d.name.removeprefix("proxy-")] = d.config_text()
            for d in proxies:
                d.wait_ready()
            self.register_initial()
        except DaemonError as exc:
            self.stop()
            raise NetworkError(str(exc)) from None
        except Exception:
            self.stop()
            raise

    def register_initial(self, timeout: float = 10.0) -> None:
        """Wait until every attached node's binding is acknowledged (the MAG daemons do it)."""
        events = self.run_dir / "pmip-events.csv"
        wanted = {n.name for n in self.spec.end_nodes()}
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            done = set()
            if events.exists():
                for line in events.read_text().splitlines():
                    if ",route_added," in line:
                        devs = {t.split("=", 1)[1] for t in line.split() if t.startswith("dev=")}
                        done |= {w for w in wanted if f"a-{w}" in devs}
            if done >= wanted:
                return
            for d in self.daemons.values():
                d.check_alive()
            time.sleep(0.05)
        raise NetworkError(
            f"PMIPv6 registration of {sorted(wanted)} did not finish within {timeout:.0f} s"
        )

    def ctl_path(self, node: str) -> str:
        return self.proxy_of(node).ctl

    def proxy_of(self, node: str) -> ProxyDaemon:
        d = self.daemons[f"proxy-{node}"]
        assert isinstance(d, ProxyDaemon)
        return d

    def show(self, node: str) -> dict[str, Any]:
        """``pymcproxy ctl show`` of ``node``'s proxy."""
        return self.proxy_of(node).show()

    # --- mobility (L2) ----------------------------------------------------------------------

    def detach(self, node: str) -> None:
        """L2 detach of an end node from its MAG (break-before-make)."""
        assert self.backend is not None
        self.backend.disconnect(self.endpoints[(node, "eth0")])

    def attach(self, node: str, mag: int) -> None:
        """L2 attach of an end node to MAG ``mag`` (its pre-provisioned access interface)."""
        assert self.backend is not None
        peer = self.endpoints[(f"mag{mag}", self.spec.access_if(node))]
        self.backend.connect(
            self.endpoints[(node, "eth0")],
            peer,
            self.profile(self.spec.access),
            self.link_seed(1000 + self.moves),
        )
        self.moves += 1
        self.attached[node] = mag

    # --- stop and describe ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop daemons (SIGTERM, then SIGKILL), links, and namespaces; idempotent."""
        stop_all(list(self.daemons.values()))
        self.daemons.clear()
        self.procs.clear()
        # Namespaces first: the kernel then destroys all their TAP devices in one batch,
        # where the emulator closing them one by one costs ~20 ms each.
        if self.lab is not None:
            self.lab.close()
        if self.backend is not None:
            self.backend.stop()
            self.backend = None

    def describe(self) -> dict[str, Any]:
        return {
            "topology": json.loads(self.spec.to_json()),
            "links": self.backend.describe() if self.backend else None,
            "proxy_configs": self.configs,
            "namespace_prefix": self.prefix,
            "tunnels": self.tunnels,
        }

    def __enter__(self) -> Network:
        self.build()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
