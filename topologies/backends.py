"""The two link backends: the userspace emulator and netem, and the choice between them.

- `EmulatorBackend` starts `python -m topologies.linkemu`, a process that owns one TAP device
  per endpoint and relays frames between linked TAPs after the drawn delay. It needs nothing
  but TUN/TAP, which is why it is the backend on kernels without `sch_netem`.
- `NetemBackend` makes each endpoint a veth pair whose outer end stays in the root namespace,
  joins the two outer ends of a link in a Linux bridge and delays each direction with a netem
  qdisc on the egress of the outer end that leads into the receiving namespace.

Both implement `topologies.links.LinkBackend`; `select_backend()` picks one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from lab.paths import REPO as REPO_ROOT
from lab.paths import RUN_DIR
from topologies.links import (
    BackendUnavailable,
    Endpoint,
    LinkBackend,
    LinkError,
    LinkProfile,
    _Link,
    direction_key,
    direction_rng,
)

EMULATOR_MODULE = "topologies.linkemu"
# netem's default limit is 1000 packets: at 250 ms worst-case delay that is only 4000 pkt/s
# per direction before tail drops. 20000 covers 80 kpkt/s, far above any scenario here.
NETEM_LIMIT = 20000
# netem with a rate measures each packet's delay from its predecessor's departure, i.e. FIFO;
# 10 Gbit/s keeps the added serialisation time at about 1.2 us per full-size frame.
NETEM_PRESERVE_RATE = "10gbit"


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
        self._seq = 0

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
            # Requests carry a number the reply echoes: a request interrupted between its
            # send and its reply (Ctrl-C) leaves that reply unread, and the next request
            # must not take it for its own.
            self._seq += 1
            try:
                self._sock.sendall(json.dumps({"op": op, **args, "id": self._seq}).encode() + b"\n")
                while True:
                    line = self._reader.readline()
                    if not line or json.loads(line).get("id") == self._seq:
                        break
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


def netem_group(tag: str, index: int) -> int:
    """The device group of link ``index``: its two outer ends, so that one netlink request
    (``ip link set group G up|down``) switches both under one RTNL lock."""
    digest = hashlib.sha1(f"{tag}:{index}".encode()).digest()
    return 0x40000000 | int.from_bytes(digest[:4], "big") & 0x3FFFFFFF


def netem_bridge_cmds(bridge: str) -> list[str]:
    """``ip -batch`` lines that create a link's bridge (still down, IPv6 not yet disabled).

    No multicast snooping: the bridge is a wire, MLD must not change what it forwards.
    """
    return [f"link add {bridge} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"]


def netem_connect_batches(
    bridge: str,
    outer_a: str,
    outer_b: str,
    profile: LinkProfile,
    seeds: tuple[int, int] | None,
    group: int,
) -> tuple[list[str], list[str]]:
    """(``tc -batch`` lines, ``ip -batch`` lines) that make a link between two outer ends
    that are down: shape both directions, bridge them, then raise both ends at once.

    a->b traffic leaves the bridge through ``outer_b`` (into b's namespace), so the a->b
    qdisc, seeded with ``seeds[0]``, sits on ``outer_b``. Both ends are down until the last
    line, which brings them up in one request: no frame sees a bridge with one end only.
    """
    seed_ab, seed_ba = seeds if seeds else (None, None)
    tc = [
        shlex.join(netem_qdisc_cmd(outer, profile, seed)[1:])
        for outer, seed in ((outer_b, seed_ab), (outer_a, seed_ba))
    ]
    ip = [
        f"link set dev {outer_a} master {bridge} group {group}",
        f"link set dev {outer_b} master {bridge} group {group}",
        f"link set dev {bridge} up",
        f"link set group {group} up",
    ]
    return tc, ip


def netem_break_cmds(group: int, bridge: str) -> list[str]:
    """The ``ip -batch`` lines that end a link: both outer ends down in one request, then
    the bridge removed.

    Taking a device down resets its qdisc, so every frame still in flight in either
    direction is dropped at that instant, and from then on each former end has no carrier.
    """
    return [f"link set group {group} down", f"link del dev {bridge}"]


def netem_remove_cmds(bridges: list[str], outers: list[str]) -> list[str]:
    """``ip -force -batch`` lines removing a backend's bridges and veth pairs."""
    return [f"link del dev {dev}" for dev in [*bridges, *outers]]


# Per outer device: what ``ip -s -j link`` and ``tc -s -j qdisc`` say (cumulative counters).
DeviceCounters = dict[str, int]
COUNTER_FIELDS = ("rx", "tx", "tx_bytes", "tx_dropped", "netem_sent", "netem_drops", "netem_qlen")


def parse_counters(link_json: str, qdisc_json: str) -> dict[str, DeviceCounters]:
    """Per device: frames it received from its inner end (``rx``), frames and bytes it handed
    to its inner end (``tx``, ``tx_bytes``), and its root netem qdisc's drops and queue."""
    out: dict[str, DeviceCounters] = {}
    for dev in json.loads(link_json or "[]"):
        stats = dev.get("stats64", {})
        out[dev["ifname"]] = {
            "rx": int(stats.get("rx", {}).get("packets", 0)),
            "tx": int(stats.get("tx", {}).get("packets", 0)),
            "tx_bytes": int(stats.get("tx", {}).get("bytes", 0)),
            "tx_dropped": int(stats.get("tx", {}).get("dropped", 0)),
            "netem_sent": 0,
            "netem_drops": 0,
            "netem_qlen": 0,
        }
    for qdisc in json.loads(qdisc_json or "[]"):
        dev = out.get(qdisc.get("dev", ""))
        if dev is not None and qdisc.get("kind") == "netem" and qdisc.get("root"):
            dev["netem_sent"] = int(qdisc.get("packets", 0))
            dev["netem_drops"] = int(qdisc.get("drops", 0))
            dev["netem_qlen"] = int(qdisc.get("qlen", 0))
    return out


def direction_counters(
    src_now: DeviceCounters,
    dst_now: DeviceCounters,
    src_base: DeviceCounters,
    dst_base: DeviceCounters,
) -> dict[str, Any]:
    """One direction's counters since its link was made, keyed like the emulator's stats.

    Frames that entered the link are those the source's outer end received; they were either
    delivered (``frames``), dropped by netem's random loss (``lost``), are still queued, or
    were dropped otherwise (``drops``: in flight when the link was broken, or refused by the
    receiving end). netem does not report its draws: ``drawn`` counts the frames it delayed,
    the draws' mean and sd are None.

    ``drops`` compares what entered (read first) with what netem's own counters say left its
    queue or is still in it (read after, in one dump), plus what the receiving end refused:
    frames that move between the two reads can only make a live link's count low for a
    moment, never invent a drop.
    """

    def delta(key: str, now: DeviceCounters, base: DeviceCounters) -> int:
        return now[key] - base[key]

    entered = delta("rx", src_now, src_base)
    lost = delta("netem_drops", dst_now, dst_base)
    left = delta("netem_sent", dst_now, dst_base) + lost + dst_now["netem_qlen"]
    refused = delta("tx_dropped", dst_now, dst_base)
    return {
        "frames": delta("tx", dst_now, dst_base),
        "bytes": delta("tx_bytes", dst_now, dst_base),
        "drops": max(0, entered - left + refused),
        "lost": lost,
        "drawn": entered - lost,
        "drawn_mean_ms": None,
        "drawn_sd_ms": None,
    }


def add_counters(total: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    """Two spells of one direction (the same two ends linked again) added up."""
    if total is None:
        return dict(more)
    summed = {k: total[k] + more[k] for k in ("frames", "bytes", "drops", "lost", "drawn")}
    return {**total, **summed}


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
    """Links as veth pairs bridged in the root namespace, delayed by netem.

    An endpoint's outer end is up exactly while it is linked. A link's two outer ends share a
    device group, so that making and breaking a link are each one netlink request; the qdiscs
    and bridge ports change only while both ends are down, where no frame can see them.
    """

    name = "netem"

    def __init__(self, tag: str | None = None, run_dir: Path = RUN_DIR) -> None:
        super().__init__(tag, run_dir)
        self._outer: dict[Endpoint, str] = {}
        self._seeded = False
        self._started = False
        self._used: set[str] = set()  # outer ends that were ever up (their counters moved)
        self._quiet: dict[str, DeviceCounters] | None = None  # counters while all are down
        self._base: dict[int, dict[str, DeviceCounters]] = {}  # per live link, at its make
        self._closed: dict[str, dict[str, Any]] = {}  # per direction key, finished links

    def start(self) -> None:
        if not netem_available():
            raise BackendUnavailable(NETEM_MISSING)
        self._seeded = netem_seed_supported()
        self._started = True

    def _batch(self, tool: str, lines: list[str], force: bool = False) -> None:
        """Run ``tool -batch -`` with ``lines``: one process however many commands."""
        if not lines:
            return
        cmd = [tool, *(["-force"] if force else []), "-batch", "-"]
        proc = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True)
        if proc.returncode != 0 and not force:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise LinkError(f"{tool} -batch: {detail[0] if detail else f'exit {proc.returncode}'}")

    def _add_endpoint(self, ep: Endpoint, index: int) -> None:
        outer = netem_outer_name(self.tag, index)
        peer = f"name {ep.ifname} netns {ep.netns}" + (f" address {ep.mac}" if ep.mac else "")
        # Outer end down, so the inner end shows no carrier until connected.
        self._batch("ip", [f"link add {outer} type veth peer {peer}", f"link set dev {outer} down"])
        self._outer[ep] = outer
        _disable_ipv6(outer)
        run_cmd(["ip", "-n", ep.netns, "link", "set", "dev", ep.ifname, "up"])

    def _bridge(self, link: _Link) -> str:
        return netem_bridge_name(self.tag, link.index)

    def _counters(self) -> dict[str, DeviceCounters]:
        # The links first, then the qdiscs: see direction_counters.
        links = run_cmd(["ip", "-s", "-j", "link", "show"]).stdout
        return parse_counters(links, run_cmd(["tc", "-s", "-j", "qdisc", "show"]).stdout)

    def _connect(self, link: _Link) -> None:
        seeds = None
        if self._seeded:
            seeds = (netem_direction_seed(link.seed, 0), netem_direction_seed(link.seed, 1))
        ends = [self._outer[link.a], self._outer[link.b]]
        bridge = self._bridge(link)
        self._batch("ip", netem_bridge_cmds(bridge))
        # Before the bridge can carry anything: it must not speak on the link itself.
        _disable_ipv6(bridge)
        group = netem_group(self.tag, link.index)
        tc, ip = netem_connect_batches(bridge, *ends, link.resolved, seeds, group)
        self._batch("tc", tc)
        # Both ends are down, so their counters stand still: the link's counters start here.
        if self._used.isdisjoint(ends):
            base: dict[str, DeviceCounters] = {}
        else:
            base = self._quiet if self._quiet is not None else self._counters()
        zero = dict.fromkeys(COUNTER_FIELDS, 0)
        # A qdisc made just now (not replaced) starts from zero, whatever was there before.
        self._base[link.index] = {dev: {**zero, **base.get(dev, {})} for dev in ends}
        for dev in ends:
            if dev not in self._used:
                self._base[link.index][dev] = zero
        self._batch("ip", ip)
        self._used.update(ends)
        self._quiet = None

    def _direction_stats(
        self, link: _Link, now: dict[str, DeviceCounters]
    ) -> dict[str, dict[str, Any]]:
        base = self._base[link.index]
        result = {}
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            s, d = self._outer[src], self._outer[dst]
            counters = direction_counters(now[s], now[d], base[s], base[d])
            result[direction_key(src, dst)] = counters
        return result

    def _disconnect(self, link: _Link) -> None:
        self._batch("ip", netem_break_cmds(netem_group(self.tag, link.index), self._bridge(link)))
        link.disconnected_at = time.time()
        # Both ends are down and their queues empty: these counters are the link's last.
        self._quiet = self._counters()
        for key, counters in self._direction_stats(link, self._quiet).items():
            self._closed[key] = add_counters(self._closed.get(key), counters)
        del self._base[link.index]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per direction, every link this backend made (live and finished), like the
        emulator's; the counters of a live link are read while frames move (``drops`` may
        lag by the frames that cross between the two reads)."""
        result = {key: dict(counters) for key, counters in self._closed.items()}
        live = {id(link): link for link in self._links.values()}
        if live:
            now = self._counters()
            for link in live.values():
                for key, counters in self._direction_stats(link, now).items():
                    result[key] = add_counters(result.get(key), counters)
        return result

    def _describe_backend(self) -> dict[str, Any]:
        tc = run_cmd(["tc", "-V"], check=False).stdout.strip()
        return {"version": f"{os.uname().release}; {tc}", "seeded": self._seeded}

    def stop(self) -> None:
        if not self._started:
            return
        bridges = [self._bridge(link) for link in self._history]
        self._batch("ip", netem_remove_cmds(bridges, list(self._outer.values())), force=True)
        self._outer.clear()
        self._base.clear()
        self._forget()
        self._started = False


def _disable_ipv6(dev: str) -> None:
    """Devices in the root namespace stay silent on the emulated link: no addresses, so no
    router solicitations, DAD or MLD reports of their own."""
    Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").write_text("1\n")


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
