"""The peering on/off report (REPORT.md): tables, paired on/off tests, the paper's claims.

Every number a verdict rests on carries a 95 % bootstrap interval over runs (analysis.stats,
analysis.claims); every peering on/off comparison is paired by seed and tested with the
Wilcoxon signed-rank test. The report states how each number is computed next to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from analysis import stats
from analysis.claims import (
    ABOUT_PARTLY,
    ABOUT_REPRODUCED,
    DIFFERS,
    NO_DATA,
    REPRODUCED,
    Claim,
    claims,
    fmt,
)
from analysis.load import KINDS, SCENARIOS, Runs, load_runs
from analysis.tables import (
    GROUP_KEYS,
    Windows,
    group_summary,
    per_run_values,
    receiver_metrics,
)

SUMMARY_COLUMNS = [
    ("runs", "runs", "{:d}"),
    ("delay_median", "median delay [ms]", "{:.2f}"),
    ("delay_p95", "p95 delay [ms]", "{:.2f}"),
    ("jitter_mean", "mean jitter [ms]", "{:.2f}"),
    ("ho_missing", "handover loss [pkts]", "{:.1f}"),
    ("ho_lost_ms", "handover loss [ms]", "{:.1f}"),
]
REPORT_COLUMNS = [
    ("runs", "runs", "{:d}"),
    ("packets", "packets", "{:d}"),
    ("delay_median", "median delay [ms]", "{:.2f}"),
    ("delay_p95", "p95 delay [ms]", "{:.2f}"),
    ("delay_max", "max delay [ms]", "{:.2f}"),
    ("jitter_mean", "mean jitter [ms]", "{:.2f}"),
    ("lost_pct", "lost [%]", "{:.2f}"),
    ("ho_missing", "handover loss [pkts]", "{:.1f}"),
    ("ho_lost_ms", "handover loss [ms]", "{:.1f}"),
    ("ho_gap_arrival_ms", "silence at receiver [ms]", "{:.1f}"),
    ("ipdv_abs_mean", "mean abs. IPDV [ms]", "{:.2f}"),
]


def markdown_table(df: pd.DataFrame, columns: list[tuple[str, str, str]]) -> str:
    """scenario/kind/peering plus `columns` (key, header, format) as a markdown table."""
    headers = ["scenario", "kind", "peering"] + [h for _, h, _ in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in df.iterrows():
        cells = [row["scenario"], row["kind"], row["peering"]]
        cells += [fmt(row.get(key), spec) for key, _, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(runs: Runs | Iterable[str | Path] | str | Path) -> str:
    """Short peering on/off table (median/p95 delay, mean jitter, handover loss).

    Accepts loaded `Runs` or run directories / a results root. Called by the experiment
    runner at the end of a scenario.
    """
    if not isinstance(runs, Runs):
        runs = load_runs(runs)
    if runs.empty:
        text = "no completed runs"
    else:
        text = markdown_table(group_summary(runs), SUMMARY_COLUMNS)
    if runs.excluded:
        text += f"\n({len(runs.excluded)} run(s) excluded: incomplete or unreadable)"
    return text


# ---------------------------------------------------------------------------- on/off

# Per kind: the per-run numbers compared between peering off and on (column, label, format).
ONOFF_METRICS = {
    "delay-space": [
        ("delay_median", "median delay [ms]", "{:.1f}"),
        ("delay_p95", "p95 delay [ms]", "{:.1f}"),
        ("jitter_mean", "mean RFC 3550 jitter [ms]", "{:.2f}"),
        ("ipdv_abs_mean", "mean abs. IPDV [ms]", "{:.2f}"),
    ],
    "handover": [
        ("delay_after_median", "median delay after handover [ms]", "{:.1f}"),
        ("ho_missing", "handover loss [packets]", "{:.1f}"),
        ("jitter_after_max", "max RFC 3550 jitter after [ms]", "{:.2f}"),
        ("ipdv_after_abs_max", "max abs. IPDV after [ms]", "{:.2f}"),
    ],
}


def onoff_metrics(kind: str) -> list[tuple[str, str, str]]:
    return ONOFF_METRICS["delay-space" if kind == "delay-space" else "handover"]


def onoff_comparisons(
    runs: Runs, per_receiver: pd.DataFrame
) -> list[tuple[str, str, str, str, stats.Paired]]:
    """(scenario, kind, label, format, Paired) for every group that has off and on runs."""
    out = []
    order = {name: i for i, name in enumerate((*SCENARIOS, *KINDS))}
    groups = sorted(
        {(r.scenario, r.kind) for r in runs.runs[GROUP_KEYS].itertuples()},
        key=lambda g: (order.get(g[0], len(order)), g[0], order.get(g[1], len(order)), g[1]),
    )
    for scenario, kind in groups:
        for column, label, spec in onoff_metrics(kind):
            values = per_run_values(per_receiver, runs, column)
            sel = values[(values["scenario"] == scenario) & (values["kind"] == kind)]
            side = {
                p: {
                    (r.seed if pd.notna(r.seed) else f"run {r.run}"): float(r.value)
                    for r in sel[sel["peering"] == p].itertuples()
                }
                for p in ("off", "on")
            }
            if side["off"] and side["on"]:
                out.append((scenario, kind, label, spec, stats.paired(side["off"], side["on"])))
    return out


def onoff_section(runs: Runs, per_receiver: pd.DataFrame) -> list[str]:
    """The paired on/off table: medians over runs with intervals, difference, Wilcoxon p."""
    lines = [
        "| scenario | kind | metric (per run) | pairs | off | on | on - off | Wilcoxon p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = onoff_comparisons(runs, per_receiver)
    for scenario, kind, label, spec, pair in rows:
        cells = [
            scenario,
            kind,
            label,
            str(pair.n),
            pair.off_interval.text(spec).split(", n=")[0],
            pair.on_interval.text(spec).split(", n=")[0],
            pair.difference.text("{:+" + spec[2:]).split(", n=")[0],
            stats.format_p(pair.p_value),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines = ["No scenario has both peering off and peering on runs."]
    return lines


# ---------------------------------------------------------------------------- report


def unrecovered_note(per_receiver: pd.DataFrame) -> list[str]:
    """Lines naming focus receivers that got no packet after the handover at all.

    Their handover loss runs to the end of the stream, which the medians above include.
    """
    if "ho_recovered" not in per_receiver:
        return []
    # NaN (no handover in the run) counts as recovered.
    recovered = per_receiver["ho_recovered"].fillna(True).astype(bool)
    rm = per_receiver[per_receiver["focus"].astype(bool) & ~recovered]
    if rm.empty:
        return []
    lines = ["", "No packet after the handover (stream never recovered):"]
    for _, r in rm.iterrows():
        what = (
            "received nothing at all"
            if r["n_received"] == 0
            else f"{fmt(r['ho_missing'], '{:.0f}')} packets lost up to the end of the stream"
        )
        lines.append(
            f"- {r['scenario']}/{r['kind']}/peering-{r['peering']}/run-{int(r['run']):02d},"
            f" receiver {r['receiver']}: {what}"
        )
    return lines


def build_report(
    runs: Runs, results_dir: str | Path = "results", windows: Windows | None = None
) -> str:
    """The whole REPORT.md text for `runs` (loaded from `results_dir`)."""
    windows = windows or Windows()
    lines = ["# Peering on/off report", ""]
    backends = runs.runs["link_backend"].fillna("unknown").value_counts() if not runs.empty else []
    commits = sorted({str(c) for c in runs.runs["git_commit"].dropna()}) if not runs.empty else []
    lines += [
        f"Generated by `python -m analysis report` from {len(runs.runs)} completed run(s) under"
        f" `{results_dir}`; {len(runs.excluded)} run(s) excluded (listed at the end).",
        "Link backends: "
        + (", ".join(f"{b} ({n} runs)" for b, n in backends.items()) if len(backends) else "–")
        + ". Git commits: "
        + (", ".join(c[:12] for c in commits) or "–")
        + ".",
        "",
        "## How the numbers are computed",
        "",
        "- One-way delay = receive time (SO_TIMESTAMPNS) - send time in the payload, both on the"
        " one CLOCK_REALTIME all namespaces share. Duplicates are dropped (first arrival counts).",
        "- Jitter, two readings (the paper does not say which it plotted): RFC 3550"
        " interarrival jitter, J += (|D| - J)/16 in arrival order, per receiver and run"
        ' ("mean jitter" is the mean of the per-packet values); and the per-packet |IPDV|'
        " (RFC 3393: delay of a packet minus that of its predecessor, for consecutive"
        " received sequence numbers).",
        f"- Intervals: 95 % percentile bootstrap over runs ({stats.N_RESAMPLES} resamples of"
        " whole runs, fixed seed, `scipy.stats.bootstrap`); with one run the interval is that"
        " run's value. On/off tests: Wilcoxon signed-rank over seed-paired runs.",
        "- Pooled statistics use the *focus* receivers: every receiver for delay-space and"
        " sender-handover runs, the moving receiver (node of `handover_start`) for"
        " receiver-handover runs. Delay statistics pool all their packets over all runs.",
        "- Handover loss: packets sent from"
        f" {windows.loss[0]:g} ms to +{windows.loss[1]:g} ms around `handover_start` that never"
        " arrived (the window begins early enough to count packets still in flight to the old"
        " MAG at the detach; loss in ms = packets x send interval); silence at receiver ="
        " longest time between consecutive arrivals that ends after the handover start. Both"
        " are medians over runs.",
        f"- Before/after windows (send time relative to `handover_start`): before"
        f" [{windows.before[0]:g}, {windows.before[1]:g}) ms, after"
        f" [{windows.after[0]:g}, {windows.after[1]:g}) ms.",
        "",
        "## Results per scenario and kind",
        "",
    ]
    per_receiver = receiver_metrics(runs, windows)
    if runs.empty:
        lines.append("No completed runs.")
    else:
        lines.append(markdown_table(group_summary(runs, per_receiver), REPORT_COLUMNS))
        lines += unrecovered_note(per_receiver)
    lines += ["", "## Peering off and on, paired by seed", ""]
    lines += [
        "Each run gives one number (the median over its focus receivers); off and on runs"
        " with the same seed form a pair. Cells: median over runs [95 % bootstrap interval];"
        " on - off: median of the paired differences [95 % interval]; p: two-sided Wilcoxon"
        " signed-rank test over the pairs (`scipy.stats.wilcoxon`). With fewer than 6 pairs"
        " no p-value can fall below 0.05.",
        "",
    ]
    lines += onoff_section(runs, per_receiver) if not runs.empty else ["No completed runs."]
    lines += ["", "## Paper claims", ""]
    lines += [
        f"Ours: value [95 % bootstrap interval over runs], n runs. **{REPRODUCED}**: every"
        " interval meets the values the paper's statement allows (the paper's value lies in our"
        f" interval or within the stated tolerance: 'about X' is X +- {ABOUT_REPRODUCED:.0%});"
        f" **{DIFFERS}**: some interval lies wholly outside them; {NO_DATA}: no runs. Point"
        f" rule: the earlier rule on the median alone (+-{ABOUT_REPRODUCED:.0%} reproduced,"
        f" +-{ABOUT_PARTLY:.0%} partly).",
        "",
        "| # | paper | ours | verdict | paper allows | point rule | point verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    evaluated = claims(runs, windows, per_receiver)
    for c in evaluated:
        lines.append(
            f"| {c.number} | {c.paper} | {c.ours or '–'} | **{c.verdict}** | {c.rule} |"
            f" {c.point_rule} | {c.point_verdict} |"
        )
    differing = [c for c in evaluated if c.evidence]
    if differing:
        lines += ["", "### What the data show where we differ", ""]
        for c in differing:
            outside = ", ".join(f"{d.text()} outside {d.allowed}" for d in c.differing)
            lines.append(f"- ({c.number}) {c.verdict}: {outside}")
            lines += [f"  - {e}" for e in c.evidence]
    lines += ["", "## Excluded runs", ""]
    if runs.excluded:
        lines += [f"- `{path}`: {reason}" for path, reason in runs.excluded]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def write_report(runs: Runs, results_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write REPORT.md (default: `<results_dir>/REPORT.md`) and return its path."""
    out = Path(path) if path is not None else Path(results_dir) / "REPORT.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(runs, results_dir))
    return out


__all__ = [
    "Claim",
    "build_report",
    "claims",
    "onoff_comparisons",
    "summary_table",
    "write_report",
]
