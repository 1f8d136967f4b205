"""Metric tables over loaded runs: per receiver and run, and per scenario/kind/peering group.

These are the numbers that both the figures (which run is representative) and the report
(what goes into the tables and claims) use, so that both always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.load import KINDS, PEERINGS, RUN_KEYS, SCENARIOS, Runs

GROUP_KEYS = ["scenario", "kind", "peering"]


@dataclass(frozen=True)
class Windows:
    """Send-time windows relative to the handover start, in ms, [start, end)."""

    before: tuple[float, float] = metrics.DEFAULT_BEFORE_MS
    after: tuple[float, float] = metrics.DEFAULT_AFTER_MS
    # Handover loss counts every packet sent in this window that never arrived: it starts
    # early enough to include what was still in flight towards the old MAG at the detach
    # (the longest path, UMTS, is ~400 ms), which a last-before/first-after gap misses
    # when packets sent just before the detach come round the new path.
    loss: tuple[float, float] = (-500.0, 1000.0)


def first_arrivals(packets: pd.DataFrame) -> pd.DataFrame:
    """Packets without duplicates: what the application sees."""
    return packets[~packets["duplicate"].astype(bool)]


def _receiver_row(
    pk: pd.DataFrame, sent: pd.DataFrame, run: pd.Series, windows: Windows
) -> dict[str, object]:
    """All per-receiver metrics of one run; pk holds that receiver's packets (all arrivals)."""
    uniq = first_arrivals(pk)
    delay = uniq["delay_ms"].to_numpy(dtype=float)
    jitter = uniq["jitter_ms"].to_numpy(dtype=float)
    ipdv = metrics.ipdv_ms(uniq["seq"], uniq["send_ns"], uniq["recv_ns"])
    row: dict[str, object] = {
        "n_sent": len(sent),
        "n_received": len(uniq),
        "duplicates": metrics.duplicate_count(pk["seq"]),
        "lost": len(metrics.lost_seqs(sent["seq"], pk["seq"])),
        "delay_median": float(np.median(delay)) if len(delay) else math.nan,
        "delay_p95": float(np.percentile(delay, 95)) if len(delay) else math.nan,
        "delay_max": float(np.max(delay)) if len(delay) else math.nan,
        "jitter_mean": float(np.mean(jitter)) if len(jitter) else math.nan,
        "jitter_final": float(jitter[np.argmax(uniq["recv_ns"].to_numpy())])
        if len(jitter)
        else math.nan,
        "ipdv_abs_max": max((abs(v) for v in ipdv.values()), default=math.nan),
        "ipdv_abs_mean": float(np.mean(np.abs(list(ipdv.values())))) if ipdv else math.nan,
    }
    handover_ns = run["handover_ns"]
    if handover_ns is None or pd.isna(handover_ns):
        return row
    handover_ns = int(handover_ns)
    interval = None
    if len(sent) >= 2:
        s = sent.sort_values("seq")
        steps = np.diff(s["send_ns"].to_numpy()) / np.maximum(np.diff(s["seq"].to_numpy()), 1)
        interval = float(np.median(steps) / metrics.NS_PER_MS)
    gap = metrics.handover_gap(
        pk["seq"],
        pk["send_ns"],
        pk["recv_ns"],
        handover_ns,
        interval_ms=interval,
        sent_seq=sent["seq"] if len(sent) else None,
    )
    missing, _ = metrics.loss_in_window(
        sent["seq"],
        sent["send_ns"],
        pk["seq"],
        handover_ns + int(windows.loss[0] * metrics.NS_PER_MS),
        handover_ns + int(windows.loss[1] * metrics.NS_PER_MS),
    )
    t = uniq["t_ho_ms"].to_numpy(dtype=float)
    d_before, d_after = metrics.before_after(t, delay, windows.before, windows.after)
    j_before, j_after = metrics.before_after(t, jitter, windows.before, windows.after)
    t_by_seq = dict(zip(uniq["seq"].tolist(), t.tolist(), strict=True))
    ipdv_after = [
        abs(v) for s, v in ipdv.items() if windows.after[0] <= t_by_seq[s] < windows.after[1]
    ]
    first_after = uniq[uniq["seq"] == gap.first_after_seq]
    last_before = uniq[uniq["seq"] == gap.last_before_seq]
    # The delay step across the gap: what a receiver's jitter estimate has to absorb.
    step = (
        float(first_after["delay_ms"].iloc[0] - last_before["delay_ms"].iloc[0])
        if len(first_after) and len(last_before)
        else math.nan
    )
    row.update(
        {
            "ho_recovered": gap.first_after_seq is not None,
            "ho_missing": missing,
            "ho_lost_ms": missing * interval if interval else math.nan,
            "ho_gap_missing": gap.missing_packets,
            "ho_gap_send_ms": gap.gap_send_ms,
            "ho_gap_arrival_ms": gap.gap_arrival_ms,
            "ho_delay_step_ms": step,
            "ho_first_after_send_ms": float(first_after["t_ho_ms"].iloc[0])
            if len(first_after)
            else math.nan,
            "ho_first_after_recv_ms": float(
                (first_after["recv_ns"].iloc[0] - handover_ns) / metrics.NS_PER_MS
            )
            if len(first_after)
            else math.nan,
            "delay_before_median": d_before.median,
            "delay_after_median": d_after.median,
            "delay_after_p95": d_after.p95,
            "jitter_before_max": j_before.max,
            "jitter_after_max": j_after.max,
            "ipdv_after_abs_max": max(ipdv_after, default=math.nan),
        }
    )
    return row


def receiver_metrics(runs: Runs, windows: Windows | None = None) -> pd.DataFrame:
    """One row per (run, receiver) with delay, jitter, loss and handover metrics.

    Handover columns (prefix ``ho_`` and the before/after ones) are NaN for runs without
    a handover. ``focus`` marks the receivers the run is about (see load.is_focus_receiver).
    """
    windows = windows or Windows()
    rows = []
    sent_by_run = dict(tuple(runs.sent.groupby(RUN_KEYS, sort=False)))
    run_by_key = {tuple(r[k] for k in RUN_KEYS): r for _, r in runs.runs.iterrows()}
    packets_by_rx = dict(tuple(runs.packets.groupby([*RUN_KEYS, "receiver"], sort=False)))
    no_packets = runs.packets.iloc[0:0]
    # Iterate over the receivers each run has files for, not over packets: a receiver
    # that got nothing must show up as lost, not vanish.
    for run_key, run in sorted(run_by_key.items()):
        sent = sent_by_run.get(run_key, runs.sent.iloc[0:0])
        for receiver, info in sorted(run["receiver_info"].items()):
            pk = packets_by_rx.get((*run_key, receiver), no_packets)
            row = dict(zip(RUN_KEYS, run_key, strict=True))
            row.update(
                receiver=receiver,
                focus=bool(info["focus"]),
                receiver_locality=info["receiver_locality"],
            )
            row.update(_receiver_row(pk, sent, run, windows))
            rows.append(row)
    columns = [*RUN_KEYS, "receiver", "focus", "receiver_locality"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def _nanmedian(values: pd.Series) -> float:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return float(v.median()) if len(v) else math.nan


def group_summary(runs: Runs, per_receiver: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per scenario/kind/peering.

    Delay statistics and mean jitter pool every first arrival of the focus receivers over
    all runs of the group; ``lost_pct`` is lost/sent over those receivers; the handover
    columns are medians over the focus (run, receiver) pairs.
    """
    per_receiver = receiver_metrics(runs) if per_receiver is None else per_receiver
    rows = []
    pk_all = first_arrivals(runs.packets)
    pk_all = pk_all[pk_all["focus"].astype(bool)]
    for key, grp in runs.runs.groupby(GROUP_KEYS, sort=True):
        sel = dict(zip(GROUP_KEYS, key, strict=True))
        mask = np.logical_and.reduce([pk_all[k] == v for k, v in sel.items()])
        pk = pk_all[mask]
        rm = per_receiver[
            np.logical_and.reduce([per_receiver[k] == v for k, v in sel.items()])
            & per_receiver["focus"]
        ]
        delay = pk["delay_ms"].to_numpy(dtype=float)
        sent_total = rm["n_sent"].sum()
        row = {
            **sel,
            "runs": len(grp),
            "packets": len(pk),
            "delay_median": float(np.median(delay)) if len(delay) else math.nan,
            "delay_p95": float(np.percentile(delay, 95)) if len(delay) else math.nan,
            "delay_max": float(np.max(delay)) if len(delay) else math.nan,
            "jitter_mean": float(pk["jitter_ms"].mean()) if len(pk) else math.nan,
            "ipdv_abs_mean": float(pk["ipdv_ms"].abs().mean()) if len(pk) else math.nan,
            "lost_pct": 100.0 * rm["lost"].sum() / sent_total if sent_total else math.nan,
            "ho_missing": _nanmedian(rm.get("ho_missing", pd.Series(dtype=float))),
            "ho_lost_ms": _nanmedian(rm.get("ho_lost_ms", pd.Series(dtype=float))),
            "ho_gap_arrival_ms": _nanmedian(rm.get("ho_gap_arrival_ms", pd.Series(dtype=float))),
        }
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # Paper order (scenarios and kinds as listed in load.py), unknown names last.
    order = {name: i for i, name in enumerate((*SCENARIOS, *KINDS, *PEERINGS))}
    return df.sort_values(
        GROUP_KEYS, key=lambda col: col.map(lambda v: (order.get(v, len(order)), v)), kind="stable"
    ).reset_index(drop=True)


def per_run_values(per_receiver: pd.DataFrame, runs: Runs, column: str) -> pd.DataFrame:
    """One row per run (scenario, kind, peering, run, seed, value) for a paired comparison.

    The value is the median of `column` over the run's focus receivers; `seed` comes from
    the run's meta.json (peering off and on runs with the same run index share it).
    """
    keys = [*GROUP_KEYS, "run"]
    if per_receiver.empty or column not in per_receiver:
        return pd.DataFrame(columns=[*keys, "seed", "value"])
    rm = per_receiver[per_receiver["focus"].astype(bool)].copy()
    rm["value"] = pd.to_numeric(rm[column], errors="coerce")
    values = rm.groupby(keys, sort=True)["value"].median().reset_index()
    seeds = runs.runs[[*keys, "seed"]]
    return values.merge(seeds, on=keys, how="left")


def representative(per_receiver: pd.DataFrame) -> pd.Series | None:
    """The focus (run, receiver) whose handover loss is the median one.

    The run closest to the median of ``ho_lost_ms`` (lowest run index on ties) stands for
    the group in the handover figures; None when there is no focus receiver at all.
    """
    rm = per_receiver[per_receiver["focus"]].sort_values(["run", "receiver"])
    if rm.empty:
        return None
    lost = pd.to_numeric(rm.get("ho_lost_ms", pd.Series(np.nan, index=rm.index)))
    if lost.notna().any():
        distance = (lost - lost.median()).abs()
        return rm.loc[distance.idxmin()]
    return rm.iloc[0]
