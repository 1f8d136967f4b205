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
