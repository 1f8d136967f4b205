"""Where a number came from: the commit, the machine, its load and the tools' versions.

Every run's ``meta.json`` and every benchmark's result file carries these, so that a figure
can be traced to the code and the machine that made it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from contextlib import suppress
from pathlib import Path
from typing import Any

from lab.paths import REPO


@functools.cache
def git_commit() -> str:
    """The checkout's commit, with ``-dirty`` when tracked files changed ("unknown" outside git)."""
    res = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=40"],
        capture_output=True,
        text=True,
    )
    return res.stdout.strip() or "unknown"


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """The machine, and its load when this was called."""
    return {
        "uname": " ".join(os.uname()),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
    }


def first_line(cmd: list[str]) -> str:
    """The first line a command prints ("missing" if it cannot run)."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else ""


@functools.cache
def module_versions(modules: tuple[str, ...]) -> dict[str, str]:
    """``__version__`` of each importable module ("missing" for those that are not)."""
    out = {"python": platform.python_version(), "kernel": platform.release()}
    for mod in modules:
        try:
            m = __import__(mod, fromlist=["x"])
            out[mod.split(".")[0]] = str(getattr(m, "__version__", getattr(m, "VERSION", "?")))
        except Exception:  # noqa: BLE001 - a missing optional module is just "missing"
            out[mod.split(".")[0]] = "missing"
    return out
