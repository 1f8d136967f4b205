"""The link benchmark's arithmetic (pure): delay statistics, reordering, the configured
distribution, the verdict on one profile and the accounting of its missing packets.

`benchmarks.links` measures; this module only computes, so the unit tests can check it.
"""

from __future__ import annotations

import math
import random
from typing import Any

from topologies.links import LinkProfile, draw_delay_ns, release_time_ns

MEAN_TARGET_MS = 0.2
SD_TARGET_PCT = 5.0


def describe_delays(delays_ms: list[float]) -> dict[str, float]:
    ordered = sorted(delays_ms)
    n = len(ordered)
    mean = sum(ordered) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in ordered) / (n - 1)) if n > 1 else 0.0

    def pct(p: float) -> float:
        return ordered[min(n - 1, max(0, round(p / 100 * (n - 1))))]

    return {
        "n": n,
        "mean_ms": mean,
        "sd_ms": sd,
        "min_ms": ordered[0],
        "p1_ms": pct(1),
        "p99_ms": pct(99),
        "max_ms": ordered[-1],
    }


def reorder_rate(seqs_in_arrival_order: list[int]) -> float:
    """Share of packets that arrive after a packet sent later (RFC 4737's reordered)."""
    highest, late = -1, 0
    for seq in seqs_in_arrival_order:
        if seq < highest:
            late += 1
        highest = max(highest, seq)
    return late / len(seqs_in_arrival_order) if seqs_in_arrival_order else 0.0


def expected_reorder_rate(
    profile: LinkProfile,
    send_ns_per_flow: list[list[int]],
    reps: int = 10,
    seed: int = 1,
    noise_ms: list[float] | None = None,
) -> tuple[float, float]:
    """The reorder rate the configured ``profile`` gives packets sent at these times (per
    flow, in sequence order), and its standard error: the model, drawn ``reps`` times.

    Judging against the times actually sent takes the sender's own pacing out of the
    comparison: a sender that falls behind sends closer together, and packets closer together
    reorder more often under the same jitter. With ``noise_ms`` (what a control link measured
    beyond its fixed delay) each packet also gets one of those, drawn independently: the
    reordering the machine's own timing noise would add if it struck packets independently.
    """
    rng = random.Random(seed)
    rates = []
    for _ in range(reps):
        late = total = 0
        for sends in send_ns_per_flow:
            arrivals, previous = [], 0
            for seq, sent in enumerate(sends):
                delay = draw_delay_ns(profile, rng)
                if noise_ms:
                    delay += round(rng.choice(noise_ms) * 1e6)
                due = release_time_ns(sent, delay, previous, profile.reorder)
                previous = due
                arrivals.append((due, seq))
            arrivals.sort()
            late += round(reorder_rate([seq for _, seq in arrivals]) * len(arrivals))
            total += len(arrivals)
        rates.append(late / total if total else 0.0)
    mean = sum(rates) / len(rates)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)) if reps > 1 else 0.0
    return mean, sd


def configured_cdf(profile: LinkProfile, x_ms: float) -> float:
    """CDF of one packet's delay under the resolved ``profile`` (clamp at zero included)."""
    d, j = profile.delay_ms, profile.jitter_ms
    if x_ms < 0:
        return 0.0
    if j == 0:
        return 1.0 if x_ms >= d else 0.0
    if profile.distribution == "uniform":
        return min(1.0, max(0.0, (x_ms - (d - j)) / (2 * j)))
    return 0.5 * (1 + math.erf((x_ms - d) / (j * math.sqrt(2))))


def judge(
    profile: LinkProfile, stats: dict[str, float], drawn_mean_ms: float | None
) -> dict[str, Any]:
    """Errors of measured delays against the configured distribution, and pass/fail."""
    expected_sd = profile.expected_sd_ms()
    se = expected_sd / math.sqrt(stats["n"])
    mean_error = stats["mean_ms"] - profile.delay_ms
    sd_error_pct = 100 * (stats["sd_ms"] - expected_sd) / expected_sd if expected_sd else None
    if drawn_mean_ms is not None:
        bias = stats["mean_ms"] - drawn_mean_ms
        mean_ok = abs(bias) <= MEAN_TARGET_MS
    else:
        bias = None
        mean_ok = abs(mean_error) <= MEAN_TARGET_MS + 3 * se
    sd_ok = sd_error_pct is None or abs(sd_error_pct) <= SD_TARGET_PCT
    return {
        "expected_sd_ms": expected_sd,
        "mean_error_ms": mean_error,
        "sampling_se_ms": se,
        "drawn_mean_ms": drawn_mean_ms,
        "bias_vs_drawn_ms": bias,
        "sd_error_pct": sd_error_pct,
        "mean_ok": mean_ok,
        "sd_ok": sd_ok,
        "pass": mean_ok and sd_ok,
    }


def account(
    profile: LinkProfile,
    scheduled: int,
    received: int,
    sender: dict[str, Any] | None,
    link_stats: dict[str, Any] | None,
    socket_drops: int,
    udp_errors: dict[str, int],
) -> dict[str, Any]:
    """Where the packets that did not arrive went, and whether all of that is explained by
    the profile's own loss (the only loss a link may show)."""
    sent = sender["sent"] if sender else None
    send_errors = sum(sender["send_errors"].values()) if sender else None
    link_lost = int((link_stats or {}).get("lost", 0))
    link_drops = int((link_stats or {}).get("drops", 0))
    missing = scheduled - received
    located = (send_errors or 0) + link_lost + link_drops + socket_drops
    not_sent = scheduled - sent - send_errors if sender else None
    explained = link_lost if profile.loss > 0 else 0
    return {
        "scheduled": scheduled,
        "sent": sent,
        "send_errors": send_errors,
        "not_sent": not_sent,
        "link_lost": link_lost,
        "link_drops": link_drops,
        "socket_drops": socket_drops,
        "udp_rcvbuf_errors": udp_errors.get("Udp6RcvbufErrors", 0),
        "udp_in_errors": udp_errors.get("Udp6InErrors", 0),
        "missing": missing,
        "unlocated": missing - located - (not_sent or 0),
        "unexplained_loss": missing - explained,
        "loss_ok": sender is not None and missing == explained,
    }


def configured_curve(
    profile: LinkProfile, delays_ms: list[float], points: int = 400
) -> tuple[list[float], list[float]]:
    """The configured CDF over the x range of a plot of ``delays_ms``.

    The range is the configured support plus the bulk of the measurements: a few late
    packets must not squeeze the distribution into a corner.
    """
    delays = sorted(delays_ms)
    n = len(delays)
    half = profile.jitter_ms * (1.1 if profile.distribution == "uniform" else 3.0)
    lo = min(profile.delay_ms - half, delays[n // 1000])
    hi = max(profile.delay_ms + half, delays[-1 - n // 1000])
    lo, hi = max(0.0, lo - 0.02 * (hi - lo)), hi + 0.02 * (hi - lo)
    xs = [lo + (hi - lo) * i / points for i in range(points + 1)]
    return xs, [configured_cdf(profile, x) for x in xs]


def cdf_panels(
    results: list[dict[str, Any]], profiles: dict[str, LinkProfile]
) -> list[dict[str, Any]]:
    """What ``analysis.benchfigures.links_cdf_figure`` draws: per link the measured delays
    and the configured CDF of its resolved profile."""
    panels = []
    for res in results:
        profile = profiles[res["profile"]]
        panel = {
            "profile": res["profile"],
            "delay_ms": profile.delay_ms,
            "jitter_ms": profile.jitter_ms,
            "delays_ms": res["delays_ms"],
        }
        if res["delays_ms"]:
            panel["model_x"], panel["model_cdf"] = configured_curve(profile, res["delays_ms"])
        panels.append(panel)
    return panels


def explain_by_noise(results: list[dict[str, Any]]) -> None:
    """Mark each judged result that misses its delay targets, but would meet them were its
    control link's noise (the control's mean error and sd, measured at the same time, added
    independently of the drawn delays to the configured distribution) included, with
    ``noise_limited``. It still fails: this says why, it does not excuse it."""
    by_name = {r["profile"]: r for r in results}
    for r in results:
        ref = by_name.get(r.get("control") or "")
        if ref is None or not ref.get("n") or not r.get("n") or (r["mean_ok"] and r["sd_ok"]):
            continue
        bias, noise_sd = ref["mean_ms"] - ref["delay_ms"], ref["sd_ms"]
        expected_mean = r["delay_ms"] + bias
        expected_sd = math.hypot(r["expected_sd_ms"], noise_sd)
        # Both means carry sampling error, the control's with its fewer samples.
        se = math.hypot(expected_sd / math.sqrt(r["n"]), noise_sd / math.sqrt(ref["n"]))
        mean_ok = abs(r["mean_ms"] - expected_mean) <= MEAN_TARGET_MS + 3 * se
        sd_ok = abs(r["sd_ms"] - expected_sd) <= SD_TARGET_PCT / 100 * expected_sd
        if mean_ok and sd_ok:
            r["noise_limited"] = {
                "control": ref["profile"],
                "bias_ms": bias,
                "sd_ms": noise_sd,
                "expected_mean_ms": expected_mean,
                "expected_sd_ms": expected_sd,
            }
