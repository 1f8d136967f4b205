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
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topologies import clean
from topologies.links import (
    RUN_DIR,
    Endpoint,
    LinkBackend,
    LinkError,
    LinkProfile,
    profile_from,
    select_backend,
)
from topologies.pmip import MAG_ACCESS_LL, MAG_ACCESS_MAC, TopologySpec

log = logging.getLogger("pmiplab.network")
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
LOCAL_PEERING = LinkProfile("local-peering", 0.0, 0.0)


class NetworkError(RuntimeError):
    """Building or running the network failed (one line, fit for a terminal)."""


@dataclass
class ProxySettings:
    """How the MAG and LMA proxies run in the testbed (written into their configs)."""

    protocol: str = "MLDv2"
    # RFC 6636-style short timers: a MAG must learn an arriving MN's memberships within
    # the radio round trip, so the query response interval is near zero (RFC 7161 App. A).
    timers: str = (
        "query-interval 60 query-response-interval 10ms startup-query-interval 1 "
        "startup-query-count 2 last-listener-query-interval 100ms last-listener-query-count 1"
    )
    poll_interval: float = 0.02
    debug: bool = False


def _mac(*parts: object) -> str:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


@dataclass
class Network:
    """A running PMIPv6 domain built from ``spec``."""

    spec: TopologySpec
    run_dir: Path
    prefix: str = "pml"
    backend_name: str = "auto"
    seed: int = 1
    proxy: ProxySettings = field(default_factory=ProxySettings)
    backend: LinkBackend | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    attached: dict[str, int] = field(default_factory=dict)  # end node -> MAG number
    configs: dict[str, str] = field(default_factory=dict)
    _backend_error: Exception | None = None
    moves: int = 0  # L2 attaches so far: each new radio link gets its own seed

    # --- naming ---------------------------------------------------------------------------

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def sh(self, node: str, cmd: str, check: bool = True) -> str:
        """Run a shell command inside ``node``'s namespace."""
        res = subprocess.run(
            ["ip", "netns", "exec", self.ns(node), "sh", "-c", cmd], capture_output=True, text=True
        )
        if check and res.returncode:
            raise NetworkError(f"[{node}] {cmd}: {res.stderr.strip() or res.stdout.strip()}")
        return res.stdout

    def popen(self, node: str, args: list[str], logname: str) -> subprocess.Popen:
        """Start a long-running process in ``node``; its output goes to ``run_dir/logname``."""
        out = open(self.run_dir / logname, "w")  # noqa: SIM115 - closed by the child's exit
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(node), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        out.close()
        key = logname.rsplit(".", 1)[0]
        self.procs[key] = proc
        pidfile = RUN_DIR / f"{self.prefix}-{key}.pid"
        pidfile.write_text(f"{proc.pid}\n{' '.join(args[:3])}\n")
        return proc

    # --- build ----------------------------------------------------------------------------

    def build(self) -> None:
        """Namespaces, links, addresses and routes (no daemons yet)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        leftovers = clean.list_netns(self.prefix + "-")
        if leftovers:
            raise NetworkError(
                f"namespaces of an earlier run exist ({', '.join(leftovers[:3])}...): "
                "run 'make clean' first"
            )
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
        name = self.ns(node)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.namespaces.append(name)
        router = role in ("mag", "lma")
        knobs = [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.default.router_solicitations=0",
            "net.ipv6.conf.default.accept_ra=0",
        ]
        if router:
            # Routers get hand-made link-locals (fe80::1 on every access link, RFC 5213).
            knobs += ["net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.addr_gen_mode=1"]
        self.sh(node, "ip link set lo up; sysctl -qw " + " ".join(knobs))

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
            a, b = self._endpoint(link.a, link.a_if), self._endpoint(link.b, link.b_if)
            if link.connected:
                self.backend.connect(a, b, self.profile(link.kind), self.link_seed(i))
        for n in self.spec.end_nodes():
            self.attached[n.name] = n.mag

    def _address(self) -> None:
        spec = self.spec
        for lma in range(1, spec.lmas + 1):
            node = f"lma{lma}"
            cmds = []
            for m in range(1, spec.mags + 1):
                p = spec.tunnel_prefix(lma, m)
                cmds += [
                    f"ip addr add {p}1/64 dev t-mag{m} nodad",
                    f"ip addr add fe80::1/64 dev t-mag{m} nodad",
                ]
            if lma == 1:
                cmds += [
                    "ip link add core type veth peer name core-stub",
                    "ip link set core-stub up",
                    "ip link set core up",
                    "ip addr add 2001:db8:c::1/64 dev core nodad",
                    "ip addr add fe80::1/64 dev core nodad",
                ]
                for other in range(2, spec.lmas + 1):
                    cmds += [
                        f"ip addr add 2001:db8:2::1/64 dev bb-lma{other} nodad",
                        f"ip addr add fe80::1/64 dev bb-lma{other} nodad",
                    ]
                    cmds += [
                        f"ip -6 route add {n.hnp} via 2001:db8:2::{other} dev bb-lma{other}"
                        for n in spec.end_nodes()
                        if n.lma == other
                    ]
            else:
                cmds += [
                    f"ip addr add 2001:db8:2::{lma}/64 dev bb-lma1 nodad",
                    "ip addr add fe80::2/64 dev bb-lma1 nodad",
                    "ip -6 route add default via 2001:db8:2::1 dev bb-lma1",
                ]
            self.sh(node, " && ".join(cmds))
        for m in range(1, spec.mags + 1):
            node = f"mag{m}"
            cmds = []
            for lma in range(1, spec.lmas + 1):
                p = spec.tunnel_prefix(lma, m)
                cmds += [
                    f"ip addr add {p}2/64 dev t-lma{lma} nodad",
                    f"ip addr add fe80::2/64 dev t-lma{lma} nodad",
                    f"ip -6 route add default via {p}1 dev t-lma{lma} table {100 + lma}",
                ]
            for owner, ifname in self.endpoints:
                if owner != node:
                    continue
                if ifname.startswith("a-"):
                    cmds.append(f"ip addr add {MAG_ACCESS_LL}/64 dev {ifname} nodad")
                elif ifname.startswith("p"):
                    cmds.append(f"ip addr add fe80::10:{m}{ifname[1]}/64 dev {ifname} nodad")
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

    def proxy_config(self, node: str) -> str:
        """The mcproxy-grammar configuration of ``node``'s proxy."""
        spec, out = (
            self.spec,
            [f"# {node}: generated by topologies.network", f"protocol {self.proxy.protocol};"],
        )
        if node.startswith("mag"):
            m = int(node[3:])
            for lma, ifs in spec.mag_instances(m).items():
                name = spec.instance_name(m, lma)
                out.append(
                    f"pinstance {name}({10 + lma}): {' '.join(ifs['upstreams'])} ==> "
                    f"{' '.join(ifs['downstreams'])};"
                )
                if ifs["peerings"]:
                    out.append(f"pinstance {name} peering {' '.join(ifs['peerings'])};")
                out.append(f"pinstance {name} timers {self.proxy.timers};")
        else:
            ifs = spec.lma_interfaces(int(node[3:]))
            ups, downs = " ".join(ifs["upstreams"]), " ".join(ifs["downstreams"])
            out.append(f"pinstance {node}(10): {ups} ==> {downs};")
            out.append(f"pinstance {node} timers {self.proxy.timers};")
        return "\n".join(out) + "\n"

    def start(self) -> None:
        """Start the LMA and MAG proxies and the PMIPv6 agents; register the nodes."""
        from experiments import mobility

        try:
            for node in [n.name for n in self.spec.by_role("lma")] + [
                n.name for n in self.spec.by_role("mag")
            ]:
                self._start_proxy(node)
            mobility.start_agents(self)
            for name in [n.name for n in self.spec.by_role("lma") + self.spec.by_role("mag")]:
                self._wait_ready(f"proxy-{name}", self.ctl_path(name))
            mobility.register_initial(self)
        except Exception:
            self.stop()
            raise

    def ctl_path(self, node: str) -> str:
        return str(RUN_DIR / f"{self.prefix}-{node}.sock")

    def _start_proxy(self, node: str) -> None:
        conf = self.run_dir / f"proxy-{node}.conf"
        text = self.proxy_config(node)
        conf.write_text(text)
        self.configs[node] = text
        args = [
            PY,
            "-m",
            "proxy",
            "-f",
            str(conf),
            "--ctl",
            self.ctl_path(node),
            "--events",
            str(self.run_dir / "proxy-events.csv"),
            "--node",
            node,
            "--poll-interval",
            str(self.proxy.poll_interval),
        ]
        if self.proxy.debug:
            args.append("-d")
        self.popen(node, args, f"proxy-{node}.log")

    def _wait_ready(self, key: str, path: str, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        proc = self.procs[key]
        while time.monotonic() < end:
            if os.path.exists(path):
                return
            if proc.poll() is not None:
                tail = (self.run_dir / f"{key}.log").read_text().strip().splitlines()[-3:]
                raise NetworkError(f"{key} exited with {proc.returncode}: {' | '.join(tail)}")
            time.sleep(0.02)
        raise NetworkError(f"{key} did not come up within {timeout:.0f} s")

    def show(self, node: str) -> dict[str, Any]:
        """``pymcproxy ctl show`` of ``node``'s proxy."""
        from proxy.ctl import request

        return request(self.ctl_path(node), {"cmd": "show"})

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
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                with_suppress(lambda p=proc: os.killpg(p.pid, signal.SIGTERM))
        deadline = time.monotonic() + 5
        for key, proc in list(self.procs.items()):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with_suppress(lambda p=proc: os.killpg(p.pid, signal.SIGKILL))
                proc.wait()
            (RUN_DIR / f"{self.prefix}-{key}.pid").unlink(missing_ok=True)
        self.procs.clear()
        # Namespaces first: the kernel then destroys all their TAP devices in one batch,
        # where the emulator closing them one by one costs ~20 ms each.
        for name in self.namespaces:
            clean.remove_netns(name, log=lambda *_: None)
        self.namespaces.clear()
        if self.backend is not None:
            self.backend.stop()
            self.backend = None

    def describe(self) -> dict[str, Any]:
        return {
            "topology": json.loads(self.spec.to_json()),
            "links": self.backend.describe() if self.backend else None,
            "proxy_configs": self.configs,
            "namespace_prefix": self.prefix,
        }

    def __enter__(self) -> Network:
        self.build()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_suppress(fn) -> None:
    try:
        fn()
    except (ProcessLookupError, PermissionError):
        pass
