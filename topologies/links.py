"""Link profiles (Table I) and the link backends that shape them: netem and a userspace emulator.

A link joins two endpoints, each an interface inside a named network namespace. Both
backends give a link the same semantics (see `LinkProfile`), are driven through the same
`LinkBackend` interface by the topology builder, and report what they did (`describe()`) for
each run's metadata.

- `EmulatorBackend` starts `python -m topologies.linkemu`, a process that owns one TAP device
  per endpoint and relays frames between linked TAPs after the drawn delay. It needs nothing
  but TUN/TAP, which is why it is the backend on kernels without `sch_netem`.
- `NetemBackend` makes each endpoint a veth pair whose outer end stays in the root namespace,
  joins the two outer ends of a link in a Linux bridge and delays each direction with a netem
  qdisc on the egress of the outer end that leads into the receiving namespace.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import json
import math
import os
import random
import shlex
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

Distribution = Literal["uniform", "normal"]
Reorder = Literal["netem", "preserve"]

RUN_DIR = Path("/run/pmiplab")
REPO_ROOT = Path(__file__).resolve().parents[1]
EMULATOR_MODULE = "topologies.linkemu"
# netem's default limit is 1000 packets: at 250 ms worst-case delay that is only 4000 pkt/s
# per direction before tail drops. 20000 covers 80 kpkt/s, far above any scenario here.
NETEM_LIMIT = 20000
# netem with a rate measures each packet's delay from its predecessor's departure, i.e. FIFO;
# 10 Gbit/s keeps the added serialisation time at about 1.2 us per full-size frame.
NETEM_PRESERVE_RATE = "10gbit"


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
    streams; ``disconnect`` is an L2 detach (carrier down on both former ends); ``move`` is
    the two in sequence, as in a handover of a mobile node between access routers. The
    interfaces are left administratively up; addresses are the caller's business.
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

    def disconnect(self, ep: Endpoint) -> None:
        link = self._links.get(ep)
        if link is None:
            raise LinkError(f"endpoint {ep.label} is not connected")
        self._disconnect(link)
        del self._links[link.a], self._links[link.b]
        link.connected = False
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


def run_cmd(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise `LinkError` with the command and its first error line."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LinkError(f"{shlex.join(cmd)}: {detail[0] if detail else f'exit {proc.returncode}'}")
    return proc


# --------------------------------------------------------------------------------------------
# Userspace emulator backend


class EmulatorBackend(LinkBackend):
    """Links relayed by one `topologies.linkemu` process over TAP devices.

    The process exits when this backend's control connection closes, so a crashed caller
    leaves no relay behind; its TAP devices vanish with it.
    """

    name = "emulator"

    def __init__(self, tag: str | None = None, run_dir: Path = RUN_DIR) -> None:
        super().__init__(tag, run_dir)
        self.control_path = self.run_dir / f"linkemu-{self.tag}.sock"
        self.pid_path = self.run_dir / f"linkemu-{self.tag}.pid"
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._lock = threading.Lock()  # one request/reply at a time on the control socket
        self._last_description: dict[str, Any] = {"version": None}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            return
        if not os.path.exists("/dev/net/tun"):
            raise BackendUnavailable("emulator backend unavailable: /dev/net/tun is missing")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        args = [sys.executable, "-m", EMULATOR_MODULE, "--control", str(self.control_path)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
        # Second line: what /proc/PID/cmdline must contain for `clean` to kill this PID.
        marker = f"{EMULATOR_MODULE} --control {self.control_path}"
        self.pid_path.write_text(f"{self._proc.pid}\n{marker}\n")
        deadline = time.monotonic() + timeout
        while True:
            status = self._proc.poll()
            if status is not None:
                self._reap()
                raise LinkError(f"link emulator exited during start-up (status {status})")
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.control_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    self.stop()
                    raise LinkError("link emulator did not open its control socket") from None
                time.sleep(0.02)
        sock.settimeout(60.0)
        self._sock, self._reader = sock, sock.makefile("rb")
        self._request("own")

    def _request(self, op: str, **args: Any) -> Any:
        with self._lock:
            if self._sock is None:
                raise LinkError("link emulator is not running (call start())")
            try:
                self._sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                line = self._reader.readline()
            except OSError as exc:
                raise LinkError(f"link emulator: {op}: {exc}") from None
        if not line:
            raise LinkError(f"link emulator closed the control connection during {op}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise LinkError(f"link emulator: {op}: {reply.get('error')}")
        return reply.get("result")

    def _add_endpoint(self, ep: Endpoint, index: int) -> None:
        self._request("add_endpoint", endpoint=ep.to_dict())

    def _connect(self, link: _Link) -> None:
        self._request(
            "connect",
            a=link.a.to_dict(),
            b=link.b.to_dict(),
            profile=link.resolved.to_dict(),
            seed=link.seed,
        )

    def _disconnect(self, link: _Link) -> None:
        self._request("disconnect", endpoint=link.a.to_dict())

    def stats(self) -> dict[str, dict[str, Any]]:
        return self._request("stats")

    def _describe_backend(self) -> dict[str, Any]:
        if self._sock is not None:
            self._last_description = self._request("describe")
        return self._last_description

    def stop(self, timeout: float | None = None) -> None:
        if self._proc is None:
            return
        if timeout is None:
            # Closing a TAP unregisters its device, about 20 ms each here: allow for that.
            timeout = 5.0 + 0.05 * len(self._endpoints)
        if self._sock is not None:
            with contextlib.suppress(LinkError, ValueError):
                self._describe_backend()  # kept for describe() after the process is gone
                self._request("shutdown")
            self._reader.close()
            self._sock.close()
            self._sock = self._reader = None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reap()

    def _reap(self) -> None:
        for path in (self.pid_path, self.control_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._proc = None
        self._forget()


# --------------------------------------------------------------------------------------------
# netem backend: pure command construction (unit-tested), then the backend that runs them


def short_id(tag: str) -> str:
    """Four hex digits naming a backend's devices (interface names are 15 characters)."""
    return hashlib.sha1(tag.encode()).hexdigest()[:4]


def netem_outer_name(tag: str, index: int) -> str:
    return f"pml{short_id(tag)}e{index}"


def netem_bridge_name(tag: str, index: int) -> str:
    return f"pmlbr{short_id(tag)}{index}"


def _ms_to_us(ms: float) -> str:
    # Whole microseconds: tc parses "us" exactly, and netem's resolution is finer anyway.
    return f"{round(ms * 1000)}us"


def _quiet_root_if(dev: str) -> list[list[str]]:
    # Devices in the root namespace must stay silent on the emulated link: no addresses, so no
    # router solicitations, DAD or MLD reports of their own.
    return [["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"]]


def netem_endpoint_cmds(outer: str, ep: Endpoint) -> list[list[str]]:
    """Create ``ep`` as a veth pair: ``ep.ifname`` in ``ep.netns``, ``outer`` in the root
    namespace, outer end down so the inner end shows no carrier until connected."""
    peer = ["name", ep.ifname, "netns", ep.netns] + (["address", ep.mac] if ep.mac else [])
    return [
        ["ip", "link", "add", outer, "type", "veth", "peer", *peer],
        *_quiet_root_if(outer),
        ["ip", "link", "set", "dev", outer, "down"],
        ["ip", "-n", ep.netns, "link", "set", "dev", ep.ifname, "up"],
    ]


def netem_remove_endpoint_cmds(outer: str) -> list[list[str]]:
    return [["ip", "link", "del", "dev", outer]]


def netem_qdisc_cmd(
    dev: str, profile: LinkProfile, seed: int | None = None, limit: int = NETEM_LIMIT
) -> list[str]:
    """``tc`` command that delays egress of ``dev`` per the resolved ``profile``."""
    if not profile.resolved:
        raise ValueError(f"profile {profile.name} must be resolved before use")
    cmd = ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "limit", str(limit)]
    cmd += ["delay", _ms_to_us(profile.delay_ms)]
    if profile.jitter_ms > 0:
        cmd.append(_ms_to_us(profile.jitter_ms))
        if profile.distribution == "normal":
            cmd += ["distribution", "normal"]
    if profile.loss > 0:
        cmd += ["loss", f"{profile.loss * 100:g}%"]
    if profile.reorder == "preserve":
        cmd += ["rate", NETEM_PRESERVE_RATE]
    if seed is not None:
        cmd += ["seed", str(seed)]
    return cmd


def netem_direction_seed(seed: int, direction: int) -> int:
    """netem's 64-bit PRNG seed for one direction, derived like the emulator's streams."""
    return direction_rng(seed, direction).getrandbits(63)


def netem_connect_cmds(
    bridge: str, outer_a: str, outer_b: str, profile: LinkProfile, seeds: tuple[int, int] | None
) -> list[list[str]]:
    """Bridge the two outer ends and delay both directions.

    a->b traffic leaves the bridge through ``outer_b`` (into b's namespace), so the a->b
    qdisc, seeded with ``seeds[0]``, sits on ``outer_b``.
    """
    seed_ab, seed_ba = seeds if seeds else (None, None)
    # No multicast snooping: the bridge is a wire, MLD must not change what it forwards.
    cmds = [
        f"ip link add {bridge} type bridge stp_state 0 forward_delay 0 mcast_snooping 0".split(),
        *_quiet_root_if(bridge),
        ["ip", "link", "set", "dev", bridge, "up"],
    ]
    for outer, seed in ((outer_b, seed_ab), (outer_a, seed_ba)):
        cmds += [
            netem_qdisc_cmd(outer, profile, seed),
            ["ip", "link", "set", "dev", outer, "master", bridge],
            ["ip", "link", "set", "dev", outer, "up"],
        ]
    return cmds


def netem_disconnect_cmds(bridge: str, outer_a: str, outer_b: str) -> list[list[str]]:
    cmds = []
    for outer in (outer_a, outer_b):
        cmds += [
            ["ip", "link", "set", "dev", outer, "down"],
            ["ip", "link", "set", "dev", outer, "nomaster"],
            ["tc", "qdisc", "del", "dev", outer, "root"],
        ]
    return cmds + [["ip", "link", "del", "dev", bridge]]


def parse_tc_stats(text: str) -> dict[str, int]:
    """frames/bytes/drops of the root qdisc from ``tc -s -j qdisc show dev X``."""
    for qdisc in json.loads(text or "[]"):
        if qdisc.get("root") or qdisc.get("parent") in (None, "root"):
            return {
                "frames": int(qdisc.get("packets", 0)),
                "bytes": int(qdisc.get("bytes", 0)),
                "drops": int(qdisc.get("drops", 0)),
            }
    return {"frames": 0, "bytes": 0, "drops": 0}


def _probe_netem(*args: str) -> bool:
    """Does ``tc qdisc add ... netem ARGS`` work? Only that step may fail quietly: a probe
    that cannot make its namespace or veth raises, rather than blaming netem."""
    ns = f"pmlprobe{os.getpid()}"
    run_cmd(["ip", "netns", "add", ns])
    try:
        # veth, not dummy: some kernels (this one) lack the dummy driver.
        run_cmd(f"ip -n {ns} link add pmlprobe0 type veth peer name pmlprobe1".split())
        netem = ["tc", "-n", ns, "qdisc", "add", "dev", "pmlprobe0", "root", "netem", *args]
        return run_cmd(netem, check=False).returncode == 0
    finally:
        run_cmd(["ip", "netns", "del", ns], check=False)


@functools.cache
def netem_available() -> bool:
    """Can this kernel (and tc) add a netem qdisc? Probed in a throwaway namespace."""
    return _probe_netem("delay", "1ms", "1ms")


@functools.cache
def netem_seed_supported() -> bool:
    """netem's ``seed`` option (Linux 6.3, iproute2 6.3) makes its draws reproducible."""
    return _probe_netem("delay", "1ms", "1ms", "seed", "1")


NETEM_MISSING = (
    "netem backend unavailable: this kernel has no sch_netem "
    "(tc qdisc add ... netem failed); use the emulator backend"
)


class NetemBackend(LinkBackend):
    """Links as veth pairs bridged in the root namespace, delayed by netem."""

    name = "netem"

    def __init__(self, tag: str | None = None, run_dir: Path = RUN_DIR) -> None:
        super().__init__(tag, run_dir)
        self._outer: dict[Endpoint, str] = {}
        self._seeded = False
        self._started = False

    def start(self) -> None:
        if not netem_available():
            raise BackendUnavailable(NETEM_MISSING)
        self._seeded = netem_seed_supported()
        self._started = True

    def _run_all(self, cmds: list[list[str]], check: bool = True) -> None:
        for cmd in cmds:
            run_cmd(cmd, check=check)

    def _add_endpoint(self, ep: Endpoint, index: int) -> None:
        outer = netem_outer_name(self.tag, index)
        self._run_all(netem_endpoint_cmds(outer, ep))
        self._outer[ep] = outer

    def _bridge(self, link: _Link) -> str:
        return netem_bridge_name(self.tag, link.index)

    def _connect(self, link: _Link) -> None:
        seeds = None
        if self._seeded:
            seeds = (netem_direction_seed(link.seed, 0), netem_direction_seed(link.seed, 1))
        outer_a, outer_b = self._outer[link.a], self._outer[link.b]
        cmds = netem_connect_cmds(self._bridge(link), outer_a, outer_b, link.resolved, seeds)
        self._run_all(cmds)

    def _disconnect(self, link: _Link) -> None:
        outer_a, outer_b = self._outer[link.a], self._outer[link.b]
        self._run_all(netem_disconnect_cmds(self._bridge(link), outer_a, outer_b), check=False)

    def stats(self) -> dict[str, dict[str, Any]]:
        result = {}
        for link in self._links.values():
            for src, dst in ((link.a, link.b), (link.b, link.a)):
                show = ["tc", "-s", "-j", "qdisc", "show", "dev", self._outer[dst]]
                result[direction_key(src, dst)] = parse_tc_stats(run_cmd(show).stdout)
        return result

    def _describe_backend(self) -> dict[str, Any]:
        tc = run_cmd(["tc", "-V"], check=False).stdout.strip()
        return {"version": f"{os.uname().release}; {tc}", "seeded": self._seeded}

    def stop(self) -> None:
        if not self._started:
            return
        for link in self._history:
            run_cmd(["ip", "link", "del", "dev", self._bridge(link)], check=False)
        for outer in self._outer.values():
            self._run_all(netem_remove_endpoint_cmds(outer), check=False)
        self._outer.clear()
        self._forget()
        self._started = False


BACKENDS: dict[str, type[LinkBackend]] = {"emulator": EmulatorBackend, "netem": NetemBackend}


def select_backend(
    name: Literal["auto", "netem", "emulator"] = "auto", **kwargs: Any
) -> LinkBackend:
    """A (not yet started) backend: ``auto`` takes netem where the kernel has it."""
    if name == "auto":
        name = "netem" if netem_available() else "emulator"
    if name == "netem" and not netem_available():
        raise BackendUnavailable(NETEM_MISSING)
    try:
        return BACKENDS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown link backend {name!r} (auto, netem, emulator)") from None
