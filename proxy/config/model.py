"""The typed configuration: ``Config``, its ``Instance``s, protocols and ``ConfigError``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from proxy.config.rules import DEFAULT_RULE_MATCHING, FilterBinding, Network, RuleMatching, Table
from proxy.config.selection import Candidate, Selection
from proxy.messages import Address
from proxy.timers import Timers

#: protocol name -> (address family, version)
PROTOCOLS: dict[str, tuple[int, int]] = {
    "IGMPv1": (4, 1),
    "IGMPv2": (4, 2),
    "IGMPv3": (4, 3),
    "MLDv1": (6, 1),
    "MLDv2": (6, 2),
}
DEFAULT_PROTOCOL = "IGMPv3"
#: The kernel's own multicast routing table per family: RT_TABLE_DEFAULT for ipmr,
#: RT6_TABLE_DFLT (= RT_TABLE_MAIN) for ip6mr. A lone instance without an id lives there.
DEFAULT_TABLE: dict[int, int] = {4: 253, 6: 254}
#: mcproxy numbers the instances without an explicit id from here (proxy.cpp).
AUTO_TABLE_BASE = 1
#: MRT_TABLE / MRT6_TABLE refuse ids whose "pimreg%u" / "pim6reg%u" name would not fit IFNAMSIZ.
MAX_TABLE_ID = {4: 999_999_999, 6: 99_999_999}
MAX_VERSION = {4: 3, 6: 2}


def assign_table_ids(instances: list[tuple[str, int | None]], family: int) -> list[int]:
    """Kernel table ids of ``(name, explicit id or None)`` instances, in the given order.

    mcproxy's numbering (``proxy::start_proxy_instances``): a lone instance without an id
    uses the kernel's default table (``DEFAULT_TABLE``); otherwise the instances are taken
    sorted by name, a counter starts at 0, an explicit id sets the counter to that id and
    an instance without one gets the counter plus one. mcproxy would silently drop an
    instance whose counted id equals an explicit one; here the count skips ids in use.
    """
    if len(instances) == 1 and instances[0][1] is None:
        return [DEFAULT_TABLE[family]]
    taken = {i for _, i in instances if i is not None}
    by_name: dict[str, int] = {}
    counter = AUTO_TABLE_BASE - 1
    for name, table_id in sorted(instances, key=lambda e: e[0].encode()):
        if table_id is not None:
            counter = table_id
        else:
            counter += 1
            while counter in taken:
                counter += 1
            taken.add(counter)
        by_name[name] = table_id if table_id is not None else counter
    return [by_name[name] for name, _ in instances]


class ConfigError(Exception):
    """A configuration problem at ``path:line:col`` (1-based; 0:0 means the whole file)."""

    def __init__(self, path: str, line: int, col: int, message: str) -> None:
        super().__init__(path, line, col, message)
        self.path = path
        self.line = line
        self.col = col
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


def is_wildcard(name: str) -> bool:
    """``eth+`` (iptables) or ``ppp*``: a pattern for interfaces that come and go."""
    return len(name) > 1 and name[-1] in "+*"


def wildcard_matches(pattern: str, ifname: str) -> bool:
    """Whether interface ``ifname`` matches ``pattern`` (a name that starts with its stem)."""
    return is_wildcard(pattern) and ifname.startswith(pattern[:-1]) and ifname != pattern


class ConfigDisabled(Exception):
    """The file says ``disable;``: mcproxy's switch to not run the proxy at all."""

    def __init__(self, path: str, line: int) -> None:
        super().__init__(path, line)
        self.path = path
        self.line = line

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: 'disable;' - this file disables the proxy"


@dataclass(frozen=True)
class DownstreamOptions:
    """Per-downstream router settings (RFC 4605 §4.1 P2 version, §3 P7 querier election).

    ``subscribers``: the subscriber prefixes of the link for subscriber-based upstream
    selection; empty means "the prefixes configured on the interface".
    """

    version: int
    querier_election: bool = True
    subscribers: tuple[Network, ...] = ()


@dataclass(frozen=True)
class Instance:
    """One proxy instance: its interfaces, kernel table, timers, filters and options.

    ``rule_matching`` always holds "in" and "out"; ``downstream_options`` holds every
    downstream. Both are filled with the defaults where the file says nothing.
    """

    name: str
    table_id: int
    table_id_explicit: bool
    upstreams: tuple[str, ...]
    downstreams: tuple[str, ...]
    peerings: tuple[str, ...] = ()
    timers: Timers = field(default_factory=Timers)
    filters: tuple[FilterBinding, ...] = ()
    rule_matching: dict[str, RuleMatching] = field(
        default_factory=lambda: dict(DEFAULT_RULE_MATCHING)
    )
    downstream_options: dict[str, DownstreamOptions] = field(default_factory=dict)
    selection: Selection | None = None  # None: mcproxy's rule matching

    @classmethod
    def build(
        cls,
        name: str,
        upstreams: Iterable[str],
        downstreams: Iterable[str],
        *,
        peerings: Iterable[str] = (),
        timers: Timers | None = None,
        table_id: int | None = None,
        filters: Iterable[FilterBinding] = (),
        rule_matching: Iterable[RuleMatching] = (),
        downstream_options: Mapping[str, DownstreamOptions] | None = None,
        selection: Selection | None = None,
    ) -> Instance:
        """An instance built in Python, to be put in ``Config.build``.

        ``table_id`` None is implicit (0 until ``Config.build`` assigns it by the file rule);
        ``timers`` None is the default profile; ``rule_matching`` lists only what differs
        from mcproxy's defaults; ``downstream_options`` may leave downstreams out (the
        protocol's version, querier election on); ``selection`` may leave upstreams out of
        its candidates (each then gets ``Candidate(ifname)``, in upstream order).
        """
        ups = tuple(upstreams)
        if selection is not None:
            given = {c.ifname: c for c in selection.candidates}
            unknown = set(given) - set(ups)
            if unknown:
                raise ValueError(f"selection candidates {sorted(unknown)} are not upstreams")
            candidates = tuple(given.get(up, Candidate(up)) for up in ups)
            selection = replace(selection, candidates=candidates)
        return cls(
            name=name,
            table_id=0 if table_id is None else table_id,
            table_id_explicit=table_id is not None,
            upstreams=ups,
            downstreams=tuple(downstreams),
            peerings=tuple(peerings),
            timers=Timers() if timers is None else timers,
            filters=tuple(filters),
            rule_matching=DEFAULT_RULE_MATCHING | {rm.direction: rm for rm in rule_matching},
            downstream_options=dict(downstream_options or {}),
            selection=selection,
        )

    def interfaces(self) -> tuple[str, ...]:
        """Upstreams, downstreams and peering interfaces, in that order."""
        return self.upstreams + self.downstreams + self.peerings

    def role_of(self, ifname: str) -> Literal["upstream", "downstream", "peering"] | None:
        if ifname in self.upstreams:
            return "upstream"
        if ifname in self.downstreams:
            return "downstream"
        if ifname in self.peerings:
            return "peering"
        return None

    def filter_for(self, role: str, ifname: str, direction: str) -> FilterBinding | None:
        """The binding for this interface; one naming the interface beats one naming a
        wildcard it matches (``eth+``), which beats one for ``*``."""
        wildcard = pattern = None
        for binding in self.filters:
            if binding.role == role and binding.direction == direction:
                if binding.ifname == ifname:
                    return binding
                if binding.ifname == "*":
                    wildcard = binding
                elif pattern is None and wildcard_matches(binding.ifname, ifname):
                    pattern = binding
        return pattern or wildcard

    def allows(
        self,
        role: str,
        ifname: str,
        direction: str,
        from_ifname: str | None,
        source: Address,
        group: Address,
    ) -> bool:
        """Apply ``filter_for(role, ifname, direction)``; no binding lets everything through."""
        binding = self.filter_for(role, ifname, direction)
        return binding is None or binding.allows(from_ifname, source, group)


@dataclass(frozen=True)
class Config:
    """A parsed configuration. ``path`` is where it came from and is left out of ``==``."""

    path: str = field(compare=False)
    protocol: str
    family: int
    version: int
    instances: tuple[Instance, ...]
    tables: dict[str, Table]

    @classmethod
    def build(
        cls,
        instances: Iterable[Instance],
        protocol: str = DEFAULT_PROTOCOL,
        tables: Mapping[str, Table] | None = None,
        path: str = "<built>",
    ) -> Config:
        """A config built in Python, equal to what ``parse(render(it))`` gives back.

        Implicit table ids are assigned as for a file, downstreams without options get the
        protocol's defaults. ``tables`` (the named tables written at the top) defaults to
        the named tables the filters use.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r} (expected one of {list(PROTOCOLS)})")
        family, version = PROTOCOLS[protocol]
        given = tuple(instances)
        ids = assign_table_ids(
            [(i.name, i.table_id if i.table_id_explicit else None) for i in given], family
        )
        built = tuple(
            replace(
                inst,
                table_id=table_id,
                downstream_options={
                    d: inst.downstream_options.get(d, DownstreamOptions(version))
                    for d in inst.downstreams
                },
            )
            for inst, table_id in zip(given, ids, strict=True)
        )
        if tables is None:
            tables = {
                b.table.name: b.table for i in built for b in i.filters if b.table.name is not None
            }
        return cls(path, protocol, family, version, built, dict(tables))

    def instance(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def instance_of(self, ifname: str) -> Instance | None:
        """The instance that uses ``ifname`` in any role."""
        for inst in self.instances:
            if inst.role_of(ifname) is not None:
                return inst
        return None
