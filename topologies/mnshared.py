"""The proxy on a shared access segment, built with Mininet's own machinery.

Where the lab's own builder gives every MN a point-to-point radio link, this topology is
what a Mininet user writes: ``Topo.addHost``/``addSwitch``/``addLink``, Mininet's
``TCLink`` (netem and HTB on each interface) and a switch for the shared segment: an Open
vSwitch bridge in standalone mode (a learning switch that needs no controller) where OVS
runs, else Mininet's ``LinuxBridge``. One MAG host runs ``pymcproxy``; its upstream
leads to a source host over a link shaped like the MAG-LMA tunnel, its downstream is the
segment, and each receiver hangs off the switch over a link shaped like the access link.

    src --tunnel-- mag[pymcproxy] --- s1 ---access--- r1 ... rN

Table I's profiles go through ``tclink_params``: Mininet takes ``delay='5ms'``,
``jitter='1ms'`` and ``loss`` in percent, and its netem jitter has netem's default
distribution (Mininet has no option for ``distribution normal``), so link delays here
follow Mininet's semantics, not the lab builder's.

The segment carries no MLD snooping (neither OVS standalone nor the bridge as configured
here does it), so every receiver sees what the proxy forwards to the segment, as on a
shared radio cell.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from mininet.link import TCLink
from mininet.net import Mininet
from mininet.node import OVSSwitch
from mininet.nodelib import LinuxBridge
from mininet.topo import Topo

from topologies.links import LinkProfile, profile_from

#: IPv4 addresses Mininet hands out by default (documentation/benchmark space only).
IP_BASE = "198.18.0.0/24"


def tclink_params(profile: LinkProfile) -> dict[str, Any]:
    """A Table I profile as ``TCLink`` keyword arguments, in Mininet's units."""
    params: dict[str, Any] = {"delay": f"{profile.delay_ms:g}ms"}
    if profile.jitter_ms > 0:
        params["jitter"] = f"{profile.jitter_ms:g}ms"
    if profile.loss > 0:
        params["loss"] = profile.loss * 100
    return params


class SharedAccessTopo(Topo):
    """``src`` - ``mag`` (proxy) - switch ``s1`` - ``receivers`` hosts ``r1``..``rN``."""

    def build(self, receivers: int = 2, access: str = "lte") -> None:  # noqa: D102
        src = self.addHost("src", ip=None)
        mag = self.addHost("mag", ip=None)
        s1 = self.addSwitch("s1", failMode="standalone")
        self.addLink(
            src,
            mag,
            intfName1="src-eth0",
            intfName2="mag-up",
            **tclink_params(profile_from("tunnel")),
        )
        self.addLink(mag, s1, intfName1="mag-down")
        for i in range(1, receivers + 1):
            r = self.addHost(f"r{i}", ip=None)
            self.addLink(r, s1, intfName1=f"r{i}-eth0", **tclink_params(profile_from(access)))


def switch_class() -> type:
    """OVS (standalone) where ``ovs-vsctl`` reaches a running switch daemon, else a bridge."""
    if shutil.which("ovs-vsctl"):
        probe = subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True)
        if probe.returncode == 0:
            return OVSSwitch
    return LinuxBridge


def shared_access_net(topo: Topo, switch: type | None = None) -> Mininet:
    """A (not yet started) Mininet for ``topo``: TCLinks, no controller, our address space."""
    return Mininet(
        topo=topo,
        link=TCLink,
        switch=switch or switch_class(),
        controller=None,
        ipBase=IP_BASE,
        autoSetMacs=True,
        waitConnected=False,
        build=False,
    )
