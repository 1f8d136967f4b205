"""Decisions for mcproxy files that used to be refused: an interface that is upstream and
downstream of one instance (OpenWrt's default file), a querier-only instance, wildcards."""

from __future__ import annotations

from ipaddress import ip_address

from proxy.config import parse
from proxy.membership import MembershipState
from proxy.routing import Policy, Role

OPENWRT = """protocol IGMPv3;
pinstance A: ap a1 ==> ap a2;
table allways { (*|*) };
table piA_upstreams { a1(*|*) };
pinstance A upstream * in rulematching mutex 10;
pinstance A upstream ap out blacklist table allways;
pinstance A downstream ap in blacklist table allways;
pinstance A downstream ap out blacklist table piA_upstreams;
"""
S, G = ip_address("192.0.2.7"), ip_address("239.1.2.3")
EX = MembershipState.exclude(())


def policy(text: str) -> Policy:
    return Policy(parse(text).instances[0])


def everyone(_ifname, _s, _g) -> bool:
    return True


def test_upstream_and_downstream_interface_has_both_roles():
    p = policy(OPENWRT)
    assert p.roles == {"ap": Role.DOWNSTREAM, "a1": Role.UPSTREAM, "a2": Role.DOWNSTREAM}
    assert p.names(Role.UPSTREAM) == ["ap", "a1"] and p.names(Role.DOWNSTREAM) == ["ap", "a2"]
    assert p.role_name("ap") == "upstream+downstream" and p.is_upstream("ap")


def test_openwrt_file_means_what_its_comments_say():
    p = policy(OPENWRT)
    # (d2): data from the upstream a1 is not sent out the peering ap, only to a2.
    assert p.oifs("a1", S, G, everyone) == {"a2"}
    # Data from the peering ap: its upstream role accepts it (downstream in blacklists all),
    # it goes to a2 and up a1, never back out ap (u1: upstream ap out blacklists all).
    assert p.accepts("ap", S, G)
    assert p.oifs("ap", S, G, everyone) == {"a1", "a2"}
    # A local source on a2 goes up a1 (never up ap: u1) and to ap as a downstream, whose
    # out filter refuses only what came from a1.
    assert p.oifs("a2", S, G, everyone) == {"a1", "ap"}
    # (d1): subscriptions heard on ap are refused; a2's go up both upstreams under mutex.
    subs = p.subscriptions(G, {"ap": EX, "a2": EX})
    assert subs == {"ap": EX, "a1": EX}
    assert p.subscriptions(G, {"ap": EX}) == {
        "ap": MembershipState.include(()),
        "a1": MembershipState.include(()),
    }


def test_querier_only_instance_forwards_between_downstreams_and_subscribes_nowhere():
    p = policy("pinstance lma(1): ==> d1 d2;")
    assert p.names(Role.UPSTREAM) == []
    assert p.oifs("d1", S, G, everyone) == {"d2"}
    assert p.subscriptions(G, {"d1": EX}) == {}


def test_wildcards_are_adopted_in_their_role():
    p = policy("pinstance w: tun+ ==> ppp* d0;")
    assert p.roles == {"d0": Role.DOWNSTREAM}
    assert p.pattern_roles("ppp3") == (Role.DOWNSTREAM, False)
    assert p.pattern_roles("tun0") == (Role.UPSTREAM, False)
    assert p.pattern_roles("eth0") is None and p.pattern_roles("d0") is None
    p.adopt("ppp3", Role.DOWNSTREAM, False)
    p.adopt("tun0", Role.UPSTREAM, False)
    assert p.oifs("tun0", S, G, everyone) == {"d0", "ppp3"}
    p.remove("ppp3")
    assert p.oifs("tun0", S, G, everyone) == {"d0"}
