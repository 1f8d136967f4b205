"""Cleanup of everything the testbed leaves on a host: ``pml*`` namespaces and interfaces, PIDs.

``python -m lab.clean`` (``make clean``) removes, in this order:

1. the processes recorded in ``/run/pmiplab/*.pid`` (so a link emulator closes its TAP devices
   and daemons stop before their namespaces go), after checking that ``/proc/PID/cmdline``
   still is what was started. A pid file holds the PID on its first line and, optionally, on
   its second a string the command line must contain; without one the command line must
   name one of the project's modules. Stale pid files are removed either way;
2. every network namespace whose name starts with ``pml``, after SIGTERM (then SIGKILL) to
   the processes inside it (``ip netns pids``);
3. every root-namespace interface whose name starts with ``pml`` (netem backend veths and
   bridges, temporary TAP names).

Nothing else is touched, and running it twice is harmless. With a longer prefix (as tests
and single runs use) only the pid files whose name contains that prefix are acted on, so
that only what that prefix made is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lab.paths import RUN_DIR

PREFIX = "pml"
# Command-line words that identify our processes when a pid file names no marker.
PROJECT_MARKERS = (
    "-m topologies",
    "-m proxy",
    "-m pmip",
    "-m experiments",
    "-m benchmarks",
    "pymcproxy",
    "pmiplab",
)
TERM_GRACE_S = 2.0

Log = Callable[[str], None]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3, after the parenthesised command name, is the state; a zombie is already dead.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def terminate(pids: list[int], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the given PIDs, wait up to ``grace_s``, SIGKILL whatever still lives."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pidfile_matches(pidfile: Path) -> int | None:
    """The PID recorded in ``pidfile`` if that process still runs what was started."""
    try:
        lines = pidfile.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    cmdline = _cmdline(pid)
    if cmdline is None or pid == os.getpid():
        return None
    marker = lines[1].strip() if len(lines) > 1 else ""
    if marker:
        return pid if marker in cmdline else None
    return pid if any(word in cmdline for word in PROJECT_MARKERS) else None


def clean_pidfiles(run_dir: Path = RUN_DIR, pattern: str = "*.pid", log: Log = print) -> list[str]:
    removed = []
    pidfiles = sorted(run_dir.glob(pattern)) if run_dir.is_dir() else []
    matches = {path: pidfile_matches(path) for path in pidfiles}
    terminate([pid for pid in matches.values() if pid is not None])
    for path, pid in matches.items():
        if pid is not None:
            log(f"killed process {pid} ({path.name})")
            removed.append(f"pid:{pid}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


def list_netns(prefix: str = PREFIX) -> list[str]:
    out = _ip("-j", "netns", "list").stdout.strip()
    names = [entry["name"] for entry in json.loads(out or "[]")]
    return sorted(name for name in names if name.startswith(prefix))


def remove_netns(name: str, log: Log = print) -> None:
    """Stop the processes inside namespace ``name``, then delete it."""
    pids = [int(p) for p in _ip("netns", "pids", name).stdout.split() if int(p) != os.getpid()]
    if pids:
        terminate(pids)
        log(f"killed {len(pids)} process(es) in namespace {name}")
    _ip("netns", "del", name)
    log(f"removed namespace {name}")


def list_links(prefix: str = PREFIX) -> list[str]:
    out = _ip("-j", "link", "show").stdout.strip()
    names = [entry["ifname"] for entry in json.loads(out or "[]")]
    return sorted(name for name in names if name.startswith(prefix))


def cleanup(
    prefix: str = PREFIX,
    run_dir: Path = RUN_DIR,
    pid_pattern: str | None = None,
    log: Log = print,
) -> list[str]:
    """Remove our processes, namespaces and root interfaces; return what was removed.

    With a narrower ``prefix`` than ``pml`` only pid files whose name contains it are
    considered (unless ``pid_pattern`` says otherwise), so that one run or test cleaning up
    after itself cannot stop another's processes.
    """
    if not prefix.startswith(PREFIX):
        raise ValueError(f"refusing to clean names outside the {PREFIX!r} prefix")
    if pid_pattern is None:
        pid_pattern = "*.pid" if prefix == PREFIX else f"*{prefix}*.pid"
    removed = clean_pidfiles(run_dir, pid_pattern, log)
    for name in list_netns(prefix):
        remove_netns(name, log)
        removed.append(f"netns:{name}")
    for name in list_links(prefix):
        # Deleting one end of a veth pair takes the other with it: not finding it is fine.
        if _ip("link", "del", "dev", name).returncode == 0:
            log(f"removed interface {name}")
            removed.append(f"link:{name}")
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.clean",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prefix", default=PREFIX, help="name prefix (default: %(default)s)")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument(
        "--pid-pattern", help="pid files to act on (default: all, or those naming --prefix)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: clean needs root (network namespaces)", file=sys.stderr)
        return 2
    removed = cleanup(args.prefix, args.run_dir, args.pid_pattern)
    if not removed:
        print("nothing to remove")
    return 0


if __name__ == "__main__":
    sys.exit(main())
