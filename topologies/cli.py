"""Interactive use: build a PMIPv6 topology and open the Mininet CLI on its namespaces.

Each node of the running ``Network`` becomes a Mininet host whose shell lives in the node's
named namespace, so the usual Mininet commands work (``mag1 ip -6 mroute show table 11``,
``n11 ping -6 2001:db8:8004::10``, ``xterm mag1``), plus three of ours:
``proxy NODE`` (the proxy's state), ``move NODE MAG`` (an L2 handover) and ``links``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mininet.cli import CLI
from mininet.net import Mininet
from mininet.node import Host

from proxy.ctl import render_text
from topologies.network import Network
from topologies.spec import BUILDERS


class NetnsHost(Host):
    """A Mininet host whose shell runs in an existing named network namespace."""

    def __init__(self, name: str, netns: str, **params) -> None:
        self.netns = netns
        super().__init__(name, inNamespace=False, **params)

    def _popen(self, cmd, **params):
        if self.shell is None and cmd and cmd[0] == "mnexec":
            cmd = ["ip", "netns", "exec", self.netns, *cmd]  # the node's shell itself
        return super()._popen(cmd, **params)


class LabCLI(CLI):
    """Mininet's CLI with commands for the PMIPv6 testbed."""

    prompt = "pmiplab> "

    def __init__(self, mn: Mininet, network: Network, **kw) -> None:
        self.network = network
        super().__init__(mn, **kw)

    def do_proxy(self, line: str) -> None:
        """proxy NODE: interfaces, queriers, groups, upstream joins and MFC of NODE's proxy."""
        node = line.strip()
        try:
            print(render_text(self.network.show(node)))
        except OSError as exc:
            print(f"no proxy on {node!r}: {exc}")

    def do_move(self, line: str) -> None:
        """move NODE MAG: L2 handover of a mobile node to MAG number MAG."""
        try:
            node, mag = line.split()
            self.network.detach(node)
            self.network.attach(node, int(mag))
            print(f"{node} attached to mag{mag}")
        except (ValueError, KeyError) as exc:
            print(f"usage: move mn11 2 ({exc})")

    def do_links(self, _line: str) -> None:
        """links: every emulated link with its profile and drawn delay."""
        if self.network.backend:
            for link in self.network.backend.describe()["links"]:
                state = "up" if link.get("connected") else "down"
                print(
                    f"{link['a']:<22} {link['b']:<22} {link['profile']:<14} "
                    f"{link['delay_ms']:7.2f} ms ±{link['jitter_ms']:g}  {state}"
                )


def interactive(
    name: str,
    access: str = "lte",
    peering: bool = True,
    backend: str = "auto",
    script: str | None = None,
    prefix: str = "pml",
) -> int:
    """Build topology ``name``, start its daemons, run the CLI, tear everything down."""
    if name not in BUILDERS:
        raise ValueError(f"unknown topology {name!r} (valid: {', '.join(BUILDERS)})")
    spec = BUILDERS[name](access=access, peering=peering)
    run_dir = Path(tempfile.mkdtemp(prefix="pmiplab-topo-"))
    net = Network(spec, run_dir, prefix=prefix, backend_name=backend)
    hosts: list[NetnsHost] = []
    try:
        net.build()
        net.start()
        mn = Mininet(topo=None, build=False, controller=None)
        for node in spec.nodes:
            host = NetnsHost(node.name, net.ns(node.name))
            hosts.append(host)
            mn.hosts.append(host)
            mn.nameToNode[node.name] = host
        print(
            f"{name}: {len(spec.nodes)} nodes, link backend {net.backend.name}, logs in {run_dir}"
        )
        print(json.dumps({n.name: n.address for n in spec.end_nodes()}, indent=1))
        LabCLI(mn, net, script=script)
    finally:
        for host in hosts:
            host.terminate()
        net.stop()
    return 0
