"""An oracle for the report: its numbers computed straight from the run CSVs (csv + numpy).

Shared by the unit test of the analysis pipeline (synthetic runs) and the end-to-end test
(real runs), so both check the report against the same independent computation.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from analysis import metrics


def direct_group(root: Path, scenario: str, kind: str, peering: str) -> dict[str, float]:
    """Numbers computed straight from the CSVs with csv + numpy, not through load.py."""
    delays, jitters, missing, lost_ms = [], [], [], []
    for run_dir in sorted((root / scenario / kind / f"peering-{peering}").glob("run-*")):
        meta_path = run_dir / "meta.json"
        if not meta_path.is_file() or not json.loads(meta_path.read_text())["completed"]:
            continue
        events = list(csv.DictReader((run_dir / "events.csv").open()))
        handover = [int(e["t_ns"]) for e in events if e["event"] == "handover_start"]
        moving = next((e["node"] for e in events if e["event"] == "handover_start"), None)
        for path in sorted(run_dir.glob("receiver-*.csv")):
            node = path.stem.removeprefix("receiver-")
            if kind == "receiver-handover" and node != moving:
                continue
            rows = [
                (int(r["seq"]), int(r["send_ns"]), int(r["recv_ns"]))
                for r in csv.DictReader(path.open())
            ]
            rows.sort(key=lambda r: r[2])
            seen, firsts = set(), []
            for r in rows:
                if r[0] not in seen:
                    seen.add(r[0])
                    firsts.append(r)
            seq, send, recv = (np.array(c) for c in zip(*firsts, strict=True))
            delays += list((recv - send) / 1e6)
            jitters += list(metrics.rfc3550_jitter(send, recv).series_ms)
            if handover:
                # Every packet sent from 500 ms before to 1000 ms after the handover that
                # never arrived (the report's documented window).
                sent = {
                    int(r["seq"]): int(r["send_ns"])
                    for r in csv.DictReader((run_dir / "sender.csv").open())
                }
                window = [s for s, t in sent.items() if -500e6 <= t - handover[0] < 1000e6]
                lost = len(set(window) - set(seq.tolist()))
                missing.append(lost)
                lost_ms.append(lost * 10.0)
    return {
        "median": float(np.median(delays)),
        "p95": float(np.percentile(delays, 95)),
        "max": float(np.max(delays)),
        "jitter": float(np.mean(jitters)),
        "missing": float(np.median(missing)) if missing else math.nan,
        "lost_ms": float(np.median(lost_ms)) if lost_ms else math.nan,
    }


def table_rows(report: str) -> dict[tuple[str, str, str], list[str]]:
    section = report.split("## Results per scenario and kind")[1].split("## Paper claims")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and cells[2] in ("on", "off"):
            rows[(cells[0], cells[1], cells[2])] = cells[3:]
    return rows
