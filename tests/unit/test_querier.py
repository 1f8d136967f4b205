"""Router side of a downstream link: RFC 3376 §6 / RFC 3810 §7 tables, timers and election.

Every test runs on a fake clock. Most are parametrized over IGMPv3 and MLDv2: the tables are
the same, only addresses and the older versions differ.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from proxy.clock import FakeScheduler
from proxy.membership import NO_INTEREST, MembershipState
from proxy.messages import Address, GroupRecord, Leave, OldReport, Query, RecordType, Report
from proxy.querier import Querier
from proxy.timers import Timers

R = RecordType
IS_IN, IS_EX = R.MODE_IS_INCLUDE, R.MODE_IS_EXCLUDE
TO_IN, TO_EX = R.CHANGE_TO_INCLUDE, R.CHANGE_TO_EXCLUDE
ALLOW, BLOCK = R.ALLOW_NEW_SOURCES, R.BLOCK_OLD_SOURCES

# RFC defaults: GMI 260 s, OQPI 255 s, LMQI 1 s, LMQC 2, LMQT 2 s, SQI 31.25 s, SQC 2.
TIMERS = Timers()
GMI, LMQT, LMQI, OQPI = TIMERS.gmi, TIMERS.lmqt, TIMERS.last_listener_query_interval, TIMERS.oqpi


@dataclass(frozen=True)
class Fam:
    """Addresses and versions of one address family."""

    name: str
    af: int
    version: int
    old_version: int  # the older report version a v3/MLDv2 router meets (IGMPv2, MLDv1)
    own: str
    lower: str
    higher: str
    host: str
    group: str
    ssm_group: str
    src_prefix: str

    def src(self, n: int) -> Address:
        return ip_address(f"{self.src_prefix}{n}")

    @property
    def g(self) -> Address:
        return ip_address(self.group)

    @property
    def unspecified(self) -> Address:
        return IPv4Address(0) if self.af == socket.AF_INET else IPv6Address(0)


IGMP = Fam(
    name="igmp", af=socket.AF_INET, version=3, old_version=2,
    own="10.0.0.5", lower="10.0.0.1", higher="10.0.0.9", host="10.0.0.20",
    group="239.1.1.1", ssm_group="232.1.1.1", src_prefix="192.0.2.",
)  # fmt: skip
MLD = Fam(
    name="mld", af=socket.AF_INET6, version=2, old_version=1,
    own="fe80::5", lower="fe80::1", higher="fe80::9", host="fe80::20",
    group="ff15::1", ssm_group="ff3e::1", src_prefix="2001:db8::",
)  # fmt: skip


@pytest.fixture(params=[IGMP, MLD], ids=lambda f: f.name)
def fam(request) -> Fam:
    return request.param


class Link:
    """A started Querier on a fake clock, recording queries sent and on_change calls."""

    def __init__(
        self,
        fam: Fam,
        *,
        version: int | None = None,
        timers: Timers = TIMERS,
        start: bool = True,
        **kwargs,
    ) -> None:
        self.fam = fam
        self.clock = FakeScheduler()
        self.sent: list[tuple[float, Query]] = []
        self.changes: list[Address] = []
        self.q = Querier(
            version=version or fam.version,
            family=fam.af,
            timers=timers,
            scheduler=self.clock,
            own_address=fam.own,
            send=lambda query: self.sent.append((self.clock.time(), query)),
            on_change=self.changes.append,
            **kwargs,
        )
        if start:
            self.q.start()
            self.sent.clear()

    # -- input
    def record(self, rtype: RecordType, *sources: int, group: str | None = None) -> None:
        grp = ip_address(group) if group else self.fam.g
        rec = GroupRecord(rtype, grp, tuple(self.fam.src(n) for n in sources))
        self.q.receive(Report((rec,)), ip_address(self.fam.host))

    def old_report(self, version: int | None = None, group: str | None = None) -> None:
        grp = ip_address(group) if group else self.fam.g
        self.q.receive(OldReport(version or self.fam.old_version, grp), ip_address(self.fam.host))

    def leave(self, group: str | None = None) -> None:
        grp = ip_address(group) if group else self.fam.g
        self.q.receive(Leave(grp), ip_address(self.fam.host))

    def query_from(
        self,
        src: str,
        *,
        group: bool = False,
        sources: tuple[int, ...] = (),
        s_flag: bool = False,
        qrv: int = 0,
        qqi: float = 0.0,
    ) -> None:
        grp = self.fam.g if group or sources else self.fam.unspecified
        srcs = tuple(self.fam.src(n) for n in sources)
        query = Query(self.fam.version, grp, 10.0, srcs, s_flag, qrv, qqi)
        self.q.receive(query, ip_address(src))

    # -- inspection
    def take(self) -> list[Query]:
        queries = [q for _, q in self.sent]
        self.sent.clear()
        return queries

    def snap(self) -> dict | None:
        return self.q.snapshot()["groups"].get(str(self.fam.g))

    def timers(self) -> dict[int, float]:
        """Source index -> seconds left, from the snapshot."""
        back = {str(self.fam.src(n)): n for n in range(1, 10)}
        snap = self.snap()
        return {} if snap is None else {back[s]: t for s, t in snap["sources"].items()}

    def specific(self, queries: list[Query]) -> list[tuple[tuple[int, ...] | None, bool]]:
        """Queries as (source indexes or None for Q(G), S flag), checking group and max_resp."""
        back = {self.fam.src(n): n for n in range(1, 10)}
        out = []
        for q in queries:
            assert q.group == self.fam.g
            assert q.max_resp == LMQI
            out.append((tuple(back[s] for s in q.sources) if q.sources else None, q.s_flag))
        return out

    def state(self) -> MembershipState:
        return self.q.state(self.fam.g)

    def srcs(self, *ns: int) -> frozenset:
        return frozenset(self.fam.src(n) for n in ns)


# ---------------------------------------------------------------- §6.4.1 / §6.4.2 tables

A_SET, B_SET = (1, 2), (2, 3)  # IN(A) rows: A*B = {2}, A-B = {1}, B-A = {3}
X_SET, Y_SET, A_EX = (1, 2), (3, 4), (2, 3, 5)  # EX(X,Y) rows: A*X={2}, A*Y={3}, A-X-Y={5}


@dataclass(frozen=True)
class Row:
    """One table row: start state, record, and what must hold 10 s after the start."""

    name: str
    start: str  # "IN" -> IN(A), "EX" -> EX(X,Y); built at t=0, the record arrives at t=10
    rtype: RecordType
    sources: tuple[int, ...]
    mode: str
    timers: dict[int, float]  # source -> seconds left (0 = excluded)
    group_timer: float  # seconds left (0 in INCLUDE)
    queries: list[tuple[tuple[int, ...] | None, bool]]


T0 = 10.0  # the record arrives here; the start state's timers then have GMI - T0 left
OLD = GMI - T0

# fmt: off
ROWS = [
    # §6.4.1 current state
    Row("IN(A)+IS_IN(B)->IN(A+B),(B)=GMI", "IN", IS_IN, B_SET,
        "include", {1: OLD, 2: GMI, 3: GMI}, 0.0, []),
    Row("IN(A)+IS_EX(B)->EX(A*B,B-A),(B-A)=0,del(A-B),GT=GMI", "IN", IS_EX, B_SET,
        "exclude", {2: OLD, 3: 0.0}, GMI, []),
    Row("EX(X,Y)+IS_IN(A)->EX(X+A,Y-A),(A)=GMI", "EX", IS_IN, A_EX,
        "exclude", {1: OLD, 2: GMI, 3: GMI, 5: GMI, 4: 0.0}, OLD, []),
    Row("EX(X,Y)+IS_EX(A)->EX(A-Y,Y*A),(A-X-Y)=GMI,del(X-A),del(Y-A),GT=GMI", "EX", IS_EX, A_EX,
        "exclude", {2: OLD, 5: GMI, 3: 0.0}, GMI, []),
    # §6.4.2 state change
    Row("IN(A)+ALLOW(B)->IN(A+B),(B)=GMI", "IN", ALLOW, B_SET,
        "include", {1: OLD, 2: GMI, 3: GMI}, 0.0, []),
    Row("IN(A)+BLOCK(B)->IN(A),Q(G,A*B)", "IN", BLOCK, B_SET,
        "include", {1: OLD, 2: LMQT}, 0.0, [((2,), False)]),
    Row("IN(A)+TO_EX(B)->EX(A*B,B-A),(B-A)=0,del(A-B),Q(G,A*B),GT=GMI", "IN", TO_EX, B_SET,
        "exclude", {2: LMQT, 3: 0.0}, GMI, [((2,), False)]),
    Row("IN(A)+TO_IN(B)->IN(A+B),(B)=GMI,Q(G,A-B)", "IN", TO_IN, B_SET,
        "include", {1: LMQT, 2: GMI, 3: GMI}, 0.0, [((1,), False)]),
    Row("EX(X,Y)+ALLOW(A)->EX(X+A,Y-A),(A)=GMI", "EX", ALLOW, A_EX,
        "exclude", {1: OLD, 2: GMI, 3: GMI, 5: GMI, 4: 0.0}, OLD, []),
    Row("EX(X,Y)+BLOCK(A)->EX(X+(A-Y),Y),(A-X-Y)=GT,Q(G,A-Y)", "EX", BLOCK, A_EX,
        "exclude", {1: OLD, 2: LMQT, 5: LMQT, 3: 0.0, 4: 0.0}, OLD, [((2, 5), False)]),
    Row("EX(X,Y)+TO_EX(A)->EX(A-Y,Y*A),(A-X-Y)=GT,del(X-A),del(Y-A),Q(G,A-Y),GT=GMI", "EX",
        TO_EX, A_EX, "exclude", {2: LMQT, 5: LMQT, 3: 0.0}, GMI, [((2, 5), False)]),
    Row("EX(X,Y)+TO_IN(A)->EX(X+A,Y-A),(A)=GMI,Q(G,X-A),Q(G)", "EX", TO_IN, A_EX,
        "exclude", {1: LMQT, 2: GMI, 3: GMI, 5: GMI, 4: 0.0}, LMQT, [((1,), False), (None, False)]),
]
# fmt: on


def build_start(link: Link, start: str) -> None:
    """IN(A) = ALLOW(A); EX(X,Y) = IS_EX(Y) then ALLOW(X): all timers GMI at t=0."""
    if start == "IN":
        link.record(ALLOW, *A_SET)
    else:
        link.record(IS_EX, *Y_SET)
        link.record(ALLOW, *X_SET)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_table_row(fam, row):
    link = Link(fam)
    build_start(link, row.start)
    assert link.take() == []
    link.clock.advance(T0)
    link.record(row.rtype, *row.sources)
    snap = link.snap()
    assert snap["mode"] == row.mode
    assert link.timers() == pytest.approx(row.timers)
    assert snap["group_timer"] == pytest.approx(row.group_timer)
    assert link.specific(link.take()) == row.queries


@pytest.mark.parametrize("rtype", [BLOCK, TO_EX])
def test_non_querier_gives_new_sources_of_block_and_to_ex_the_group_timer(fam, rtype):
    # As querier, Q(G,A-Y) lowers these at once; only a non-querier keeps the value.
    link = Link(fam)
    link.query_from(fam.lower)
    build_start(link, "EX")
    link.clock.advance(T0)
    link.record(rtype, *A_EX)
    assert link.timers()[5] == OLD
    assert link.take() == []


def test_table_start_states_are_what_the_rows_assume(fam):
    link = Link(fam)
    build_start(link, "EX")
    assert link.state() == MembershipState.exclude(link.srcs(*Y_SET))
    assert link.timers() == {1: GMI, 2: GMI, 3: 0.0, 4: 0.0}
    other = Link(fam)
    build_start(other, "IN")
    assert other.state() == MembershipState.include(other.srcs(*A_SET))


def test_report_for_unknown_group_starts_from_include_nothing(fam):
    link = Link(fam)
    link.record(TO_EX, 7)
    assert link.state() == MembershipState.exclude(link.srcs(7))
    assert link.snap()["group_timer"] == GMI
    assert link.take() == []  # Q(G, {}*{7}) is empty: nothing to send


@pytest.mark.parametrize("rtype", [IS_IN, TO_IN, BLOCK, ALLOW])
def test_include_records_with_nothing_to_include_create_no_record(fam, rtype):
    link = Link(fam)
    link.record(rtype)
    assert link.q.groups() == []
    assert link.changes == []


# ---------------------------------------------------------------- specific queries §6.6.3


def test_source_query_is_retransmitted_lmqc_minus_one_times_every_lmqi(fam):
    link = Link(fam)
    link.record(ALLOW, 1, 2)
    link.take()
    link.record(BLOCK, 1)
    link.clock.advance(10 * LMQI)
    times = [t for t, _ in link.sent]
    assert times == [0.0, LMQI]  # LMQC = 2
    assert link.specific(link.take()) == [((1,), False), ((1,), False)]


def test_blocked_source_nobody_answers_for_is_dropped_after_lmqt(fam):
    link = Link(fam)
    link.record(ALLOW, 1, 2)
    link.record(BLOCK, 1)
    link.clock.advance(LMQT - 0.01)
    assert link.state() == MembershipState.include(link.srcs(1, 2))
    assert link.changes == [fam.g]
    link.clock.advance(0.01)
    assert link.state() == MembershipState.include(link.srcs(2))
    assert link.changes == [fam.g, fam.g]


def test_source_refreshed_during_query_is_retransmitted_with_s_flag_and_kept(fam):
    link = Link(fam)
    link.record(ALLOW, 1)
    link.record(BLOCK, 1)
    link.clock.advance(0.5)
    link.record(IS_IN, 1)  # another listener answers
    link.clock.advance(LMQT)
    assert link.specific(link.take()) == [((1,), False), ((1,), True)]
    assert link.state() == MembershipState.include(link.srcs(1))
    assert link.timers() == {1: pytest.approx(GMI - LMQT)}


def test_group_query_is_retransmitted_and_s_flag_set_once_a_listener_answered(fam):
    link = Link(fam)
    link.record(IS_EX)
    link.record(TO_IN)
    assert link.specific(link.take()) == [(None, False)]
    link.clock.advance(0.3)
    link.record(IS_EX)
    link.clock.advance(LMQI)
    assert link.specific(link.take()) == [(None, True)]
    link.clock.advance(10 * LMQT)
    assert link.take() == []
    assert link.state() == MembershipState.exclude()


def test_v3_leave_removes_group_after_exactly_lmqt_without_answer(fam):
    link = Link(fam)
    link.record(TO_EX)
    assert link.changes == [fam.g]
    link.clock.advance(30)
    link.record(TO_IN)
    assert link.changes == [fam.g]  # nothing changes until the queries go unanswered
    link.clock.advance(LMQT - 1e-3)
    assert link.state() == MembershipState.exclude()
    link.clock.advance(1e-3)
    assert link.state() == NO_INTEREST
    assert link.q.groups() == []
    assert link.changes == [fam.g, fam.g]


def test_old_version_leave_removes_group_after_exactly_lmqt(fam):
    link = Link(fam)
    link.old_report()
    link.clock.advance(5)
    link.leave()
    assert link.specific(link.take()) == [(None, False)]
    link.clock.advance(LMQT - 1e-3)
    assert link.q.groups() == [fam.g]
    link.clock.advance(1e-3)
    assert link.q.groups() == []


def test_answer_to_leave_query_keeps_the_group(fam):
    link = Link(fam)
    link.old_report()
    link.leave()
    link.clock.advance(LMQI + 0.1)
    link.old_report()  # a remaining member answers the retransmitted Q(G)
    link.clock.advance(60)
    assert link.state() == MembershipState.exclude()
    assert link.snap()["group_timer"] == pytest.approx(GMI - 60)


def test_second_leave_during_query_round_starts_no_new_round(fam):
    link = Link(fam)
    link.record(IS_EX)
    link.record(TO_IN)
    link.clock.advance(0.5)
    link.record(TO_IN)
    link.clock.advance(LMQT)
    assert [t for t, _ in link.sent] == [0.0, LMQI]
    assert link.q.groups() == []


def test_source_query_includes_pending_sources_and_splits_by_s_flag(fam):
    link = Link(fam)
    link.record(ALLOW, 1, 2)
    link.record(BLOCK, 1)
    link.record(IS_IN, 1)  # 1 refreshed above LMQT but still has retransmissions left
    link.record(BLOCK, 2)
    assert link.specific(link.take()) == [((1,), False), ((1,), True), ((2,), False)]


# ---------------------------------------------------------------- timer expiry §6.3, §6.5


def test_group_timer_expiry_switches_to_include_with_running_sources(fam):
    link = Link(fam)
    link.record(IS_EX, 3)
    link.clock.advance(100)
    link.record(ALLOW, 1)
    link.changes.clear()
    link.clock.advance(GMI - 100)
    assert link.snap()["mode"] == "include"
    assert link.timers() == {1: pytest.approx(100)}
    assert link.state() == MembershipState.include(link.srcs(1))
    assert link.changes == [fam.g]


def test_group_timer_expiry_without_running_sources_deletes_record(fam):
    link = Link(fam)
    link.record(IS_EX, 3)
    link.clock.advance(GMI - 1e-3)
    assert link.q.groups() == [fam.g]
    link.clock.advance(1e-3)
    assert link.q.groups() == []
    assert link.changes == [fam.g, fam.g]


def test_source_timer_expiry_in_exclude_blocks_the_source(fam):
    link = Link(fam)
    link.record(IS_EX)
    link.record(ALLOW, 1)
    link.clock.advance(100)
    link.record(IS_EX, 1)  # 1 stays in X with its timer; group timer refreshed to GMI
    link.changes.clear()
    assert link.q.forwards(fam.src(1), fam.g)
    link.clock.advance(GMI - 100)
    assert link.state() == MembershipState.exclude(link.srcs(1))
    assert not link.q.forwards(fam.src(1), fam.g)
    assert link.changes == [fam.g]
    link.clock.advance(100)
    assert link.q.groups() == []


def test_source_timer_expiry_in_include_deletes_source_then_record(fam):
    link = Link(fam)
    link.record(ALLOW, 1)
    link.clock.advance(100)
    link.record(ALLOW, 2)
    link.changes.clear()
    link.clock.advance(GMI - 100)
    assert link.state() == MembershipState.include(link.srcs(2))
    link.clock.advance(100)
    assert link.q.groups() == []
    assert link.changes == [fam.g, fam.g]


def test_forwarding_follows_rfc3376_section_6_3(fam):
    link = Link(fam)
    link.record(ALLOW, 1)
    assert link.q.forwards(fam.src(1), fam.g)
    assert not link.q.forwards(fam.src(2), fam.g)
    link.record(TO_EX, 3)
    link.record(ALLOW, 1)
    assert link.q.forwards(fam.src(1), fam.g)  # in X, timer > 0
    assert not link.q.forwards(fam.src(3), fam.g)  # in Y, timer 0
    assert link.q.forwards(fam.src(9), fam.g)  # not listed
    assert not link.q.forwards(fam.src(1), ip_address(fam.ssm_group))  # no record


def test_many_sources_share_one_expiry_handle(fam):
    link = Link(fam)
    for n in range(1, 10):
        link.clock.advance(1)
        link.record(ALLOW, n)
    # The General Query timer plus one expiry timer for the group.
    assert link.clock.pending() == 2


# ---------------------------------------------------------------- general queries, election


def test_startup_sends_sqc_general_queries_sqi_apart_then_every_qi(fam):
    link = Link(fam, start=False)
    link.q.start()
    link.clock.advance(TIMERS.sqi + 2 * TIMERS.query_interval)
    times = [t for t, _ in link.sent]
    assert times == [0.0, TIMERS.sqi, TIMERS.sqi + 125.0, TIMERS.sqi + 250.0]
    assert TIMERS.sqc == 2


def test_startup_query_count_and_interval_come_from_timers(fam):
    timers = Timers(startup_query_count=3, startup_query_interval=1.0, query_interval=30.0)
    link = Link(fam, start=False, timers=timers)
    link.q.start()
    link.clock.advance(35)
    assert [t for t, _ in link.sent] == [0.0, 1.0, 2.0, 32.0]


def test_general_query_fields(fam):
    link = Link(fam, start=False)
    link.q.start()
    (query,) = link.take()
    assert query == Query(
        fam.version, fam.unspecified, TIMERS.query_response_interval, (), False, 2, 125.0
    )
    assert link.q.is_querier and link.q.is_v3


def test_qrv_above_seven_is_sent_as_zero(fam):
    link = Link(fam, start=False, timers=Timers(robustness=8))
    link.q.start()
    assert link.take()[0].qrv == 0


@pytest.mark.parametrize(
    ("af", "version", "max_resp"),
    [
        (socket.AF_INET, 2, 10.0),
        (socket.AF_INET, 1, 0.0),
        (socket.AF_INET6, 1, 10.0),
    ],
    ids=["igmpv2", "igmpv1", "mldv1"],
)
def test_older_version_querier_sends_old_format_queries(af, version, max_resp):
    fam = IGMP if af == socket.AF_INET else MLD
    link = Link(fam, start=False, version=version)
    link.q.start()
    assert link.take()[0] == Query(version, fam.unspecified, max_resp)
    assert not link.q.is_v3


def test_query_from_lower_address_silences_us_until_oqpi_expires(fam):
    link = Link(fam)
    link.clock.advance(1)
    link.query_from(fam.lower)
    assert not link.q.is_querier
    assert link.q.other_querier == ip_address(fam.lower)
    assert link.q.snapshot()["other_querier_timeout"] == OQPI
    link.clock.advance(OQPI - 1e-3)
    assert link.take() == []
    link.clock.advance(1e-3)
    assert link.q.is_querier
    assert [t for t, _ in link.sent] == [pytest.approx(1 + OQPI)]
    link.clock.advance(TIMERS.query_interval)
    assert len(link.sent) == 2  # periodic again, without a second startup series


def test_queries_from_the_querier_keep_us_silent(fam):
    link = Link(fam)
    link.query_from(fam.lower)
    for _ in range(3):
        link.clock.advance(TIMERS.query_interval)
        link.query_from(fam.lower)
    assert not link.q.is_querier
    assert link.take() == []


def test_query_from_higher_address_does_not_silence_us(fam):
    link = Link(fam)
    link.query_from(fam.higher)
    assert link.q.is_querier
    assert link.q.other_querier is None
    link.clock.advance(TIMERS.sqi)
    assert len(link.take()) == 1


def test_own_and_unspecified_source_queries_do_not_elect(fam):
    link = Link(fam)
    link.query_from(fam.own)
    link.query_from(str(fam.unspecified))
    assert link.q.is_querier
    assert link.q.counters["ignored.own-query"] == 1
    assert link.q.counters["queries_received"] == 2


def test_election_disabled_keeps_querying(fam):
    link = Link(fam, election=False)
    link.query_from(fam.lower)
    assert link.q.is_querier
    link.clock.advance(TIMERS.sqi)
    assert len(link.take()) == 1


def test_mld_election_compares_whole_ipv6_addresses():
    link = Link(MLD)
    link.q.receive(Query(2, IPv6Address(0), 10.0), ip_address("fe80::1:0:0:0"))
    assert link.q.is_querier  # fe80::1:0:0:0 > fe80::5
    link.q.receive(Query(2, IPv6Address(0), 10.0), ip_address("fe80::4"))
    assert not link.q.is_querier


def test_non_querier_adopts_qrv_and_qqi_and_reverts_when_querying_again(fam):
    link = Link(fam)
    link.query_from(fam.lower, qrv=3, qqi=60.0)
    assert (link.q.timers.robustness, link.q.timers.query_interval) == (3, 60.0)
    link.record(IS_EX)
    assert link.snap()["group_timer"] == 3 * 60.0 + 10.0
    adopted_oqpi = 3 * 60.0 + 5.0
    link.clock.advance(adopted_oqpi)
    assert link.q.is_querier
    assert link.q.timers == TIMERS
    assert link.take()[0].qqi == 125.0


def test_querier_ignores_qqi_not_above_its_response_interval(fam):
    link = Link(fam)
    link.query_from(fam.lower, qqi=5.0)
    assert link.q.timers.query_interval == 125.0
    assert link.q.counters["ignored.query-bad-qrv-qqi"] == 1


def test_non_querier_lowers_group_timer_on_group_query_without_s_flag(fam):
    link = Link(fam)
    link.query_from(fam.lower)
    link.record(IS_EX)
    link.query_from(fam.lower, group=True, s_flag=True)
    assert link.snap()["group_timer"] == GMI
    link.query_from(fam.lower, group=True)
    assert link.snap()["group_timer"] == LMQT
    link.clock.advance(LMQT)
    assert link.q.groups() == []


def test_non_querier_lowers_queried_source_timers_only(fam):
    link = Link(fam)
    link.query_from(fam.lower)
    link.record(ALLOW, 1, 2)
    link.query_from(fam.lower, sources=(1,))
    assert link.timers() == {1: LMQT, 2: GMI}


def test_non_querier_sends_no_specific_queries_and_keeps_timers(fam):
    link = Link(fam)
    link.query_from(fam.lower)
    link.record(ALLOW, 1)
    link.record(IS_EX)
    link.record(BLOCK, 1)
    link.record(TO_IN)
    assert link.take() == []
    assert link.timers() == {1: GMI}
    assert link.snap()["group_timer"] == GMI


def test_losing_election_cancels_pending_retransmissions(fam):
    link = Link(fam)
    link.record(IS_EX)
    link.record(TO_IN)
    link.take()
    link.query_from(fam.lower)
    link.clock.advance(LMQI)
    assert link.take() == []


# ---------------------------------------------------------------- lifecycle


def test_stop_flushes_every_group_once_and_stops_querying(fam):
    link = Link(fam)
    other = "239.9.9.9" if fam is IGMP else "ff15::9"
    link.record(IS_EX)
    link.record(ALLOW, 1, group=other)
    link.changes.clear()
    link.q.stop()
    assert sorted(link.changes) == sorted([fam.g, ip_address(other)])
    assert link.q.groups() == [] and not link.q.is_querier
    link.clock.advance(1000)
    assert link.take() == []
    assert link.clock.pending() == 0


def test_messages_after_stop_are_ignored(fam):
    link = Link(fam)
    link.q.stop()
    link.record(IS_EX)
    assert link.q.groups() == []
    assert link.q.counters["ignored.stopped"] == 1


def test_restart_sends_startup_queries_at_once_and_keeps_groups(fam):
    link = Link(fam)
    link.record(IS_EX)
    link.query_from(fam.lower)
    link.clock.advance(50)
    link.q.restart()
    assert link.q.is_querier and link.q.other_querier is None
    link.clock.advance(TIMERS.sqi)
    assert [t for t, _ in link.sent] == [50.0, 50.0 + TIMERS.sqi]
    assert link.state() == MembershipState.exclude()


# ---------------------------------------------------------------- compatibility §7.3.2


def test_old_report_counts_as_is_ex_nothing_and_sets_compat_mode(fam):
    link = Link(fam)
    link.old_report()
    assert link.state() == MembershipState.exclude()
    snap = link.snap()
    assert snap["compat_version"] == fam.old_version
    assert snap["older_host_present"] == {str(fam.old_version): TIMERS.older_version_present()}


def test_block_ignored_and_to_ex_sources_dropped_in_compat_mode(fam):
    link = Link(fam)
    link.old_report()
    link.record(ALLOW, 1)
    link.record(BLOCK, 1)
    assert link.take() == []
    assert link.q.counters["ignored.compat-block"] == 1
    link.record(TO_EX, 2)
    assert link.state() == MembershipState.exclude()
    assert 2 not in link.timers()  # the source list was dropped


def test_compat_mode_ends_when_older_host_present_expires(fam):
    link = Link(fam)
    link.old_report()
    link.clock.advance(200)
    link.record(IS_EX)  # keeps the group alive past the older-host timer
    link.record(ALLOW, 1)
    link.clock.advance(TIMERS.older_version_present() - 200)
    assert link.q.compat_version(fam.g) == fam.version
    link.take()  # general queries meanwhile
    link.record(BLOCK, 1)
    assert link.specific(link.take()) == [((1,), False)]
    link.record(TO_EX, 2)
    # (A-X-Y) = group timer, then Q(G,A-Y) lowers it: the source list was used.
    assert link.timers()[2] == LMQT
    assert link.specific(link.take()) == [((2,), False)]


def test_igmpv1_report_makes_leaves_ignored():
    link = Link(IGMP)
    link.old_report(version=1)
    assert link.q.compat_version(IGMP.g) == 1
    link.leave()
    assert link.take() == []
    assert link.q.counters["ignored.leave-v1-compat"] == 1
    assert link.state() == MembershipState.exclude()


def test_mldv1_done_is_honoured_in_mldv1_compat_mode():
    link = Link(MLD)
    link.old_report(version=1)
    link.leave()
    assert link.specific(link.take()) == [(None, False)]


def test_igmpv1_querier_ignores_leaves_and_v2_reports():
    link = Link(IGMP, version=1)
    link.old_report(version=2)
    assert link.q.groups() == []
    link.old_report(version=1)
    link.leave()
    assert link.take() == []
    assert link.state() == MembershipState.exclude()
    assert link.q.compat_version(IGMP.g) == 1


@pytest.mark.parametrize("fam_, version", [(IGMP, 2), (MLD, 1)], ids=["igmpv2", "mldv1"])
def test_older_querier_ignores_source_filtering_reports(fam_, version):
    link = Link(fam_, version=version)
    link.record(IS_EX)
    assert link.q.groups() == []
    assert link.q.counters["ignored.report-version"] == 1
    link.old_report()
    link.leave()
    queries = link.take()
    assert link.specific(queries) == [(None, False)]
    assert queries[0].version == version


def test_older_querier_sends_old_format_group_queries(fam):
    link = Link(fam, version=fam.old_version)
    link.old_report()
    link.leave()
    (query,) = link.take()
    assert query == Query(fam.old_version, fam.g, LMQI)


# ---------------------------------------------------------------- SSM (RFC 4605 §4.3)


def test_old_reports_and_leaves_for_ssm_groups_are_ignored(fam):
    link = Link(fam)
    link.old_report(group=fam.ssm_group)
    link.leave(group=fam.ssm_group)
    assert link.q.groups() == []
    assert link.q.counters["ignored.ssm-any-source"] == 2


@pytest.mark.parametrize("rtype", [IS_EX, TO_EX])
def test_exclude_records_for_ssm_groups_are_ignored(fam, rtype):
    link = Link(fam)
    link.record(rtype, 1, group=fam.ssm_group)
    assert link.q.groups() == []
    assert link.changes == []


def test_include_records_for_ssm_groups_are_accepted(fam):
    link = Link(fam)
    link.record(ALLOW, 1, group=fam.ssm_group)
    ssm = ip_address(fam.ssm_group)
    assert link.q.state(ssm) == MembershipState.include(link.srcs(1))
    link.leave(group=fam.ssm_group)  # a Leave would be TO_IN({}) and query source 1
    assert link.take() == []


def test_custom_ssm_range_replaces_the_default():
    link = Link(IGMP, ssm_range="239.0.0.0/8")
    link.old_report(group="232.1.1.1")
    link.old_report()
    assert link.q.groups() == [IPv4Address("232.1.1.1")]


def test_empty_ssm_range_disables_ssm_rules():
    link = Link(MLD, ssm_range=())
    link.old_report(group=MLD.ssm_group)
    assert link.q.groups() == [ip_address(MLD.ssm_group)]


def test_ssm_range_of_the_other_family_is_rejected():
    with pytest.raises(ValueError, match="SSM range"):
        Link(IGMP, ssm_range=["ff30::/12"])


# ---------------------------------------------------------------- on_change, snapshot, input


def test_on_change_only_for_real_changes(fam):
    link = Link(fam)
    link.record(TO_EX, 2)
    link.record(IS_EX, 2)  # refresh
    link.record(ALLOW, 1)  # 1 was forwarded already
    link.record(TO_EX, 2, 3)  # 3 joins X with the group timer: still forwarded
    assert link.changes == [fam.g]
    link.record(ALLOW, 2)
    assert link.state() == MembershipState.exclude()
    assert link.changes == [fam.g, fam.g]


def test_report_with_several_records_calls_on_change_once_per_group(fam):
    link = Link(fam)
    other = "239.2.2.2" if fam is IGMP else "ff15::2"
    records = (
        GroupRecord(ALLOW, fam.g, (fam.src(1),)),
        GroupRecord(ALLOW, fam.g, (fam.src(2),)),
        GroupRecord(IS_EX, ip_address(other), ()),
    )
    link.q.receive(Report(records), ip_address(fam.host))
    assert sorted(link.changes) == sorted([fam.g, ip_address(other)])


def test_records_for_invalid_groups_are_ignored(fam):
    link = Link(fam)
    bad = [fam.host, "224.0.0.1" if fam is IGMP else "ff02::1"]
    if fam is MLD:
        bad.append("ff01::5")  # interface-local scope
    for group in bad:
        link.record(IS_EX, group=group)
    assert link.q.groups() == []
    assert link.q.counters["ignored.bad-group"] == len(bad)


def test_snapshot_is_json_serializable_and_complete(fam):
    link = Link(fam)
    link.record(TO_EX, 3)
    link.record(ALLOW, 1)
    link.query_from(fam.lower)
    link.clock.advance(10)
    snap = json.loads(json.dumps(link.q.snapshot()))
    assert snap["is_querier"] is False
    assert snap["other_querier"] == fam.lower
    assert snap["other_querier_timeout"] == OQPI - 10
    group = snap["groups"][str(fam.g)]
    assert group == {
        "mode": "exclude",
        "group_timer": GMI - 10,
        "sources": {str(fam.src(1)): GMI - 10, str(fam.src(3)): 0.0},
        "compat_version": fam.version,
        "older_host_present": {},
    }
    assert snap["counters"]["reports_received"] == 2
    assert snap["counters"]["queries_received"] == 1


def test_counters_count_sent_queries_by_kind(fam):
    link = Link(fam)
    link.record(IS_EX)
    link.record(ALLOW, 1)
    link.record(TO_IN, 2)
    counters = link.q.counters
    assert counters["queries_sent"] == 3  # startup general query, Q(G,{1}), Q(G)
    assert counters["general_queries_sent"] == 1
    assert counters["source_queries_sent"] == 1
    assert counters["group_queries_sent"] == 1


def test_send_failure_is_counted_and_queries_continue(fam):
    clock = FakeScheduler()
    sent = []

    def send(query):
        sent.append(query)
        if len(sent) == 1:
            raise OSError("network is down")

    q = Querier(
        version=fam.version,
        family=fam.af,
        timers=TIMERS,
        scheduler=clock,
        own_address=fam.own,
        send=send,
        on_change=lambda g: None,
    )
    q.start()
    clock.advance(TIMERS.sqi)
    assert len(sent) == 2
    assert q.counters["send_errors"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 4, "family": socket.AF_INET}, "version"),
        ({"version": 3, "family": socket.AF_INET6}, "version"),
        ({"version": 2, "family": 99}, "family"),
        ({"version": 3, "family": socket.AF_INET, "own_address": "fe80::1"}, "IPv4"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, message):
    args = {
        "timers": TIMERS,
        "scheduler": FakeScheduler(),
        "own_address": "10.0.0.1",
        "send": print,
        "on_change": print,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        Querier(**args)


def test_family_may_be_given_as_ip_version():
    q = Querier(
        version=2,
        family=6,
        timers=TIMERS,
        scheduler=FakeScheduler(),
        own_address="fe80::1",
        send=print,
        on_change=print,
    )
    assert q.family == "mld" and q.is_v3


# ---------------------------------------------------------------- FakeScheduler


def test_fake_scheduler_runs_due_callbacks_in_time_order_at_their_time():
    clock = FakeScheduler()
    seen = []
    clock.call_later(2.0, lambda: seen.append(("b", clock.time())))
    clock.call_later(1.0, lambda: seen.append(("a", clock.time())))
    cancelled = clock.call_later(1.5, seen.append, "never")
    cancelled.cancel()
    clock.advance(1.9)
    assert seen == [("a", 1.0)]
    assert clock.time() == 1.9
    clock.advance(0.1)
    assert seen == [("a", 1.0), ("b", 2.0)]
    assert clock.pending() == 0


def test_fake_scheduler_runs_callbacks_scheduled_by_callbacks_within_the_step():
    clock = FakeScheduler()
    seen = []
    clock.call_later(1.0, lambda: clock.call_later(1.0, lambda: seen.append(clock.time())))
    clock.advance(5.0)
    assert seen == [2.0]


def test_asyncio_event_loop_serves_as_scheduler():
    timers = Timers(query_interval=0.5, query_response_interval=0.1, startup_query_interval=0.01)
    sent: list[Query] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        q = Querier(version=3, family=socket.AF_INET, timers=timers, scheduler=loop,
                    own_address="10.0.0.1", send=sent.append, on_change=print)  # fmt: skip
        q.start()
        # Timer callbacks run in deadline order, so the 0.01 s startup query precedes this.
        await asyncio.sleep(0.05)
        q.stop()

    asyncio.run(run())
    assert len(sent) == 2
