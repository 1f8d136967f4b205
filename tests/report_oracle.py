"""An oracle for the report: its numbers computed straight from the run CSVs (csv + numpy).

Shared by the unit test of the analysis pipeline (synthetic runs) and the end-to-end test
(real runs), so both check the report against the same independent computation.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import scipy.stats

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
                # Send interval: the median send-time step of the sender (10 ms nominal).
                order = sorted(sent)
                steps = np.diff([sent[q] for q in order]) / np.diff(order)
                lost_ms.append(lost * float(np.median(steps)) / 1e6)
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


def _first_arrivals(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = sorted(
        (
            (int(r["seq"]), int(r["send_ns"]), int(r["recv_ns"]))
            for r in csv.DictReader(path.open())
        ),
        key=lambda r: r[2],
    )
    seen, firsts = set(), []
    for r in rows:
        if r[0] not in seen:
            seen.add(r[0])
            firsts.append(r)
    if not firsts:
        return np.array([], int), np.array([], int), np.array([], int)
    return tuple(np.array(c) for c in zip(*firsts, strict=True))


def direct_per_run(root: Path, scenario: str, kind: str, peering: str) -> dict[object, dict]:
    """Per run, keyed by meta.json's seed: the median over the focus receivers of each one's
    median delay (`delay_median`) and of its handover-window loss in packets (`ho_missing`)."""
    out: dict[object, dict] = {}
    for run_dir in sorted((root / scenario / kind / f"peering-{peering}").glob("run-*")):
        meta_path = run_dir / "meta.json"
        if not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        if meta.get("completed") is not True:
            continue
        events = list(csv.DictReader((run_dir / "events.csv").open()))
        start = next((e for e in events if e["event"] == "handover_start"), None)
        sent = {
            int(r["seq"]): int(r["send_ns"])
            for r in csv.DictReader((run_dir / "sender.csv").open())
        }
        medians, losses = [], []
        for path in sorted(run_dir.glob("receiver-*.csv")):
            node = path.stem.removeprefix("receiver-")
            if kind == "receiver-handover" and start is not None and node != start["node"]:
                continue
            seq, send, recv = _first_arrivals(path)
            if len(seq):
                medians.append(float(np.median((recv - send) / 1e6)))
            if start is not None:
                t0 = int(start["t_ns"])
                window = {s for s, t in sent.items() if -500e6 <= t - t0 < 1000e6}
                losses.append(len(window - set(seq.tolist())))
        out[meta["seed"]] = {
            "delay_median": float(np.median(medians)) if medians else math.nan,
            "ho_missing": float(np.median(losses)) if losses else math.nan,
        }
    return out


def _section(report: str, title: str) -> list[list[str]]:
    text = report.split(title)[1].split("\n## ")[0]
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| scenario") and "---" not in line
    ]


def onoff_rows(report: str) -> dict[tuple[str, str, str], list[str]]:
    """(scenario, kind, metric) -> [pairs, off, on, on - off, p] of the paired on/off table."""
    rows = _section(report, "## Peering off and on, paired by seed")
    return {(r[0], r[1], r[2]): r[3:] for r in rows}


def claim_rows(report: str) -> dict[str, list[str]]:
    """Claim number -> [paper, ours, verdict, paper allows, point rule, point verdict]."""
    rows = _section(report, "## Paper claims")
    return {r[0]: r[1:] for r in rows if not r[0].startswith("#")}


# On/off rows whose per-run numbers the oracle recomputes from the CSVs.
CHECKED_METRICS = {"median delay [ms]": "delay_median", "handover loss [packets]": "ho_missing"}
NUM = r"([+-]?[\d.]+)"
INTERVAL = re.compile(rf"{NUM} \[{NUM}, {NUM}\], n=(\d+)")


def check_statistics(report: str, root: Path) -> int:
    """Assert the report's statistics: every on/off row has a p-value, the recomputed ones
    equal scipy.stats.wilcoxon on the CSVs' per-run numbers (paired by seed), and every
    claim with data shows an interval around each of its numbers. Returns the rows checked."""
    checked = 0
    rows = onoff_rows(report)
    assert rows, "no on/off rows"
    for (scenario, kind, metric), (pairs, off_cell, on_cell, _diff, p_cell) in rows.items():
        assert 0.0 <= float(p_cell) <= 1.0, (scenario, kind, metric, p_cell)
        column = CHECKED_METRICS.get(metric)
        if column is None:
            continue
        off = direct_per_run(root, scenario, kind, "off")
        on = direct_per_run(root, scenario, kind, "on")
        seeds = sorted(s for s in set(off) & set(on) if not math.isnan(off[s][column]))
        x = [off[s][column] for s in seeds]
        y = [on[s][column] for s in seeds]
        if x == y:
            p = 1.0  # scipy: 1 for identical samples (an error for a single pair)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(scipy.stats.wilcoxon(x, y).pvalue)
        assert int(pairs) == len(seeds), (scenario, kind, metric, pairs, seeds)
        assert p_cell == f"{p:.3g}", (scenario, kind, metric, p_cell, p, x, y)
        assert off_cell.startswith(f"{np.median(x):.1f} ["), (off_cell, x)
        assert on_cell.startswith(f"{np.median(y):.1f} ["), (on_cell, y)
        checked += 1
    claims = claim_rows(report)
    assert claims, "no claim rows"
    for number, (_paper, ours, verdict, allows, _rule, _point) in claims.items():
        verdict = verdict.strip("*")
        assert verdict in ("reproduced", "differs", "no data"), (number, verdict)
        if verdict == "no data":
            continue
        found = INTERVAL.findall(ours)
        assert len(found) == len(ours.split("; ")) and allows, (number, ours, allows)
        for value, low, high, n in found:
            assert float(low) <= float(value) <= float(high) and int(n) >= 1, (number, ours)
    return checked
