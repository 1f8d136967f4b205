"""MAG-LMA tunnel plan: names, addresses and commands of the ip6tnl mode."""

from __future__ import annotations

import pytest

from topologies import tunnels


def test_transport_link_is_named_after_its_tunnel() -> None:
    assert tunnels.transport_if("t-lma2") == "x-lma2"
    assert tunnels.transport_if("t-mag1") == "x-mag1"
    assert tunnels.transport_prefix(2, 3) == "2001:db8:3:23::"


def test_tunnel_is_ip6ip6_without_encapsulation_limit_and_multicast_capable() -> None:
    add, up = tunnels.tunnel_cmds("t-lma1", "2001:db8:3:11::2", "2001:db8:a::1")
    assert add == (
        "ip -6 tunnel add t-lma1 mode ip6ip6 local 2001:db8:3:11::2 remote 2001:db8:a::1 "
        "encaplimit none"
    )
    assert up == "ip link set dev t-lma1 multicast on up"


def test_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tunnels.resolve_mode("p2p") == "p2p"
    monkeypatch.setattr(tunnels, "ip6tnl_available", lambda: False)
    assert tunnels.resolve_mode("auto") == "p2p"
    with pytest.raises(ValueError, match="no ip6_tunnel"):
        tunnels.resolve_mode("ip6tnl")
    monkeypatch.setattr(tunnels, "ip6tnl_available", lambda: True)
    assert tunnels.resolve_mode("auto") == "ip6tnl"
    with pytest.raises(ValueError, match="unknown tunnel mode 'gre'"):
        tunnels.resolve_mode("gre")
