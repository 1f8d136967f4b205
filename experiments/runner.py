"""Runs of a scenario: build the network, stream, hand over, collect, and keep the results.

One run writes ``results/<scenario>/<kind>/peering-<on|off>/run-<NN>/`` (the layout is a
contract with ``analysis``). ``meta.json`` is written first with ``"completed": false`` and
rewritten at the end, so a crash or Ctrl-C leaves the finished runs intact, marks the
current one incomplete, and the network is torn down in every case.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from experiments.layout import (
    EVENT_COLUMNS,
    EVENTS_CSV,
    META_JSON,
    SENDER_CSV,
    RunKey,
    is_complete,
    receiver_csv,
)
from experiments.scenarios import KINDS, Parameters, Roles, Scenario
from lab.paths import PY
from lab.provenance import git_commit, module_versions
from topologies.network import TESTBED_TIMERS, Network, ProxySettings

VERSIONED = ("proxy", "scapy", "mininet.net", "numpy", "pandas")


def plan(scenario: Scenario, kinds: list[str], peerings: list[bool], reps: int) -> list[RunKey]:
    return [
        RunKey(scenario.name, kind, peering, i)
        for kind in kinds
        for peering in peerings
        for i in range(1, reps + 1)
    ]


class EventWriter:
    """The runner's own events (stream start, L2 moves), merged into events.csv at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, str, str]] = []

    def emit(self, event: str, node: str, detail: str = "", t_ns: int | None = None) -> None:
        self.rows.append((time.time_ns() if t_ns is None else t_ns, event, node, detail))


class Run:
    """One run of one kind of one scenario."""

    def __init__(
        self,
        scenario: Scenario,
        key: RunKey,
        params: Parameters,
        seed: int,
        root: Path,
        prefix: str = "pml",
    ):
        self.prefix = prefix
        self.scenario = scenario
        self.key = key
        self.params = params
        self.seed = seed
        self.dir = key.path(root)
        self.roles: Roles = scenario.roles(key.kind)
        self.events = EventWriter()
        self.meta: dict[str, Any] = {}
        self.net: Network | None = None

    # --- the whole run ------------------------------------------------------------------

    def execute(
        self, teardown_later: bool = False, previous: threading.Thread | None = None
    ) -> dict[str, Any]:
        """Build, start, measure; then ``finish()`` unless the caller does it later.

        ``previous`` (the teardown of the run before) is waited for before measuring, so
        that it overlaps only with building this network, never with its stream.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.iterdir():  # a rerun starts from an empty directory
            if old.is_file():
                old.unlink()
        started = time.time()
        spec = self.scenario.topology(self.key.peering, self.params)
        self.meta = {
            "scenario": self.key.scenario,
            "kind": self.key.kind,
            "peering": self.key.peering,
            "run": self.key.index,
            "seed": self.seed,
            "parameters": self.params.to_dict(),
            "handover_at_ms": self.params.handover_at_ms,
            "rate": self.params.rate,
            "duration": self.params.duration,
            "source": self._where(spec, self.roles.source),
            "receivers": [self._where(spec, r) for r in self.roles.receivers],
            "moving": self.roles.moving,
            "versions": module_versions(VERSIONED),
            "git_commit": git_commit(),
            "started_at": started,
            "loadavg_at_start": os.getloadavg(),
            "completed": False,
        }
        self._write_meta()
        timers = replace(TESTBED_TIMERS, query_response_interval=self.params.qri_ms / 1000)
        self.net = Network(
            spec,
            self.dir,
            prefix=self.prefix,
            backend_name=self.params.backend,
            tunnel_mode=self.params.tunnels,
            seed=self.seed,
            proxy=ProxySettings(timers=timers),
        )
        self.started = started
        try:
            self.net.build()
            self.net.start()
            self.meta["link_backend"] = self.net.backend.name if self.net.backend else None
            self.meta["tunnels"] = self.net.tunnels
            if previous is not None:
                previous.join()
            self._measure()
            self.meta.update(self.net.describe())
            self.meta["completed"] = True  # on disk only once finish() has written it
        except BaseException as exc:
            self.meta["completed"] = False
            self.meta["error"] = f"{type(exc).__name__}: {exc}"
            self.finish()
            raise
        if not teardown_later:
            self.finish()
        return self.meta

    def finish(self) -> None:
        """Tear the network down, merge the event logs, and write the final meta.json."""
        assert self.net is not None
        if self.net.backend is not None:
            self.meta.setdefault("links", self.net.backend.describe())
        try:
            self.net.stop()
            self._merge_events()
        finally:
            self.meta["wall_time_s"] = round(time.time() - self.started, 3)
            self.meta["loadavg_at_end"] = os.getloadavg()
            self._write_meta()

    def _where(self, spec, node: str) -> dict[str, Any]:
        n = spec.node(node)
        src = spec.node(self.roles.source)
        local = n.mag == src.mag and node != self.roles.moving
        return {
            "node": node,
            "mag": n.mag,
            "lma": n.lma,
            "address": n.address,
            "locality": "local" if local else "remote",
        }

    def _write_meta(self) -> None:
        tmp = self.dir / f"{META_JSON}.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1, default=str))
        os.replace(tmp, self.dir / META_JSON)

    # --- measuring ------------------------------------------------------------------------

    def _probe(self, node: str, mode: str, logname: str, **opts: object) -> subprocess.Popen:
        """Start ``python -m experiments.probe MODE --key value ...`` in ``node``."""
        p = self.params
        args = [PY, "-m", "experiments.probe", mode, "--group", p.group, "--port", str(p.port)]
        for key, value in opts.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        assert self.net is not None
        return self.net.popen(node, args, logname)

    def _measure(self) -> None:
        p = self.params
        spawned = time.monotonic()
        receivers = {
            r: self._probe(r, "recv", f"probe-{r}.log", iface="eth0", out=receiver_csv(self.dir, r))
            for r in self.roles.receivers
        }
        self._wait_subscribed()
        # The sender (a new Python process) must be up before packet 0 is due: a late start
        # sends a burst, and the kernel queues only 4 packets per (S,G) it has not resolved.
        # 400 ms is plenty on an idle machine; where the receivers took longer to start and
        # subscribe (a one-CPU guest), the sender gets 1.5 times what they took.
        lead_s = min(max(0.4, 1.5 * (time.monotonic() - spawned)), 10.0)
        self.meta["sender_lead_s"] = round(lead_s, 3)
        start_ns = time.time_ns() + int(lead_s * 1e9)
        sender = self._probe(
            self.roles.source,
            "send",
            "probe-sender.log",
            source_if="eth0",
            rate=p.rate,
            size=p.size,
            duration=p.duration,
            start_at=start_ns,
            hops=16,
            out=self.dir / SENDER_CSV,
        )
        self.events.emit("stream_start", self.roles.source, f"group={p.group}", t_ns=start_ns)
        if self.roles.moving:
            self._handover(start_ns + int(p.handover_at_ms * 1e6))
        sender.wait(p.duration + 30)
        if sender.returncode:
            raise RuntimeError(
                f"probe sender failed (exit {sender.returncode}): see {self.dir}/probe-sender.log"
            )
        # Let the slowest path drain: two access links, two tunnels and the backbone at
        # their largest delay plus jitter.
        time.sleep(self._max_path_ms() / 1000)
        for r, proc in receivers.items():
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            if proc.returncode:
                raise RuntimeError(f"probe receiver {r} failed: see {self.dir}/probe-{r}.log")

    def _max_path_ms(self) -> float:
        net = self.net
        assert net is not None
        worst = {k: net.profile(k) for k in ("tunnel", "backbone", self.scenario.access)}
        top = {
            k: (p.delay_range_ms[1] if p.delay_range_ms else p.delay_ms) + 2 * p.jitter_ms
            for k, p in worst.items()
        }
        return 2 * top[self.scenario.access] + 2 * top["tunnel"] + top["backbone"] + 50

    def _wait_subscribed(self, timeout: float = 15.0) -> None:
        """Until each receiver's MAG and LMA proxies know the group (plus one round trip)."""
        net, spec, group = self.net, self.net.spec, self.params.group
        assert net is not None
        checks = []
        for r in self.roles.receivers:
            n = spec.node(r)
            checks.append((f"mag{n.mag}", spec.instance_name(n.mag, n.lma), spec.access_if(r)))
            checks.append((f"lma{n.lma}", f"lma{n.lma}", f"t-mag{n.mag}"))
            src = spec.node(self.roles.source)
            if src.lma != n.lma:  # the group must also cross the backbone
                checks.append(("lma1", "lma1", f"bb-lma{n.lma}"))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(self._has_group(*c, group) for c in checks):
                return
            time.sleep(0.02)
        missing = [c for c in checks if not self._has_group(*c, group)]
        raise RuntimeError(f"receivers not subscribed after {timeout:.0f} s: {missing}")

    def _has_group(self, node: str, instance: str, ifname: str, group: str) -> bool:
        try:
            show = self.net.show(node)
        except OSError:
            return False
        for inst in show.get("instances", []):
            if inst["name"] == instance:
                return group in inst["queriers"].get(ifname, {}).get("groups", {})
        return False

    def _handover(self, at_ns: int) -> None:
        net, node = self.net, self.roles.moving
        assert net is not None and node is not None
        delay = (at_ns - time.time_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        old = net.attached[node]
        new = 2 if old == 1 else 1
        self.events.emit("handover_start", node, f"from=mag{old} to=mag{new}")
        net.detach(node)
        if self.params.l2_delay_ms:
            time.sleep(self.params.l2_delay_ms / 1000)
        # Stamped when the attach starts: the new MAG may react before attach() returns.
        self.events.emit("l2_attach", node, f"mag{new}")
        net.attach(node, new)

    # --- events -----------------------------------------------------------------------------

    def _merge_events(self) -> None:
        rows = list(self.events.rows)
        for name in ("pmip-events.csv", "proxy-events.csv"):
            path = self.dir / name
            if path.exists():
                with open(path, newline="") as f:
                    for row in csv.DictReader(f):
                        try:
                            rows.append(
                                (int(row["t_ns"]), row["event"], row["node"], row["detail"])
                            )
                        except (KeyError, TypeError, ValueError):
                            continue
        rows.sort(key=lambda r: r[0])
        done = self._handover_done(rows)
        if done:
            rows.append(done)
            rows.sort(key=lambda r: r[0])
        with open(self.dir / EVENTS_CSV, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(EVENT_COLUMNS)
            w.writerows(rows)

    def _handover_done(self, rows: list[tuple]) -> tuple | None:
        """When the new MAG has both the binding (PBA) and the forwarding state for the MN."""
        node = self.roles.moving
        start = next((r[0] for r in rows if r[1] == "handover_start"), None)
        if node is None or start is None:
            return None
        new_mag = next((r[3].split("to=")[1] for r in rows if r[1] == "handover_start"), "")
        ifname = f"a-{node}"
        pba = next(
            (
                r[0]
                for r in rows
                if r[0] >= start
                and r[1] == "pba_received"
                and r[2] == new_mag
                and f"mn={node}@" in r[3]
            ),
            None,
        )
        want = "membership_changed" if self.key.kind == "receiver-handover" else "mfc_installed"
        fwd = next(
            (
                r[0]
                for r in rows
                if r[0] >= start
                and r[1] == want
                and r[2] == new_mag
                and (f" {ifname} " in f" {r[3]} ")
            ),
            None,
        )
        if pba is None or fwd is None:
            return None
        return (max(pba, fwd), "handover_done", node, f"{new_mag} pba+{want}")


def run_all(
    scenario: Scenario,
    keys: list[RunKey],
    params: Parameters,
    seed: int,
    root: Path,
    resume: bool = True,
    prefix: str = "pml",
) -> tuple[list[Path], list[str]]:
    """Run ``keys`` in order, skipping complete runs when ``resume``; returns dirs, failures."""
    failures = []
    todo = [k for k in keys if not (resume and is_complete(k.path(root)))]
    skipped = len(keys) - len(todo)
    bar = Progress(len(todo), skipped)
    # Each network is torn down in the background while the next one is built; two
    # alternating name prefixes keep the two apart.
    closing: threading.Thread | None = None
    try:
        for n, key in enumerate(todo):
            bar.start(key)
            # Peering off and on share a seed: same drawn link delays, a paired comparison.
            run_seed = seed * 1000 + KINDS.index(key.kind) * 100 + key.index
            run = Run(scenario, key, params, run_seed, root, f"{prefix}{'ab'[n % 2]}")
            try:
                run.execute(teardown_later=True, previous=closing)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
                failures.append(f"{key.label()}: {exc}")
            else:
                if closing is not None:
                    closing.join()
                closing = threading.Thread(target=run.finish)
                closing.start()
            bar.advance()
    finally:
        if closing is not None:
            closing.join()
        bar.finish()
    return [k.path(root) for k in keys if is_complete(k.path(root))], failures


class Progress:
    """A progress line with ETA across runs (stderr)."""

    def __init__(self, total: int, skipped: int) -> None:
        self.total, self.skipped, self.n = total, skipped, 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        if skipped:
            print(
                f"{skipped} run(s) already complete, skipped (--force reruns them)", file=sys.stderr
            )

    def start(self, key: RunKey) -> None:
        eta = ""
        if self.n:
            left = (time.monotonic() - self.t0) / self.n * (self.total - self.n)
            eta = f"  ETA {int(left // 60)}m{int(left % 60):02d}s"
        width = 24
        filled = int(width * self.n / max(self.total, 1))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.n}/{self.total} {key.label()}{eta}"
        print(
            ("\r" + line.ljust(110)) if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def advance(self) -> None:
        self.n += 1

    def finish(self) -> None:
        if self.tty:
            print(file=sys.stderr)
        elapsed = time.monotonic() - self.t0
        print(f"{self.n} run(s) in {int(elapsed // 60)}m{int(elapsed % 60):02d}s", file=sys.stderr)
