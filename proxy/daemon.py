"""The pymcproxy process: one asyncio loop, its instances, signals, reload and control socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import Counter
from ipaddress import IPv6Address, ip_address

from proxy import config as configmod
from proxy import ctl, service
from proxy.events import EventLog
from proxy.instance import ProxyInstance, Tunables
from proxy.kernel import set_mc_forwarding_sysctls
from proxy.netlink import LinkMonitor, LinkState
from proxy.wire import QuerySender, arrival_ifindex, parse_igmp, parse_mld

log = logging.getLogger("pymcproxy")


class Daemon:
    """Runs the instances of one configuration until stopped."""

    def __init__(
        self,
        cfg: configmod.Config,
        ctl_path: str = ctl.DEFAULT_CTL,
        tunables: Tunables | None = None,
        events: EventLog | None = None,
    ):
        self.cfg = cfg
        self.events = events
        self.ctl_path = ctl_path
        self.tunables = tunables or Tunables()
        self.instances: dict[str, ProxyInstance] = {}
        self.drops: Counter = Counter()
        self.links: dict[str, LinkState] = {}
        self.trace = False  # -vv: log every IGMP/MLD message received
        self.status_every: float | None = None  # -s: print the status this often
        self._stop = asyncio.Event()

    # --- start and stop ----------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        set_mc_forwarding_sysctls(self.cfg.family)
        self.sender = QuerySender(self.cfg.family)
        self.monitor = LinkMonitor()
        self.links = self.monitor.dump()
        try:
            for icfg in self.cfg.instances:
                self._start_instance(icfg)
            loop.add_reader(self.monitor.sock, self._on_links)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: self.reload())
            server = await ctl.start_server(self.ctl_path, self.command)
            log.info(
                "running %d instance(s): %s; control socket %s",
                len(self.instances),
                ", ".join(self.instances),
                self.ctl_path,
            )
            # systemd Type=notify: ready once every instance is up and the socket listens.
            service.notify(
                f"READY=1\nSTATUS=running {len(self.instances)} instance(s)\nMAINPID={os.getpid()}"
            )
            if self.status_every:
                self._print_status()
            await self._stop.wait()
            service.notify("STOPPING=1")
            server.close()
        finally:
            for name in list(self.instances):
                self._stop_instance(name)
            with contextlib.suppress(OSError):
                os.unlink(self.ctl_path)
            self.monitor.close()
            self.sender.close()
            if self.events:
                self.events.close()
            log.info("stopped")

    def stop(self) -> None:
        self._stop.set()

    def _print_status(self) -> None:
        """mcproxy's -s: the state of every instance on standard output, every few seconds."""
        for inst in self.instances.values():
            snap = inst.snapshot()
            ifs = " ".join(
                f"{n}({i['role']}{'' if i['up'] else ',down'})"
                for n, i in snap["interfaces"].items()
            )
            groups = sum(len(q.get("groups", {})) for q in snap["queriers"].values())
            print(
                f"instance {snap['name']} table {snap['table']}: {ifs}; groups {groups}, "
                f"upstream memberships {len(snap['upstream'])}, mfc entries {len(snap['mfc'])}",
                flush=True,
            )
        assert self.status_every
        asyncio.get_running_loop().call_later(self.status_every, self._print_status)

    def _start_instance(self, icfg: configmod.Instance) -> None:
        loop = asyncio.get_running_loop()
        emit = None
        if self.events:
            log_, name = self.events, icfg.name
            emit = lambda event, detail: log_.emit(event, f"{name} {detail}")  # noqa: E731
        inst = ProxyInstance(
            icfg, self.cfg.family, self.cfg.version, loop, self.sender, self.tunables, emit
        )
        self.instances[icfg.name] = inst
        loop.add_reader(inst.table.sock, self._on_socket, inst)
        inst.start(self.links)

    def _stop_instance(self, name: str) -> None:
        inst = self.instances.pop(name)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(inst.table.sock)
        inst.stop()

    # --- events ---------------------------------------------------------------------------

    def _on_links(self) -> None:
        for st in self.monitor.read():
            prev = self.links.get(st.ifname)
            self.links[st.ifname] = st
            if prev == st:
                continue
            for inst in self.instances.values():
                inst.link_changed(st)

    def _on_socket(self, inst: ProxyInstance) -> None:
        family = self.cfg.family
        for _ in range(256):  # bounded batch keeps timers running under floods
            try:
                data, anc, _flags, addr = inst.table.sock.recvmsg(65535, 1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("receive on instance %s: %s", inst.name, exc)
                return
            up = inst.table.parse_upcall(data)
            if up is not None:
                inst.upcall(up)
                continue
            # Every instance's raw socket sees every message; the owner of the interface
            # handles (and counts) it.
            ifname = inst.owns(arrival_ifindex(family, anc))
            if ifname is None:
                continue
            if family == 6:
                rec = parse_mld(data, anc, IPv6Address(addr[0].split("%")[0]), self.drops)
            else:
                rec = parse_igmp(data, anc, self.drops)
            if rec is not None:
                if self.trace:
                    log.debug("%s: %s from %s on %s", inst.name, rec.msg, rec.src, ifname)
                inst.receive(ifname, rec.src, rec.msg)

    # --- reload -----------------------------------------------------------------------------

    def reload(self, path: str | None = None) -> dict:
        """Re-read the configuration and apply only the difference."""
        path = path or self.cfg.path
        try:
            new = configmod.load(path)
        except configmod.ConfigError as exc:
            log.error("reload refused: %s", exc)
            return {"ok": False, "error": str(exc)}
        if new.family != self.cfg.family or new.version != self.cfg.version:
            return {"ok": False, "error": "protocol changes need a restart"}
        old = {i.name: i for i in self.cfg.instances}
        fresh = {i.name: i for i in new.instances}
        changed, details = [], {}
        for name in old.keys() - fresh.keys():
            self._stop_instance(name)
            changed.append(f"-{name}")
        for name, icfg in fresh.items():
            if name not in old:
                self._start_instance(icfg)
                changed.append(f"+{name}")
            elif icfg != old[name]:
                details[name] = self._update_instance(old[name], icfg)
                changed.append(f"~{name}")
        self.cfg = new
        service.notify("READY=1")
        what = " ".join(
            f"{c}({','.join(details[c[1:]])})" if c[1:] in details else c for c in changed
        )
        log.info("reloaded %s: %s", path, what or "no change")
        return {"ok": True, "changed": changed, "details": details}

    def _update_instance(self, old: configmod.Instance, new: configmod.Instance) -> list[str]:
        """Apply an instance's new configuration: in place, unless its kernel table moved."""
        inst = self.instances[new.name]
        if old.table_id != new.table_id:
            self._stop_instance(new.name)
            self._start_instance(new)
            return ["table_id (restarted)"]
        return inst.reconfigure(new, self.links)

    # --- control socket -----------------------------------------------------------------------

    def command(self, req: dict) -> dict:
        """Execute one control request (also used by tests)."""
        cmd = req.get("cmd", "show")
        if cmd == "show":
            return {
                "ok": True,
                "pid": os.getpid(),
                "config": self.cfg.path,
                "drops": dict(self.drops),
                "instances": [i.snapshot() for i in self.instances.values()],
            }
        if cmd == "reload":
            return self.reload(req.get("path"))
        if cmd in ("add-downstream", "remove-downstream"):
            inst = self.instances.get(req["instance"])
            if inst is None:
                return {"ok": False, "error": f"no instance {req['instance']!r}"}
            ifname = req["interface"]
            if cmd == "add-downstream":
                inst.add_downstream(
                    ifname, self.links.get(ifname, LinkState(ifname, 0, False, False))
                )
            else:
                inst.remove_interface(ifname)
            return {"ok": True}
        if cmd == "migrate":
            inst = self.instances.get(req["instance"])
            if inst is None:
                return {"ok": False, "error": f"no instance {req['instance']!r}"}
            if inst.selector is None:
                return {"ok": False, "error": f"instance {inst.name!r} has no upstream selection"}
            group = ip_address(req["group"]) if req.get("group") else None
            return {"ok": True, "moved": inst.selector.release(group)}
        if cmd == "stop":
            self.stop()
            return {"ok": True}
        return {
            "ok": False,
            "error": f"unknown command {cmd!r} ({', '.join(ctl.COMMANDS)})",
        }
