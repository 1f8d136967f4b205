"""End-to-end test of analysis/: results tree -> load -> figures -> report -> CLI.

SYNTHETIC TEST FIXTURES: every CSV and meta.json here is written by this test into
pytest's tmp_path with made-up delays. They exercise the code paths only; they are not
measurements and nothing derived from them leaves tmp_path.
"""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from analysis import load_runs, summary_table
from analysis.__main__ import main
from analysis.figures import make_figures
from analysis.report import build_report, write_report
from analysis.tables import receiver_metrics
from tests.report_oracle import (
    check_statistics,
    claim_rows,
    direct_group,
    onoff_rows,
    table_rows,
)

T0 = 1_700_000_000_000_000_000
INTERVAL_NS = 10_000_000  # 100 packets/s
N_PACKETS = 120
HANDOVER_MS = 500
RUNS_PER_SIDE = 2
GROUPS = [
    ("single-lma-lte", "delay-space"),
    ("single-lma-lte", "receiver-handover"),
    ("single-lma-umts", "delay-space"),
    ("single-lma-umts", "receiver-handover"),
    ("multi-lma-lte", "delay-space"),
    ("multi-lma-lte", "sender-handover"),
    ("multi-lma-lte", "receiver-handover"),
]


def _base_delay_ms(scenario: str) -> float:
    return 400.0 if "umts" in scenario else 10.0


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_run(
    root: Path,
    scenario: str,
    kind: str,
    peering: str,
    run: int,
    *,
    completed: bool = True,
    meta: bool = True,
) -> Path:
    """One synthetic run directory following the results layout contract."""
    rng = np.random.default_rng(zlib.crc32(f"{scenario}{kind}{peering}{run}".encode()))
    run_dir = root / scenario / kind / f"peering-{peering}" / f"run-{run:02d}"
    run_dir.mkdir(parents=True)
    t0 = T0 + run * 10**12
    handover_ns = t0 + HANDOVER_MS * 1_000_000
    sent = [[seq, t0 + seq * INTERVAL_NS] for seq in range(N_PACKETS)]
    _write_csv(run_dir / "sender.csv", ["seq", "send_ns"], sent)

    base = _base_delay_ms(scenario)
    extra = 60.0 if peering == "off" else 12.0
    if kind == "delay-space":
        receivers = {"mn1": ("local", 0.0), "mn2": ("remote", extra)}
    else:
        receivers = {"mn1": ("local", 0.0), "mn3": ("remote", extra)}
    moving = "mn1" if kind == "receiver-handover" else "mn0"
    lost = set(range(49, 52 + run)) if kind == "receiver-handover" else set()
    for node, (_locality, offset) in receivers.items():
        rows = []
        for seq, send_ns in sent:
            if node == moving and seq in lost:
                continue
            delay = base + offset + rng.uniform(-3, 3)
            after = send_ns >= handover_ns
            if kind != "delay-space" and after and node in (moving, "mn1"):
                delay += extra
            recv_ns = send_ns + int(delay * 1_000_000)
            rows.append([seq, send_ns, recv_ns, 64 - (2 if offset or after else 0)])
        rows.append(list(rows[10]))  # a duplicate
        if node == "mn1":
            rows = [r[:3] for r in rows]  # this receiver records no hop_limit
        header = ["seq", "send_ns", "recv_ns"] + (["hop_limit"] if node != "mn1" else [])
        _write_csv(run_dir / f"receiver-{node}.csv", header, rows)

    events = [[t0, "stream_start", "mn0", ""]]
    if kind != "delay-space":
        for i, name in enumerate(
            ["handover_start", "l2_attach", "pbu_sent", "pba_received", "query_sent"]
            + ["report_received", "handover_done"]
        ):
            events.append([handover_ns + i * 5_000_000, name, moving, "mag1->mag2"])
    _write_csv(run_dir / "events.csv", ["t_ns", "event", "node", "detail"], events)
    if meta:
        info = {
            "scenario": scenario,
            "kind": kind,
            "peering": peering == "on",
            "run": run,
            "parameters": {"handover_at_ms": HANDOVER_MS, "rate": 100, "duration": 1.2},
            "seed": run,
            "link_backend": "synthetic-test",
            "receivers": [
                {"node": n, "mag": "mag1", "lma": "lma1", "locality": loc}
                for n, (loc, _) in receivers.items()
            ],
            "git_commit": "0" * 40,
            "completed": completed,
        }
        (run_dir / "meta.json").write_text(json.dumps(info))
    return run_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for scenario, kind in GROUPS:
        for peering in ("off", "on"):
            for run in range(RUNS_PER_SIDE):
                write_run(root, scenario, kind, peering, run)
    write_run(root, "single-lma-lte", "delay-space", "off", 7, completed=False)
    write_run(root, "single-lma-lte", "delay-space", "on", 8, meta=False)
    (root / "bench").mkdir()
    (root / "bench" / "goodput.json").write_text(
        json.dumps(
            [
                {"payload_bytes": p, "receivers": r, "mode": m, "goodput_MBps": g}
                for p, g in ((64, 20.0), (1400, 110.0))
                for r, m in ((1, "unicast"), (1, "multicast-ours"), (2, "multicast-igmpproxy"))
            ]
        )
    )
    return root


def test_load_excludes_incomplete_runs(results: Path) -> None:
    runs = load_runs(results)
    assert len(runs.runs) == len(GROUPS) * 2 * RUNS_PER_SIDE
    reasons = {Path(p).name: r for p, r in runs.excluded}
    assert set(reasons) == {"run-07", "run-08"}
    assert "completed" in reasons["run-07"]
    assert "meta.json missing" in reasons["run-08"]
    assert not runs.packets["run"].isin([7, 8]).any()
    pk = runs.packets
    assert pk["duplicate"].sum() == len(
        runs.packets.groupby(["scenario", "kind", "peering", "run", "receiver"])
    )
    assert set(runs.runs["peering"]) == {"on", "off"}
    first = pk[(pk["receiver"] == "mn2") & (pk["scenario"] == "single-lma-lte")].iloc[0]
    assert first["delay_ms"] == pytest.approx((first["recv_ns"] - first["send_ns"]) / 1e6)
    assert first["hop_limit"] == 62 and first["receiver_locality"] == "remote"
    assert pk.loc[pk["receiver"] == "mn1", "hop_limit"].isna().all()


def test_figures_report_and_numbers(results: Path) -> None:
    runs = load_runs(results)
    outcome = make_figures(
        runs, results / "figures", results / "bench" / "goodput.json", log=lambda _: None
    )
    assert outcome.skipped == []
    for name in ["fig02", "fig04", "fig05", "fig06", "fig07", "fig08", "fig09", "fig10"]:
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 1000

    report = write_report(runs, results).read_text()
    rows = table_rows(report)
    assert len(rows) == len(GROUPS) * 2
    for scenario, kind in GROUPS:
        for peering in ("off", "on"):
            expect = direct_group(results, scenario, kind, peering)
            cells = rows[(scenario, kind, peering)]
            assert cells[0] == str(RUNS_PER_SIDE)
            assert cells[2] == f"{expect['median']:.2f}"
            assert cells[3] == f"{expect['p95']:.2f}"
            assert cells[4] == f"{expect['max']:.2f}"
            assert cells[5] == f"{expect['jitter']:.2f}"
            if kind == "delay-space":
                assert cells[7] == "–"
            else:
                assert cells[7] == f"{expect['missing']:.1f}"
                assert cells[8] == f"{expect['lost_ms']:.1f}"
    assert "## Excluded runs" in report and "run-07" in report and "run-08" in report
    for number in ("1", "2", "3a", "3b", "4", "5a", "5b", "6", "7"):
        assert f"| {number} |" in report
    assert check_statistics(report, results) > 0


def test_paired_statistics_equal_scipy_on_six_seed_pairs(tmp_path: Path) -> None:
    """Six seed pairs: peering lowers the delay in every pair, the loss is the same."""
    for run in range(6):
        for peering in ("off", "on"):
            write_run(tmp_path, "single-lma-lte", "delay-space", peering, run)
            write_run(tmp_path, "single-lma-lte", "receiver-handover", peering, run)
    report = build_report(load_runs(tmp_path), tmp_path)
    assert check_statistics(report, tmp_path) == 2
    rows = onoff_rows(report)
    pairs, off, on, diff, p = rows[("single-lma-lte", "delay-space", "median delay [ms]")]
    # All six differences negative: the exact two-sided p is 2 / 2**6.
    assert pairs == "6" and p == f"{2 / 64:.3g}"
    lo, hi = (float(v) for v in diff.split("[")[1].rstrip("]").split(","))
    assert hi < 0 and lo <= float(diff.split(" ")[0]) <= hi
    # The synthetic loss is 3 + run packets on both sides: no difference, p = 1.
    assert rows[("single-lma-lte", "receiver-handover", "handover loss [packets]")][-1] == "1"
    claims = claim_rows(report)
    assert "n=6" in claims["2"][1] and "n=12" in claims["5b"][1]


def test_receiver_handover_loss_is_the_synthetic_gap(results: Path) -> None:
    # Runs 0 and 1 drop seqs 49..51 and 49..52: 3 and 4 packets, median 3.5.
    report = build_report(load_runs(results, scenario="single-lma-lte"), results)
    cells = table_rows(report)[("single-lma-lte", "receiver-handover", "off")]
    assert cells[7] == "3.5" and cells[8] == "35.0"


def test_figures_skip_missing_inputs(tmp_path: Path) -> None:
    write_run(tmp_path, "single-lma-lte", "delay-space", "off", 0)
    messages: list[str] = []
    outcome = make_figures(load_runs(tmp_path), tmp_path / "figures", None, log=messages.append)
    assert outcome.written == []
    assert {name for name, _ in outcome.skipped} == {
        "fig02",
        "fig04",
        "fig05",
        "fig06",
        "fig07",
        "fig08",
        "fig09",
        "fig10",
    }
    assert any("peering-on" in m for m in messages)
    assert not (tmp_path / "figures").exists()
    # A figure left from runs that are gone is removed, not kept beside new ones.
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "fig04.png").write_bytes(b"old")
    make_figures(load_runs(tmp_path), tmp_path / "figures", None, log=messages.append)
    assert not (tmp_path / "figures" / "fig04.png").exists()
    assert "fig04: skipped" in messages[-7] and "old figure removed" in messages[-7]


def test_summary_table_and_cli(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = results / "single-lma-lte" / "receiver-handover"
    text = summary_table([root])
    assert "| single-lma-lte | receiver-handover | off | 2 |" in text
    assert main(["summary", str(root)]) == 0
    assert "receiver-handover" in capsys.readouterr().out
    assert main(["summary", str(results / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert main(["report", "--results", str(results), "--output", str(results / "R.md")]) == 0
    assert (results / "R.md").is_file()


def test_receiver_without_packets_counts_as_lost(tmp_path: Path) -> None:
    for peering in ("off", "on"):
        write_run(tmp_path, "single-lma-lte", "receiver-handover", peering, 0)
    run_dir = write_run(tmp_path, "single-lma-lte", "receiver-handover", "on", 1)
    (run_dir / "receiver-mn1.csv").write_text("seq,send_ns,recv_ns\n")
    runs = load_runs(tmp_path)
    rm = receiver_metrics(runs)
    empty = rm[(rm["peering"] == "on") & (rm["run"] == 1) & (rm["receiver"] == "mn1")].iloc[0]
    assert empty["n_received"] == 0 and empty["lost"] == N_PACKETS
    assert not empty["ho_recovered"]
    report = build_report(runs, tmp_path)
    assert "peering-on/run-01, receiver mn1: received nothing at all" in report
    outcome = make_figures(runs, tmp_path / "figures", None, log=lambda _: None)
    assert tmp_path / "figures" / "fig06.png" in outcome.written
