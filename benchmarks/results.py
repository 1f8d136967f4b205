"""Where benchmark results go and what every result file carries.

A result file is stamped with a run header: the benchmark, the commit, the machine and its
load before and after, and the versions of the tools it drove (``lab.provenance``).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from lab.paths import REPO
from lab.provenance import first_line, git_commit, loadavg, machine

RESULTS = REPO / "results" / "bench"


def tool_versions() -> dict[str, str]:
    """The versions of the programs the benchmarks run besides our own."""
    return {
        "iperf": first_line(["iperf", "-v"]),
        "igmpproxy": first_line(["dpkg-query", "-W", "-f", "${Version}", "igmpproxy"]),
        "kernel": os.uname().release,
    }


def run_header(name: str, quick: bool) -> dict[str, Any]:
    return {
        "benchmark": name,
        "quick": quick,
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "tools": tool_versions(),
    }


def finish_header(header: dict[str, Any], t0: float) -> None:
    header["machine"]["loadavg_end"] = loadavg()
    header["duration_s"] = round(time.monotonic() - t0, 1)


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = columns or sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in columns})
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v
