"""proxy.config: mcproxy.conf files, error positions, table semantics, extensions, render."""

from __future__ import annotations

import re
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from proxy.config import (
    AUTO_TABLE_BASE,
    DEFAULT_TABLE,
    AddressMatch,
    Candidate,
    Config,
    ConfigDisabled,
    ConfigError,
    DownstreamOptions,
    FilterBinding,
    Instance,
    Rule,
    RuleMatching,
    Selection,
    SelectionRecord,
    SwitchPolicy,
    Table,
    Takeover,
    load,
    parse,
    render,
    wildcard_matches,
)
from proxy.timers import MOBILITY, Timers

DATA = Path(__file__).parent / "data"
ALL_FILES = sorted(p.name for p in DATA.glob("*.conf"))

a = ip_address


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, "t.conf")
    return str(info.value)


# --- real files --------------------------------------------------------------------


def test_readme_example_is_one_ipv4_instance_in_the_default_table():
    c = load(DATA / "readme_vlan.conf")
    assert (c.protocol, c.family, c.version) == ("IGMPv3", 4, 3)
    (inst,) = c.instances
    assert (inst.name, inst.upstreams, inst.downstreams) == ("myProxy", ("vlan2",), ("vlan100",))
    assert (inst.table_id, inst.table_id_explicit) == (253, False)
    assert c.path == str(DATA / "readme_vlan.conf")


def test_mag_example_keeps_quoted_names_and_table_id():
    c = load(DATA / "mag1.conf")
    (inst,) = c.instances
    assert (c.protocol, c.family, c.version) == ("MLDv2", 6, 2)
    assert inst.upstreams == ("mag1-eth1",)
    assert inst.downstreams == ("mag1-eth3", "mag1-eth4")
    assert (inst.table_id, inst.table_id_explicit) == (3, True)
    assert inst.downstream_options == {
        "mag1-eth3": DownstreamOptions(2, True),
        "mag1-eth4": DownstreamOptions(2, True),
    }
    assert inst.rule_matching == {
        "in": RuleMatching("in", "first"),
        "out": RuleMatching("out", "all"),
    }
    assert inst.timers == Timers()
    assert inst.filters == () and inst.peerings == ()


def test_multi_upstream_example_sets_rule_matching_and_a_blacklist():
    c = load(DATA / "multi_upstream.conf")
    inst = c.instance("proxy")
    assert inst.upstreams == ("proxy-eth0", "proxy-eth1")
    assert inst.rule_matching["out"] == RuleMatching("out", "first")
    assert inst.rule_matching["in"] == RuleMatching("in", "first")
    (binding,) = inst.filters
    assert binding == FilterBinding(
        "upstream",
        "proxy-eth1",
        "out",
        "blacklist",
        Table(None, (Rule(None, AddressMatch.single(a("239.99.99.99")), AddressMatch("any")),)),
    )
    assert not inst.allows("upstream", "proxy-eth1", "out", "x", a("192.0.2.1"), a("239.99.99.99"))
    assert inst.allows("upstream", "proxy-eth1", "out", "x", a("192.0.2.1"), a("239.99.99.98"))
    assert inst.allows("upstream", "proxy-eth0", "out", "x", a("192.0.2.1"), a("239.99.99.99"))


def test_filter_example_tables_are_flattened_in_order():
    c = load(DATA / "filters.conf")
    assert list(c.tables) == ["ssm", "local", "allow_pc_1", "nested", "always"]
    assert c.tables["ssm"].rules == (
        Rule(None, AddressMatch.single(a("232.1.1.1")), AddressMatch.wildcard()),
        Rule(None, AddressMatch.wildcard(), AddressMatch.network("192.0.2.0/28")),
    )
    nested = c.tables["nested"]
    assert nested.rules == (
        c.tables["allow_pc_1"].rules
        + (Rule(None, AddressMatch.network("232.0.0.0/8"), AddressMatch.wildcard()),)
        + c.tables["local"].rules
    )
    assert nested.name == "nested"


def test_filter_example_bindings_and_instances():
    c = load(DATA / "filters.conf")
    edge, split = c.instances
    assert edge.upstreams == ("eth0", "eth1", "eth3")
    assert edge.downstreams == ("eth4", "eth5", "eth10")
    assert (split.table_id, split.table_id_explicit) == (10, True)
    assert (edge.table_id, edge.table_id_explicit) == (AUTO_TABLE_BASE, False)
    assert edge.rule_matching["in"] == RuleMatching("in", "mutex", 10000)
    assert edge.rule_matching["out"] == RuleMatching("out", "all")
    assert split.rule_matching["out"] == RuleMatching("out", "first")
    assert len(edge.filters) == 7 and len(split.filters) == 4
    named = edge.filter_for("upstream", "eth0", "out")
    assert named is not None and named.table is c.tables["ssm"]
    inline = edge.filter_for("downstream", "eth4", "out")
    assert inline is not None and inline.table.name is None
    assert split.filter_for("downstream", "tunD1", "out").table.rules == (
        Rule("tunU1", AddressMatch.wildcard(), AddressMatch.wildcard()),
    )


def test_pmip_example_uses_every_extension():
    c = load(DATA / "pmip_mag.conf")
    lma1, lma2 = c.instances
    assert lma1.peerings == ("mag1-peer",)
    assert lma1.interfaces() == ("mag1-tun1", "mag1-mn1", "mag1-mn2", "mag1-peer")
    assert lma1.role_of("mag1-peer") == "peering"
    assert c.instance_of("mag1-peer") is lma1 and c.instance_of("nope") is None
    assert lma1.timers == replace(MOBILITY, query_interval=30.0, last_listener_query_interval=0.5)
    assert lma2.timers == Timers(robustness=3, query_response_interval=2.5, gmi_qri_factor=2.0)
    assert lma1.downstream_options == {
        "mag1-mn1": DownstreamOptions(version=2, querier_election=False),
        "mag1-mn2": DownstreamOptions(version=1, querier_election=True),
    }
    assert lma2.peerings == ()
    assert lma2.downstream_options == {"mag1-mn3": DownstreamOptions(2, True)}
    up = lma1.filter_for("upstream", "mag1-tun1", "in")
    assert up is not None
    assert up.allows(None, a("2001:db8::5"), a("ff3e::1234"))
    assert not up.allows(None, a("2001:db9::5"), a("ff3e::1234"))
    assert up.allows(None, a("2001:db9::5"), a("ff0e::db8:1"))


@pytest.mark.parametrize("name", ALL_FILES)
def test_render_round_trips_every_example(name):
    c = load(DATA / name)
    text = render(c)
    assert parse(text) == c
    assert render(parse(text)) == text


# --- lexical details -----------------------------------------------------------------


def test_keywords_are_case_insensitive_and_comments_go_anywhere():
    c = parse(
        "PROTOCOL mldv2; # comment ; with a semicolon\n"
        "PInstance p: up # upstream\n ==> down;\n"
        "pinstance p UPSTREAM up IN WhiteList TABLE { # rules follow\n (ff3e::/16 | *) };\n"
    )
    assert c.protocol == "MLDv2"
    (inst,) = c.instances
    assert inst.upstreams == ("up",) and inst.downstreams == ("down",)
    assert inst.filters[0].kind == "whitelist"


def test_quoted_names_hold_any_character_and_keywords():
    weird = "!§$%&/()=?_-<>||@{}[]:,;#"
    c = parse(f'pinstance "in": "{weird}" "table" ==> "a b";')
    (inst,) = c.instances
    assert inst.name == "in"
    assert inst.upstreams == (weird, "table")
    assert inst.downstreams == ("a b",)
    assert parse(render(c)) == c


def test_unquoted_names_may_contain_dots_and_dashes():
    c = parse("pinstance mag-1: eth0.100 mag1-eth1 ==> in-x;")
    (inst,) = c.instances
    assert inst.name == "mag-1"
    assert inst.upstreams == ("eth0.100", "mag1-eth1")
    assert inst.downstreams == ("in-x",)


def test_statements_may_use_instances_and_tables_before_defining_them():
    c = parse(
        "pinstance p upstream u out whitelist table late;\n"
        "table late { (table later) };\n"
        "table later { (239.1.2.3 | *) };\n"
        "pinstance p: u ==> d;\n"
    )
    binding = c.instances[0].filters[0]
    assert binding.table == Table("late", c.tables["later"].rules)


def test_empty_statements_and_empty_tables_are_accepted():
    c = parse(";; table none {}; pinstance p: u ==> d; ;")
    assert c.tables == {"none": Table("none", ())}
    assert parse(render(c)) == c


# --- table ids ---------------------------------------------------------------------


def test_lone_ipv6_instance_without_id_uses_the_ipv6_default_table():
    c = parse("protocol MLDv2; pinstance p: u ==> d;")
    assert c.instances[0].table_id == DEFAULT_TABLE[6] == 254


def test_instances_without_id_are_numbered_like_mcproxy_by_name_after_explicit_ids():
    # proxy.cpp: sorted by name (a, b, c, d, e); explicit ids set the counter.
    c = parse(
        "pinstance d: d0 ==> d1;\n"
        "pinstance b(10): b0 ==> b1;\n"
        "pinstance a: a0 ==> a1;\n"
        "pinstance e: e0 ==> e1;\n"
        "pinstance c: c0 ==> c1;\n"
    )
    ids = [(i.name, i.table_id, i.table_id_explicit) for i in c.instances]
    assert ids == [
        ("d", 12, False),
        ("b", 10, True),
        ("a", 1, False),
        ("e", 13, False),
        ("c", 11, False),
    ]
    assert parse(render(c)) == c


def test_counted_table_id_skips_an_explicit_id_instead_of_colliding():
    c = parse("pinstance a: a0 ==> a1;\npinstance b(1): b0 ==> b1;\npinstance c: c0 ==> c1;")
    assert [i.table_id for i in c.instances] == [2, 1, 3]


def test_lone_instance_without_id_uses_the_default_table_and_byte_order_sorts_names():
    assert parse("protocol MLDv2; pinstance z: a ==> b;").instances[0].table_id == 254
    c = parse("pinstance b: x ==> y;\npinstance B: u ==> v;\npinstance a: p ==> q;")
    assert {i.name: i.table_id for i in c.instances} == {"B": 1, "a": 2, "b": 3}


def test_interface_may_be_upstream_and_downstream_of_one_instance():
    c = parse(
        "pinstance A: ap a1 ==> ap a2;\npinstance A downstream ap in blacklist table {(*|*)};"
    )
    a = c.instance("A")
    assert (a.upstreams, a.downstreams) == (("ap", "a1"), ("ap", "a2"))
    assert a.filter_for("downstream", "ap", "in").kind == "blacklist"
    assert parse(render(c)) == c


def test_instance_without_upstream_is_querier_only():
    c = parse('protocol IGMPv3;\npinstance lma(1): ==> "lma-eth0" "lma-eth1";')
    lma = c.instance("lma")
    assert (lma.upstreams, lma.downstreams, lma.table_id) == ((), ("lma-eth0", "lma-eth1"), 1)
    assert parse(render(c)) == c


def test_interface_shared_by_instances_and_names_listed_twice_are_used_once():
    c = parse("pinstance a: x ==> y;\npinstance b: u ==> y v v;")
    assert [(i.upstreams, i.downstreams) for i in c.instances] == [
        (("x",), ("y",)),
        (("u",), ("y", "v")),
    ]


def test_last_protocol_line_wins():
    c = parse("protocol IGMPv3;\nprotocol MLDv2;\npinstance p: a ==> b;")
    assert (c.protocol, c.family, c.version) == ("MLDv2", 6, 2)


def test_disable_stops_reading_and_raises_config_disabled():
    with pytest.raises(ConfigDisabled) as info:
        parse("protocol IGMPv3;\n\ndisable; # off\npinstance a: x ==> y;\nnonsense here;", "m.conf")
    assert str(info.value) == "m.conf:3: 'disable;' - this file disables the proxy"
    # Statements before it are still checked, as mcproxy does.
    with pytest.raises(ConfigError):
        parse("protocol IGMPv4;\ndisable;")


# --- errors: one line, exact position ---------------------------------------------------

ERRORS = [
    # syntax
    ("protocol MLDv2", "t.conf:1:15: missing ';' after 'MLDv2'"),
    (
        "pinstance a: x ==> y\npinstance b: u ==> v;",
        "t.conf:1:21: missing ';' after 'y'",
    ),
    (
        'pinstance a: x ==> "y"\n',
        "t.conf:1:23: missing ';' after \"y\"",
    ),
    ("protocol MLDv2 x;", "t.conf:1:16: expected ';', found 'x'"),
    (
        "pinstanc a: x ==> y;",
        "t.conf:1:1: unknown statement 'pinstanc' (expected 'protocol', 'table', 'pinstance' or 'disable')",
    ),
    (
        "protocol MLDv3;",
        "t.conf:1:10: unknown protocol 'MLDv3' "
        "(expected 'IGMPv1', 'IGMPv2', 'IGMPv3', 'MLDv1' or 'MLDv2')",
    ),
    ("pinstance a: x ==> y; %", "t.conf:1:23: unexpected character '%'"),
    ("pinstance a: x => y;", "t.conf:1:16: unexpected character '=' (did you mean '==>'?)"),
    ('pinstance a: "x ==> y;\n', "t.conf:1:14: unterminated quoted name (no closing '\"')"),
    ('pinstance a: "" ==> y;', "t.conf:1:14: empty interface name"),
    (
        "pinstance in: x ==> y;",
        "t.conf:1:11: expected instance name, found keyword 'in' (quote it to use it as a name)",
    ),
    ("pinstance a: x y;", "t.conf:1:17: expected '==>', found ';'"),
    (
        "pinstance a: x ==> y;\npinstance a foo;",
        "t.conf:2:13: expected ':', '(', 'upstream', 'downstream', 'peering' or 'timers', "
        "found 'foo'",
    ),
    (
        "table t { (* | *) ",
        "t.conf:1:19: expected a rule '[IF](GROUP | SOURCE)' or '}', found end of file",
    ),
    ("table t { (* *) };", "t.conf:1:14: expected '|' between group and source, found '*'"),
    ("table t { (239.1.1 | *) };", "t.conf:1:12: invalid address '239.1.1'"),
    ("table t { (*/8 | *) };", "t.conf:1:13: '*' cannot take a prefix length"),
    (
        "table u { (*|*) };\ntable t { eth0(table u) };",
        "t.conf:2:11: an interface name cannot qualify a table reference",
    ),
    (
        "pinstance a: x ==> y;\npinstance a upstream x in rulematching mutex;",
        "t.conf:2:45: expected the mutex timeout in milliseconds, found ';'",
    ),
    # instances and interfaces
    (
        "pinstance a: x ==> y;\npinstance a: u ==> v;",
        "t.conf:2:11: instance 'a' is already defined on line 1",
    ),
    (
        "pinstance a: x ==> y;\npinstance a peering z y;",
        "t.conf:2:23: interface 'y' is both downstream and peering of instance 'a'",
    ),
    (
        "pinstance a: x ==> y;\npinstance b: u ==> v;\npinstance b peering x;",
        "t.conf:3:21: interface 'x' is upstream of instance 'a' (line 1) "
        "and cannot also be peering of instance 'b'",
    ),
    ("pinstance a: x ==> ;", "t.conf:1:16: instance 'a' has no downstream interface after '==>'"),
    (
        "pinstance a(0): x ==> y;",
        "t.conf:1:13: bad table id '0': expected an integer from 1 to 999999999",
    ),
    (
        "pinstance a(-1): x ==> y;",
        "t.conf:1:13: bad table id '-1': expected an integer from 1 to 999999999",
    ),
    (
        "protocol MLDv1;\npinstance a(100000000): x ==> y;",
        "t.conf:2:13: bad table id '100000000': expected an integer from 1 to 99999999",
    ),
    (
        "pinstance a(5): x ==> y;\npinstance b(5): u ==> v;",
        "t.conf:2:13: table id 5 is already used by instance 'a' (line 1)",
    ),
    # addresses and tables
    (
        "protocol MLDv2;\ntable t { (239.1.1.1 | *) };",
        "t.conf:2:12: address '239.1.1.1' is IPv4 but protocol MLDv2 is IPv6",
    ),
    (
        "table t { (* | 2001:db8::1) };",
        "t.conf:1:16: address '2001:db8::1' is IPv6 but protocol IGMPv3 is IPv4",
    ),
    ("table t { (232.0.0.0/33 | *) };", "t.conf:1:22: prefix length 33 out of range 0..32"),
    (
        "protocol MLDv2;\ntable t { (ff3e::/129 | *) };",
        "t.conf:2:19: prefix length 129 out of range 0..128",
    ),
    (
        "table t { (239.0.0.9 - 239.0.0.1 | *) };",
        "t.conf:1:12: range start 239.0.0.9 is above range end 239.0.0.1",
    ),
    (
        "pinstance a: x ==> y;\npinstance a upstream x in whitelist table nope;",
        "t.conf:2:43: unknown table 'nope'",
    ),
    ("table t { (table nope) };", "t.conf:1:18: unknown table 'nope'"),
    ("table a { (table a) };", "t.conf:1:18: table cycle: a -> a"),
    (
        "table a { (table b) };\ntable b { (table {(table a)}) };",
        "t.conf:2:26: table cycle: a -> b -> a",
    ),
    ("table t {};\ntable t {};", "t.conf:2:7: table 't' is already defined on line 1"),
    # bindings
    (
        "pinstance a: x ==> y;\npinstance b upstream x in whitelist table {(*|*)};",
        "t.conf:2:11: unknown instance 'b'",
    ),
    (
        "pinstance a: x ==> y;\npinstance a upstream y in whitelist table {(*|*)};",
        "t.conf:2:22: 'y' is not an upstream interface of instance 'a'",
    ),
    (
        "pinstance a: x ==> y;\n"
        "pinstance a downstream * out whitelist table {(*|*)};\n"
        "pinstance a downstream * out blacklist table {(*|*)};",
        "t.conf:3:24: the out filter of downstream '*' is already set on line 2",
    ),
    (
        "pinstance a: x ==> y;\npinstance a downstream * in rulematching all;",
        "t.conf:2:13: rulematching applies to upstreams only ('upstream *')",
    ),
    (
        "pinstance a: x ==> y;\npinstance a upstream * out rulematching mutex 100;",
        "t.conf:2:41: mutex applies to 'in' only ('out' takes first or all)",
    ),
    (
        "pinstance a: x ==> y;\npinstance a upstream * in rulematching mutex 0;",
        "t.conf:2:46: the mutex timeout must be at least 1 ms",
    ),
    (
        "pinstance a: x ==> y;\n"
        "pinstance a upstream * in rulematching first;\n"
        "pinstance a upstream x in rulematching all;",
        "t.conf:3:24: rulematching in is already set on line 2",
    ),
    (
        "pinstance a: x ==> y;\npinstance a upstream x in greylist table t;",
        "t.conf:2:27: expected 'whitelist', 'blacklist' or 'rulematching', found 'greylist'",
    ),
    # extensions
    (
        "pinstance a: x ==> y;\npinstance b peering z;",
        "t.conf:2:11: unknown instance 'b'",
    ),
    (
        "pinstance a: x ==> y;\npinstance a timers query-intervall 10;",
        "t.conf:2:20: unknown timer 'query-intervall' (expected 'profile' or one of robustness, "
        "query-interval, query-response-interval, last-listener-query-interval, "
        "last-listener-query-count, startup-query-interval, startup-query-count, gmi-qri-factor)",
    ),
    (
        "pinstance a: x ==> y;\npinstance a timers query-interval 10m;",
        "t.conf:2:35: bad value '10m' for 'query-interval': "
        "expected a duration such as 125, 125s, 500ms or 1.5s",
    ),
    (
        "pinstance a: x ==> y;\npinstance a timers robustness 2.5;",
        "t.conf:2:31: bad value '2.5' for 'robustness': expected a whole number",
    ),
    (
        "pinstance a: x ==> y;\npinstance a timers profile fast;",
        "t.conf:2:28: expected a timers profile ('default' or 'mobility'), found 'fast'",
    ),
    (
        "pinstance a: x ==> y;\npinstance a timers;",
        "t.conf:2:19: expected 'profile' or a timer name, found ';'",
    ),
    (
        "pinstance a: x ==> y;\n"
        "pinstance a timers profile mobility\n"
        "pinstance a timers robustness 3;",
        "t.conf:2:36: missing ';' after 'mobility'",
    ),
    (
        "pinstance a: x ==> y;\n"
        "pinstance a timers profile mobility;\n"
        "pinstance a timers profile default;",
        "t.conf:3:20: the timers profile of instance 'a' is already set on line 2",
    ),
    (
        "pinstance a: x ==> y;\npinstance a timers query-interval 5;",
        "t.conf:2:1: invalid timers for instance 'a': "
        "query response interval must be smaller than the query interval",
    ),
    (
        "pinstance a: x ==> y;\npinstance a timers robustness 0;",
        "t.conf:2:1: invalid timers for instance 'a': "
        "robustness must be at least 1 (RFC 3376 §8.1: MUST NOT be 0)",
    ),
    (
        "protocol MLDv2;\npinstance a: x ==> y;\npinstance a downstream y version 3;",
        "t.conf:3:34: MLD has no version 3 (1..2)",
    ),
    (
        "pinstance a: x ==> y;\npinstance a downstream y version 0;",
        "t.conf:2:34: IGMP has no version 0 (1..3)",
    ),
    (
        "pinstance a: x ==> y;\npinstance a downstream x version 2;",
        "t.conf:2:24: 'x' is not a downstream interface of instance 'a'",
    ),
    (
        "pinstance a: x ==> y;\npinstance a downstream y querier-election maybe;",
        "t.conf:2:43: expected 'on' or 'off', found 'maybe'",
    ),
    (
        "pinstance a: x ==> y;\npinstance a downstream * querier-election off;",
        "t.conf:2:24: 'querier-election' needs a downstream name, not '*'",
    ),
    (
        "pinstance a: x ==> y;\n"
        "pinstance a downstream y version 2;\n"
        "pinstance a downstream y version 1;",
        "t.conf:3:26: version of downstream 'y' is already set on line 2",
    ),
    (
        "pinstance a: x ==> y;\npinstance a downstream y speed 2;",
        "t.conf:2:26: expected 'in', 'out', 'version', 'querier-election' or 'subscribers', "
        "found 'speed'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1][7:60] for e in ERRORS])
def test_error_names_file_line_and_column(text, expected):
    assert error_of(text) == expected


def test_error_carries_its_parts_as_attributes():
    with pytest.raises(ConfigError) as info:
        parse("pinstance a: x ==> y;\npinstance a: u ==> v;", "f.conf")
    e = info.value
    assert (e.path, e.line, e.col) == ("f.conf", 2, 11)
    assert e.message == "instance 'a' is already defined on line 1"
    assert "\n" not in str(e)


def test_unreadable_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert str(info.value) == f"{missing}:0:0: cannot read: No such file or directory"


def test_non_utf8_file_is_a_config_error_at_the_bad_byte(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"protocol IGMPv3;\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(bad)
    assert str(info.value) == f"{bad}:2:6: not UTF-8 text"


# --- matching semantics --------------------------------------------------------------


def test_address_match_kinds():
    assert AddressMatch.wildcard().matches(a("2001:db8::1"))
    assert AddressMatch.single(a("232.1.1.1")).matches(a("232.1.1.1"))
    assert not AddressMatch.single(a("232.1.1.1")).matches(a("232.1.1.2"))
    prefix = AddressMatch.network("232.0.0.0/8")
    assert prefix.matches(a("232.0.0.0")) and prefix.matches(a("232.255.255.255"))
    assert not prefix.matches(a("233.0.0.0"))
    rng = AddressMatch.between(a("239.1.0.0"), a("239.1.0.9"))
    assert rng.matches(a("239.1.0.0")) and rng.matches(a("239.1.0.9"))
    assert not rng.matches(a("239.1.0.10"))
    # the other family never matches, even where the integers would
    assert not AddressMatch.network("0.0.0.0/0").matches(a("::1"))


def test_prefix_with_host_bits_is_masked_like_mcproxy():
    c = parse("table t { (* | 192.0.2.77/24) };")
    (rule,) = c.tables["t"].rules
    assert rule.source == AddressMatch.network("192.0.2.0/24")
    assert str(rule.source) == "192.0.2.0/24"


def test_open_range_bounds_and_unspecified_address_mean_wildcard():
    c = parse(
        "table t {\n"
        "  (* - 239.0.0.255 | 0.0.0.0)\n"
        "  (239.255.0.0 - * | *)\n"
        "  (232.1.1.1-232.1.1.5 | 198.18.0.1)\n"
        "};"
    )
    low, high, tight = c.tables["t"].rules
    assert low.group == AddressMatch.between(a("0.0.0.0"), a("239.0.0.255"))
    assert low.source == AddressMatch.wildcard()
    assert high.group == AddressMatch.between(a("239.255.0.0"), a("255.255.255.255"))
    assert tight.group == AddressMatch.between(a("232.1.1.1"), a("232.1.1.5"))
    assert parse(render(c)) == c


def test_interface_qualified_rule_needs_that_interface():
    rule = Rule("tun1", AddressMatch.wildcard(), AddressMatch.wildcard())
    assert rule.matches("tun1", a("192.0.2.1"), a("232.1.1.1"))
    assert not rule.matches("tun2", a("192.0.2.1"), a("232.1.1.1"))
    assert not rule.matches(None, a("192.0.2.1"), a("232.1.1.1"))
    assert Rule(None, AddressMatch.wildcard(), AddressMatch.wildcard()).matches(
        "any", a("192.0.2.1"), a("232.1.1.1")
    )


def test_rule_checks_group_and_source_on_their_own_sides():
    c = parse("table t { (232.0.0.0/8 | 192.0.2.0/24) };")
    table = c.tables["t"]
    assert table.matches("x", source=a("192.0.2.9"), group=a("232.1.2.3"))
    assert not table.matches("x", source=a("232.1.2.3"), group=a("192.0.2.9"))
    assert not table.matches("x", source=a("198.18.0.1"), group=a("232.1.2.3"))


def test_table_matches_if_any_rule_does():
    c = load(DATA / "filters.conf")
    nested = c.tables["nested"]
    assert nested.matches("eth0", a("192.0.2.33"), a("239.9.9.9"))  # allow_pc_1
    assert nested.matches("eth0", a("198.18.7.7"), a("232.7.7.7"))  # 232/8
    assert nested.matches("eth0", a("198.18.2.55"), a("239.1.3.4"))  # local, range
    assert not nested.matches("eth0", a("198.18.2.56"), a("239.1.3.4"))
    assert not nested.matches("eth0", a("198.18.7.7"), a("239.2.0.1"))


def test_whitelist_allows_matches_and_blacklist_allows_the_rest():
    table = Table(None, (Rule(None, AddressMatch.network("232.0.0.0/8"), AddressMatch("any")),))
    white = FilterBinding("downstream", "d", "out", "whitelist", table)
    black = FilterBinding("downstream", "d", "out", "blacklist", table)
    inside, outside = a("232.1.1.1"), a("239.1.1.1")
    src = a("192.0.2.1")
    assert white.allows("u", src, inside) and not white.allows("u", src, outside)
    assert not black.allows("u", src, inside) and black.allows("u", src, outside)


def test_binding_for_an_interface_beats_the_wildcard_and_absence_allows_all():
    c = load(DATA / "filters.conf")
    edge = c.instance("edge")
    assert edge.filter_for("downstream", "eth5", "out").table.name == "allow_pc_1"
    assert edge.filter_for("downstream", "eth10", "out").table.name == "nested"
    assert edge.filter_for("downstream", "eth10", "in") is None
    src, grp = a("198.18.9.9"), a("239.200.0.1")
    assert edge.allows("downstream", "eth10", "in", "eth0", src, grp)  # no binding
    assert edge.allows("downstream", "eth10", "out", "eth0", src, grp)  # blacklist miss
    assert not edge.allows("downstream", "eth4", "in", "eth0", src, grp)  # blacklist always


# --- extensions ----------------------------------------------------------------------


def test_timers_durations_accept_plain_seconds_units_and_fractions():
    c = parse(
        "pinstance a: x ==> y;\n"
        "pinstance a timers query-interval 125 query-response-interval 1.5s\n"
        "  last-listener-query-interval 500ms startup-query-interval 2s\n"
        "  last-listener-query-count 1 startup-query-count 3 gmi-qri-factor 2;"
    )
    assert c.instances[0].timers == Timers(
        query_interval=125.0,
        query_response_interval=1.5,
        last_listener_query_interval=0.5,
        startup_query_interval=2.0,
        last_listener_query_count=1,
        startup_query_count=3,
        gmi_qri_factor=2.0,
    )


def test_timers_profile_applies_first_then_overrides_in_file_order():
    c = parse(
        "pinstance a: x ==> y;\n"
        "pinstance a timers robustness 3 query-interval 20s;\n"
        "pinstance a timers profile mobility query-interval 30s;\n"
    )
    assert c.instances[0].timers == replace(MOBILITY, robustness=3, query_interval=30.0)


def test_timers_checked_once_all_statements_are_combined():
    # QI 5 alone would clash with the default QRI 10; the next line makes it valid.
    c = parse(
        "pinstance a: x ==> y;\n"
        "pinstance a timers query-interval 5;\n"
        "pinstance a timers query-response-interval 1;\n"
    )
    assert c.instances[0].timers.query_interval == 5.0


def test_render_expresses_timers_through_the_closest_profile():
    c = parse(
        "pinstance a: x ==> y;\n"
        "pinstance a timers profile mobility query-interval 45.3s startup-query-count 4;"
    )
    text = render(c)
    assert "pinstance a timers profile mobility query-interval 45.3s startup-query-count 4;" in text
    assert parse(text) == c


def test_removing_the_peering_line_switches_peering_off():
    with_peering = parse(
        "pinstance a: x ==> y;\npinstance a peering p1 p2;\npinstance a peering p3;"
    )
    assert with_peering.instances[0].peerings == ("p1", "p2", "p3")
    assert parse("pinstance a: x ==> y;").instances[0].peerings == ()


def test_downstream_version_defaults_to_the_protocol_version():
    c = parse("protocol IGMPv2; pinstance a: x ==> y z; pinstance a downstream z version 3;")
    assert c.instances[0].downstream_options == {
        "y": DownstreamOptions(version=2, querier_election=True),
        "z": DownstreamOptions(version=3, querier_election=True),
    }


# --- render --------------------------------------------------------------------------


def test_render_leaves_defaults_out_and_reads_back_equal():
    c = parse(
        "pinstance a: x ==> y;\n"
        "pinstance a upstream * in rulematching first;\n"
        "pinstance a downstream y version 3;\n"
        "pinstance a downstream y querier-election on;\n"
        "pinstance a timers profile default;\n"
    )
    assert render(c) == "protocol IGMPv3;\n\npinstance a: x ==> y;\n"
    assert parse(render(c)) == c


def test_render_quotes_names_that_need_it():
    c = parse('pinstance "my proxy": "out" eth0.1 ==> "x#y" "a;b" mag1-eth0;')
    assert render(c).splitlines()[-1] == (
        'pinstance "my proxy": "out" eth0.1 ==> "x#y" "a;b" mag1-eth0;'
    )


def test_render_refuses_a_name_the_grammar_cannot_hold():
    c = parse("pinstance a: x ==> y;")
    bad = replace(c, instances=(replace(c.instances[0], name='say "hi"'),))
    with pytest.raises(ValueError, match="cannot be written"):
        render(bad)


def test_render_writes_named_tables_by_name_and_others_inline():
    c = load(DATA / "filters.conf")
    text = render(c)
    assert "pinstance edge upstream eth0 out whitelist table ssm;" in text
    assert "pinstance edge downstream eth4 out whitelist table {(* | 198.18.5.0/24)};" in text
    assert "pinstance edge upstream * in rulematching mutex 10000;" in text


def test_config_equality_ignores_the_path():
    text = (DATA / "mag1.conf").read_text()
    assert parse(text, "one") == parse(text, "two")
    assert isinstance(parse(text), Config)


# --- configs built in Python ---------------------------------------------------------

#: The lab's MAG timers (topologies.network.ProxySettings): mobility, QRI 10 ms.
LAB_TIMERS = replace(
    MOBILITY, query_response_interval=0.01, startup_query_count=2, last_listener_query_interval=0.1
)


def lab_mag1() -> Config:
    """MAG 1 of a two-LMA lab with peering, built as objects."""
    return Config.build(
        [
            Instance.build(
                "mag1_lma1",
                upstreams=["t-lma1"],
                downstreams=["a-mn1", "a-cn1"],
                peerings=["p1m2l1"],
                timers=LAB_TIMERS,
                table_id=11,
            ),
            Instance.build(
                "mag1_lma2",
                ["t-lma2"],
                ["a-mn2"],
                peerings=["p2m2l2"],
                timers=LAB_TIMERS,
                table_id=12,
            ),
        ],
        protocol="MLDv2",
    )


def test_a_built_mag_config_equals_the_text_the_lab_writes():
    timers = (
        "query-interval 60 query-response-interval 10ms startup-query-interval 1 "
        "startup-query-count 2 last-listener-query-interval 100ms last-listener-query-count 1"
    )
    lab_text = (
        "protocol MLDv2;\n"
        "pinstance mag1_lma1(11): t-lma1 ==> a-mn1 a-cn1;\n"
        "pinstance mag1_lma1 peering p1m2l1;\n"
        f"pinstance mag1_lma1 timers {timers};\n"
        "pinstance mag1_lma2(12): t-lma2 ==> a-mn2;\n"
        "pinstance mag1_lma2 peering p2m2l2;\n"
        f"pinstance mag1_lma2 timers {timers};\n"
    )
    assert lab_mag1() == parse(lab_text)


def test_a_built_mag_config_renders_and_reads_back_equal():
    c = lab_mag1()
    text = render(c)
    assert "pinstance mag1_lma1(11): t-lma1 ==> a-mn1 a-cn1;" in text
    assert "pinstance mag1_lma1 peering p1m2l1;" in text
    assert "query-response-interval 0.01s" in text
    back = parse(text)
    assert back == c
    assert back.instance("mag1_lma2").timers.query_response_interval == 0.01
    assert [i.table_id for i in back.instances] == [11, 12]


def test_built_instances_without_ids_get_the_ids_a_file_would_give():
    lone = Config.build([Instance.build("a", ["x"], ["y"])], protocol="MLDv2")
    assert lone.instances[0].table_id == DEFAULT_TABLE[6]
    pair = Config.build(
        [Instance.build("a", ["x"], ["y"]), Instance.build("b", ["u"], ["v"], table_id=7)]
    )
    assert [i.table_id for i in pair.instances] == [AUTO_TABLE_BASE, 7]
    assert parse(render(pair)) == pair == parse("pinstance a: x ==> y; pinstance b(7): u ==> v;")


def test_a_built_multiple_upstream_config_reads_back_equal():
    no_querier = Takeover("no-querier", 1.5)
    inst = Instance.build(
        "px",
        ["up1", "up2"],
        ["d1", "d2"],
        table_id=10,
        downstream_options={
            "d1": DownstreamOptions(2, subscribers=(ip_network("2001:db8:1::/64"),))
        },
        selection=Selection(
            candidates=(
                Candidate(
                    "up1",
                    priority=7,
                    records=(SelectionRecord(group=AddressMatch.network("ff0e::/16")),),
                    takeover=no_querier,
                ),
                Candidate("up2", takeover=no_querier),
            ),
            default="up2",
            revert=SwitchPolicy("after", 2.0),
            migrate=SwitchPolicy("move"),
            overlap=0.0,
        ),
    )
    c = Config.build([inst], protocol="MLDv2")
    text = render(c)
    assert "pinstance px upstream up1 select group ff0e::/16;" in text
    assert "pinstance px upstream up2 takeover no-querier 1.5s;" in text
    assert "pinstance px upstream * revert after 2s;" in text
    assert parse(text) == c


def test_a_built_selection_gets_a_candidate_for_every_upstream_in_order():
    inst = Instance.build(
        "px", ["u1", "u2"], ["d"], selection=Selection((Candidate("u2", priority=3),))
    )
    assert inst.selection is not None
    assert inst.selection.candidates == (Candidate("u1"), Candidate("u2", priority=3))
    with pytest.raises(ValueError, match="not upstreams"):
        Instance.build("px", ["u1"], ["d"], selection=Selection((Candidate("u9"),)))


def test_built_rule_matching_and_filters_read_back_equal():
    ssm = Table("ssm", (Rule(None, AddressMatch.network("ff3e::/16"), AddressMatch.wildcard()),))
    inst = Instance.build(
        "p",
        ["u1", "u2"],
        ["d"],
        rule_matching=[RuleMatching("in", "mutex", 500)],
        filters=[FilterBinding("upstream", "u1", "out", "whitelist", ssm)],
    )
    c = Config.build([inst], protocol="MLDv2")
    assert c.tables == {"ssm": ssm}
    assert "pinstance p upstream u1 out whitelist table ssm;" in render(c)
    assert parse(render(c)) == c


def test_config_build_refuses_an_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol"):
        Config.build([], protocol="MLDv3")


def test_interface_wildcards_are_names_and_filters_on_them_apply_to_matches():
    c = parse(
        'protocol MLDv2; pinstance p: eth+ ==> ppp* "tap+";\n'
        "pinstance p downstream ppp* out whitelist table {(ff0e::/16 | *)};\n"
        "pinstance p downstream ppp7 out blacklist table {(* | *)};\n",
    )
    p = c.instance("p")
    assert (p.upstreams, p.downstreams) == (("eth+",), ("ppp*", "tap+"))
    assert p.filter_for("downstream", "ppp0", "out").kind == "whitelist"
    assert p.filter_for("downstream", "ppp7", "out").kind == "blacklist"  # its own name wins
    assert p.filter_for("downstream", "tap0", "out") is None
    assert parse(render(c)) == c
    # As iptables: every name that starts with the stem, the stem itself too.
    names = ("eth0", "eth", "eth0.100", "veth0", "et")
    assert [wildcard_matches("eth+", n) for n in names] == [True, True, True, False, False]


def test_upstream_selection_refuses_wildcard_upstreams():
    with pytest.raises(ConfigError, match=re.escape("not the wildcard 'tun+'")):
        parse("protocol MLDv2; pinstance p: tun+ ==> d1; pinstance p upstream * overlap 1s;")
