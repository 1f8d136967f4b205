"""Sampling profiles of a running proxy: py-spy's raw output and its summary.

``py_spy`` attaches py-spy (installed next to the interpreter) to a process; SIGINT stops
it and it writes collapsed stacks, which ``profile_summary`` turns into self and inclusive
sample shares per function.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lab.paths import PY


def py_spy(pid: int, out: Path) -> subprocess.Popen:
    """py-spy sampling ``pid`` at 250 Hz into ``out`` (raw format) until ``stop``."""
    spy = subprocess.Popen(
        [
            str(Path(PY).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached
    return spy


def stop(spy: subprocess.Popen) -> None:
    """Stop py-spy; it writes its profile on SIGINT."""
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    spy.wait(30)


#: Frames every sample has (the interpreter and asyncio's loop): not informative.
_FRAMEWORK = re.compile(r"\((base_events|events|runners|__main__|<frozen runpy>)\.py\)|runpy")


def profile_summary(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_s: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"error": "py-spy wrote no profile"}
    for line in path.read_text().splitlines():
        m = re.match(r"(.*) (\d+)$", line)
        if not m:
            continue
        stack, n = m.group(1).split(";"), int(m.group(2))
        total += n
        frames = [re.sub(r" \((?:[^()]*/)?([^/()]+:\d+)\)$", r" (\1)", f) for f in stack]
        funcs = [re.sub(r":\d+\)$", ")", f) for f in frames if f.strip()]
        if not funcs:
            continue
        self_s[funcs[-1]] = self_s.get(funcs[-1], 0) + n
        for f in set(funcs):
            if not _FRAMEWORK.search(f):
                incl[f] = incl.get(f, 0) + n
    if not total:
        return {"error": "empty profile"}

    def share(d: dict[str, int]) -> list[dict[str, Any]]:
        best = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [{"function": f, "share": round(n / total, 4)} for f, n in best]

    return {"samples": total, "self": share(self_s), "inclusive": share(incl)}
