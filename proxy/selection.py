"""Multiple upstreams at runtime: candidate health, takeover, revert, migration, and why.

``UpstreamSelector`` keeps the state behind ``routing.select_upstreams`` for one instance:

- Health. A candidate is usable while its link is up and, with ``takeover no-querier T``,
  while a query was heard on it within the last T seconds (T counts from link up, so a
  fresh link has T to hear its querier). ``takeover off``: always usable. With
  ``revert after D`` (wait to restore) a candidate that failed is usable again only D
  seconds after it recovered.
- Assignments. Every active request key (downstream, source or None for any source,
  group) remembers the upstreams it uses, the policy's choice and why.
- Pins. When the choice for an existing key changes while its old upstream is still usable
  (a reload, or a better candidate that recovered), the key keeps its old upstreams
  (``hold``: ``migrate keep``, ``revert never``, ``migrate after D`` until D) or is served
  by old and new together for ``overlap`` seconds (``moving``: make-before-break) and then
  moves. A pin ends with its key (the subscription expired or left), when its upstreams
  fail (takeover wins), or when the policy returns to them.

Nothing here touches sockets: timers go through an injected ``Scheduler`` and a timer that
changes a choice calls ``on_change(groups)`` (None: every group) so that the instance
recomputes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.clock import Handle, Scheduler
from proxy.config import Candidate, Network, Selection
from proxy.messages import Address
from proxy.routing import Choice, select_upstreams

Key = tuple[str, Address | None, Address]  # (downstream, source or None, group)
_EPS = 1e-6


@dataclass
class Health:
    """What the selector knows about one candidate upstream."""

    link_up: bool = False
    querier: Address | None = None
    heard_at: float | None = None
    deadline: float | None = None  # no-querier: lost once this passes without a query
    querier_lost: bool = False
    failed_at: float | None = None
    restore_at: float = 0.0
    timer: Handle | None = None
    restore_timer: Handle | None = None

    def cancel(self) -> None:
        for handle in (self.timer, self.restore_timer):
            if handle is not None:
                handle.cancel()
        self.timer = self.restore_timer = None


@dataclass
class Pin:
    """An existing subscription kept on ``held`` while the policy says ``target``."""

    held: frozenset[str]
    target: frozenset[str]
    phase: str  # "hold" or "moving"
    cause: str  # "migration", "revert" or "operator"
    until: float | None
    handle: Handle | None = None


@dataclass
class Assignment:
    upstreams: frozenset[str]
    choice: Choice
    generation: int
    since: float
    skipped: tuple[str, ...] = ()  # better candidates that are not usable (takeover)


@dataclass
class UpstreamSelector:
    """Runtime upstream selection of one instance (see the module docstring)."""

    sel: Selection
    sched: Scheduler
    on_change: Callable[[set[Address] | None], None]
    generation: int = 0
    health: dict[str, Health] = field(default_factory=dict)
    pins: dict[Key, Pin] = field(default_factory=dict)
    assigned: dict[Key, Assignment] = field(default_factory=dict)
    _seen: set[Key] = field(default_factory=set)

    def __post_init__(self) -> None:
        for c in self.sel.candidates:
            self.health.setdefault(c.ifname, Health())

    # --- configuration ---------------------------------------------------------------

    def candidate(self, ifname: str) -> Candidate | None:
        return self.sel.candidate(ifname)

    def reconfigure(self, selection: Selection) -> None:
        """A reload: later choices that differ are migrations (``migrate``)."""
        self.sel = selection
        self.generation += 1
        for name in [n for n in self.health if selection.candidate(n) is None]:
            self.health.pop(name).cancel()
        for c in selection.candidates:
            h = self.health.setdefault(c.ifname, Health())
            if h.link_up:
                self._arm_querier(c.ifname)
            if h.restore_at and self.sel.revert.mode != "after":
                h.restore_at = 0.0

    def stop(self) -> None:
        for h in self.health.values():
            h.cancel()
        for pin in self.pins.values():
            if pin.handle is not None:
                pin.handle.cancel()
        self.pins.clear()

    # --- health ------------------------------------------------------------------------

    def healthy(self, ifname: str) -> bool:
        c = self.candidate(ifname)
        if c is None:
            return False
        if c.takeover.trigger == "off":
            return True
        h = self.health[ifname]
        return h.link_up and not (c.takeover.trigger == "no-querier" and h.querier_lost)

    def usable(self, ifname: str) -> bool:
        if not self.healthy(ifname):
            return False
        return self.sched.time() + _EPS >= self.health[ifname].restore_at

    def state(self, ifname: str) -> str:
        """One word or phrase for ``ctl show``."""
        c, h = self.candidate(ifname), self.health.get(ifname)
        if c is None or h is None:
            return "not a candidate"
        now = self.sched.time()
        if not self.healthy(ifname):
            if not h.link_up:
                return "failed: link down"
            heard = "never" if h.heard_at is None else f"{now - h.heard_at:.1f}s ago"
            return f"failed: no querier (last query {heard})"
        if not self.usable(ifname):
            return f"restoring: usable in {h.restore_at - now:.1f}s (revert {self.sel.revert})"
        return "usable"

    def set_link(self, ifname: str, up: bool) -> bool:
        """Link state of a candidate; True if its usability changed."""
        h = self.health.get(ifname)
        if h is None or h.link_up == up:
            return False
        was_healthy, was_usable = self.healthy(ifname), self.usable(ifname)
        h.link_up = up
        if up:
            h.querier_lost = False
            self._arm_querier(ifname)
        elif h.timer is not None:
            h.timer.cancel()
            h.timer = None
        self._health_moved(ifname, was_healthy)
        return self.usable(ifname) != was_usable

    def query_heard(self, ifname: str, src: Address) -> bool:
        """A query arrived on a candidate; True if its usability changed."""
        h = self.health.get(ifname)
        if h is None:
            return False
        was_healthy, was_usable = self.healthy(ifname), self.usable(ifname)
        h.querier, h.heard_at, h.querier_lost = src, self.sched.time(), False
        self._arm_querier(ifname)
        self._health_moved(ifname, was_healthy)
        return self.usable(ifname) != was_usable

    def _arm_querier(self, ifname: str) -> None:
        c, h = self.candidate(ifname), self.health[ifname]
        if h.timer is not None:
            h.timer.cancel()
            h.timer = None
        if c is None or c.takeover.trigger != "no-querier" or not h.link_up:
            h.deadline = None
            return
        assert c.takeover.timeout is not None
        h.deadline = self.sched.time() + c.takeover.timeout
        h.timer = self.sched.call_later(c.takeover.timeout, self._querier_due, ifname)

    def _querier_due(self, ifname: str) -> None:
        h = self.health.get(ifname)
        if h is None:
            return
        h.timer = None
        if h.deadline is None or self.sched.time() + _EPS < h.deadline:
            return
        was_healthy, was_usable = self.healthy(ifname), self.usable(ifname)
        h.querier_lost = True
        self._health_moved(ifname, was_healthy)
        if self.usable(ifname) != was_usable:
            self.on_change(None)

    def _health_moved(self, ifname: str, was_healthy: bool) -> None:
        h, now = self.health[ifname], self.sched.time()
        healthy = self.healthy(ifname)
        if was_healthy and not healthy:
            h.failed_at = now
            h.restore_at = 0.0
            if h.restore_timer is not None:
                h.restore_timer.cancel()
                h.restore_timer = None
        elif (
            not was_healthy
            and healthy
            and h.failed_at is not None
            and self.sel.revert.mode == "after"
        ):
            # Wait to restore: a candidate that failed must stay up for the delay first.
            delay = self.sel.revert.delay or 0.0
            h.restore_at = now + delay
            h.restore_timer = self.sched.call_later(delay, self._restored, ifname)

    def _restored(self, ifname: str) -> None:
        h = self.health.get(ifname)
        if h is not None:
            h.restore_timer = None
            self.on_change(None)

    # --- choosing --------------------------------------------------------------------------

    def begin(self, group: Address) -> None:
        """Start a recomputation of ``group``: keys not chosen again before ``commit`` end."""
        self._seen = set()

    def commit(self, group: Address) -> None:
        for key in [k for k in self.assigned if k[2] == group and k not in self._seen]:
            del self.assigned[key]
            self._unpin(key)
        self._seen = set()

    def choose(
        self,
        downstream: str,
        subscribers: tuple[Network, ...],
        source: Address | None,
        group: Address,
        allowed: Callable[[str], bool] = lambda _u: True,
        addresses: Mapping[str, Address | None] | None = None,
    ) -> frozenset[str]:
        """The upstreams for one request key, pins applied; remembered for ``why``."""
        key: Key = (downstream, source, group)

        def ok(u: str) -> bool:
            return self.usable(u) and allowed(u)

        choice = select_upstreams(self.sel, ok, subscribers, source, group, addresses)
        new = frozenset(choice.upstreams)
        pin = self.pins.get(key)
        if pin is not None:
            held = frozenset(u for u in pin.held if ok(u))
            if not held or held <= new:
                self._unpin(key)
                pin = None
            else:
                pin.held, pin.target = held, new
        old = self.assigned.get(key)
        if pin is None and old is not None:
            leaving = frozenset(u for u in old.upstreams - new if ok(u))
            if leaving:
                cause = "migration" if old.generation != self.generation else "revert"
                held = frozenset(u for u in old.upstreams if ok(u))
                pin = self._pin(key, held, new, cause)
        if pin is None:
            result = new
        elif pin.phase == "hold":
            result = pin.held
        else:
            result = pin.held | new
        ideal = select_upstreams(self.sel, allowed, subscribers, source, group, addresses)
        skipped = tuple(u for u in ideal.upstreams if u not in new and not self.usable(u))
        since = old.since if old is not None and old.upstreams == result else self.sched.time()
        self.assigned[key] = Assignment(result, choice, self.generation, since, skipped)
        self._seen.add(key)
        return result

    def _pin(self, key: Key, held: frozenset, target: frozenset, cause: str) -> Pin | None:
        policy = self.sel.migrate if cause == "migration" else self.sel.revert
        now = self.sched.time()
        if policy.mode in ("keep", "never"):
            phase, until = "hold", None
        elif policy.mode == "after" and cause == "migration":
            phase, until = "hold", now + (policy.delay or 0.0)
        elif self.sel.overlap > 0:
            phase, until = "moving", now + self.sel.overlap
        else:
            return None
        pin = Pin(held, target, phase, cause, until)
        if until is not None:
            pin.handle = self.sched.call_later(until - now, self._pin_due, key)
        self.pins[key] = pin
        return pin

    def _unpin(self, key: Key) -> None:
        pin = self.pins.pop(key, None)
        if pin is not None and pin.handle is not None:
            pin.handle.cancel()

    def _pin_due(self, key: Key) -> None:
        pin = self.pins.get(key)
        if pin is None:
            return
        pin.handle = None
        self._advance(key, pin)
        self.on_change({key[2]})

    def _advance(self, key: Key, pin: Pin) -> None:
        """hold -> moving (make-before-break) -> gone."""
        if pin.phase == "hold" and self.sel.overlap > 0:
            pin.phase, pin.until = "moving", self.sched.time() + self.sel.overlap
            pin.handle = self.sched.call_later(self.sel.overlap, self._pin_due, key)
            return
        self._unpin(key)
        a = self.assigned.get(key)
        if a is not None:
            # The move is done: the old upstreams are no longer this key's, so the next
            # choice does not see them leaving (and pin them) again.
            a.upstreams = pin.target

    def release(self, group: Address | None = None) -> int:
        """Operator: move the held subscriptions (of ``group``, or all) now; how many."""
        moved, groups = 0, set()
        for key, pin in list(self.pins.items()):
            if pin.phase == "hold" and (group is None or key[2] == group):
                if pin.handle is not None:
                    pin.handle.cancel()
                    pin.handle = None
                pin.cause = "operator"
                self._advance(key, pin)
                moved += 1
                groups.add(key[2])
        if groups:
            self.on_change(groups)
        return moved

    # --- data plane questions --------------------------------------------------------------

    def upstreams_of(
        self, downstream: str, source: Address, group: Address
    ) -> frozenset[str] | None:
        """The upstreams ``downstream``'s subscription to (S,G) uses (None: not known)."""
        a = self.assigned.get((downstream, source, group)) or self.assigned.get(
            (downstream, None, group)
        )
        return None if a is None else a.upstreams

    def serves(
        self, downstream: str, source: Address, group: Address, parent: str, mirrored: bool
    ) -> bool:
        """Whether (S,G) arriving on upstream ``parent`` may go to ``downstream``.

        Yes if its subscription selected ``parent``; or if it selected an upstream that
        carries the same channel: a pin says so (old and new upstream of a migration or
        switch), or the flow is seen arriving on more than one interface (``mirrored``).
        Otherwise no: a subscriber mapped to another provider does not get this one's
        source (network merging).
        """
        mine = self.upstreams_of(downstream, source, group)
        if mine is None or parent in mine or (mirrored and mine):
            return True
        for (_d, s, g), pin in self.pins.items():
            if g == group and s in (source, None):
                same = pin.held | pin.target
                if parent in same and mine & same:
                    return True
        return False

    # --- observability -----------------------------------------------------------------------

    def why(self, key: Key) -> str:
        a = self.assigned[key]
        text = str(a.choice)
        if a.skipped:
            states = ", ".join(f"{u} {self.state(u)}" for u in a.skipped)
            text = f"takeover ({states}): {text}"
        pin = self.pins.get(key)
        if pin is not None:
            held = ", ".join(sorted(pin.held))
            left = "" if pin.until is None else f" for {pin.until - self.sched.time():.1f}s"
            policy = {
                "migration": f"migrate {self.sel.migrate}",
                "revert": f"revert {self.sel.revert}",
                "operator": "ctl migrate",
            }[pin.cause]
            if pin.phase == "hold":
                text = f"kept on {held}{left} ({policy}); new subscriptions: {text}"
            else:
                text = f"moving (make-before-break, {held} kept{left}, {policy}): {text}"
        return text

    def snapshot(self) -> dict[str, Any]:
        now = self.sched.time()
        candidates = []
        for c in self.sel.candidates:
            h = self.health[c.ifname]
            candidates.append(
                {
                    "interface": c.ifname,
                    "priority": c.priority,
                    "records": [str(r) for r in self.sel.records_of(c)],
                    "default": self.sel.default == c.ifname,
                    "takeover": str(c.takeover),
                    "usable": self.usable(c.ifname),
                    "state": self.state(c.ifname),
                    "querier": None if h.querier is None else str(h.querier),
                    "last_query_age": None if h.heard_at is None else round(now - h.heard_at, 3),
                }
            )
        channels = [
            {
                "downstream": d,
                "source": "*" if s is None else str(s),
                "group": str(g),
                "upstreams": sorted(a.upstreams),
                "why": self.why((d, s, g)),
                "record": None if a.choice.record is None else str(a.choice.record),
                "record_of": a.choice.via,
                "pinned": (d, s, g) in self.pins,
            }
            for (d, s, g), a in sorted(self.assigned.items(), key=lambda kv: str(kv[0]))
        ]
        return {
            "default": self.sel.default,
            "revert": str(self.sel.revert),
            "migrate": str(self.sel.migrate),
            "overlap": self.sel.overlap,
            "candidates": candidates,
            "channels": channels,
        }
