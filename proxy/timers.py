"""Protocol timer values (RFC 3376 §8, RFC 3810 §9) and the named profiles of the config."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Timers:
    """Querier and listener timers, in seconds.

    ``None`` means "derived from the others" as the RFCs say. ``gmi_qri_factor`` is 1 for
    RFC 3376/3810 (GMI = RV*QI + QRI); RFC 9776 is quoted with a factor of 2.
    """

    robustness: int = 2
    query_interval: float = 125.0
    query_response_interval: float = 10.0
    last_listener_query_interval: float = 1.0
    last_listener_query_count: int | None = None
    startup_query_interval: float | None = None
    startup_query_count: int | None = None
    gmi_qri_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.robustness < 1:
            raise ValueError("robustness must be at least 1 (RFC 3376 §8.1: MUST NOT be 0)")
        if self.query_response_interval >= self.query_interval:
            raise ValueError("query response interval must be smaller than the query interval")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise ValueError(f"{f.name.replace('_', '-')} must be positive")

    @property
    def lmqc(self) -> int:
        """Last Member / Last Listener Query Count."""
        return self.last_listener_query_count or self.robustness

    @property
    def sqi(self) -> float:
        """Startup Query Interval (default QI/4)."""
        return self.startup_query_interval or self.query_interval / 4

    @property
    def sqc(self) -> int:
        """Startup Query Count (default RV)."""
        return self.startup_query_count or self.robustness

    @property
    def gmi(self) -> float:
        """Group Membership Interval / Multicast Address Listening Interval."""
        return (
            self.robustness * self.query_interval
            + self.gmi_qri_factor * self.query_response_interval
        )

    @property
    def oqpi(self) -> float:
        """Other Querier Present Interval: RV*QI + QRI/2."""
        return self.robustness * self.query_interval + self.query_response_interval / 2

    @property
    def lmqt(self) -> float:
        """Last Member Query Time: LMQI * LMQC."""
        return self.last_listener_query_interval * self.lmqc

    def older_version_present(self, query_interval: float | None = None) -> float:
        """Older Version Querier/Host Present Interval: RV*QI + QRI."""
        qi = self.query_interval if query_interval is None else query_interval
        return self.robustness * qi + self.query_response_interval


#: RFC 6636 suggestions for mobile access: startup query interval about 1 s (§4.4),
#: QRI 5 s (§4.2), LMQC 1 (§4.3), RV 2 (§4.5), QI 60 s (§4.1).
MOBILITY = Timers(
    robustness=2,
    query_interval=60.0,
    query_response_interval=5.0,
    last_listener_query_interval=1.0,
    last_listener_query_count=1,
    startup_query_interval=1.0,
)

PROFILES: dict[str, Timers] = {"default": Timers(), "mobility": MOBILITY}


def with_overrides(base: Timers, **values: float | int | None) -> Timers:
    """Return ``base`` with the given fields replaced (validated again)."""
    return replace(base, **values)
