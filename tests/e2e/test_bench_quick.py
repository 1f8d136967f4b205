"""``make bench QUICK=1`` in a test: the benchmark harness runs end to end and stays sane."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.figures import _load_goodput
from benchmarks import goodput, latency, scale
from lab.clean import cleanup

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("bench")
    run_id = secrets.token_hex(2)
    env = {**os.environ, "PMIPLAB_BENCH_ID": run_id}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "all", "--quick", "--results", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=170)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the harness closes its labs on KeyboardInterrupt
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"make bench QUICK=1 took over 170 s: {output[-2000:]}")
    finally:
        # Whatever happened: nothing of this run's namespaces or daemons survives it.
        cleanup(f"pmlbn{run_id}", log=lambda *_: None)
    took = time.monotonic() - t0
    assert proc.returncode == 0, output[-6000:]
    return out, took


@pytest.mark.timeout(200)
def test_quick_mode_finishes_in_under_two_minutes(quick_results):
    _, took = quick_results
    assert took < 120, f"quick mode took {took:.0f} s"


@pytest.mark.timeout(200)
def test_every_result_file_is_written_and_stamped(quick_results):
    out, _ = quick_results
    for name in (
        "goodput.json",
        "goodput.csv",
        "latency.json",
        "latency.csv",
        "scale.json",
        "scale.csv",
        "SUMMARY.md",
        "fig02.png",
        "fig02.pdf",
        "latency-cdf.png",
        "scale.png",
    ):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("tmp-*")), "temporary directories were left behind"
    for name in ("latency.json", "scale.json", "goodput-run.json"):
        d = json.loads((out / name).read_text())
        assert d["git_commit"] and d["machine"]["nproc"] >= 1 and d["machine"]["cpu_model"]
        assert len(d["machine"]["loadavg_start"]) == 3
    for row in json.loads((out / "goodput.json").read_text()):
        assert row["run"]["git_commit"] and row["run"]["machine"]["uname"]
    assert "| target | limit | measured | verdict |" in (out / "SUMMARY.md").read_text()


@pytest.mark.timeout(200)
def test_goodput_rows_are_complete_and_positive(quick_results):
    out, _ = quick_results
    rows = json.loads((out / "goodput.json").read_text())
    cfg = goodput.QUICK
    keys = {(r["mode"], r["payload_bytes"], r["receivers"]) for r in rows}
    for mode in goodput.MODES:
        for p in cfg["payloads"]:
            for n in cfg["receivers"]:
                assert (mode, p, n) in keys
    for r in rows:
        assert r["goodput_MBps"] > 0, r
        # Nothing can beat the shaped line rate (a little slack for the counters' windows).
        assert r["goodput_MBps"] <= 1.05 * goodput.line_rate_MBps(r["payload_bytes"]), r
        if r["mode"] != "unicast":
            assert r["ratio_to_unicast"] > 0
    # The figure code reads it back unchanged.
    assert len(_load_goodput(out / "goodput.json")) == len(rows)


@pytest.mark.timeout(200)
def test_latency_distributions_are_ordered(quick_results):
    out, _ = quick_results
    lat = json.loads((out / "latency.json").read_text())
    assert set(lat["summary"]) == {a[0] for a in latency.ARMS}
    for arm, s in lat["summary"].items():
        for key in ("join_ms", "leave_ms", "attach_ms"):
            d = s[key]
            want = latency.QUICK["attach_trials" if key == "attach_ms" else "trials"]
            assert d["n"] >= want - 1, (arm, key, d)  # one lost trial is tolerated
            assert 0 <= d["p50"] <= d["p95"] <= d["p99"] <= d["max"], (arm, key, d)
        # Leaves wait for the last listener query time: never faster than it.
        if arm.startswith("ours"):
            assert s["leave_ms"]["p50"] >= latency.LMQT_MS * 0.9
    assert {t["target"] for t in lat["targets"]} >= {"ours-v6 join p50 [ms]"}


@pytest.mark.timeout(200)
def test_scale_rows_for_each_size(quick_results):
    out, _ = quick_results
    sc = json.loads((out / "scale.json").read_text())
    rows = sc["rows"]
    got = {
        (r["proxy"], r["family"], r["groups"], r["listeners"], r["downstreams"]): r for r in rows
    }
    for g, n, d in scale.QUICK["grid_v6"] + scale.QUICK["downstreams_v6"]:
        r = got[("ours", "IPv6", g, n, d)]
        assert "error" not in r, r
        assert r["records"] == g * n * d
        assert r["upstream_groups"] >= g
        assert r["records_per_s"] > 0 and r["rss_peak_mb"] > 0 and r["cpu_s"] >= 0
        assert r["mfc_entries"] >= g
        assert r["reports_lost"] == 0, r
    for kind in ("ours", "igmpproxy"):
        for g, n, d in scale.QUICK["grid_v4"]:
            assert "error" not in got[(kind, "IPv4", g, n, d)], got[(kind, "IPv4", g, n, d)]
