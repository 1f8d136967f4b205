"""Group-membership messages as plain values, shared by the codec and the state machines.

IGMP (IPv4) and MLD (IPv6) are described with one set of types: the codec in
``proxy.packets`` turns wire bytes into these and back, and the router/host state
machines consume and produce them without knowing the address family.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

Address = IPv4Address | IPv6Address


class RecordType(enum.IntEnum):
    """IGMPv3/MLDv2 group record types (RFC 3376 §4.2.12, RFC 3810 §5.2.12)."""

    MODE_IS_INCLUDE = 1
    MODE_IS_EXCLUDE = 2
    CHANGE_TO_INCLUDE = 3
    CHANGE_TO_EXCLUDE = 4
    ALLOW_NEW_SOURCES = 5
    BLOCK_OLD_SOURCES = 6


class FilterMode(enum.Enum):
    INCLUDE = "include"
    EXCLUDE = "exclude"


@dataclass(frozen=True)
class GroupRecord:
    """One group record of an IGMPv3 / MLDv2 report."""

    rtype: RecordType
    group: Address
    sources: tuple[Address, ...] = ()
    aux: bytes = b""


@dataclass(frozen=True)
class Query:
    """A membership query of any version.

    ``version`` is 1, 2 or 3 for IGMP and 1 or 2 for MLD. ``group`` is the unspecified
    address (0.0.0.0 / ::) for a General Query. ``max_resp`` is in seconds, already
    decoded from the wire code; ``qqi`` is in seconds (0 when absent).
    """

    version: int
    group: Address
    max_resp: float
    sources: tuple[Address, ...] = ()
    s_flag: bool = False
    qrv: int = 0
    qqi: float = 0.0

    @property
    def is_general(self) -> bool:
        return int(self.group) == 0


@dataclass(frozen=True)
class Report:
    """An IGMPv3 / MLDv2 report (version 3 for IGMP, 2 for MLD)."""

    records: tuple[GroupRecord, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class OldReport:
    """An IGMPv1/v2 or MLDv1 report for one group. ``version``: 1 or 2 (IGMP), 1 (MLD)."""

    version: int
    group: Address


@dataclass(frozen=True)
class Leave:
    """An IGMPv2 Leave Group or an MLDv1 Done."""

    group: Address


Message = Query | Report | OldReport | Leave
