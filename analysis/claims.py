"""The paper's claims (1)-(7), each judged on 95 % bootstrap intervals over runs.

A claim is a set of numbers (ours) and, for each, the values the paper's statement allows
("about 50 ms": 50 ms +- 30 %; "below 50 ms": up to 50 ms). A claim is **reproduced** when
every number's interval meets the values the paper allows, i.e. the paper's value lies
inside our interval or inside the stated tolerance around it; otherwise it **differs**, and
the interval shows by how much. The earlier point rule (the median alone, +-30 %
reproduced, +-60 % partly) stays next to it, so that nothing changes silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.load import PEERINGS, Runs
from analysis.stats import Interval, bootstrap, pooled_bootstrap
from analysis.tables import Windows, first_arrivals, receiver_metrics

REPRODUCED, DIFFERS, NO_DATA = "reproduced", "differs", "no data"
PARTLY, NOT_REPRODUCED = "partly", "not reproduced"  # point-rule verdicts
# "about X": within +-30 % of X (point rule: +-30 % reproduced, +-60 % partly).
ABOUT_REPRODUCED = 0.30
ABOUT_PARTLY = 0.60
# Modality: histogram (1 ms bins), 3-bin moving average, peaks (scipy.signal.find_peaks)
# with a prominence of at least 25 % of the highest smoothed bin.
MODE_BIN_MS = 1.0
MODE_SMOOTH_BINS = 3
MODE_MIN_PROMINENCE = 0.25
MODE_RESAMPLES = 500  # each resample redraws the pooled histogram
BOUND_SLACK = 0.10  # "within about 30 ms": 30 ms + 10 %
SLIGHT_INCREASE_MS = (-5.0, 20.0)  # "only slightly higher": change of the median delay
ALMOST_NO_LOSS_PKTS = 2
INF = math.inf


def fmt(value: object, spec: str = "{:.2f}") -> str:
    """A table cell: formatted number, or an en dash for missing values."""
    if value is None or pd.isna(value):  # None, NaN and pd.NA alike
        return "–"
    if spec == "{:d}":
        return spec.format(int(value))
    return spec.format(float(value))


@dataclass(frozen=True)
class Check:
    """One number of a claim: our interval and the values [lo, hi] the paper allows."""

    label: str
    interval: Interval
    lo: float
    hi: float
    spec: str = "{:.1f}"
    unit: str = " ms"

    @property
    def holds(self) -> bool | None:
        """None without data; else whether the interval meets [lo, hi]."""
        if self.interval.missing:
            return None
        return self.interval.meets(self.lo, self.hi)

    @property
    def allowed(self) -> str:
        lo, hi = (self.spec.format(v) for v in (self.lo, self.hi))
        if self.lo == -INF:
            return f"{self.label} <= {hi}{self.unit}"
        if self.hi == INF:
            return f"{self.label} >= {lo}{self.unit}"
        if self.lo == self.hi:
            return f"{self.label} = {lo}{self.unit}"
        return f"{self.label} in [{lo}, {hi}]{self.unit}"

    def text(self) -> str:
        return f"{self.label} {self.interval.text(self.spec)}"


@dataclass
class Claim:
    """One paper claim: our numbers with intervals, both verdicts, the rule, the evidence."""

    number: str
    paper: str
    checks: list[Check]
    point_verdict: str
    point_rule: str
    evidence: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        held = [c.holds for c in self.checks]
        if not held or None in held:
            return NO_DATA
        return REPRODUCED if all(held) else DIFFERS

    @property
    def ours(self) -> str:
        return "; ".join(c.text() for c in self.checks)

    @property
    def rule(self) -> str:
        """Where the paper's statement lies, one range per number."""
        return "; ".join(c.allowed for c in self.checks)

    @property
    def differing(self) -> list[Check]:
        return [c for c in self.checks if c.holds is False]


def about(value: float, target: float) -> str:
    """Point rule for "about `target`": within 30 % reproduced, within 60 % partly."""
    if value is None or math.isnan(value):
        return NO_DATA
    deviation = abs(value - target) / abs(target)
    if deviation <= ABOUT_REPRODUCED:
        return REPRODUCED
    return PARTLY if deviation <= ABOUT_PARTLY else NOT_REPRODUCED


def combine(passes: list[bool]) -> str:
    """Point rule: all sub-conditions hold: reproduced; some: partly; none: not reproduced."""
    if all(passes):
        return REPRODUCED
    return PARTLY if any(passes) else NOT_REPRODUCED


def _band(target: float) -> tuple[float, float]:
    return target * (1 - ABOUT_REPRODUCED), target * (1 + ABOUT_REPRODUCED)


class ClaimData:
    """Per-receiver metrics and the per-run selections every claim rule uses."""

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

    def per_run(self, scenario: str, kind: str, peering: str | None, values: pd.Series):
        """One number per run: the median of `values` over the run's focus receivers."""
        rm = self.focus(scenario, kind, peering)
        if rm.empty:
            return np.array([])
        v = pd.to_numeric(values.loc[rm.index], errors="coerce")
        return v.groupby([rm["peering"], rm["run"]]).median().to_numpy(float)

    def interval(self, scenario: str, kind: str, peering: str | None, column: str) -> Interval:
        """Median over runs of the per-run median of `column`, with its interval over runs."""
        if column not in self.per_receiver:
            return bootstrap([])
        return bootstrap(self.per_run(scenario, kind, peering, self.per_receiver[column]))

    def delta(self, scenario: str, kind: str, peering: str) -> Interval:
        """Median over runs of (median delay after - median delay before the handover)."""
        rm = self.per_receiver
        if "delay_after_median" not in rm:
            return bootstrap([])
        diff = rm["delay_after_median"] - rm["delay_before_median"]
        return bootstrap(self.per_run(scenario, kind, peering, diff))

    def packets(self, scenario: str, kind: str, peering: str) -> pd.DataFrame:
        """First arrivals of the focus receivers of a group."""
        pk = first_arrivals(self.runs.select(scenario, kind, peering).packets)
        return pk[pk["focus"].astype(bool)]

    def modes(self, scenario: str, kind: str, peering: str) -> Interval:
        """Number of modes of the pooled delay histogram, with its interval over runs."""
        pk = self.packets(scenario, kind, peering)
        per_run = [g.to_numpy(float) for _, g in pk.groupby("run")["delay_ms"]]
        return pooled_bootstrap(per_run, count_modes, n_resamples=MODE_RESAMPLES)


def count_modes(delays: np.ndarray) -> float:
    return float(
        metrics.count_modes(
            delays,
            MODE_BIN_MS,
            smooth_bins=MODE_SMOOTH_BINS,
            min_prominence=MODE_MIN_PROMINENCE,
        )
    )


def _hop_text(pk: pd.DataFrame) -> str:
    hops = pk["hop_limit"].dropna()
    if hops.empty:
        return "hop_limit not recorded"
    counts = hops.value_counts()
    return f"hop_limit {int(counts.index[0])} ({100.0 * counts.iloc[0] / len(hops):.0f} %)"


def path_evidence(data: ClaimData, scenario: str, kind: str) -> list[str]:
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


def receiver_path_evidence(data: ClaimData, scenario: str, kind: str) -> list[str]:
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


HANDOVER_EVENTS = (
    "handover_start",
    "l2_attach",
    "pbu_sent",
    "pba_received",
    "query_sent",
    "report_received",
    "handover_done",
)


def timeline_evidence(data: ClaimData, scenario: str, kind: str) -> list[str]:
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
    """Evaluate the paper's claims (1)-(7) on `runs`.

    `per_receiver` is `receiver_metrics(runs, windows)` when the caller already has it.
    """
    data = ClaimData(runs, windows or Windows(), per_receiver)
    out = [
        _claim_modality(data),
        _claim_delay_increase(data),
        *_claim_jitter(data),
        _claim_bound(data),
        *_claim_loss(data),
        _claim_multi_receiver(data),
        _claim_sender(data),
    ]
    for claim in out:
        if claim.verdict in (REPRODUCED, NO_DATA):
            claim.evidence = []
    return out


def _claim_modality(data: ClaimData) -> Claim:
    scenario, kind = "single-lma-lte", "delay-space"
    off, on = data.modes(scenario, kind, "off"), data.modes(scenario, kind, "on")
    point = NO_DATA if off.missing or on.missing else combine([off.value >= 2, on.value == 1])
    return Claim(
        "1",
        "single-LMA LTE delay space: bimodal without peering, mono-modal with it (Fig. 4)",
        [
            Check("modes off", off, 2, INF, "{:.0f}", ""),
            Check("modes on", on, 1, 1, "{:.0f}", ""),
        ],
        point,
        f"modes = peaks of the pooled histogram ({MODE_BIN_MS:g} ms bins, {MODE_SMOOTH_BINS}-bin"
        f" moving average) with prominence >= {MODE_MIN_PROMINENCE:.0%} of the highest bin;"
        " reproduced if >= 2 modes off and 1 mode on, partly if one of the two holds",
        receiver_path_evidence(data, scenario, kind),
    )


def _claim_delay_increase(data: ClaimData) -> Claim:
    scenario, kind = "single-lma-lte", "receiver-handover"
    delta = data.delta(scenario, kind, "off")
    return Claim(
        "2",
        "single-LMA LTE receiver handover without peering adds about 50 ms of delay (Fig. 6a)",
        [Check("delay after - before, off", delta, *_band(50.0), "{:+.1f}")],
        about(delta.value, 50.0),
        "median over runs within 30 % of 50 ms reproduced, within 60 % partly",
        path_evidence(data, scenario, kind),
    )


def _claim_jitter(data: ClaimData) -> list[Claim]:
    """The paper's "interarrival jitter" as RFC 3550 jitter (3a) and as |IPDV| (3b)."""
    scenario, kind = "single-lma-lte", "receiver-handover"
    step_off = data.interval(scenario, kind, "off", "ho_delay_step_ms")
    step_on = data.interval(scenario, kind, "on", "ho_delay_step_ms")
    evidence = [
        "RFC 3550 jitter takes in 1/16 of each transit-time change: the delay step across the"
        f" handover gap is off {step_off.text('{:+.1f}')} ms, on {step_on.text('{:+.1f}')} ms;"
        " the paper does not say which jitter it plotted, so both readings are judged",
        *path_evidence(data, scenario, kind),
    ]
    out = []
    for number, what, column in (
        ("3a", "max RFC 3550 jitter after the handover", "jitter_after_max"),
        ("3b", "max abs. IPDV (RFC 3393) after the handover", "ipdv_after_abs_max"),
    ):
        off = data.interval(scenario, kind, "off", column)
        on = data.interval(scenario, kind, "on", column)
        point = (
            NO_DATA
            if off.missing or on.missing
            else combine([about(off.value, 80.0) == REPRODUCED, on.value < 50.0])
        )
        out.append(
            Claim(
                number,
                "LTE receiver handover: jitter up to about 80 ms without peering, below 50 ms"
                f" with it; read as {what}",
                [Check("off", off, *_band(80.0)), Check("on", on, -INF, 50.0)],
                point,
                "reproduced if off is within 30 % of 80 ms and on < 50 ms; partly if one holds",
                list(evidence),
            )
        )
    return out


def _claim_bound(data: ClaimData) -> Claim:
    scenario, kind = "single-lma-lte", "receiver-handover"
    p95 = data.interval(scenario, kind, "on", "delay_after_p95")
    median = data.interval(scenario, kind, "on", "delay_after_median")
    bound = 30.0 * (1 + BOUND_SLACK)
    if p95.missing:
        point = NO_DATA
    elif p95.value <= bound:
        point = REPRODUCED
    else:
        point = PARTLY if median.value <= bound else NOT_REPRODUCED
    return Claim(
        "4",
        "LTE receiver handover with peering: delay stays within about 30 ms (Fig. 6b)",
        [Check("p95 delay after, on", p95, -INF, bound)],
        point,
        f"reproduced if p95 after the handover <= {bound:.0f} ms, partly if only the median"
        f" ({fmt(median.value, '{:.1f}')} ms) is",
        path_evidence(data, scenario, kind),
    )


def _claim_loss(data: ClaimData) -> list[Claim]:
    kind = "receiver-handover"
    umts = data.interval("single-lma-umts", kind, None, "ho_lost_ms")
    lte = data.interval("single-lma-lte", kind, None, "ho_missing")
    rule = "median over all runs (on and off) within 30 % reproduced, within 60 % partly"
    return [
        Claim(
            "5a",
            "UMTS receiver handover loses about 400 ms of packets, with or without peering",
            [Check("loss", umts, *_band(400.0), "{:.0f}")],
            about(umts.value, 400.0),
            rule,
            timeline_evidence(data, "single-lma-umts", kind),
        ),
        Claim(
            "5b",
            "LTE receiver handover loses about 3 packets / 30 ms",
            [Check("loss", lte, *_band(3.0), "{:.1f}", " packets")],
            about(lte.value, 3.0),
            rule + "; judged on packets",
            timeline_evidence(data, "single-lma-lte", kind),
        ),
    ]


def _claim_multi_receiver(data: ClaimData) -> Claim:
    scenario, kind = "multi-lma-lte", "receiver-handover"
    before = data.interval(scenario, kind, "off", "delay_before_median")
    lost = data.interval(scenario, kind, "off", "ho_lost_ms")
    point = (
        NO_DATA
        if before.missing or lost.missing
        else combine([before.value > 100.0, about(lost.value, 60.0) == REPRODUCED])
    )
    return Claim(
        "6",
        "multi-LMA LTE receiver handover without peering: delay above 100 ms before the"
        " handover and about 60 ms of loss (Fig. 10a)",
        [
            Check("median delay before", before, 100.0, INF),
            Check("loss", lost, *_band(60.0), "{:.0f}"),
        ],
        point,
        "reproduced if delay before > 100 ms and loss within 30 % of 60 ms; partly if one holds",
        path_evidence(data, scenario, kind) + timeline_evidence(data, scenario, kind),
    )


def _claim_sender(data: ClaimData) -> Claim:
    scenario, kind = "multi-lma-lte", "sender-handover"
    delta_on = data.delta(scenario, kind, "on")
    lost_on = data.interval(scenario, kind, "on", "ho_missing")
    lo, hi = SLIGHT_INCREASE_MS
    point = (
        NO_DATA
        if delta_on.missing or lost_on.missing
        else combine([lo <= delta_on.value <= hi, lost_on.value <= ALMOST_NO_LOSS_PKTS])
    )
    return Claim(
        "7",
        "multi-LMA LTE sender handover with peering: delay after the handover only slightly"
        " higher, almost no loss (Fig. 9b)",
        [
            Check("delay change, on", delta_on, lo, hi, "{:+.1f}"),
            Check("loss, on", lost_on, -INF, ALMOST_NO_LOSS_PKTS, "{:.1f}", " packets"),
        ],
        point,
        f"reproduced if the median delay changes by {lo:+.0f}..{hi:+.0f} ms and the loss is"
        f" <= {ALMOST_NO_LOSS_PKTS} packets; partly if one holds",
        path_evidence(data, scenario, kind) + timeline_evidence(data, scenario, kind),
    )


__all__ = ["DIFFERS", "NO_DATA", "REPRODUCED", "Check", "Claim", "ClaimData", "claims"]
