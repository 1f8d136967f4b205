"""Operator conventions: log setup, pidfile, systemd readiness, rp_filter, kernel feature check.

What a service manager and an operator expect of a daemon, following mcproxy and smcroute:
dated log lines with levels on standard error, in a file or in syslog; a pidfile; the
``sd_notify`` datagram of ``Type=notify`` units, written by hand (no dependency); mcproxy's
``-r`` (reverse path filter off on the proxy's interfaces, put back at exit) and ``-c``
(which kernel features are there).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import socket
from pathlib import Path

from proxy import kernel
from proxy.config import DEFAULT_TABLE

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


def setup_logging(
    level: int,
    log_file: str | None = None,
    syslog: bool = False,
    syslog_address: str | tuple[str, int] | None = None,
) -> None:
    """Dated lines with levels to standard error (or ``log_file``), or to syslog."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if syslog:
        address = syslog_address or (
            "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        )
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        # syslog dates the line itself; the tag carries program and pid.
        handler.setFormatter(
            logging.Formatter(f"pymcproxy[{os.getpid()}]: %(levelname)s %(name)s: %(message)s")
        )
    else:
        handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    root.addHandler(handler)
    root.setLevel(level)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; False when there is none.

    The socket is a datagram Unix socket; a name starting with '@' is in the abstract
    namespace (sd_notify(3)).
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError as exc:
        logging.getLogger("pymcproxy").warning("sd_notify to %s: %s", path, exc)
        return False
    return True


class PidFileError(RuntimeError):
    pass


class PidFile:
    """``path`` holds our pid while the daemon runs; a live other daemon's file is refused."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def __enter__(self) -> PidFile:
        try:
            other = int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            other = 0
        if other and other != os.getpid() and _alive(other):
            raise PidFileError(f"{self.path} names running process {other}")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise PidFileError(f"cannot write {self.path}: {exc.strerror}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            if int(self.path.read_text().split()[0]) == os.getpid():
                self.path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RpFilterReset:
    """mcproxy's ``-r``: IPv4 reverse path filter off on these interfaces, restored at exit."""

    def __init__(self, ifnames: list[str]) -> None:
        self.saved: dict[Path, str] = {}
        self.ifnames = ifnames

    def __enter__(self) -> RpFilterReset:
        for name in ["all", *self.ifnames]:
            path = Path("/proc/sys/net/ipv4/conf") / name / "rp_filter"
            with contextlib.suppress(OSError):
                self.saved[path] = path.read_text().strip()
                path.write_text("0\n")
        return self

    def __exit__(self, *exc: object) -> None:
        for path, value in self.saved.items():
            with contextlib.suppress(OSError):
                path.write_text(f"{value}\n")


def check_kernel_features() -> list[str]:
    """mcproxy's ``-c``: what this kernel offers the proxy, one line per feature."""
    lines = [f" - root privileges: {'Ok' if os.geteuid() == 0 else 'Failed'}"]
    for family, name in ((4, "ipv4"), (6, "ipv6")):
        path = "/proc/net/ip6_mr_vif" if family == 6 else "/proc/net/ip_mr_vif"
        lines.append(f" - {name} multicast routing: {'Ok' if os.path.exists(path) else 'Failed'}")
        for table, label in ((DEFAULT_TABLE[family], "routing tables"), (1, "multiple tables")):
            try:
                kernel.MrouteTable(family, table).close()
                ok = "Ok"
            except (kernel.KernelError, OSError) as exc:
                ok = f"Failed ({exc})"
            lines.append(f" - {name} {label}: {ok}")
    return lines
