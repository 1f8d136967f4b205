"""The paper's figures (fig02, fig04-fig10) as PNG and PDF, drawn only from measured results.

Every run figure puts peering off and on side by side, "(a) without peering" and
"(b) with peering", on shared axes. A figure whose inputs are missing is skipped with a
reason; nothing is ever drawn from invented data.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
with warnings.catch_warnings():
    # A Debian mpl_toolkits next to a pip matplotlib warns about Axes3D, which we never use.
    warnings.simplefilter("ignore", UserWarning)
    import matplotlib.pyplot as plt

from analysis import metrics  # noqa: E402
from analysis.load import PEERINGS, Runs  # noqa: E402
from analysis.tables import first_arrivals, receiver_metrics, representative  # noqa: E402

PANEL_TITLES = {"off": "(a) without peering", "on": "(b) with peering"}
X_HANDOVER = "packet send time relative to handover start [ms]"


@dataclass(frozen=True)
class FigureSpec:
    """One paper figure built from runs: name, data selection and the paper's caption."""

    name: str
    scenario: str
    kind: str
    caption: str


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig04", "single-lma-lte", "delay-space", "Delay space, single LMA scenario (LTE)"),
    FigureSpec(
        "fig05", "single-lma-umts", "delay-space", "Delay space, single LMA scenario (UMTS)"
    ),
    FigureSpec(
        "fig06", "single-lma-lte", "receiver-handover", "Receiver handover, single LMA (LTE)"
    ),
    FigureSpec(
        "fig07", "single-lma-umts", "receiver-handover", "Receiver handover, single LMA (UMTS)"
    ),
    FigureSpec("fig08", "multi-lma-lte", "delay-space", "Delay space, multi LMA scenario (LTE)"),
    FigureSpec("fig09", "multi-lma-lte", "sender-handover", "Sender handover, multi LMA (LTE)"),
    FigureSpec("fig10", "multi-lma-lte", "receiver-handover", "Receiver handover, multi LMA (LTE)"),
)
GOODPUT_NAME = "fig02"
GOODPUT_MODES = ("unicast", "multicast-ours", "multicast-igmpproxy")


@dataclass
class FigureOutcome:
    """Files written and figures skipped (name, reason)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def bin_width_ms(scenario: str) -> float:
    """Histogram bin width: 5 ms for UMTS (200 +- 50 ms radio), 1 ms for LTE (5 +- 3 ms)."""
    return 5.0 if "umts" in scenario else 1.0


def missing_inputs(runs: Runs, spec: FigureSpec) -> str | None:
    """Why `spec` cannot be drawn from `runs`, or None when both peering sides have data."""
    for peering in PEERINGS:
        sel = runs.select(spec.scenario, spec.kind, peering)
        if sel.runs.empty:
            return f"no completed runs for {spec.scenario}/{spec.kind}/peering-{peering}"
        if first_arrivals(sel.packets).empty:
            return f"no received packets in {spec.scenario}/{spec.kind}/peering-{peering}"
    return None


def _panels(rows: int, sharey: str | bool) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(
        rows,
        2,
        sharex=True,
        sharey=sharey,
        figsize=(11, 4.2 * rows),
        squeeze=False,
        layout="constrained",
    )
    for col, peering in enumerate(PEERINGS):
        axes[0, col].set_title(PANEL_TITLES[peering])
    return fig, axes


def _receiver_label(pk: pd.DataFrame) -> str:
    locality = pk["receiver_locality"].iloc[0]
    name = str(pk["receiver"].iloc[0])
    return f"{name} ({locality})" if isinstance(locality, str) else name


def delay_space_figure(runs: Runs, spec: FigureSpec) -> plt.Figure:
    """Relative-frequency histograms of one-way delay, pooled over runs and receivers.

    Bars are stacked per receiver and weighted by 1/N of the panel, so the stack heights
    are the pooled relative frequencies and the colours show which receiver (local or
    remote to the source) contributes which mode.
    """
    width = bin_width_ms(spec.scenario)
    fig, axes = _panels(1, True)
    data = {p: first_arrivals(runs.select(spec.scenario, spec.kind, p).packets) for p in PEERINGS}
    all_delay = np.concatenate([d["delay_ms"].to_numpy(dtype=float) for d in data.values()])
    lo = math.floor(all_delay.min() / width) * width
    hi = (math.floor(all_delay.max() / width) + 1) * width
    edges = np.arange(lo, hi + width / 2, width)
    for col, peering in enumerate(PEERINGS):
        ax = axes[0, col]
        pk = data[peering]
        groups = [g for _, g in pk.groupby("receiver", sort=True)]
        ax.hist(
            [g["delay_ms"].to_numpy(dtype=float) for g in groups],
            bins=edges,
            weights=[np.full(len(g), 1.0 / len(pk)) for g in groups],
            stacked=True,
            label=[_receiver_label(g) for g in groups],
            edgecolor="none",
        )
        n_runs = pk[["run"]].drop_duplicates().shape[0]
        modes = metrics.count_modes(pk["delay_ms"], width)
        ax.text(
            0.98,
            0.97,
            f"{len(pk)} packets, {n_runs} runs\nmedian {pk['delay_ms'].median():.1f} ms,"
            f" {modes} mode(s)",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=9,
        )
        ax.set_xlabel(f"one-way delay [ms] (bins of {width:g} ms)")
        ax.legend(loc="center right", fontsize=8, title="receiver", title_fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("relative frequency")
    fig.suptitle(spec.caption)
    return fig


def _band(pk: pd.DataFrame, column: str) -> pd.DataFrame:
    """10-90 % band of `column` per sequence number over all runs (x: median send time)."""
    grouped = pk.groupby("seq")
    return pd.DataFrame(
        {
            "t": grouped["t_ho_ms"].median(),
            "lo": grouped[column].quantile(0.10),
            "hi": grouped[column].quantile(0.90),
        }
    ).sort_values("t")


def handover_figure(runs: Runs, spec: FigureSpec) -> plt.Figure:
    """Delay (top) and jitter (bottom: RFC 3550 and per-packet |IPDV|) around a handover.

    Lines: the representative run (median handover loss), broken where packets are
    missing; lost packets are marked with red crosses at the bottom of the delay axes.
    Shaded: 10-90 % band per sequence number over all runs (same receiver). Solid vertical
    line: handover start (L2 detach); dotted: handover_done of the representative run.
    """
    fig, axes = _panels(2, "row")
    for col, peering in enumerate(PEERINGS):
        sel = runs.select(spec.scenario, spec.kind, peering)
        focus = first_arrivals(sel.packets)
        focus = focus[focus["focus"].astype(bool)]
        rep = representative(receiver_metrics(sel))
        run_no, receiver = int(rep["run"]), rep["receiver"]
        # The band is over the same receiver in every run: receivers on different paths
        # (local/remote) would otherwise blur it.
        focus = focus[focus["receiver"] == receiver]
        rep_pk = focus[focus["run"] == run_no]
        run_row = sel.runs[sel.runs["run"] == run_no].iloc[0]
        sent = sel.sent[sel.sent["run"] == run_no].sort_values("seq")
        sent_t = (sent["send_ns"].to_numpy() - int(run_row["handover_ns"])) / metrics.NS_PER_MS
        # Reindex on every sent seq so that missing packets break the line.
        series = rep_pk.set_index("seq").reindex(sent["seq"])
        lost_t = sent_t[series["delay_ms"].isna().to_numpy()]
        events = sel.events[(sel.events["run"] == run_no) & (sel.events["t_ho_ms"] >= 0)]
        done = events.loc[events["event"] == "handover_done", "t_ho_ms"]
        for row, (column, label) in enumerate(
            (("delay_ms", "one-way delay [ms]"), ("jitter_ms", "jitter [ms]"))
        ):
            ax = axes[row, col]
            band = _band(focus, column)
            ax.fill_between(
                band["t"],
                band["lo"],
                band["hi"],
                step="mid",
                color="tab:blue",
                alpha=0.2,
                linewidth=0,
                label=f"10-90 % over {focus['run'].nunique()} runs",
            )
            ax.plot(
                sent_t,
                series[column].to_numpy(dtype=float),
                color="tab:blue",
                linewidth=1,
                marker=".",
                markersize=2,
                label=f"run {run_no:02d}, {receiver} (median-loss run)"
                + (", RFC 3550 jitter" if row else ""),
            )
            if row == 1:
                # The paper does not say which jitter it plotted: the per-packet |IPDV| too.
                ax.plot(
                    sent_t,
                    series["ipdv_ms"].abs().to_numpy(dtype=float),
                    ".",
                    color="tab:orange",
                    markersize=3,
                    label=f"run {run_no:02d}, |IPDV| (RFC 3393)",
                )
            ax.axvline(0, color="black", linewidth=1, label="handover start (L2 detach)")
            if len(done):
                ax.axvline(done.min(), color="black", linestyle=":", label="handover done")
            if row == 0:
                ax.plot(
                    lost_t,
                    np.full(len(lost_t), 0.02),
                    "x",
                    color="tab:red",
                    transform=ax.get_xaxis_transform(),
                    label=f"lost packet ({len(lost_t)} in this run)",
                )
            else:
                ax.set_xlabel(X_HANDOVER)
            if col == 0:
                ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(spec.caption)
    return fig


def _load_goodput(path: Path) -> list[dict[str, object]]:
    entries = json.loads(path.read_text())
    if not isinstance(entries, list) or not entries:
        raise ValueError("expected a non-empty list")
    keys = ("payload_bytes", "receivers", "mode", "goodput_MBps")
    for entry in entries:
        if not isinstance(entry, dict) or any(k not in entry for k in keys):
            raise ValueError(f"every entry needs {', '.join(keys)}")
        if entry["mode"] not in GOODPUT_MODES:
            raise ValueError(f"unknown mode {entry['mode']!r}")
    return entries


def goodput_figure(entries: list[dict[str, object]]) -> plt.Figure:
    """Forwarding goodput vs payload size, one line per mode and receiver count (Fig. 2)."""
    df = pd.DataFrame(entries)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    styles = dict(zip(GOODPUT_MODES, ("o-", "s--", "^:"), strict=True))
    for (mode, receivers), grp in df.groupby(["mode", "receivers"], sort=True):
        grp = grp.sort_values("payload_bytes")
        ax.plot(
            grp["payload_bytes"],
            grp["goodput_MBps"],
            styles[str(mode)],
            label=f"{mode}, {receivers} receiver(s)",
        )
    ax.set_xlabel("UDP payload [bytes]")
    ax.set_ylabel("goodput [MByte/s]")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Comparison of unicast and multicast goodput")
    return fig


def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``name``.png and .pdf into ``out_dir`` and close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    # No timestamps in the files, so that unchanged results give unchanged figures.
    fig.savefig(paths[0], dpi=150, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"CreationDate": None, "Creator": None})
    plt.close(fig)
    return paths


def make_figures(
    runs: Runs,
    out_dir: Path,
    goodput_json: Path | None = None,
    log: Callable[[str], None] = print,
) -> FigureOutcome:
    """Draw every figure whose inputs exist into `out_dir`; report the others as skipped.

    A skipped figure's files from an earlier call are removed, so that `out_dir` never
    mixes figures of these runs with figures of runs that are gone.
    """
    outcome = FigureOutcome()

    def skip(name: str, reason: str) -> None:
        outcome.skipped.append((name, reason))
        stale = [out_dir / f"{name}.{ext}" for ext in ("png", "pdf")]
        removed = [path for path in stale if path.is_file()]
        for path in removed:
            path.unlink()
        log(f"{name}: skipped: {reason}" + (" (old figure removed)" if removed else ""))

    if goodput_json is None or not goodput_json.is_file():
        skip(GOODPUT_NAME, f"{goodput_json or 'bench/goodput.json'} not found")
    else:
        try:
            entries = _load_goodput(goodput_json)
        except (ValueError, json.JSONDecodeError) as exc:
            skip(GOODPUT_NAME, f"{goodput_json}: {exc}")
        else:
            outcome.written += save_figure(goodput_figure(entries), out_dir, GOODPUT_NAME)
            log(f"{GOODPUT_NAME}: written")
    for spec in FIGURES:
        reason = missing_inputs(runs, spec)
        if reason:
            skip(spec.name, reason)
            continue
        draw = delay_space_figure if spec.kind == "delay-space" else handover_figure
        outcome.written += save_figure(draw(runs, spec), out_dir, spec.name)
        log(f"{spec.name}: written")
    return outcome
