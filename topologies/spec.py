"""PMIPv6 domains as data: nodes, links, addresses and proxy roles, and the two builders.

A ``TopologySpec`` only declares (like a Mininet ``Topo.build()``): which LMAs, MAGs, mobile
nodes (MN) and fixed nodes (N) exist, which LMA each node belongs to, where it attaches,
and which link of Table I joins what. ``topologies.network.Network`` builds it. The spec
is written to JSON with every run, so it doubles as metadata, and a cluster backend could
place the same spec on several machines.

Naming and addressing (2001:db8::/32 only):

- LMA ``lma<l>``; MAG ``mag<m>``; fixed node ``n<m><k>`` and MN ``mn<m><k>`` (k-th node that
  starts on MAG m). Node k on a MAG belongs to LMA ``((k - 1) % lmas) + 1``.
- MAG-LMA "tunnel" (a point-to-point link: this kernel has no ip6tnl): ``t-lma<l>`` on the
  MAG, ``t-mag<m>`` on the LMA, prefix 2001:db8:1:<l><m>::/64 (LMA ::1, MAG ::2).
- Access links: node side ``eth0``; MAG side ``a-<node>``. Every MAG has an access interface
  for every MN (carrier down until it attaches) and for its own fixed nodes. On every
  access link a MAG shows the same MAC (02:00:00:00:01:00) and link-local (fe80::1), so an
  MN does not notice which MAG it is on (RFC 5213 §6.9.3).
- Home network prefix of node i (in spec order): 2001:db8:8<i>::/64, its address ::10.
- Peering (RFC 7287): between every pair of proxy instances on different MAGs
  (``p<l>m<m'>l<l'>`` on MAG m for instance l towards instance l' of MAG m'), and, with two
  LMAs, a local peering between the two instances of one MAG (zero delay).
- LMA multicast: each LMA runs the proxy with its tunnels as downstreams. LMA1's upstream is
  a dummy ``core`` interface (the rest of the operator's network); LMA2's upstream is the
  backbone ``bb-lma1`` to LMA1, so a group crosses the backbone only while a listener
  behind LMA2 subscribes (local sources behind LMA2 go up to LMA1, as any proxy's do).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["lma", "mag", "mn", "n"]
LinkKind = Literal["lte", "umts", "tunnel", "peering", "local-peering", "backbone"]

MAG_ACCESS_MAC = "02:00:00:00:01:00"
MAG_ACCESS_LL = "fe80::1"
ACCESS_KINDS = ("lte", "umts")
PEERING_KINDS = ("peering", "local-peering")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: Role
    lma: int = 0  # the LMA a node (or a MAG's instance set) belongs to; 0 for MAGs/LMAs
    mag: int = 0  # where a node attaches first
    hnp: str = ""  # home network prefix of MNs and Ns
    address: str = ""  # the node's home address

    @property
    def is_end_node(self) -> bool:
        return self.role in ("mn", "n")


@dataclass(frozen=True)
class LinkSpec:
    kind: LinkKind
    a: str  # node name
    a_if: str
    b: str
    b_if: str
    connected: bool = True  # access interfaces of MNs elsewhere start unconnected
    # Peering links: the LMA whose proxy instance owns each end (0 for other links).
    a_lma: int = 0
    b_lma: int = 0

    @property
    def is_peering(self) -> bool:
        return self.kind in PEERING_KINDS

    def ends(self) -> tuple[tuple[str, str, int], tuple[str, str, int]]:
        """(node, interface, owning LMA) of both ends."""
        return (self.a, self.a_if, self.a_lma), (self.b, self.b_if, self.b_lma)


@dataclass(frozen=True)
class InstancePlan:
    """One proxy instance as the topology sees it: its interfaces by role and its table."""

    name: str
    upstreams: tuple[str, ...]
    downstreams: tuple[str, ...]
    peerings: tuple[str, ...] = ()
    table_id: int | None = None


@dataclass
class TopologySpec:
    name: str
    lmas: int
    mags: int
    access: Literal["lte", "umts"]
    peering: bool
    nodes: list[NodeSpec] = field(default_factory=list)
    links: list[LinkSpec] = field(default_factory=list)
    # Profile overrides by link kind: {"tunnel": {"delay_ms": 25}, ...}
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in topology {self.name}")

    def by_role(self, role: Role) -> list[NodeSpec]:
        return [n for n in self.nodes if n.role == role]

    def end_nodes(self) -> list[NodeSpec]:
        return [n for n in self.nodes if n.is_end_node]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    # --- the derived interface plan -----------------------------------------------------

    def tunnel_prefix(self, lma: int, mag: int) -> str:
        return f"2001:db8:1:{lma}{mag}::"

    def access_if(self, node: str) -> str:
        return f"a-{node}"

    def peering_if(self, lma: int, other_mag: int, other_lma: int) -> str:
        return f"p{lma}m{other_mag}l{other_lma}"

    def instance_name(self, mag: int, lma: int) -> str:
        return f"mag{mag}_lma{lma}"

    def mag_instances(self, mag: int) -> list[InstancePlan]:
        """MAG ``mag``'s proxy instances, one per LMA: upstream tunnel, access links, peerings.

        Instance l uses kernel table 10 + l; its peerings are the peering ends it owns
        (none when the spec has peering off: the links do not exist then).
        """
        out = []
        for lma in range(1, self.lmas + 1):
            downs = tuple(
                self.access_if(n.name)
                for n in self.end_nodes()
                if n.lma == lma and (n.role == "mn" or n.mag == mag)
            )
            peers = tuple(
                ifname
                for link in self.links
                if link.is_peering
                for node, ifname, owner in link.ends()
                if node == f"mag{mag}" and owner == lma
            )
            out.append(
                InstancePlan(self.instance_name(mag, lma), (f"t-lma{lma}",), downs, peers, 10 + lma)
            )
        return out

    def lma_instance(self, lma: int) -> InstancePlan:
        """LMA ``lma``'s proxy instance: LMA1 below the core stub, the others below LMA1."""
        downs = tuple(f"t-mag{m}" for m in range(1, self.mags + 1))
        if lma == 1:
            downs += tuple(f"bb-lma{other}" for other in range(2, self.lmas + 1))
            return InstancePlan("lma1", ("core",), downs, (), 10)
        return InstancePlan(f"lma{lma}", ("bb-lma1",), downs, (), 10)


def pmip_domain(
    name: str,
    *,
    lmas: int,
    mags: int = 2,
    fixed_per_mag: int = 2,
    mobile_per_mag: int = 1,
    access: Literal["lte", "umts"] = "lte",
    peering: bool = True,
    profiles: dict[str, dict[str, Any]] | None = None,
) -> TopologySpec:
    """A PMIPv6 domain with ``lmas`` LMAs, ``mags`` MAGs and the given end nodes per MAG."""
    if access not in ACCESS_KINDS:
        raise ValueError(f"access must be one of {', '.join(ACCESS_KINDS)}, not {access!r}")
    if not 1 <= lmas <= 9 or not 1 <= mags <= 9:
        raise ValueError("1 to 9 LMAs and MAGs are supported by the naming plan")
    if not 0 <= fixed_per_mag <= 9 or not 0 <= mobile_per_mag <= 9:
        raise ValueError("0 to 9 fixed and mobile nodes per MAG are supported")
    spec = TopologySpec(name, lmas, mags, access, peering, profiles=dict(profiles or {}))
    spec.nodes += [NodeSpec(f"lma{l}", "lma") for l in range(1, lmas + 1)]  # noqa: E741
    spec.nodes += [NodeSpec(f"mag{m}", "mag") for m in range(1, mags + 1)]
    index = 0
    for m in range(1, mags + 1):
        for role, count in (("n", fixed_per_mag), ("mn", mobile_per_mag)):
            for k in range(1, count + 1):
                index += 1
                prefix = f"2001:db8:8{index:03x}::"
                spec.nodes.append(
                    NodeSpec(
                        f"{role}{m}{k}",
                        role,
                        lma=(k - 1) % lmas + 1,
                        mag=m,
                        hnp=f"{prefix}/64",
                        address=f"{prefix}10",
                    )
                )
    for l in range(1, lmas + 1):  # noqa: E741
        for m in range(1, mags + 1):
            spec.links.append(LinkSpec("tunnel", f"mag{m}", f"t-lma{l}", f"lma{l}", f"t-mag{m}"))
    for other in range(2, lmas + 1):
        spec.links.append(LinkSpec("backbone", "lma1", f"bb-lma{other}", f"lma{other}", "bb-lma1"))
    for n in spec.end_nodes():
        mags_for = range(1, mags + 1) if n.role == "mn" else [n.mag]
        for m in mags_for:
            spec.links.append(
                LinkSpec(access, n.name, "eth0", f"mag{m}", spec.access_if(n.name), m == n.mag)
            )
    if peering:
        _add_peerings(spec)
    return spec


def _add_peerings(spec: TopologySpec) -> None:
    instances = [(m, l) for m in range(1, spec.mags + 1) for l in range(1, spec.lmas + 1)]  # noqa: E741
    for i, (m1, l1) in enumerate(instances):
        for m2, l2 in instances[i + 1 :]:
            kind: LinkKind = "local-peering" if m1 == m2 else "peering"
            spec.links.append(
                LinkSpec(
                    kind,
                    f"mag{m1}",
                    spec.peering_if(l1, m2, l2),
                    f"mag{m2}",
                    spec.peering_if(l2, m1, l1),
                    a_lma=l1,
                    b_lma=l2,
                )
            )


def single_lma(**kw: Any) -> TopologySpec:
    """Section IV.A single-LMA scenario: one LMA, MAGs with mobile and fixed nodes."""
    return pmip_domain("single-lma", lmas=1, **kw)


def multi_lma(**kw: Any) -> TopologySpec:
    """Section IV.A multi-LMA scenario: two LMAs joined by the backbone link."""
    return pmip_domain("multi-lma", lmas=2, **kw)


BUILDERS = {"single-lma": single_lma, "multi-lma": multi_lma}
