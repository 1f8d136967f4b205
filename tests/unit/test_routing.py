"""Upstream selection: precedence of the records, the split of states, runtime state
(takeover, revert, migration), the grammar extension and its example files."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from proxy.clock import FakeScheduler
from proxy.config import (
    CATCH_ALL,
    Candidate,
    ConfigError,
    Selection,
    SelectionRecord,
    SwitchPolicy,
    Takeover,
    load,
    parse,
    render,
)
from proxy.membership import MembershipState
from proxy.routing import Policy, listed_sources, select_upstreams
from proxy.selection import UpstreamSelector
from proxy.timers import Timers

EXAMPLES = Path(__file__).resolve().parents[2] / "proxy" / "examples"
a = ip_address
IN, EX = MembershipState.include, MembershipState.exclude
S1, S2 = a("2001:db8:c::1"), a("2001:db8:c::2")
G1, G2 = a("ff0e::1:5"), a("ff3e::1:1")
LINK1 = (ip_network("2001:db8:1::/64"),)  # a downstream's subscriber prefixes
LINK2 = (ip_network("2001:db8:2::/64"),)


def instance(*lines: str, ups: str = "u1 u2 u3", downs: str = "d1 d2"):
    text = f"protocol MLDv2;\npinstance p: {ups} ==> {downs};\n"
    text += "".join(f"pinstance p {line};\n" for line in lines)
    return parse(text, "t.conf").instances[0]


def selection(*lines: str) -> Selection:
    sel = instance(*lines).selection
    assert sel is not None
    return sel


# --- precedence (paper V.B, draft §4.1-4.4) --------------------------------------------

# (what it shows, statements, (subscribers, source, group), usable, winners, reason)
PRECEDENCE = [
    (
        "longer group prefix wins within group-only records",
        ["upstream u1 select group ff0e::/16", "upstream u2 select group ff0e::1:0/112"],
        ((), None, G1),
        "u1 u2",
        ("u2",),
        "record",
    ),
    (
        "a group address is more specific than a group prefix",
        ["upstream u1 select group ff0e::1:5", "upstream u2 select group ff0e::/16"],
        ((), None, G1),
        "u1 u2",
        ("u1",),
        "record",
    ),
    (
        "source+group beats group-only, even a longer group with a higher priority",
        [
            "upstream u1 select source 2001:db8:c::/64 group ff3e::/16",
            "upstream u2 select group ff3e::1:0/112",
            "upstream u2 priority 100",
        ],
        ((), S1, G2),
        "u1 u2",
        ("u1",),
        "record",
    ),
    (
        "a source prefix beats a group prefix",
        ["upstream u1 select source 2001:db8::/32", "upstream u2 select group ff3e::1:1"],
        ((), S1, G2),
        "u1 u2",
        ("u1",),
        "record",
    ),
    (
        "source+group beats source-only",
        [
            "upstream u1 select source 2001:db8:c::1",
            "upstream u2 select source 2001:db8::/32 group ff3e::/16",
        ],
        ((), S1, G2),
        "u1 u2",
        ("u2",),
        "record",
    ),
    (
        "a record with a source does not match an any-source request",
        [
            "upstream u1 select source 2001:db8:c::1 group ff0e::/16",
            "upstream u2 select group ff0e::/16",
        ],
        ((), None, G1),
        "u1 u2",
        ("u2",),
        "record",
    ),
    (
        "a subscriber prefix beats source+group",
        [
            "upstream u1 select subscriber 2001:db8:1::/48",
            "upstream u2 select source 2001:db8:c::1 group ff3e::1:1",
        ],
        (LINK1, S1, G2),
        "u1 u2",
        ("u1",),
        "record",
    ),
    (
        "subscriber+group beats subscriber-only",
        [
            "upstream u1 select subscriber 2001:db8:1::/48",
            "upstream u2 select subscriber 2001:db8::/32 group ff0e::/16",
        ],
        (LINK1, None, G1),
        "u1 u2",
        ("u2",),
        "record",
    ),
    (
        "the longer subscriber prefix wins",
        [
            "upstream u1 select subscriber 2001:db8::/32",
            "upstream u2 select subscriber 2001:db8:1::/48",
        ],
        (LINK1, None, G1),
        "u1 u2",
        ("u2",),
        "record",
    ),
    (
        "a subscriber record needs the link inside its prefix",
        ["upstream u1 select subscriber 2001:db8:1::/48", "upstream u2 select group ff0e::/16"],
        (LINK2, None, G1),
        "u1 u2",
        ("u2",),
        "record",
    ),
    (
        "a link wider than the subscriber prefix does not match it",
        ["upstream u1 select subscriber 2001:db8:1::/48", "upstream u2 select group ff0e::/16"],
        ((ip_network("2001:db8::/32"),), None, G1),
        "u1 u2",
        ("u2",),
        "record",
    ),
    (
        "a link without prefixes matches no subscriber record",
        ["upstream u1 select subscriber 2001:db8:1::/48", "upstream u2 select group ff0e::/16"],
        ((), None, G1),
        "u1 u2",
        ("u2",),
        "record",
    ),
    (
        "equal records: the higher interface priority wins",
        ["upstream u1 priority 5", "upstream u2 priority 9", "upstream u3 priority 1"],
        ((), None, G1),
        "u1 u2 u3",
        ("u2",),
        "record",
    ),
    (
        "equal records and priorities: all tied upstreams (robust reception)",
        ["upstream u1 priority 5", "upstream u2 priority 5", "upstream u3 priority 1"],
        ((), None, G1),
        "u1 u2 u3",
        ("u1", "u2"),
        "record",
    ),
    (
        "no statement but a policy one: every candidate ties (robust reception)",
        ["upstream * revert never"],
        ((), S1, G2),
        "u1 u2 u3",
        ("u1", "u2", "u3"),
        "record",
    ),
    (
        "a record beats the implicit catch-all of a higher-priority candidate",
        [
            "upstream u1 priority 9",
            "upstream u2 select group ff0e::/16",
            "upstream u3 select group ff3e::/16",
        ],
        ((), None, G1),
        "u1 u2 u3",
        ("u2",),
        "record",
    ),
    (
        "takeover: an unusable candidate is skipped, the next one takes over",
        ["upstream u1 priority 9", "upstream u2 priority 5", "upstream u3 priority 1"],
        ((), None, G1),
        "u2 u3",
        ("u2",),
        "record",
    ),
    (
        "takeover of robust reception: the remaining tied upstream continues",
        ["upstream u1 priority 5", "upstream u2 priority 5", "upstream u3 priority 1"],
        ((), None, G1),
        "u2 u3",
        ("u2",),
        "record",
    ),
    (
        "no record matches: the default upstream",
        [
            "upstream u1 select group ff3e::/16",
            "upstream u2 select group ff3e::/16",
            "upstream u3 default",
        ],
        ((), None, G1),
        "u1 u2 u3",
        ("u3",),
        "default",
    ),
    (
        "the default is used when the record's upstream is unusable",
        [
            "upstream u1 select group ff0e::/16",
            "upstream u2 select group ff3e::/16",
            "upstream u3 default",
        ],
        ((), None, G1),
        "u2 u3",
        ("u3",),
        "default",
    ),
    (
        "no default: the highest priority, then the highest address (U5)",
        [
            "upstream u1 select group ff3e::/16",
            "upstream u2 select group ff3e::/16",
            "upstream u3 select group ff3e::/16",
            "upstream u2 priority 3",
            "upstream u3 priority 3",
        ],
        ((), None, G1),
        "u1 u2 u3",
        ("u3",),  # u3 has the higher address in ADDRESSES
        "fallback",
    ),
    (
        "nothing usable: nothing selected",
        ["upstream u1 select group ff0e::/16", "upstream u2 default"],
        ((), None, G1),
        "",
        (),
        "none",
    ),
]
ADDRESSES = {"u1": a("fe80::3"), "u2": a("fe80::1"), "u3": a("fe80::2")}


@pytest.mark.parametrize(
    ("statements", "request_", "usable", "winners", "reason"),
    [row[1:] for row in PRECEDENCE],
    ids=[row[0] for row in PRECEDENCE],
)
def test_precedence(statements, request_, usable, winners, reason):
    sel = selection(*statements)
    ok = set(usable.split())
    choice = select_upstreams(sel, ok.__contains__, *request_, addresses=ADDRESSES)
    assert (choice.upstreams, choice.reason) == (winners, reason)


def test_specificity_orders_the_kinds_as_the_draft_says():
    def rec(**parts) -> SelectionRecord:
        return (
            parse(
                "protocol MLDv2;\npinstance p: u ==> d;\npinstance p upstream u select "
                + " ".join(f"{k} {v}" for k, v in parts.items())
                + ";"
            )
            .instances[0]
            .selection.candidates[0]
            .records[0]
        )

    order = [
        CATCH_ALL,
        rec(group="ff0e::/16"),
        rec(group="ff0e::1:0/112"),
        rec(source="2001:db8::/32"),
        rec(source="2001:db8::/32", group="ff0e::/16"),
        rec(subscriber="2001:db8::/32"),
        rec(subscriber="2001:db8::/32", group="ff0e::/16"),
        rec(subscriber="2001:db8::/32", source="2001:db8::1"),
        rec(subscriber="2001:db8:1::/48"),
    ]
    keys = [r.specificity() for r in order]
    assert keys[1:3] == sorted(keys[1:3])
    assert keys[5] > keys[4] > keys[3] > keys[2] > keys[1] > keys[0]
    assert keys[7] > keys[6] > keys[5]
    assert keys[8] < keys[6]  # presence first, lengths only within the same kind


def test_choice_tells_why():
    sel = selection("upstream u1 priority 4", "upstream u2 priority 4", "upstream u3 priority 1")
    choice = select_upstreams(sel, lambda _u: True, (), None, G1)
    assert str(choice) == "robust reception: u1, u2 tie, record '*' of u1 (priority 4)"


# --- splitting downstream states into per-upstream shares ------------------------------


def subscriptions(inst, states, **kw):
    """Policy.subscriptions with the real precedence, everything usable."""
    policy = Policy(inst)
    subscribers = {"d1": LINK1, "d2": LINK2}

    def choose(d, s, g):
        ok = lambda u: policy.upstream_allows(u, s, g)  # noqa: E731
        return frozenset(select_upstreams(inst.selection, ok, subscribers[d], s, g).upstreams)

    group = kw.pop("group", G2)
    return policy.subscriptions(group, states, choose=choose, **kw)


def test_include_states_are_split_source_by_source():
    inst = instance(
        "upstream u1 select source 2001:db8:c::1",
        "upstream u2 select source 2001:db8:c::2",
        "upstream u3 default",
        ups="u1 u2 u3",
    )
    subs = subscriptions(inst, {"d1": IN([S1, S2])})
    assert subs == {"u1": IN([S1]), "u2": IN([S2]), "u3": IN()}


def test_any_source_request_is_split_on_the_sources_records_name():
    inst = instance(
        "upstream u1 select group ff3e::/16", "upstream u2 select source 2001:db8:c::1", ups="u1 u2"
    )
    assert listed_sources(inst.selection, G2) == {S1}
    assert subscriptions(inst, {"d1": EX()}) == {"u1": EX([S1]), "u2": IN([S1])}
    # A listener that blocks S1 wants it from nowhere.
    assert subscriptions(inst, {"d1": EX([S1])}) == {"u1": EX([S1]), "u2": IN()}


def test_subscriber_links_are_merged_per_upstream():
    inst = instance(
        "upstream u1 select subscriber 2001:db8:1::/48",
        "upstream u2 select subscriber 2001:db8:2::/48",
        ups="u1 u2",
    )
    assert subscriptions(inst, {"d1": EX(), "d2": IN([S1])}) == {"u1": EX(), "u2": IN([S1])}
    assert subscriptions(inst, {"d1": IN([S2]), "d2": IN()}) == {"u1": IN([S2]), "u2": IN()}


def test_robust_reception_gives_both_upstreams_the_same_state():
    inst = instance("upstream u1 priority 3", "upstream u2 priority 3", ups="u1 u2")
    assert subscriptions(inst, {"d1": EX([S2]), "d2": IN([S2])}) == {"u1": EX(), "u2": EX()}


def test_an_upstream_whose_in_filter_refuses_the_channel_is_not_a_candidate():
    inst = instance(
        "upstream u1 priority 9",
        "upstream u2 priority 1",
        "upstream u1 in blacklist table {(ff3e::1:0/112 | *)}",
        ups="u1 u2",
    )
    assert subscriptions(inst, {"d1": IN([S1])}) == {"u1": IN(), "u2": IN([S1])}
    assert subscriptions(inst, {"d1": EX()}, group=G1) == {"u1": EX(), "u2": IN()}


def test_peered_sources_are_blocked_on_every_selected_upstream():
    inst = instance("upstream u1 priority 3", "upstream u2 priority 3", ups="u1 u2")
    subs = subscriptions(inst, {"d1": EX()}, peered_sources=frozenset({S1}))
    assert subs == {"u1": EX([S1]), "u2": EX([S1])}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("first", {"u1": EX(), "u2": IN()}), ("all", {"u1": EX(), "u2": EX()})],
)
def test_files_without_selection_keep_mcproxy_rule_matching(mode, expected):
    inst = instance(f"upstream * in rulematching {mode}", ups="u1 u2")
    assert inst.selection is None
    assert Policy(inst).subscriptions(G1, {"d1": EX()}) == expected


# --- runtime: health, takeover, revert, migration -------------------------------------


class Harness:
    """An UpstreamSelector on a fake clock, with one downstream link d1."""

    def __init__(self, *lines: str, ups: str = "u1 u2") -> None:
        self.sched = FakeScheduler()
        self.changes: list = []
        self.sel = selection(*lines) if lines else None
        self.up = ups.split()
        self.ups = UpstreamSelector(
            instance(*lines, ups=ups).selection, self.sched, self.changes.append
        )
        for u in self.up:
            self.ups.set_link(u, True)

    def choose(self, source=None, group=G1, downstreams=("d1",)):
        """One recomputation of ``group``: the requests of ``downstreams``; the others end."""
        links = {"d1": LINK1, "d2": LINK2}
        self.ups.begin(group)
        got = {d: set(self.ups.choose(d, links[d], source, group)) for d in downstreams}
        self.ups.commit(group)
        return got["d1"] if tuple(downstreams) == ("d1",) else got

    def reload(self, *lines: str) -> None:
        self.ups.reconfigure(instance(*lines, ups=" ".join(self.up)).selection)


def test_no_querier_takeover_gives_a_fresh_link_its_grace_then_fails_it():
    h = Harness("upstream u1 priority 9", "upstream u1 takeover no-querier 3s")
    assert h.ups.usable("u1") and h.choose() == {"u1"}
    h.sched.advance(2.0)
    assert h.ups.query_heard("u1", a("fe80::1")) is False  # still usable: no change
    h.sched.advance(2.9)
    assert h.ups.usable("u1") and h.changes == []
    h.sched.advance(0.2)
    assert not h.ups.usable("u1") and h.changes == [None]
    assert h.ups.state("u1").startswith("failed: no querier (last query 3.1s ago")
    assert h.choose() == {"u2"}
    assert h.ups.query_heard("u1", a("fe80::1")) is True  # usable again: recompute
    assert h.choose() == {"u1", "u2"}  # revert immediate: make-before-break first
    h.sched.advance(1.0)
    assert h.choose() == {"u1"}


def test_takeover_off_keeps_a_down_upstream_selected():
    h = Harness("upstream u1 priority 9", "upstream u1 takeover off")
    h.ups.set_link("u1", False)
    assert h.ups.usable("u1") and h.choose() == {"u1"}


def test_link_down_takes_over_at_once_and_no_pin_keeps_a_failed_upstream():
    h = Harness("upstream u1 priority 9", "upstream * revert never")
    assert h.choose() == {"u1"}
    assert h.ups.set_link("u1", False) is True
    assert h.choose() == {"u2"} and not h.ups.pins
    assert "takeover (u1 failed: link down)" in h.ups.why(("d1", None, G1))


def test_revert_after_waits_to_restore_then_moves_back_make_before_break():
    h = Harness("upstream u1 priority 9", "upstream * revert after 5s", "upstream * overlap 500ms")
    h.choose()
    h.ups.set_link("u1", False)
    assert h.choose() == {"u2"}
    h.sched.advance(1)
    assert h.ups.set_link("u1", True) is False  # healthy, not yet usable
    assert h.ups.state("u1") == "restoring: usable in 5.0s (revert after 5s)"
    assert h.choose() == {"u2"}
    h.sched.advance(5)
    assert h.changes[-1] is None and h.ups.usable("u1")
    assert h.choose() == {"u1", "u2"}
    assert "moving (make-before-break, u2 kept for 0.5s, revert after 5s)" in h.ups.why(
        ("d1", None, G1)
    )
    h.sched.advance(0.5)
    assert h.changes[-1] == {G1}
    assert h.choose() == {"u1"} and not h.ups.pins
    assert h.choose() == {"u1"}  # and no new pin for the upstream it just left


def test_a_link_that_never_failed_is_not_held_back_by_revert_after():
    h = Harness("upstream * revert after 30s")
    assert h.ups.usable("u1") and h.ups.usable("u2")


def test_revert_never_keeps_existing_subscriptions_on_the_standby():
    h = Harness("upstream u1 priority 9", "upstream * revert never")
    h.choose()
    h.ups.set_link("u1", False)
    assert h.choose() == {"u2"}
    h.ups.set_link("u1", True)
    assert h.choose() == {"u2"}  # non-revertive
    assert h.choose(group=G2) == {"u1"}  # a new subscription takes the best upstream
    assert h.ups.why(("d1", None, G1)).startswith("kept on u2 (revert never)")
    h.ups.begin(G1)
    h.ups.commit(G1)  # the subscription ended
    assert not h.ups.pins and h.choose() == {"u1"}


@pytest.mark.parametrize("overlap", [0.0, 1.0])
def test_revert_immediate_moves_back_with_or_without_overlap(overlap):
    h = Harness("upstream u1 priority 9", f"upstream * overlap {overlap}s")
    h.choose()
    h.ups.set_link("u1", False)
    h.choose()
    h.ups.set_link("u1", True)
    assert h.choose() == ({"u1", "u2"} if overlap else {"u1"})


MIGRATE_BEFORE = ("upstream u1 select group ff0e::/16", "upstream u2 select group ff3e::/16")
MIGRATE_AFTER = ("upstream u1 select group ff3e::/16", "upstream u2 select group ff0e::/16")


def test_migrate_keep_holds_existing_subscriptions_until_they_end():
    h = Harness(*MIGRATE_BEFORE)
    assert h.choose() == {"u1"}
    h.reload(*MIGRATE_AFTER)
    # The existing subscription is kept, a new one (d2) takes the new upstream.
    assert h.choose(downstreams=("d1", "d2")) == {"d1": {"u1"}, "d2": {"u2"}}
    assert h.ups.why(("d1", None, G1)).startswith("kept on u1 (migrate keep); new subscriptions")
    h.sched.advance(3600)
    assert h.choose() == {"u1"}  # keep has no deadline
    assert h.ups.release(G1) == 1 and h.changes[-1] == {G1}  # ctl migrate
    assert h.choose() == {"u1", "u2"}
    h.sched.advance(1)
    assert h.choose() == {"u2"}


def test_migrate_keep_ends_when_the_old_upstream_fails():
    h = Harness(*MIGRATE_BEFORE)
    h.choose()
    h.reload(*MIGRATE_AFTER)
    h.choose()
    h.ups.set_link("u1", False)
    assert h.choose() == {"u2"} and not h.ups.pins


def test_migrate_after_holds_then_moves_make_before_break():
    h = Harness(*MIGRATE_BEFORE, "upstream * migrate after 10s", "upstream * overlap 2s")
    h.choose()
    h.reload(*MIGRATE_AFTER, "upstream * migrate after 10s", "upstream * overlap 2s")
    assert h.choose() == {"u1"}
    h.sched.advance(9.9)
    assert h.choose() == {"u1"}
    h.sched.advance(0.1)
    assert h.choose() == {"u1", "u2"}
    h.sched.advance(2)
    assert h.choose() == {"u2"}


def test_migrate_move_switches_after_the_overlap():
    h = Harness(*MIGRATE_BEFORE, "upstream * migrate move")
    h.choose()
    h.reload(*MIGRATE_AFTER, "upstream * migrate move")
    assert h.choose() == {"u1", "u2"}
    h.sched.advance(1)
    assert h.choose() == {"u2"}


def test_a_reload_that_changes_nothing_for_a_key_keeps_it_and_pins_nothing():
    h = Harness(*MIGRATE_BEFORE)
    h.choose()
    h.reload(*MIGRATE_BEFORE, "upstream u2 priority 3")
    assert h.choose() == {"u1"} and not h.ups.pins


def test_serves_separates_providers_unless_the_channel_is_the_same():
    h = Harness(
        "upstream u1 select subscriber 2001:db8:1::/48",
        "upstream u2 select subscriber 2001:db8:2::/48",
    )
    h.ups.begin(G1)
    h.ups.choose("d1", LINK1, None, G1)
    h.ups.choose("d2", LINK2, None, G1)
    h.ups.commit(G1)
    assert h.ups.serves("d1", S1, G1, "u1", mirrored=False)
    assert not h.ups.serves("d2", S1, G1, "u1", mirrored=False)  # another provider's source
    assert h.ups.serves("d2", S1, G1, "u1", mirrored=True)  # the same flow on both upstreams
    assert h.ups.serves("d3", S1, G1, "u1", mirrored=False)  # nothing known: no restriction


def test_a_migration_pin_makes_old_and_new_upstream_carry_the_same_channel():
    h = Harness(*MIGRATE_BEFORE)
    h.choose()
    h.reload(*MIGRATE_AFTER)
    h.ups.begin(G1)
    h.ups.choose("d1", LINK1, None, G1)
    h.ups.choose("d2", LINK2, None, G1)
    h.ups.commit(G1)
    assert h.ups.serves("d2", S1, G1, "u1", mirrored=False)  # new listener, old parent


def test_snapshot_lists_candidates_and_requests_with_reasons():
    h = Harness("upstream u1 priority 4", "upstream u2 select group ff0e::/16")
    h.choose()
    snap = h.ups.snapshot()
    assert [c["interface"] for c in snap["candidates"]] == ["u1", "u2"]
    assert snap["candidates"][0]["records"] == ["*"]
    (channel,) = snap["channels"]
    assert channel["upstreams"] == ["u2"] and channel["record"] == "group ff0e::/16"
    assert channel["why"] == "record 'group ff0e::/16' of u2 (priority 0)"


# --- the grammar extension ---------------------------------------------------------------


def test_extension_statements_build_the_selection():
    inst = instance(
        "upstream u1 priority 200",
        "upstream u1 select subscriber 2001:db8:1::/48 source 2001:db8:c::1 group ff3e::/16",
        "upstream u2 select",
        "upstream u2 default",
        "upstream * takeover no-querier 2500ms",
        "upstream u3 takeover off",
        "upstream * revert after 30s",
        "upstream * migrate move",
        "upstream * overlap 0",
        "downstream d1 subscribers 2001:db8:1::/64 2001:db8:1:1::5",
    )
    sel = inst.selection
    assert sel.candidates[0].priority == 200
    (record,) = sel.candidates[0].records
    assert str(record) == "subscriber 2001:db8:1::/48 source 2001:db8:c::1 group ff3e::/16"
    assert sel.candidates[1].records == (CATCH_ALL,) and sel.default == "u2"
    assert sel.candidates[1].takeover == Takeover("no-querier", 2.5)
    assert sel.candidates[2] == Candidate("u3", 0, (), Takeover("off"))
    assert (sel.revert, sel.migrate, sel.overlap) == (
        SwitchPolicy("after", 30.0),
        SwitchPolicy("move"),
        0.0,
    )
    assert inst.downstream_options["d1"].subscribers == (
        ip_network("2001:db8:1::/64"),
        ip_network("2001:db8:1:1::5/128"),
    )


def test_files_without_the_extension_have_no_selection():
    inst = instance(
        "upstream * in rulematching mutex 200", "upstream u1 in whitelist table {(* | *)}"
    )
    assert inst.selection is None


def test_extension_renders_and_reads_back_equal():
    c = parse(
        "protocol MLDv2;\npinstance p(7): u1 u2 ==> d1;\n"
        "pinstance p upstream u1 select group ff0e::/16;\npinstance p upstream u1 select;\n"
        "pinstance p upstream u2 priority 3;\npinstance p upstream u2 default;\n"
        "pinstance p upstream * takeover no-querier 1.5s;\npinstance p upstream * migrate after 90s;\n"
        "pinstance p downstream d1 subscribers 2001:db8:1::/64;\n"
    )
    assert parse(render(c)) == c
    defaults_only = parse("pinstance p: a b ==> c;\npinstance p upstream * revert immediate;")
    assert defaults_only.instances[0].selection is not None
    assert parse(render(defaults_only)) == defaults_only


EXTENSION_ERRORS = [
    ("upstream * priority 3", "t.conf:3:22: 'priority' needs an upstream name, not '*'"),
    (
        "upstream u1 revert never",
        "t.conf:3:25: 'revert' applies to the whole instance: write 'upstream * revert'",
    ),
    ("upstream u1 priority 65536", "t.conf:3:34: priority 65536 out of range 0..65535"),
    (
        "upstream u1 select group ff0e::1 group ff0e::2",
        "t.conf:3:46: 'group' given twice in one record",
    ),
    (
        "upstream u1 select group ff0e::1 - ff0e::9",
        "t.conf:3:38: a group prefix is '*', an address or a prefix, not a range",
    ),
    (
        "upstream u1 select group 239.1.1.1",
        "t.conf:3:38: address '239.1.1.1' is IPv4 but protocol MLDv2 is IPv6",
    ),
    (
        "upstream u1 select colour red",
        "t.conf:3:32: expected 'subscriber', 'source', 'group' or ';', found 'colour'",
    ),
    (
        "upstream u1 takeover sometimes",
        "t.conf:3:34: expected 'off', 'link-down' or 'no-querier', found 'sometimes'",
    ),
    ("upstream u1 takeover no-querier 0", "t.conf:3:34: the no-querier time must be positive"),
    (
        "upstream * revert after 10m",
        "t.conf:3:37: bad value '10m' for 'revert': expected a duration such as 125, 125s, 500ms or 1.5s",
    ),
    (
        "upstream * migrate sometime",
        "t.conf:3:32: expected 'keep', 'move' or 'after', found 'sometime'",
    ),
    ("upstream u9 priority 3", "t.conf:3:22: 'u9' is not an upstream interface of instance 'p'"),
    (
        "upstream u1 fly",
        "t.conf:3:25: expected 'in', 'out', 'priority', 'select', 'default', 'takeover', 'revert', 'migrate' or 'overlap', found 'fly'",
    ),
    ("downstream d1 subscribers *", "t.conf:3:39: a subscriber prefix cannot be '*'"),
    (
        "downstream * subscribers 2001:db8::/32",
        "t.conf:3:24: 'subscribers' needs a downstream name, not '*'",
    ),
]


@pytest.mark.parametrize(
    ("line", "expected"), EXTENSION_ERRORS, ids=[e[1][9:60] for e in EXTENSION_ERRORS]
)
def test_extension_errors_name_file_line_and_column(line, expected):
    with pytest.raises(ConfigError) as info:
        instance(line)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ["upstream u1 default", "upstream u2 default"],
            "t.conf:4:25: the default upstream is already 'u1' (line 3)",
        ),
        (
            ["upstream u1 priority 1", "upstream u1 priority 2"],
            "t.conf:4:25: priority of upstream 'u1' is already set on line 3",
        ),
        (
            ["upstream u1 select group ff0e::/16", "upstream u1 select group ff0e::/16"],
            "t.conf:4:25: upstream 'u1' already has the record 'group ff0e::/16' (line 3)",
        ),
        (
            ["upstream * in rulematching all", "upstream u1 priority 1"],
            "t.conf:3:1: 'rulematching in' cannot be combined with upstream selection (line 4); "
            "remove one of them",
        ),
        (
            ["downstream d1 subscribers 2001:db8::/32", "downstream d1 subscribers 2001:db8::/33"],
            "t.conf:4:27: subscribers of downstream 'd1' are already set on line 3",
        ),
    ],
)
def test_extension_conflicts(lines, expected):
    with pytest.raises(ConfigError) as info:
        instance(*lines)
    assert str(info.value) == expected


# --- the example files --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.conf")))
def test_example_files_parse_and_round_trip(name):
    c = load(EXAMPLES / name)
    assert c.instances[0].selection is not None
    assert parse(render(c)) == c


def example(name: str):
    inst = load(EXAMPLES / f"{name}.conf").instances[0]
    return inst, inst.selection


def pick(sel, subscribers=(), source=None, group="ff0e::1", usable=None):
    usable = usable or (lambda _u: True)
    g = a(group)
    s = a(source) if source else None
    return select_upstreams(sel, usable, subscribers, s, g).upstreams


def test_example_wholesale_puts_each_offer_on_its_provider():
    _, sel = example("wholesale")
    assert pick(sel, group="ff0e::1:7") == ("isp0",)
    assert pick(sel, group="ff3e::2:7", source="2001:db8::1") == ("wsp0",)
    assert pick(sel, group="ff0e::99") == ("isp0",)  # default


def test_example_fast_switching_is_active_standby():
    _, sel = example("fast-switching")
    assert pick(sel) == ("primary",)
    assert pick(sel, usable=lambda u: u != "primary") == ("standby",)
    assert sel.candidates[0].takeover == Takeover("no-querier", 3.0)


def test_example_load_balancing_splits_the_line_up():
    _, sel = example("load-balancing")
    src = "2001:db8:100::5"
    assert pick(sel, source=src, group="ff3e::1:10") == ("east",)
    assert pick(sel, source=src, group="ff3e::1:90") == ("west",)
    assert pick(sel, source="2001:db8:100::99", group="ff3e::2:1") == ("west",)
    assert pick(sel, source=src, group="ff3e::1:90", usable=lambda u: u == "east") == ("east",)


def test_example_network_merging_maps_customer_bases():
    inst, sel = example("network-merging")
    a_link = (ip_network("2001:db8:a:1::/64"),)
    b_link = inst.downstream_options["custB1"].subscribers
    assert pick(sel, a_link) == ("provA",)
    assert pick(sel, b_link) == ("provB",)
    assert pick(sel, b_link, group="ff0e::c0:1") == ("provA",)


def test_example_migration_moves_a_channel_on_reload():
    inst, sel = example("migration")
    assert pick(sel, group="ff0e::7:1") == ("legacy",)
    text = (EXAMPLES / "migration.conf").read_text()
    moved = text.replace('"legacy" select group ff0e::7', '"nextgen" select group ff0e::7')
    new = parse(moved).instances[0].selection
    assert pick(new, group="ff0e::7:1") == ("nextgen",)
    assert new.migrate == SwitchPolicy("after", 3600.0)


def test_example_robust_reception_ties_the_premium_channels_only():
    _, sel = example("robust-reception")
    assert pick(sel, group="ff3e::e:1", source="2001:db8::1") == ("rtrA", "rtrB")
    assert pick(sel, group="ff0e::5") == ("rtrA",)
    assert pick(sel, group="ff0e::5", usable=lambda u: u == "rtrB") == ("rtrB",)


# --- reload: timers change in place ------------------------------------------------------


def test_querier_takes_new_timers_without_dropping_state():
    from proxy.messages import GroupRecord, RecordType, Report
    from proxy.querier import Querier

    sched = FakeScheduler()
    sent = []
    q = Querier(
        version=2,
        family=6,
        timers=Timers(query_interval=125, startup_query_count=1),
        scheduler=sched,
        own_address="fe80::1",
        send=sent.append,
        on_change=lambda g: None,
    )
    q.start()
    q.receive(Report((GroupRecord(RecordType.CHANGE_TO_EXCLUDE, G1, ()),)), a("fe80::9"))
    sched.advance(1)
    count = len(sent)
    q.set_timers(Timers(query_interval=20))
    sched.advance(20.5)
    assert len(sent) == count + 1  # the next General Query came at the new interval
    assert q.state(G1) == EX() and q.timers.query_interval == 20


# --- the control socket ------------------------------------------------------------------


def test_ctl_migrate_moves_the_held_subscriptions_of_one_group():
    from proxy.daemon import Daemon

    h = Harness(*MIGRATE_BEFORE)
    h.choose()
    h.choose(group=a("ff0e::2"))
    h.reload(*MIGRATE_AFTER)
    h.choose()
    h.choose(group=a("ff0e::2"))
    assert len(h.ups.pins) == 2

    class Running:  # what Daemon.command needs of a ProxyInstance
        name, selector = "p", h.ups

    daemon = Daemon(parse("pinstance p: u1 u2 ==> d1;"), ctl_path="/nonexistent")
    daemon.instances["p"] = Running()  # type: ignore[assignment]
    reply = daemon.command({"cmd": "migrate", "instance": "p", "group": str(G1)})
    assert reply == {"ok": True, "moved": 1} and h.changes[-1] == {G1}
    assert daemon.command({"cmd": "migrate", "instance": "p"}) == {"ok": True, "moved": 1}
    assert daemon.command({"cmd": "migrate", "instance": "q"})["ok"] is False
