"""MAG-LMA tunnels: IPv6-in-IPv6 (``ip6tnl``) where the kernel has it, else a plain link.

RFC 5213 §6.10 tunnels an MN's traffic between the MAG's Proxy-CoA and the LMA's LMAA
(IPv6-in-IPv6, RFC 2473), while PBU and PBA travel outside the tunnel. With
``ip6tnl`` the shaped "tunnel" link of Table I becomes the transport link (``x-lma<l>`` on
the MAG, ``x-mag<m>`` on the LMA) and the tunnel device keeps the name the proxies and
routes use (``t-lma<l>``, ``t-mag<m>``). Without ``ip6tnl`` (this machine's kernel) that
name is the point-to-point link itself. ``meta.json`` records which of the two a run used.

Addressing of the transport link: 2001:db8:3:<l><m>::/64, the LMA ::1 and the MAG ::2,
which is also the MAG's Proxy-CoA; the tunnel's inner prefix is the point-to-point link's.
"""

from __future__ import annotations

import functools
import os
import subprocess
from typing import Literal

TunnelMode = Literal["ip6tnl", "p2p"]
MODES = ("auto", "ip6tnl", "p2p")

IP6TNL_MISSING = (
    "ip6tnl tunnels unavailable: this kernel has no ip6_tunnel "
    "(ip link add ... type ip6tnl failed); use tunnels=p2p"
)


def transport_if(tunnel_if: str) -> str:
    """The transport link under tunnel device ``t-...``: ``x-...``."""
    return "x" + tunnel_if.removeprefix("t")


def transport_prefix(lma: int, mag: int) -> str:
    return f"2001:db8:3:{lma}{mag}::"


def tunnel_cmds(name: str, local: str, remote: str) -> list[str]:
    """Create ``name`` as an ip6ip6 tunnel from ``local`` to ``remote``, multicast-capable.

    No encapsulation limit option: RFC 5213 does not ask for one, and without it the
    tunnel header is exactly 40 bytes. ``multicast on`` lets MLD and the kernel's
    multicast forwarding use the device like any link.
    """
    return [
        f"ip -6 tunnel add {name} mode ip6ip6 local {local} remote {remote} encaplimit none",
        f"ip link set dev {name} multicast on up",
    ]


@functools.cache
def ip6tnl_available() -> bool:
    """Can this kernel make an ip6tnl device? Probed in a throwaway namespace."""
    ns = f"pmltnl{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return False
    try:
        add = ["ip", "-n", ns, "link", "add", "probe0", "type", "ip6tnl", "mode", "ip6ip6"]
        add += ["local", "2001:db8:3::1", "remote", "2001:db8:3::2"]
        return subprocess.run(add, capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def resolve_mode(requested: str) -> TunnelMode:
    """``auto`` takes ip6tnl where the kernel has it; ``ip6tnl`` without it is an error."""
    if requested not in MODES:
        raise ValueError(f"unknown tunnel mode {requested!r} ({', '.join(MODES)})")
    if requested == "p2p":
        return "p2p"
    if ip6tnl_available():
        return "ip6tnl"
    if requested == "ip6tnl":
        raise ValueError(IP6TNL_MISSING)
    return "p2p"
