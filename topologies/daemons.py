"""The lab's daemons as objects: each knows its name, config, command, readiness and how it stops.

In the manner of ipmininet's ``Daemon``: a topology says which daemons run on which node,
and the network, the namespace tests and the benchmarks start them through these classes
alone. A daemon runs in a namespace of a ``lab.netns.NetLab`` (whose ``tmp`` directory keeps
its config and log), records its PID for ``lab.clean``, and is stopped by SIGTERM.

- ``ProxyDaemon``: ``pymcproxy`` with a typed ``proxy.config.Config`` rendered by
  ``proxy.config.render`` (the config text is never written by hand).
- ``LmaDaemon`` and ``MagDaemon``: the PMIPv6 agents of ``pmip``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from lab.netns import NetLab, stop_process
from lab.paths import PY, run_dir, runtime_path, write_pidfile
from pmip.mag import MagPlan
from proxy import config as proxyconfig
from proxy.config import Config, Instance
from proxy.ctl import request
from proxy.timers import Timers
from topologies.spec import InstancePlan


class DaemonError(RuntimeError):
    """A daemon did not start or exited; the message names it and quotes its log."""


def proxy_config(protocol: str, instances: Iterable[InstancePlan], timers: Timers) -> Config:
    """A typed proxy ``Config``: the given instances, each with ``timers``."""
    built = [
        Instance.build(
            plan.name,
            upstreams=plan.upstreams,
            downstreams=plan.downstreams,
            peerings=plan.peerings,
            timers=timers,
            table_id=plan.table_id,
        )
        for plan in instances
    ]
    return Config.build(built, protocol=protocol)


class Daemon:
    """A long-running process on one node of a ``NetLab``.

    Subclasses say what it is (``command``, ``config_text``) and when it is ready
    (``is_ready``); ``start`` writes the config, spawns it and records its PID.
    """

    #: the module run with ``python -m``: also the marker ``lab.clean`` checks.
    module = ""

    def __init__(self, lab: NetLab, netns: str, name: str) -> None:
        self.lab, self.netns, self.name = lab, netns, name
        self.proc: subprocess.Popen | None = None
        self.conf_path = lab.tmp / f"{name}.conf"
        self.log_name = f"{name}.log"
        self.pidfile = runtime_path(lab.prefix, name, ".pid")

    # --- what subclasses say ----------------------------------------------------------

    def config_text(self) -> str | None:
        """The config file's text, or None for a daemon without one."""
        return None

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        """True once the daemon serves (polled by ``wait_ready``)."""
        return True

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> Daemon:
        """Write the config and spawn the daemon (without waiting for it)."""
        text = self.config_text()
        if text is not None:
            self.conf_path.write_text(text)
        run_dir()
        # Its own session: a Ctrl-C at the terminal reaches the runner, not every daemon.
        self.proc = self.lab.spawn(
            self.netns, self.command(), self.log_name, start_new_session=True
        )
        write_pidfile(self.pidfile, self.proc.pid, f"-m {self.module}")
        return self

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log_tail(self, lines: int = 3) -> str:
        try:
            return " | ".join(self.lab.log(self.log_name).strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        """Raise ``DaemonError`` if the daemon exited."""
        if self.exited():
            assert self.proc is not None
            raise DaemonError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")

    def wait_ready(self, timeout: float = 15.0) -> Daemon:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.check_alive()
            if self.is_ready():
                return self
            time.sleep(0.02)
        raise DaemonError(f"{self.name} did not come up within {timeout:.0f} s")

    def terminate(self) -> None:
        """Send SIGTERM without waiting (``stop_all`` stops many at once)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout``; the exit code (None if never started)."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        self.pidfile.unlink(missing_ok=True)
        return code


def stop_all(daemons: Sequence[Daemon], timeout: float = 5.0) -> None:
    """Stop several daemons at once: SIGTERM to all, then wait (SIGKILL what overstays)."""
    for d in daemons:
        d.terminate()
    deadline = time.monotonic() + timeout
    for d in daemons:
        d.stop(max(0.1, deadline - time.monotonic()))


class ProxyDaemon(Daemon):
    """``pymcproxy`` on a node, configured by a typed ``Config``; ready when its socket exists."""

    module = "proxy"

    def __init__(
        self,
        lab: NetLab,
        netns: str,
        name: str,
        config: Config,
        *,
        events: Path | None = None,
        node: str | None = None,
        poll_interval: float | None = None,
        debug: bool = False,
        log_file: Path | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__(lab, netns, name)
        self.config = config
        self.ctl = str(runtime_path(lab.prefix, name, ".sock"))
        self.events, self.node = events, node
        self.poll_interval, self.debug, self.log_file = poll_interval, debug, log_file
        self.extra = list(extra)

    def config_text(self) -> str:
        return proxyconfig.render(self.config)

    def reload(self, config: Config) -> dict[str, Any]:
        """Write ``config`` in place of the running one and ask the daemon to reload it."""
        self.config = config
        self.conf_path.write_text(self.config_text())
        return self.request({"cmd": "reload"})

    def command(self) -> list[str]:
        args = [PY, "-m", "proxy", "-f", str(self.conf_path), "--ctl", self.ctl]
        if self.events is not None:
            args += ["--events", str(self.events), "--node", self.node or self.name]
        if self.poll_interval is not None:
            args += ["--poll-interval", str(self.poll_interval)]
        if self.log_file is not None:
            args += ["--log", str(self.log_file)]
        if self.debug:
            args.append("-d")
        return args + self.extra

    def is_ready(self) -> bool:
        return os.path.exists(self.ctl)

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        return request(self.ctl, req)

    def show(self) -> dict[str, Any]:
        """``pymcproxy ctl show`` as data."""
        return self.request({"cmd": "show"})

    def instance(self, name: str) -> dict[str, Any]:
        return next(i for i in self.show()["instances"] if i["name"] == name)

    def stop(self, timeout: float = 5.0) -> int | None:
        code = super().stop(timeout)
        Path(self.ctl).unlink(missing_ok=True)  # left behind if the daemon had to be killed
        return code


class LmaDaemon(Daemon):
    """The LMA agent (``python -m pmip lma``) on its node; ready when it says it listens."""

    module = "pmip"

    def __init__(
        self,
        lab: NetLab,
        netns: str,
        name: str,
        address: IPv6Address,
        tunnels: Iterable[str],
        events: Path | None = None,
        bce_delete_delay: float | None = None,
    ) -> None:
        super().__init__(lab, netns, name)
        self.address, self.tunnels, self.events = address, list(tunnels), events
        self.bce_delete_delay = bce_delete_delay

    def command(self) -> list[str]:
        args = [PY, "-m", "pmip", "lma", "--address", str(self.address)]
        for t in self.tunnels:
            args += ["--tunnel-if", t]
        if self.bce_delete_delay is not None:
            args += ["--bce-delete-delay", str(self.bce_delete_delay)]
        if self.events is not None:
            args += ["--events", str(self.events), "--node", self.name.removeprefix("pmip-")]
        return args

    def is_ready(self) -> bool:
        try:
            return "listening on" in self.lab.log(self.log_name)
        except OSError:
            return False


class MagDaemon(Daemon):
    """A MAG's PMIPv6 daemon (``python -m pmip mag``), driven by its ``MagPlan``."""

    module = "pmip"

    def __init__(
        self, lab: NetLab, netns: str, name: str, plan: MagPlan, events: Path | None = None
    ) -> None:
        super().__init__(lab, netns, name)
        self.plan, self.events = plan, events
        self.conf_path = lab.tmp / f"{name}.json"

    def config_text(self) -> str:
        return self.plan.to_json()

    def command(self) -> list[str]:
        args = [PY, "-m", "pmip", "mag", "--plan", str(self.conf_path)]
        if self.events is not None:
            args += ["--events", str(self.events)]
        return args
