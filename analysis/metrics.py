"""Metrics on one receiver's packet trace: delay, jitter, IPDV, loss, handover gap, modality.

Every function takes plain arrays (nanosecond timestamps as integers, sequence numbers) so
that it can be checked against hand-computed values; the DataFrame plumbing lives in
`load.py` and `report.py`. Times in results are nanoseconds, metrics are milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import signal

NS_PER_MS = 1_000_000.0

ArrayLike = Sequence[float] | np.ndarray


def _as_int64(values: ArrayLike) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def one_way_delay_ms(send_ns: ArrayLike, recv_ns: ArrayLike) -> np.ndarray:
    """One-way delay per packet in ms: (recv_ns - send_ns) / 1e6.

    Both stamps come from the one CLOCK_REALTIME shared by all namespaces, so no clock
    offset correction is needed. The subtraction is done in integer ns first to keep
    sub-microsecond precision for epoch-sized timestamps.
    """
    return (_as_int64(recv_ns) - _as_int64(send_ns)) / NS_PER_MS


@dataclass(frozen=True)
class Jitter:
    """RFC 3550 interarrival jitter: per-packet series (input order) and final value, ms."""

    series_ms: np.ndarray
    final_ms: float


def rfc3550_jitter(send_ns: ArrayLike, recv_ns: ArrayLike) -> Jitter:
    """RFC 3550 (A.8) interarrival jitter over arrival order, in ms.

    Packets are processed in order of `recv_ns` (stable for ties). For consecutive arrivals
    i-1, i the transit-time difference is D = (R_i - S_i) - (R_{i-1} - S_{i-1}) and the
    estimate is updated J += (|D| - J) / 16, starting from J = 0 at the first arrival.
    `series_ms[k]` is J right after packet k (k in the caller's order) was processed, so the
    series can be attached to the caller's rows directly. An empty input gives final NaN.
    """
    send = _as_int64(send_ns)
    recv = _as_int64(recv_ns)
    n = len(send)
    series = np.zeros(n, dtype=float)
    if n == 0:
        return Jitter(series, math.nan)
    order = np.argsort(recv, kind="stable")
    transit = (recv[order] - send[order]) / NS_PER_MS
    jitter = 0.0
    in_arrival_order = np.zeros(n, dtype=float)
    for i in range(1, n):
        d = transit[i] - transit[i - 1]
        jitter += (abs(d) - jitter) / 16.0
        in_arrival_order[i] = jitter
    series[order] = in_arrival_order
    return Jitter(series, float(in_arrival_order[-1]))


def ipdv_ms(seq: ArrayLike, send_ns: ArrayLike, recv_ns: ArrayLike) -> dict[int, float]:
    """RFC 3393 IP packet delay variation for consecutive sequence numbers, in ms.

    For every received seq s whose predecessor s-1 was also received, IPDV(s) =
    delay(s) - delay(s-1). Pairs with a lost packet are undefined (RFC 3393 selection of
    consecutive packets) and left out. Duplicates: the first arrival of a seq counts.
    Returns {s: ipdv} ordered by s.
    """
    seqs = _as_int64(seq)
    delay = one_way_delay_ms(send_ns, recv_ns)
    order = np.argsort(_as_int64(recv_ns), kind="stable")
    first: dict[int, float] = {}
    for i in order:
        first.setdefault(int(seqs[i]), float(delay[i]))
    return {s: first[s] - first[s - 1] for s in sorted(first) if s - 1 in first}


def lost_seqs(sent_seq: ArrayLike, received_seq: ArrayLike) -> np.ndarray:
    """Sequence numbers that were sent but never received (sorted, duplicates ignored)."""
    return np.setdiff1d(_as_int64(sent_seq), _as_int64(received_seq))


def loss_in_window(
    sent_seq: ArrayLike,
    sent_ns: ArrayLike,
    received_seq: ArrayLike,
    start_ns: int,
    end_ns: int,
) -> tuple[int, int]:
    """Loss among packets *sent* in [start_ns, end_ns): returns (lost, sent)."""
    seqs = _as_int64(sent_seq)
    times = _as_int64(sent_ns)
    in_window = seqs[(times >= start_ns) & (times < end_ns)]
    return len(lost_seqs(in_window, received_seq)), len(np.unique(in_window))


def duplicate_count(received_seq: ArrayLike) -> int:
    """Number of received packets that repeat an already received sequence number."""
    seqs = _as_int64(received_seq)
    return int(len(seqs) - len(np.unique(seqs)))


@dataclass(frozen=True)
class HandoverGap:
    """Interruption of one receiver's stream around a handover.

    Send-time view: `last_before_seq` is the highest received seq sent before the handover,
    `first_after_seq` the lowest received seq sent at or after it; `missing_packets` are
    the seqs between them that never arrived, `lost_ms` = missing_packets * interval_ms and
    `gap_send_ms` the send-time distance of the two packets.
    Arrival-time view: `gap_arrival_ms` is the longest silence at the receiver (time
    between consecutive first arrivals) that ends at or after the handover, i.e. what an
    application notices; `silence_start_ns`/`silence_end_ns` are its bounds.
    Fields are None/NaN when a side has no packet.
    """

    last_before_seq: int | None
    first_after_seq: int | None
    missing_packets: int | None
    lost_ms: float
    gap_send_ms: float
    gap_arrival_ms: float
    silence_start_ns: int | None
    silence_end_ns: int | None
    interval_ms: float


def handover_gap(
    seq: ArrayLike,
    send_ns: ArrayLike,
    recv_ns: ArrayLike,
    handover_ns: int,
    *,
    interval_ms: float | None = None,
    sent_seq: ArrayLike | None = None,
) -> HandoverGap:
    """Handover gap of one receiver, robust to duplicates and reordering.

    Duplicates are reduced to their first arrival; the send-time view sorts by seq, the
    arrival view by receive time, so reordered packets do not open or close a gap.
    `interval_ms` is the sender's packet interval (default: the median send-time step of
    the received packets). With `sent_seq` the missing packets are counted against what was
    actually sent (seqs need not be contiguous), and a side without any received packet is
    open-ended: no packet after the handover means every sent packet after the last one
    received is missing (the stream never recovered). Without `sent_seq` the count is
    first_after - last_before - 1 and None when a side is empty.
    """
    seqs = _as_int64(seq)
    send = _as_int64(send_ns)
    recv = _as_int64(recv_ns)
    # First arrival per seq: sort by arrival, keep the first occurrence of every seq.
    order = np.argsort(recv, kind="stable")
    _, first_idx = np.unique(seqs[order], return_index=True)
    keep = order[first_idx]  # indices of first arrivals, ordered by seq
    u_seq, u_send, u_recv = seqs[keep], send[keep], recv[keep]

    if interval_ms is None:
        steps = np.diff(u_send) / np.maximum(np.diff(u_seq), 1)
        interval_ms = float(np.median(steps) / NS_PER_MS) if len(steps) else math.nan

    before = u_send < handover_ns
    last_before = int(u_seq[before].max()) if before.any() else None
    first_after = int(u_seq[~before].min()) if (~before).any() else None
    missing: int | None = None
    lost_ms = gap_send_ms = math.nan
    both = last_before is not None and first_after is not None
    if sent_seq is not None and (last_before is not None or first_after is not None):
        sent = np.unique(_as_int64(sent_seq))
        lower = last_before if last_before is not None else np.iinfo(np.int64).min
        upper = first_after if first_after is not None else np.iinfo(np.int64).max
        missing = len(np.setdiff1d(sent[(sent > lower) & (sent < upper)], u_seq))
    elif both:
        missing = first_after - last_before - 1
    if missing is not None:
        lost_ms = missing * interval_ms
    if both:
        gap_send_ms = float(
            (u_send[u_seq == first_after][0] - u_send[u_seq == last_before][0]) / NS_PER_MS
        )

    arrivals = np.sort(u_recv)
    silence_start = silence_end = None
    gap_arrival_ms = math.nan
    if len(arrivals) >= 2:
        steps = np.diff(arrivals)
        # Only silences that are still going on at the handover or start after it count.
        candidates = np.flatnonzero(arrivals[1:] >= handover_ns)
        if len(candidates):
            k = candidates[np.argmax(steps[candidates])]
            silence_start, silence_end = int(arrivals[k]), int(arrivals[k + 1])
            gap_arrival_ms = (silence_end - silence_start) / NS_PER_MS

    return HandoverGap(
        last_before_seq=last_before,
        first_after_seq=first_after,
        missing_packets=missing,
        lost_ms=float(lost_ms),
        gap_send_ms=float(gap_send_ms),
        gap_arrival_ms=float(gap_arrival_ms),
        silence_start_ns=silence_start,
        silence_end_ns=silence_end,
        interval_ms=float(interval_ms),
    )


@dataclass(frozen=True)
class WindowStats:
    """Summary of a per-packet quantity within a time window (NaN when empty)."""

    n: int
    mean: float
    median: float
    p95: float
    max: float


def window_stats(t_ms: ArrayLike, values: ArrayLike, window: tuple[float, float]) -> WindowStats:
    """Stats of `values` whose time `t_ms` lies in [window[0], window[1]); NaN values ignored."""
    t = np.asarray(t_ms, dtype=float)
    v = np.asarray(values, dtype=float)
    sel = v[(t >= window[0]) & (t < window[1]) & ~np.isnan(v)]
    if len(sel) == 0:
        return WindowStats(0, math.nan, math.nan, math.nan, math.nan)
    return WindowStats(
        n=len(sel),
        mean=float(np.mean(sel)),
        median=float(np.median(sel)),
        p95=float(np.percentile(sel, 95)),
        max=float(np.max(sel)),
    )


DEFAULT_BEFORE_MS = (-400.0, 0.0)
DEFAULT_AFTER_MS = (0.0, 1000.0)


def before_after(
    t_rel_ms: ArrayLike,
    values: ArrayLike,
    before: tuple[float, float] = DEFAULT_BEFORE_MS,
    after: tuple[float, float] = DEFAULT_AFTER_MS,
) -> tuple[WindowStats, WindowStats]:
    """Delay (or jitter) before and after a handover.

    `t_rel_ms` is each packet's send time relative to the handover start. The default
    windows skip the first 100 ms of a stream that starts 500 ms before the handover (the
    initial join) and look at one second after it.
    """
    return window_stats(t_rel_ms, values, before), window_stats(t_rel_ms, values, after)


def peak_prominences(heights: ArrayLike) -> list[tuple[int, float]]:
    """Local maxima of a 1-D profile and their topographic prominence (scipy.signal).

    `scipy.signal.find_peaks` finds the maxima (a plateau is one peak, at its middle index)
    and `scipy.signal.peak_prominences` measures each: its height minus the higher of the
    lowest points on either side before a higher value or the profile's end.
    """
    h = np.asarray(heights, dtype=float)
    peaks, _ = signal.find_peaks(h)
    prominences = signal.peak_prominences(h, peaks)[0] if len(peaks) else []
    return [(int(i), float(p)) for i, p in zip(peaks, prominences, strict=True)]


def relative_histogram(values: ArrayLike, bin_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Relative-frequency histogram on a grid aligned to multiples of `bin_width`.

    Returns (edges, frequencies) with frequencies summing to 1 (empty input: no bins).
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return np.array([0.0, bin_width]), np.zeros(1)
    lo = math.floor(v.min() / bin_width) * bin_width
    n_bins = max(1, math.floor((v.max() - lo) / bin_width) + 1)
    edges = lo + bin_width * np.arange(n_bins + 1)
    counts, _ = np.histogram(v, bins=edges)
    return edges, counts / len(v)


def count_modes(
    values: ArrayLike,
    bin_width: float,
    *,
    smooth_bins: int = 3,
    min_prominence: float = 0.25,
) -> int:
    """Number of modes of a delay distribution.

    Method: relative-frequency histogram with `bin_width`, zero-padded on both sides,
    smoothed by a centred moving average over `smooth_bins` bins; a mode is a peak whose
    prominence is at least `min_prominence` times the highest smoothed bin. Smoothing keeps
    bin-to-bin noise from counting as modes; the prominence threshold requires a real dip
    between two modes.
    """
    _, freq = relative_histogram(values, bin_width)
    if freq.sum() == 0:
        return 0
    pad = max(smooth_bins, 1)
    padded = np.concatenate([np.zeros(pad), freq, np.zeros(pad)])
    kernel = np.ones(max(smooth_bins, 1)) / max(smooth_bins, 1)
    smooth = np.convolve(padded, kernel, mode="same")
    peaks, _ = signal.find_peaks(smooth, prominence=min_prominence * smooth.max())
    return len(peaks)
