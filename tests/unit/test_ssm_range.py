"""The default SSM ranges are RFC 4607's exactly: 232/8 and ff3x::/32 for every scope x."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from proxy.groups import IGMP as IGMP_FAMILY
from proxy.groups import MLD as MLD_FAMILY
from tests.unit.test_querier import IGMP, MLD, Link


def test_default_ranges_are_232_8_and_the_sixteen_ff3x_32():
    assert [str(n) for n in IGMP_FAMILY.default_ssm] == ["232.0.0.0/8"]
    assert [str(n) for n in MLD_FAMILY.default_ssm] == [f"ff3{x:x}::/32" for x in range(16)]


@pytest.mark.parametrize(
    ("group", "ssm"),
    [
        ("ff3e::4246", True),  # ff3e::/96, the SSM group ids of RFC 4607
        ("ff35::8000:1", True),
        ("ff3e:0:ffff::1", True),  # still ff3e:0000::/32
        ("ff3e:40:2001:db8:12::4244", False),  # RFC 3306 unicast-prefix-based, plen 64: ASM
        ("ff32:30:2001:db8::1", False),
        ("ff1e::1", False),
    ],
)
def test_mld_any_source_join_is_refused_only_inside_ff3x_32(group, ssm):
    link = Link(MLD)
    link.old_report(group=group)
    assert link.q.groups() == ([] if ssm else [ip_address(group)])
    assert link.q.counters["ignored.ssm-any-source"] == (1 if ssm else 0)


def test_igmp_any_source_join_is_refused_inside_232_8_only():
    link = Link(IGMP)
    link.old_report(group="232.255.0.1")
    link.old_report(group="233.0.0.1")
    assert link.q.groups() == [ip_address("233.0.0.1")]
