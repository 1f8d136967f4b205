"""analysis.metrics against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import metrics

MS = 1_000_000  # ns per ms


def ns(*values_ms: float) -> list[int]:
    return [int(v * MS) for v in values_ms]


def test_one_way_delay() -> None:
    assert metrics.one_way_delay_ms(ns(0, 10), ns(5, 17.5)).tolist() == [5.0, 7.5]
    # Epoch-sized stamps keep sub-microsecond precision (integer subtraction first).
    t = 1_700_000_000_000_000_000
    assert metrics.one_way_delay_ms([t], [t + 1_234_567])[0] == pytest.approx(1.234567, abs=1e-9)


def test_rfc3550_jitter_recurrence() -> None:
    # transit 10, 20, 15, 11 ms -> D = 10, -5, -4
    # J1 = 0 + (10 - 0)/16                 = 0.625
    # J2 = 0.625 + (5 - 0.625)/16          = 0.8984375
    # J3 = 0.8984375 + (4 - 0.8984375)/16  = 1.09228515625
    result = metrics.rfc3550_jitter(ns(0, 10, 20, 30), ns(10, 30, 35, 41))
    assert result.series_ms.tolist() == pytest.approx([0.0, 0.625, 0.8984375, 1.09228515625])
    assert result.final_ms == pytest.approx(1.09228515625)


def test_rfc3550_jitter_uses_arrival_order() -> None:
    # A: S0 R10 (T10), B: S10 R40 (T30), C: S20 R25 (T5); arrival order A, C, B.
    # D(C) = 5 - 10 = -5 -> J = 5/16 = 0.3125; D(B) = 30 - 5 = 25 -> J = 0.3125 + 24.6875/16.
    result = metrics.rfc3550_jitter(ns(0, 10, 20), ns(10, 40, 25))
    assert result.series_ms.tolist() == pytest.approx([0.0, 1.85546875, 0.3125])
    assert result.final_ms == pytest.approx(1.85546875)
    assert math.isnan(metrics.rfc3550_jitter([], []).final_ms)


def test_ipdv_consecutive_by_sequence() -> None:
    # delays 10, 12, 9, (3 lost), 20, 18 -> IPDV(1) = 2, IPDV(2) = -3, IPDV(5) = -2.
    seq = [0, 1, 2, 4, 5, 1]
    send = ns(0, 10, 20, 40, 50, 10)
    recv = ns(10, 22, 29, 60, 68, 99)  # the last row: a later duplicate of seq 1, ignored
    assert metrics.ipdv_ms(seq, send, recv) == pytest.approx({1: 2.0, 2: -3.0, 5: -2.0})


def test_loss() -> None:
    sent = list(range(10))
    received = [0, 1, 2, 2, 5, 9]
    assert metrics.lost_seqs(sent, received).tolist() == [3, 4, 6, 7, 8]
    # sent at seq * 10 ms; window [20, 60) ms holds seqs 2..5, of which 3 and 4 are lost.
    assert metrics.loss_in_window(sent, ns(*range(0, 100, 10)), received, 20 * MS, 60 * MS) == (
        2,
        4,
    )


def test_duplicate_count() -> None:
    assert metrics.duplicate_count([1, 2, 2, 3, 3, 3]) == 3
    assert metrics.duplicate_count([]) == 0


def _gap_trace() -> tuple[list[int], list[int], list[int]]:
    # Sent every 10 ms, handover at 45 ms. Seqs 3, 4, 5 lost; 7 overtakes 6; a duplicate of
    # seq 1 arrives at 60 ms, inside the silence, and must not split it.
    rows = [  # (seq, send ms, recv ms)
        (0, 0, 5),
        (1, 10, 15),
        (2, 20, 25),
        (1, 10, 60),
        (7, 70, 85),
        (6, 60, 90),
        (8, 80, 95),
        (9, 90, 105),
    ]
    return [r[0] for r in rows], ns(*(r[1] for r in rows)), ns(*(r[2] for r in rows))


def test_handover_gap_with_duplicates_and_reordering() -> None:
    seq, send, recv = _gap_trace()
    gap = metrics.handover_gap(seq, send, recv, 45 * MS)
    # Send view: last received before = 2 (sent 20), first after = 6 (sent 60).
    assert (gap.last_before_seq, gap.first_after_seq) == (2, 6)
    assert gap.missing_packets == 3  # 3, 4, 5
    assert gap.interval_ms == pytest.approx(10.0)
    assert gap.lost_ms == pytest.approx(30.0)
    assert gap.gap_send_ms == pytest.approx(40.0)
    # Arrival view over first arrivals 5, 15, 25, 85, 90, 95, 105: silence 25 -> 85.
    assert gap.gap_arrival_ms == pytest.approx(60.0)
    assert (gap.silence_start_ns, gap.silence_end_ns) == (25 * MS, 85 * MS)
    # Counting against what was sent gives the same here; the order of rows does not matter.
    again = metrics.handover_gap(
        seq[::-1], send[::-1], recv[::-1], 45 * MS, sent_seq=range(10), interval_ms=10.0
    )
    assert again == gap


def test_handover_gap_without_packets_after() -> None:
    seq, send, recv = _gap_trace()
    gap = metrics.handover_gap(seq, send, recv, 500 * MS)
    assert gap.last_before_seq == 9 and gap.first_after_seq is None
    assert gap.missing_packets is None and math.isnan(gap.lost_ms)
    assert math.isnan(gap.gap_arrival_ms)
    # Against what was sent (seqs 0..59), the loss runs to the end of the stream: 10..59.
    open_ended = metrics.handover_gap(seq, send, recv, 500 * MS, sent_seq=range(60))
    assert open_ended.missing_packets == 50 and open_ended.lost_ms == pytest.approx(500.0)
    assert math.isnan(open_ended.gap_send_ms)


def test_before_after_windows() -> None:
    t = [-300, -200, -100, 0, 100, 200, 1500]
    v = [10, 12, 14, 60, 70, 80, float("nan")]
    before, after = metrics.before_after(t, v)
    assert (before.n, before.mean, before.median, before.max) == (3, 12.0, 12.0, 14.0)
    assert (after.n, after.mean, after.median, after.max) == (3, 70.0, 70.0, 80.0)
    # numpy's linear percentile: position 0.95 * 2 = 1.9 -> 70 + 0.9 * 10.
    assert after.p95 == pytest.approx(79.0)
    empty = metrics.window_stats(t, v, (5000, 6000))
    assert empty.n == 0 and math.isnan(empty.mean)


def test_relative_histogram() -> None:
    edges, freq = metrics.relative_histogram([0.2, 0.7, 1.1, 2.9], 1.0)
    assert edges.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert freq.tolist() == [0.5, 0.25, 0.25]


def test_peak_prominences() -> None:
    # Peak 5: no higher value on either side, lowest points 0 and 0 -> 5.
    # Peak 4: left range stops at the 5, lowest 1; right lowest 0 -> 4 - max(1, 0) = 3.
    assert metrics.peak_prominences([0, 5, 1, 4, 0]) == [(1, 5.0), (3, 3.0)]
    assert metrics.peak_prominences([0, 2, 2, 0]) == [(1, 2.0)]  # a plateau is one peak
    assert metrics.peak_prominences([0, 3, 3, 3, 0]) == [(2, 3.0)]  # ... at its middle
    assert metrics.peak_prominences([1, 1, 1]) == []
    assert metrics.peak_prominences([]) == []


def test_count_modes() -> None:
    bimodal = [10.5] * 10 + [20.5] * 5  # frequencies 2/3 and 1/3, zeros between
    assert metrics.count_modes(bimodal, 1.0, smooth_bins=1) == 2
    # 1/3 < 0.6 * 2/3: the smaller mode is not prominent enough.
    assert metrics.count_modes(bimodal, 1.0, smooth_bins=1, min_prominence=0.6) == 1
    assert metrics.count_modes([10.5] * 3 + [11.5] * 5 + [12.5] * 3, 1.0) == 1
    # [1/2, 0, 1/2] is two modes raw, one after a 3-bin moving average
    # (smoothed ... 1/6, 1/6, 1/3, 1/6, 1/6 ...).
    close = [10.5] * 4 + [12.5] * 4
    assert metrics.count_modes(close, 1.0, smooth_bins=1) == 2
    assert metrics.count_modes(close, 1.0, smooth_bins=3) == 1
    assert metrics.count_modes(np.array([]), 1.0) == 0
