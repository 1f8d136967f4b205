"""The benchmarks' figures, drawn from plain data (lists of dicts and numbers).

The benchmarks measure and compute; this module only draws. Where a figure shows a model
next to a measurement (the configured delay CDF of a link profile) the benchmark passes the
model's values as data, so that nothing here depends on the topologies or the benchmarks.
Every function writes PNG and PDF through ``analysis.figures.save_figure`` and returns the
paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import NullFormatter

from analysis.figures import goodput_figure, plt, save_figure

Row = dict[str, Any]


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted ``values`` and their empirical CDF (steps of 1/n)."""
    xs = sorted(values)
    return xs, [(k + 1) / len(xs) for k in range(len(xs))]


def links_cdf_figure(panels: Sequence[Row], out_dir: Path, name: str = "links-cdf") -> list[Path]:
    """One panel per link profile: the measured one-way delay CDF and the configured one.

    A panel holds ``profile``, ``delay_ms`` and ``jitter_ms`` (its title), ``delays_ms``
    (measured) and the configured CDF as ``model_x``/``model_cdf``, whose x range is the
    panel's axis range.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel["delays_ms"]:
            ax.step(*_cdf(panel["delays_ms"]), where="post", label="measured")
            ax.plot(panel["model_x"], panel["model_cdf"], "--", label="configured")
            ax.set_xlim(panel["model_x"][0], panel["model_x"][-1])
        ax.set_title(f"{panel['profile']}: {panel['delay_ms']:.1f} ms ± {panel['jitter_ms']:g} ms")
        ax.set_xlabel("one-way delay [ms]")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("CDF")
    axes[0][0].legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_dir, name)


def latency_cdf_figure(trials: Sequence[Row], out_dir: Path) -> list[Path]:
    """CDFs of join, leave and attach latency per arm, from the latency trial rows."""
    names = list(dict.fromkeys(r["arm"] for r in trials))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    for ax, (key, title) in zip(
        axes,
        (("join_ms", "join"), ("leave_ms", "leave"), ("attach_ms", "attach after handover")),
        strict=True,
    ):
        for arm in names:
            xs = [r[key] for r in trials if r["arm"] == arm and key in r]
            if xs:
                ax.step(*_cdf(xs), where="post", label=f"{arm} (n={len(xs)})")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{title} latency [ms]")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("CDF")
    return save_figure(fig, out_dir, "latency-cdf")


def goodput_figures(rows: Sequence[Row], target_ratio: float, out_dir: Path) -> list[Path]:
    """fig02 (goodput per mode) and the multicast/unicast ratio against ``target_ratio``.

    ``rows``: the goodput summary rows (``payload_bytes``, ``receivers``, ``mode``,
    ``goodput_MBps`` and, for multicast, ``ratio_to_unicast``).
    """
    entries = [
        {k: r[k] for k in ("payload_bytes", "receivers", "mode", "goodput_MBps")} for r in rows
    ]
    paths = save_figure(goodput_figure(entries), out_dir, "fig02")
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for mode, style in (("multicast-ours", "s-"), ("multicast-igmpproxy", "^:")):
        for n in sorted({r["receivers"] for r in rows}):
            pts = sorted(
                (r["payload_bytes"], r["ratio_to_unicast"])
                for r in rows
                if r["mode"] == mode and r["receivers"] == n and r.get("ratio_to_unicast")
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{mode}, {n} receiver(s)")
    ax.axhline(target_ratio, color="k", lw=0.8, ls="--", label=f"target {target_ratio}")
    ax.set_xlabel("UDP payload [bytes]")
    ax.set_ylabel("goodput multicast / unicast")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return paths + save_figure(fig, out_dir, "goodput-ratio")


def scale_figure(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """CPU per record, time until processed and peak RSS against records (one downstream)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    series: dict[tuple, list[Row]] = {}
    for r in rows:
        if r["downstreams"] == 1 and "records_per_s" in r:
            series.setdefault((r["proxy"], r["family"], r["listeners"]), []).append(r)
    for (proxy, fam, n), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["groups"])
        label = f"{proxy} {fam}, {n} listener(s)"
        xs = [r["records"] for r in rs]
        axes[0].plot(xs, [r["us_per_record"] for r in rs], "o-", label=label)
        axes[1].plot(xs, [r["processed_s"] for r in rs], "o-", label=label)
        axes[2].plot(xs, [r["rss_peak_mb"] for r in rs], "o-", label=label)
    for ax, ylabel in zip(
        axes, ("CPU per record [us]", "time until processed [s]", "peak RSS [MB]"), strict=True
    ):
        ax.set_xscale("log")
        ax.set_xlabel("records = groups x listeners")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[1].set_yscale("log")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=6)
    return save_figure(fig, out_dir, "scale")
