"""Membership state: merge (RFC 4605 §4.1 / RFC 3376 §3.2) and host-side report records."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from proxy.membership import (
    NO_INTEREST,
    MembershipState,
    current_state_record,
    group_source_query_answer,
    merge,
    state_change_records,
)
from proxy.messages import FilterMode, GroupRecord, RecordType

IN = MembershipState.include
EX = MembershipState.exclude

S1, S2, S3 = (IPv4Address(f"10.0.0.{n}") for n in (1, 2, 3))
a, b, c, d, e, f = (IPv4Address(f"192.0.2.{n}") for n in range(1, 7))
G4 = IPv4Address("239.1.2.3")
G6 = IPv6Address("ff15::1:2")


def test_no_interest_is_include_of_nothing_and_allows_no_source():
    assert MembershipState(FilterMode.INCLUDE, frozenset()) == NO_INTEREST
    assert not NO_INTEREST.allows(S1)
    assert not NO_INTEREST.has_interest


def test_sources_given_as_list_are_stored_as_frozenset():
    state = MembershipState(FilterMode.EXCLUDE, [S1, S1, S2])
    assert state.sources == frozenset({S1, S2})
    assert hash(state) == hash(EX({S1, S2}))


def test_include_allows_only_listed_sources_and_exclude_all_but_listed():
    assert IN({S1}).allows(S1) and not IN({S1}).allows(S2)
    assert not EX({S1}).allows(S1) and EX({S1}).allows(S2)
    assert EX().allows(S3)


def test_merge_of_v2_join_and_include_list_is_exclude_nothing():
    # Checklist P3: v2(G) counts as EX{}; EX{} + IN{S1,S2} -> EX{}.
    assert merge([EX(), IN({S1, S2})]) == EX()


def test_merge_of_two_exclude_lists_and_an_include_list():
    # Checklist P3: EX{a,b,c,d} + EX{b,c,d,e} + IN{d,e,f} -> EX{b,c}.
    assert merge([EX({a, b, c, d}), EX({b, c, d, e}), IN({d, e, f})]) == EX({b, c})


def test_merge_of_include_lists_is_their_union():
    assert merge([IN({a}), IN({b, c}), NO_INTEREST]) == IN({a, b, c})


def test_merge_of_nothing_is_no_interest():
    assert merge([]) == NO_INTEREST
    assert merge(iter([NO_INTEREST, NO_INTEREST])) == NO_INTEREST


def test_merge_of_a_single_state_is_that_state():
    assert merge([EX({a})]) == EX({a})


def test_merge_in_mld_uses_the_same_rules():
    x, y, z = (ip_address(f"2001:db8::{n}") for n in (1, 2, 3))
    assert merge([EX({x, y}), EX({y, z}), IN({x})]) == EX({y})


def test_include_to_include_reports_allow_new_and_block_old_sources():
    records = state_change_records(G4, IN({a, b}), IN({b, c, d}))
    assert records == [
        GroupRecord(RecordType.ALLOW_NEW_SOURCES, G4, (c, d)),
        GroupRecord(RecordType.BLOCK_OLD_SOURCES, G4, (a,)),
    ]


def test_exclude_to_exclude_allows_unblocked_and_blocks_newly_excluded():
    records = state_change_records(G4, EX({a, b}), EX({b, c}))
    assert records == [
        GroupRecord(RecordType.ALLOW_NEW_SOURCES, G4, (a,)),
        GroupRecord(RecordType.BLOCK_OLD_SOURCES, G4, (c,)),
    ]


def test_include_to_exclude_is_one_to_ex_record_with_the_new_list():
    assert state_change_records(G4, IN({a}), EX({c, b})) == [
        GroupRecord(RecordType.CHANGE_TO_EXCLUDE, G4, (b, c))
    ]


def test_exclude_to_include_is_one_to_in_record_even_when_empty():
    assert state_change_records(G4, EX(), NO_INTEREST) == [
        GroupRecord(RecordType.CHANGE_TO_INCLUDE, G4, ())
    ]


def test_first_join_from_no_interest_is_to_ex_of_nothing():
    assert state_change_records(G6, NO_INTEREST, EX()) == [
        GroupRecord(RecordType.CHANGE_TO_EXCLUDE, G6, ())
    ]


def test_empty_allow_and_block_records_are_omitted():
    assert state_change_records(G4, IN({a}), IN({a, b})) == [
        GroupRecord(RecordType.ALLOW_NEW_SOURCES, G4, (b,))
    ]
    assert state_change_records(G4, EX({a}), EX()) == [
        GroupRecord(RecordType.ALLOW_NEW_SOURCES, G4, (a,))
    ]
    assert state_change_records(G4, EX({a}), EX({a})) == []


def test_current_state_record_reports_mode_and_sources():
    assert current_state_record(G4, IN({b, a})) == GroupRecord(
        RecordType.MODE_IS_INCLUDE, G4, (a, b)
    )
    assert current_state_record(G6, EX()) == GroupRecord(RecordType.MODE_IS_EXCLUDE, G6, ())


def test_current_state_record_is_none_without_interest():
    assert current_state_record(G4, NO_INTEREST) is None


def test_group_source_query_on_include_answers_the_intersection():
    assert group_source_query_answer(IN({a, b}), [b, c]) == frozenset({b})


def test_group_source_query_on_exclude_answers_queried_minus_excluded():
    assert group_source_query_answer(EX({a, b}), [b, c, d]) == frozenset({c, d})


@pytest.mark.parametrize(
    ("state", "queried"), [(IN({a}), [b]), (EX({b}), [b])], ids=["include", "exclude"]
)
def test_group_source_query_with_no_wanted_source_gets_no_answer(state, queried):
    assert group_source_query_answer(state, queried) == frozenset()
