"""The paper's scenarios (section IV.A) and their measurement kinds, with parameters.

A scenario fixes the topology (single or multi LMA) and the access technology (LTE or
UMTS); a kind fixes who sends, who listens and who moves:

- ``delay-space``: fixed nodes only; one source on MAG1, one receiver on each MAG
  (single LMA: a local and a remote one; multi LMA: the two receivers on MAG2 belong to
  LMA1 and LMA2, as in Fig. 8, which leaves out local delivery).
- ``receiver-handover``: the source stays on MAG1; the receiving MN moves MAG1 -> MAG2
  (multi LMA: the MN belongs to LMA2, the source to LMA1, Fig. 10).
- ``sender-handover``: the sending MN moves from MAG1, where its receivers are, to MAG2
  (Fig. 9; multi LMA: one receiver of each LMA on MAG1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from experiments.layout import KINDS
from topologies.links import TABLE_I
from topologies.spec import TopologySpec, multi_lma, single_lma

__all__ = ["KINDS", "Parameters", "Roles", "Scenario", "apply_settings", "scenario"]


@dataclass(frozen=True)
class Parameters:
    """Everything a run depends on besides the scenario, kind, peering flag and seed."""

    rate: float = 100.0  # packets/s
    size: int = 64  # UDP payload bytes
    duration: float = 3.0  # s of streaming
    handover_at_ms: float = 500.0  # after the first packet
    l2_delay_ms: float = 0.0  # break-before-make gap (the paper ignores it)
    group: str = "ff0e::db8:1"  # ASM, global scope
    port: int = 5001
    qri_ms: float = 10.0  # proxies' query response interval (RFC 6636 / RFC 7161 "≈ 0")
    backend: str = "auto"  # link backend: auto, netem, emulator
    tunnels: str = "auto"  # MAG-LMA tunnels: auto (ip6tnl where the kernel has it), ip6tnl, p2p
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # Table I overrides

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Roles:
    source: str
    receivers: tuple[str, ...]
    moving: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    lmas: int
    access: str
    description: str

    def topology(self, peering: bool, params: Parameters) -> TopologySpec:
        build = single_lma if self.lmas == 1 else multi_lma
        return build(
            access=self.access,
            peering=peering,
            fixed_per_mag=2,
            mobile_per_mag=self.lmas,
            profiles=params.profiles,
        )

    def roles(self, kind: str) -> Roles:
        single = self.lmas == 1
        if kind == "delay-space":
            return Roles("n11", ("n12", "n21") if single else ("n21", "n22"))
        if kind == "receiver-handover":
            return Roles(
                "n11", ("mn11",) if single else ("mn12",), moving="mn11" if single else "mn12"
            )
        if kind == "sender-handover":
            return Roles("mn11", ("n11",) if single else ("n11", "n12"), moving="mn11")
        raise ValueError(f"unknown kind {kind!r} (valid: {', '.join(KINDS)})")


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("single-lma-lte", 1, "lte", "one LMA, two MAGs, LTE access (Figs. 4, 6)"),
        Scenario("single-lma-umts", 1, "umts", "one LMA, two MAGs, UMTS access (Figs. 5, 7)"),
        Scenario("multi-lma-lte", 2, "lte", "two LMAs, backbone, LTE access (Figs. 8-10)"),
        Scenario("multi-lma-umts", 2, "umts", "two LMAs, backbone, UMTS access"),
    )
}

SETTABLE = {
    "rate": float,
    "size": int,
    "duration": float,
    "handover_at_ms": float,
    "l2_delay_ms": float,
    "group": str,
    "port": int,
    "qri_ms": float,
    "backend": str,
    "tunnels": str,
}
PROFILE_FIELDS = {
    "delay_ms": float,
    "jitter_ms": float,
    "distribution": str,
    "reorder": str,
    "loss": float,
}


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r} (valid: {', '.join(SCENARIOS)})") from None


def apply_settings(params: Parameters, settings: list[str]) -> Parameters:
    """``KEY=VALUE`` overrides: a parameter, or ``LINKKIND.FIELD`` of a Table I profile."""
    profiles = {k: dict(v) for k, v in params.profiles.items()}
    values: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        kind, dot, fieldname = key.partition(".")
        try:
            if dot:
                if kind not in TABLE_I or fieldname not in PROFILE_FIELDS:
                    raise ValueError(
                        f"--set {key}: link kinds are {', '.join(TABLE_I)}, fields "
                        f"{', '.join(PROFILE_FIELDS)}"
                    )
                profiles.setdefault(kind, {})[fieldname] = PROFILE_FIELDS[fieldname](raw)
            elif key in SETTABLE:
                values[key] = SETTABLE[key](raw)
            else:
                raise ValueError(
                    f"--set {key}: valid keys are {', '.join(SETTABLE)} and LINK.FIELD"
                )
        except (TypeError, ValueError) as exc:
            if str(exc).startswith("--set"):
                raise
            raise ValueError(f"--set {item}: {exc}") from None
    new = replace(params, profiles=profiles, **values)
    if new.rate <= 0 or new.duration <= 0 or new.size < 16:
        raise ValueError("rate and duration must be positive and size at least 16 bytes")
    if not 0 <= new.handover_at_ms < new.duration * 1000:
        raise ValueError("handover_at_ms must fall inside the stream's duration")
    if new.backend not in ("auto", "netem", "emulator"):
        raise ValueError("backend must be auto, netem or emulator")
    if new.tunnels not in ("auto", "ip6tnl", "p2p"):
        raise ValueError("tunnels must be auto, ip6tnl or p2p")
    return new


def describe() -> str:
    """``make list``: scenarios, kinds and parameters."""
    lines = ["scenarios:"]
    lines += [f"  {s.name:<17} {s.description}" for s in SCENARIOS.values()]
    lines.append("kinds: " + ", ".join(KINDS))
    for name in SCENARIOS:
        for kind in KINDS:
            r = SCENARIOS[name].roles(kind)
            move = f", {r.moving} moves MAG1 -> MAG2" if r.moving else ""
            lines.append(
                f"  {name} {kind}: source {r.source}, receivers {', '.join(r.receivers)}{move}"
            )
    lines.append("parameters (--set KEY=VALUE, defaults):")
    lines += [f"  {k} = {v}" for k, v in Parameters().to_dict().items() if k != "profiles"]
    lines.append("  LINK.FIELD, e.g. tunnel.delay_ms=25 or lte.jitter_ms=1 (Table I overrides)")
    return "\n".join(lines)
