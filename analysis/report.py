"""The peering on/off report (results/REPORT.md), its paper-claim verdicts and summary_table.

Verdicts come from explicit rules with the thresholds below; the report prints the rules
next to the numbers, and for every claim that is not reproduced it lists what the data
show about why (the path taken, from hop limits; the handover's event timeline).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import metrics
from analysis.load import PEERINGS, Runs, load_runs
from analysis.tables import (
    Windows,
    first_arrivals,
    group_summary,
    receiver_metrics,
)

REPRODUCED, PARTLY, NOT_REPRODUCED, NO_DATA = "reproduced", "partly", "not reproduced", "no data"
# "about X": within +-30 % of X counts as reproduced, within +-60 % as partly.
ABOUT_REPRODUCED = 0.30
ABOUT_PARTLY = 0.60
# Modality: histogram (1 ms LTE / 5 ms UMTS bins), 3-bin moving average, peaks with a
# prominence of at least 25 % of the highest smoothed bin.
MODE_SMOOTH_BINS = 3
MODE_MIN_PROMINENCE = 0.25
BOUND_SLACK = 0.10  # "within about 30 ms": 30 ms + 10 %
SLIGHT_INCREASE_MS = (-5.0, 20.0)  # "only slightly higher": change of the median delay
ALMOST_NO_LOSS_PKTS = 2
HANDOVER_EVENTS = (
    "handover_start",
    "l2_attach",
    "pbu_sent",
    "pba_received",
    "query_sent",
    "report_received",
    "handover_done",
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
]


def fmt(value: object, spec: str = "{:.2f}") -> str:
    """A table cell: formatted number, or an en dash for missing values."""
    if value is None or pd.isna(value):  # None, NaN and pd.NA alike
        return "–"
    if spec == "{:d}":
        return spec.format(int(value))
    return spec.format(float(value))


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


# ---------------------------------------------------------------------------- claims


@dataclass
class Claim:
    """One paper claim with our number, the verdict, the rule and the evidence."""

    number: str
    paper: str
    ours: str
    verdict: str
    rule: str
    evidence: list[str] = field(default_factory=list)


def about_verdict(value: float, target: float) -> str:
    """Verdict for "about `target`": within 30 % reproduced, within 60 % partly."""
    if value is None or math.isnan(value):
        return NO_DATA
    deviation = abs(value - target) / abs(target)
    if deviation <= ABOUT_REPRODUCED:
        return REPRODUCED
    return PARTLY if deviation <= ABOUT_PARTLY else NOT_REPRODUCED


def combine(passes: list[bool]) -> str:
    """All sub-conditions hold: reproduced; some: partly; none: not reproduced."""
    if all(passes):
        return REPRODUCED
    return PARTLY if any(passes) else NOT_REPRODUCED


def _within_about(value: float, target: float) -> bool:
    return about_verdict(value, target) == REPRODUCED


class _Data:
    """Per-receiver metrics and selections shared by all claim rules."""

    def __init__(self, runs: Runs, windows: Windows, per_receiver: pd.DataFrame | None) -> None:
        self.runs = runs
        self.windows = windows
        self.per_receiver = (
            receiver_metrics(runs, windows) if per_receiver is None else per_receiver
        )

    def focus(self, scenario: str, kind: str, peering: str | None = None) -> pd.DataFrame:
        """Per-receiver rows of the focus receivers of a group (any peering if None)."""
        rm = self.per_receiver
        if rm.empty:
            return rm
        mask = (rm["scenario"] == scenario) & (rm["kind"] == kind) & rm["focus"]
        if peering is not None:
            mask &= rm["peering"] == peering
        return rm[mask]

    def median(self, scenario: str, kind: str, peering: str | None, column: str) -> float:
        """Median over focus (run, receiver) pairs; NaN without data."""
        rm = self.focus(scenario, kind, peering)
        if rm.empty or column not in rm:
            return math.nan
        values = pd.to_numeric(rm[column], errors="coerce").dropna()
        return float(values.median()) if len(values) else math.nan

    def delta(self, scenario: str, kind: str, peering: str) -> float:
        """Median over runs of (median delay after - median delay before the handover)."""
        rm = self.focus(scenario, kind, peering)
        if rm.empty or "delay_after_median" not in rm:
            return math.nan
        diff = (rm["delay_after_median"] - rm["delay_before_median"]).dropna()
        return float(diff.median()) if len(diff) else math.nan

    def packets(self, scenario: str, kind: str, peering: str) -> pd.DataFrame:
        """First arrivals of the focus receivers of a group."""
        pk = first_arrivals(self.runs.select(scenario, kind, peering).packets)
        return pk[pk["focus"].astype(bool)]


def _hop_text(pk: pd.DataFrame) -> str:
    hops = pk["hop_limit"].dropna()
    if hops.empty:
        return "hop_limit not recorded"
    counts = hops.value_counts()
    return f"hop_limit {int(counts.index[0])} ({100.0 * counts.iloc[0] / len(hops):.0f} %)"


def path_evidence(data: _Data, scenario: str, kind: str) -> list[str]:
    """Median delay and dominant hop limit before/after the handover, per peering."""
    lines = []
    for peering in PEERINGS:
        pk = data.packets(scenario, kind, peering)
        if pk.empty:
            continue
        parts = []
        for label, part in (("before", pk[pk["t_ho_ms"] < 0]), ("after", pk[pk["t_ho_ms"] >= 0])):
            if part.empty:
                parts.append(f"{label}: no packets")
            else:
                parts.append(
                    f"{label}: median {part['delay_ms'].median():.1f} ms, {_hop_text(part)}"
                )
        lines.append(f"{scenario}/{kind}, peering {peering}: " + "; ".join(parts))
    return lines


def receiver_path_evidence(data: _Data, scenario: str, kind: str) -> list[str]:
    """Median delay and dominant hop limit per receiver (delay-space runs)."""
    lines = []
    for peering in PEERINGS:
        pk = data.packets(scenario, kind, peering)
        parts = []
        for receiver, grp in pk.groupby("receiver", sort=True):
            locality = grp["receiver_locality"].iloc[0]
            where = f" ({locality})" if isinstance(locality, str) else ""
            parts.append(
                f"{receiver}{where} median {grp['delay_ms'].median():.1f} ms, {_hop_text(grp)}"
            )
        if parts:
            lines.append(f"{scenario}/{kind}, peering {peering}: " + "; ".join(parts))
    return lines


def timeline_evidence(data: _Data, scenario: str, kind: str) -> list[str]:
    """Median time of each handover step after handover_start, and of the first packet."""
    lines = []
    for peering in PEERINGS:
        sel = data.runs.select(scenario, kind, peering)
        if sel.empty:
            continue
        ev = sel.events[sel.events["t_ho_ms"] >= 0]
        firsts = ev.groupby(["run", "event"])["t_ho_ms"].min().groupby("event").median()
        known = [e for e in HANDOVER_EVENTS if e in firsts.index]
        steps = ", ".join(f"{e} +{firsts[e]:.1f}" for e in known) or "no handover events"
        rm = data.focus(scenario, kind, peering)
        send = pd.to_numeric(rm.get("ho_first_after_send_ms"), errors="coerce").median()
        recv = pd.to_numeric(rm.get("ho_first_after_recv_ms"), errors="coerce").median()
        lines.append(
            f"{scenario}/{kind}, peering {peering} (medians over {len(sel.runs)} runs, ms after"
            f" handover_start): {steps}; first packet after the gap sent at +{fmt(send, '{:.1f}')},"
            f" received at +{fmt(recv, '{:.1f}')}"
        )
    return lines


def claims(
    runs: Runs, windows: Windows | None = None, per_receiver: pd.DataFrame | None = None
) -> list[Claim]:
    """Evaluate the paper's claims (1)-(7) on `runs` with the rules stated in each Claim.

    `per_receiver` is `receiver_metrics(runs, windows)` when the caller already has it.
    """
    windows = windows or Windows()
    data = _Data(runs, windows, per_receiver)
    out = [
        _claim_modality(data),
        _claim_delay_increase(data),
        _claim_jitter(data),
        _claim_bound(data),
        *_claim_loss(data),
        _claim_multi_receiver(data),
        _claim_sender(data),
    ]
    for claim in out:
        if claim.verdict in (REPRODUCED, NO_DATA):
            claim.evidence = []
    return out


def _claim_modality(data: _Data) -> Claim:
    scenario, kind = "single-lma-lte", "delay-space"
    width = 1.0
    modes = {}
    for peering in PEERINGS:
        pk = data.packets(scenario, kind, peering)
        modes[peering] = (
            metrics.count_modes(
                pk["delay_ms"],
                width,
                smooth_bins=MODE_SMOOTH_BINS,
                min_prominence=MODE_MIN_PROMINENCE,
            )
            if len(pk)
            else None
        )
    rule = (
        f"modes = peaks of the pooled histogram ({width:g} ms bins, {MODE_SMOOTH_BINS}-bin moving"
        f" average) with prominence >= {MODE_MIN_PROMINENCE:.0%} of the highest bin; reproduced"
        " if >= 2 modes off and 1 mode on, partly if one of the two holds"
    )
    claim = Claim(
        "1",
        "single-LMA LTE delay space: bimodal without peering, mono-modal with it (Fig. 4)",
        "",
        NO_DATA,
        rule,
    )
    if None in modes.values():
        claim.ours = "no data"
        return claim
    claim.ours = f"modes: off {modes['off']}, on {modes['on']}"
    claim.verdict = combine([modes["off"] >= 2, modes["on"] == 1])
    claim.evidence = receiver_path_evidence(data, scenario, kind)
    return claim


def _claim_delay_increase(data: _Data) -> Claim:
    scenario, kind = "single-lma-lte", "receiver-handover"
    delta = data.delta(scenario, kind, "off")
    return Claim(
        "2",
        "single-LMA LTE receiver handover without peering adds about 50 ms of delay (Fig. 6a)",
        f"{fmt(delta, '{:+.1f}')} ms (median delay after - before, median over runs)",
        about_verdict(delta, 50.0),
        "about 50 ms: within 30 % reproduced, within 60 % partly",
        path_evidence(data, scenario, kind),
    )


def _claim_jitter(data: _Data) -> Claim:
    scenario, kind = "single-lma-lte", "receiver-handover"
    off = data.median(scenario, kind, "off", "jitter_after_max")
    on = data.median(scenario, kind, "on", "jitter_after_max")
    step_off = data.median(scenario, kind, "off", "ho_delay_step_ms")
    step_on = data.median(scenario, kind, "on", "ho_delay_step_ms")
    ipdv_off = data.median(scenario, kind, "off", "ipdv_after_abs_max")
    ipdv_on = data.median(scenario, kind, "on", "ipdv_after_abs_max")
    claim = Claim(
        "3",
        "LTE receiver handover: jitter up to about 80 ms without peering, below 50 ms with it",
        f"max RFC 3550 jitter after handover: off {fmt(off, '{:.1f}')} ms,"
        f" on {fmt(on, '{:.1f}')} ms (median over runs)",
        NO_DATA,
        "reproduced if off is within 30 % of 80 ms and on < 50 ms; partly if one holds",
    )
    if math.isnan(off) or math.isnan(on):
        return claim
    claim.verdict = combine([_within_about(off, 80.0), on < 50.0])
    claim.evidence = [
        "RFC 3550 jitter takes in 1/16 of each transit-time change: the delay step across the"
        f" handover gap is off {fmt(step_off, '{:+.1f}')} ms, on {fmt(step_on, '{:+.1f}')} ms;"
        " the largest delay change between consecutive packets after the handover (|IPDV|,"
        f" RFC 3393) is off {fmt(ipdv_off, '{:.1f}')} ms, on {fmt(ipdv_on, '{:.1f}')} ms"
        " (medians over runs)",
        *path_evidence(data, scenario, kind),
    ]
    return claim


def _claim_bound(data: _Data) -> Claim:
    scenario, kind = "single-lma-lte", "receiver-handover"
    p95 = data.median(scenario, kind, "on", "delay_after_p95")
    median = data.median(scenario, kind, "on", "delay_after_median")
    bound = 30.0 * (1 + BOUND_SLACK)
    if math.isnan(p95):
        verdict = NO_DATA
    elif p95 <= bound:
        verdict = REPRODUCED
    else:
        verdict = PARTLY if median <= bound else NOT_REPRODUCED
    return Claim(
        "4",
        "LTE receiver handover with peering: delay stays within about 30 ms (Fig. 6b)",
        f"after handover: p95 {fmt(p95, '{:.1f}')} ms, median {fmt(median, '{:.1f}')} ms",
        verdict,
        f"reproduced if p95 after the handover <= {bound:.0f} ms, partly if only the median is",
        path_evidence(data, scenario, kind),
    )


def _claim_loss(data: _Data) -> list[Claim]:
    kind = "receiver-handover"
    umts = data.median("single-lma-umts", kind, None, "ho_lost_ms")
    lte_pkts = data.median("single-lma-lte", kind, None, "ho_missing")
    lte_ms = data.median("single-lma-lte", kind, None, "ho_lost_ms")
    rule = "about X: within 30 % reproduced, within 60 % partly (median over all runs, on and off)"
    return [
        Claim(
            "5a",
            "UMTS receiver handover loses about 400 ms of packets, with or without peering",
            f"{fmt(umts, '{:.0f}')} ms",
            about_verdict(umts, 400.0),
            rule,
            timeline_evidence(data, "single-lma-umts", kind),
        ),
        Claim(
            "5b",
            "LTE receiver handover loses about 3 packets / 30 ms",
            f"{fmt(lte_pkts, '{:.1f}')} packets / {fmt(lte_ms, '{:.0f}')} ms",
            about_verdict(lte_pkts, 3.0),
            rule + "; judged on packets",
            timeline_evidence(data, "single-lma-lte", kind),
        ),
    ]


def _claim_multi_receiver(data: _Data) -> Claim:
    scenario, kind = "multi-lma-lte", "receiver-handover"
    before = data.median(scenario, kind, "off", "delay_before_median")
    lost = data.median(scenario, kind, "off", "ho_lost_ms")
    claim = Claim(
        "6",
        "multi-LMA LTE receiver handover without peering: delay above 100 ms before the"
        " handover and about 60 ms of loss (Fig. 10a)",
        f"median delay before {fmt(before, '{:.1f}')} ms; loss {fmt(lost, '{:.0f}')} ms",
        NO_DATA,
        "reproduced if delay before > 100 ms and loss within 30 % of 60 ms; partly if one holds",
    )
    if math.isnan(before) or math.isnan(lost):
        return claim
    claim.verdict = combine([before > 100.0, _within_about(lost, 60.0)])
    claim.evidence = path_evidence(data, scenario, kind) + timeline_evidence(data, scenario, kind)
    return claim


def _claim_sender(data: _Data) -> Claim:
    scenario, kind = "multi-lma-lte", "sender-handover"
    delta_on = data.delta(scenario, kind, "on")
    delta_off = data.delta(scenario, kind, "off")
    lost_on = data.median(scenario, kind, "on", "ho_missing")
    lo, hi = SLIGHT_INCREASE_MS
    claim = Claim(
        "7",
        "multi-LMA LTE sender handover with peering: delay after the handover only slightly"
        " higher, almost no loss (Fig. 9b)",
        f"delay change on {fmt(delta_on, '{:+.1f}')} ms (off {fmt(delta_off, '{:+.1f}')} ms);"
        f" loss on {fmt(lost_on, '{:.1f}')} packets",
        NO_DATA,
        f"reproduced if the median delay changes by {lo:+.0f}..{hi:+.0f} ms and the loss is"
        f" <= {ALMOST_NO_LOSS_PKTS} packets; partly if one holds",
    )
    if math.isnan(delta_on) or math.isnan(lost_on):
        return claim
    claim.verdict = combine([lo <= delta_on <= hi, lost_on <= ALMOST_NO_LOSS_PKTS])
    claim.evidence = path_evidence(data, scenario, kind) + timeline_evidence(data, scenario, kind)
    return claim


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
        "- Jitter: RFC 3550 interarrival jitter, J += (|D| - J)/16 in arrival order, per"
        ' receiver and run; "mean jitter" is the mean of the per-packet values.',
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
    lines += ["", "## Paper claims", "", "| # | paper | ours | verdict | rule |"]
    lines.append("|---|---|---|---|---|")
    evaluated = claims(runs, windows, per_receiver)
    for c in evaluated:
        lines.append(f"| {c.number} | {c.paper} | {c.ours} | **{c.verdict}** | {c.rule} |")
    differing = [c for c in evaluated if c.evidence]
    if differing:
        lines += ["", "### What the data show where we differ", ""]
        for c in differing:
            lines.append(f"- ({c.number}) {c.verdict}:")
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
    "about_verdict",
    "build_report",
    "claims",
    "combine",
    "summary_table",
    "write_report",
]
