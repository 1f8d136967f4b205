"""Link profiles (Table I), their random draws, endpoints, and the interface of a link backend.

A link joins two endpoints, each an interface inside a named network namespace. Both
backends give a link the same semantics (see `LinkProfile`), are driven through the same
`LinkBackend` interface by the topology builder, and report what they did (`describe()`) for
each run's metadata.

The backends themselves (`EmulatorBackend`, `NetemBackend`, `select_backend`) are in
`topologies.backends`.
"""

from __future__ import annotations

import abc
import json
import math
import os
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from lab.paths import RUN_DIR

Distribution = Literal["uniform", "normal"]
Reorder = Literal["netem", "preserve"]


class LinkError(RuntimeError):
    """A link operation failed (the message is one line, fit for a terminal)."""


class BackendUnavailable(LinkError):
    """The requested backend cannot run on this machine."""


# --------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class LinkProfile:
    """Delay, jitter and loss of one link, applied to each direction independently.

    Jitter semantics (identical in both backends):

    - ``distribution='uniform'`` (netem's default): each packet's delay is drawn independently,
      uniformly in ``[delay_ms - jitter_ms, delay_ms + jitter_ms]``. Because draws are
      independent, a packet can overtake its predecessor whenever the jitter exceeds the
      packet spacing: at 100 packets/s, UMTS (200 +- 50 ms) reorders most packets.
    - ``distribution='normal'``: the delay is normal with mean ``delay_ms`` and standard
      deviation ``jitter_ms`` (netem's ``distribution normal``).
    - A drawn delay below zero is clamped to zero.
    - ``reorder='netem'`` releases each packet at arrival + its drawn delay, reordering as
      above. ``reorder='preserve'`` keeps each direction FIFO: a packet is released at
      ``max(arrival + drawn delay, release time of its predecessor)``, so the delay
      distribution shifts upwards a little when jitter exceeds the packet spacing (this is
      what netem does when a ``rate`` is set).
    - ``loss`` is the probability that a frame is dropped, drawn independently per frame.

    ``delay_range_ms`` describes Table I entries such as "20-40 ms": the base delay of each
    link instance is drawn uniformly from the range once, by `resolve()`, and the resolved
    profile carries it as ``delay_ms``. ``delay_ms`` of an unresolved ranged profile is the
    range's midpoint, for display only.
    """

    name: str
    delay_ms: float
    jitter_ms: float
    delay_range_ms: tuple[float, float] | None = None
    distribution: Distribution = "uniform"
    reorder: Reorder = "netem"
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"profile {self.name}: delay and jitter must not be negative")
        if self.delay_range_ms is not None:
            low, high = self.delay_range_ms
            if not 0 <= low <= high:
                raise ValueError(f"profile {self.name}: delay range must be 0 <= low <= high")
            # Lists arrive from JSON; a tuple keeps the dataclass hashable.
            object.__setattr__(self, "delay_range_ms", (float(low), float(high)))
        if self.distribution not in ("uniform", "normal"):
            raise ValueError(f"profile {self.name}: distribution must be uniform or normal")
        if self.reorder not in ("netem", "preserve"):
            raise ValueError(f"profile {self.name}: reorder must be netem or preserve")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"profile {self.name}: loss is a probability in [0, 1]")

    @property
    def resolved(self) -> bool:
        return self.delay_range_ms is None

    def resolve(self, rng: random.Random) -> LinkProfile:
        """This profile with the base delay drawn from ``delay_range_ms`` (if set)."""
        if self.delay_range_ms is None:
            return self
        low, high = self.delay_range_ms
        return replace(self, delay_ms=rng.uniform(low, high), delay_range_ms=None)

    def expected_sd_ms(self) -> float:
        """Standard deviation of the per-packet delay (ignoring the clamp at zero)."""
        return self.jitter_ms / math.sqrt(3) if self.distribution == "uniform" else self.jitter_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkProfile:
        return cls(**data)


TABLE_I: dict[str, LinkProfile] = {
    "umts": LinkProfile("umts", 200.0, 50.0),
    "lte": LinkProfile("lte", 5.0, 3.0),
    "tunnel": LinkProfile("tunnel", 30.0, 6.0, delay_range_ms=(20.0, 40.0)),
    "peering": LinkProfile("peering", 10.0, 3.0, delay_range_ms=(5.0, 15.0)),
    "backbone": LinkProfile("backbone", 50.0, 12.0, delay_range_ms=(40.0, 60.0)),
}


def profile_from(name: str, **overrides: Any) -> LinkProfile:
    """The Table I profile ``name`` with fields replaced.

    Overriding ``delay_ms`` alone also clears ``delay_range_ms``: a fixed delay is meant.
    """
    try:
        base = TABLE_I[name]
    except KeyError:
        raise ValueError(f"unknown link profile {name!r} (known: {', '.join(TABLE_I)})") from None
    if "delay_ms" in overrides and "delay_range_ms" not in overrides:
        overrides["delay_range_ms"] = None
    return replace(base, **overrides)


# --------------------------------------------------------------------------------------------
# Scheduling, shared by the emulator and the unit tests


def draw_delay_ns(profile: LinkProfile, rng: random.Random) -> int:
    """One packet's delay in nanoseconds under ``profile`` (resolved), clamped at zero."""
    if profile.jitter_ms == 0:
        delay_ms = profile.delay_ms
    elif profile.distribution == "uniform":
        delay_ms = profile.delay_ms + rng.uniform(-profile.jitter_ms, profile.jitter_ms)
    else:
        delay_ms = rng.gauss(profile.delay_ms, profile.jitter_ms)
    return max(0, round(delay_ms * 1e6))


def release_time_ns(arrival_ns: int, delay_ns: int, previous_ns: int, reorder: Reorder) -> int:
    """When a frame leaves: arrival + delay, but not before its predecessor if FIFO."""
    due = arrival_ns + delay_ns
    return max(due, previous_ns) if reorder == "preserve" else due


def direction_rng(seed: int, direction: int) -> random.Random:
    """The random stream of one direction (0: a->b, 1: b->a) of a link with ``seed``."""
    # String seeds are hashed with SHA-512 by random.seed(): stable across runs and versions.
    return random.Random(f"pmiplab-link:{seed}:{direction}")


# --------------------------------------------------------------------------------------------
# Endpoints and the backend interface


@dataclass(frozen=True)
class Endpoint:
    """An interface ``ifname`` inside the named network namespace ``netns``."""

    netns: str
    ifname: str
    mac: str | None = None

    @property
    def label(self) -> str:
        return f"{self.netns}/{self.ifname}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def direction_key(src: Endpoint, dst: Endpoint | None) -> str:
    """Key of one direction in `LinkBackend.stats()`: ``ns/if>ns/if`` (``>-``: no peer)."""
    return f"{src.label}>{dst.label if dst else '-'}"


@dataclass
class _Link:
    a: Endpoint
    b: Endpoint
    profile: LinkProfile
    resolved: LinkProfile
    seed: int
    index: int
    connected: bool = True
    connected_at: float = field(default_factory=time.time)
    disconnected_at: float | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "a": self.a.label,
            "b": self.b.label,
            "profile": self.profile.name,
            "configured": self.profile.to_dict(),
            "delay_ms": self.resolved.delay_ms,
            "jitter_ms": self.resolved.jitter_ms,
            "seed": self.seed,
            "connected": self.connected,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
        }


class LinkBackend(abc.ABC):
    """What the topology builder uses to make, break and move links.

    Endpoints are created unconnected (carrier down). ``connect`` raises the carrier on both
    ends and shapes both directions with the same resolved profile but independent random
    streams; it returns once both ends are operational, so a frame sent after it returns
    travels the link. ``disconnect`` is an L2 detach (carrier down on both former ends) that
    drops every frame still in flight on the link, in either direction; ``move`` is the two
    in sequence (break before make), as in a handover of a mobile node between access
    routers. The interfaces are left administratively up; addresses are the caller's
    business.
    """

    name: ClassVar[str]

    def __init__(self, tag: str | None = None, run_dir: Path = RUN_DIR) -> None:
        self.tag = tag or f"{os.getpid()}-{next(_tags)}"
        self.run_dir = Path(run_dir)
        self._endpoints: dict[Endpoint, int] = {}
        self._links: dict[Endpoint, _Link] = {}
        self._history: list[_Link] = []

    # The backend-specific half.
    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None:
        """Remove everything this backend created; safe to call twice."""

    @abc.abstractmethod
    def _add_endpoint(self, ep: Endpoint, index: int) -> None: ...

    @abc.abstractmethod
    def _connect(self, link: _Link) -> None: ...

    @abc.abstractmethod
    def _disconnect(self, link: _Link) -> None: ...

    @abc.abstractmethod
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per direction (`direction_key`): frames, bytes, drops (and backend extras)."""

    @abc.abstractmethod
    def _describe_backend(self) -> dict[str, Any]: ...

    # The shared half.
    def add_endpoint(self, ep: Endpoint) -> None:
        if any(e.label == ep.label for e in self._endpoints):
            raise LinkError(f"endpoint {ep.label} exists already")
        index = len(self._endpoints)
        self._add_endpoint(ep, index)
        self._endpoints[ep] = index

    def connect(self, a: Endpoint, b: Endpoint, profile: LinkProfile, seed: int) -> None:
        for ep in (a, b):
            if ep not in self._endpoints:
                raise LinkError(f"endpoint {ep.label} was not added")
            if ep in self._links:
                raise LinkError(f"endpoint {ep.label} is connected already")
        if a == b:
            raise LinkError("cannot connect an endpoint to itself")
        resolved = profile.resolve(random.Random(seed))
        link = _Link(a, b, profile, resolved, seed, index=len(self._history))
        self._connect(link)
        self._links[a] = self._links[b] = link
        self._history.append(link)
        wait_operational([a, b])

    def disconnect(self, ep: Endpoint) -> None:
        link = self._links.get(ep)
        if link is None:
            raise LinkError(f"endpoint {ep.label} is not connected")
        self._disconnect(link)
        del self._links[link.a], self._links[link.b]
        link.connected = False
        # A backend may stamp the break itself, before the bookkeeping that follows it.
        if link.disconnected_at is None:
            link.disconnected_at = time.time()

    def move(self, ep: Endpoint, new_peer: Endpoint, profile: LinkProfile, seed: int) -> None:
        if new_peer in self._links:
            raise LinkError(f"cannot move {ep.label}: {new_peer.label} is connected already")
        if ep in self._links:
            self.disconnect(ep)
        self.connect(ep, new_peer, profile, seed)

    def peer(self, ep: Endpoint) -> Endpoint | None:
        link = self._links.get(ep)
        if link is None:
            return None
        return link.b if link.a == ep else link.a

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "tag": self.tag,
            **self._describe_backend(),
            "links": [link.describe() for link in self._history],
        }

    def _forget(self) -> None:
        self._endpoints.clear()
        self._links.clear()

    def __enter__(self) -> LinkBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_tags = iter(range(1, 1 << 30))


def wait_operational(endpoints: list[Endpoint], timeout_s: float = 10.0) -> None:
    """Until every endpoint's interface is operationally up.

    Raising the carrier is not yet enough to send: the kernel attaches the device's queue
    when its link watcher has seen the carrier, a moment later (on a busy single CPU, many
    milliseconds). Until then a frame sent is dropped by the sender's own device. The
    watcher sets the operational state in the same step, so once that reads UP, a frame sent
    travels the link.
    """
    deadline = time.monotonic() + timeout_s
    for ep in endpoints:
        while True:
            cmd = ["ip", "-n", ep.netns, "-j", "link", "show", "dev", ep.ifname]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0 and json.loads(proc.stdout)[0].get("operstate") == "UP":
                break
            if time.monotonic() > deadline:
                raise LinkError(f"{ep.label} did not come up within {timeout_s:g} s")
            time.sleep(0.002)
