"""Short real runs of every kind in both topologies, peering off and on, checked on the raw CSVs."""

from __future__ import annotations

import csv
import json
import statistics
import uuid
from pathlib import Path

import pytest

from analysis import load_runs
from analysis.figures import make_figures
from analysis.report import write_report
from experiments.runner import plan, run_all
from experiments.scenarios import KINDS, Parameters, scenario
from lab import clean
from tests.report_oracle import check_statistics, direct_group, table_rows

# What every handover must log, in this order of first appearance after the detach.
_ATTACH = [
    "handover_start",
    "l2_attach",
    "proxy_link_up",
    "l2_attach_detected",
    "pbu_sent",
    "pbu_received",
    "pba_sent",
    "pba_received",
]
HANDOVER_EVENTS = {
    "receiver-handover": [
        *_ATTACH,
        "query_sent",
        "report_received",
        "membership_changed",
        "handover_done",
    ],
    "sender-handover": [*_ATTACH, "mfc_installed", "handover_done"],
}


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", params=["single-lma-lte", "multi-lma-lte"])
def results(request, tmp_path_factory):
    """One short run of each kind, peering off and on, for one scenario."""
    root = tmp_path_factory.mktemp(request.param)
    sc = scenario(request.param)
    params = Parameters(duration=1.5, handover_at_ms=500)
    keys = plan(sc, list(KINDS), [False, True], 1)
    prefix = "pmlt" + uuid.uuid4().hex[:4]
    dirs, failures = run_all(sc, keys, params, seed=7, root=root, prefix=prefix)
    assert not failures, failures
    assert clean.list_netns(prefix) == []
    assert len(dirs) == len(keys)
    return request.param, {(k.kind, k.peering): k.path(root) for k in keys}


def meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def delays(run: Path, node: str) -> list[float]:
    return [
        (int(r["recv_ns"]) - int(r["send_ns"])) / 1e6 for r in rows(run / f"receiver-{node}.csv")
    ]


def test_every_run_is_complete_with_its_files(results):
    _name, runs = results
    for run in runs.values():
        m = meta(run)
        assert m["completed"] is True
        assert m["link_backend"] in ("emulator", "netem")
        assert m["links"]["links"], "drawn link delays are recorded"
        assert {"proxy-mag1.conf", "proxy-mag1.log", "sender.csv", "events.csv"} <= {
            p.name for p in run.iterdir()
        }
        assert len(rows(run / "sender.csv")) == 150


def test_peering_lowers_the_remote_receivers_delay(results):
    name, runs = results
    remote = next(
        r["node"] for r in meta(runs[("delay-space", False)])["receivers"] if r["mag"] == 2
    )
    off = statistics.median(delays(runs[("delay-space", False)], remote))
    on = statistics.median(delays(runs[("delay-space", True)], remote))
    assert on < off - 20, f"{name}: median delay with peering {on:.1f} ms, without {off:.1f} ms"


def test_receivers_lose_nothing_outside_the_handover_window(results):
    _name, runs = results
    for run in runs.values():
        sent = {int(r["seq"]): int(r["send_ns"]) for r in rows(run / "sender.csv")}
        events = rows(run / "events.csv")
        start = next((int(e["t_ns"]) for e in events if e["event"] == "handover_start"), None)
        for rcv in meta(run)["receivers"]:
            got = {int(r["seq"]) for r in rows(run / f"receiver-{rcv['node']}.csv")}
            lost = [s for s, t in sent.items() if s not in got and s > 0]
            if start is not None:
                # The handover window: packets still in flight to the old MAG when the MN
                # detaches (the LTE multi-LMA path is up to ~250 ms long), until 1 s later.
                lost = [s for s in lost if not start - 300e6 <= sent[s] <= start + 1e9]
            assert lost == [], f"{run}: {rcv['node']} lost {lost} outside the handover"


@pytest.mark.parametrize("kind", ["receiver-handover", "sender-handover"])
def test_handover_produces_the_full_event_sequence(results, kind):
    _name, runs = results
    for peering in (False, True):
        events = rows(runs[(kind, peering)] / "events.csv")
        start = next(int(e["t_ns"]) for e in events if e["event"] == "handover_start")
        after = [e["event"] for e in events if int(e["t_ns"]) >= start]
        missing = [e for e in HANDOVER_EVENTS[kind] if e not in after]
        assert not missing, f"{kind} peering={peering}: missing {missing}"
        times = [int(e["t_ns"]) for e in events]
        assert times == sorted(times)
        order = {
            e: after.index(e) for e in ("handover_start", "l2_attach", "pbu_sent", "pba_received")
        }
        assert (
            order["handover_start"] < order["l2_attach"] < order["pbu_sent"] < order["pba_received"]
        )


# Hop limit seen by the moving receiver (16 at the source), before and after the handover:
# every router on the path decrements it, a local peering inside one MAG counts as one more.
HOPS = {
    ("single-lma-lte", False): (15, 13),  # MAG1 ; MAG1, LMA1, MAG2
    ("single-lma-lte", True): (15, 14),  # MAG1 ; MAG1 -> peering -> MAG2
    ("multi-lma-lte", False): (12, 12),  # MAG1, LMA1, LMA2, MAG1 ; MAG1, LMA1, LMA2, MAG2
    ("multi-lma-lte", True): (14, 14),  # MAG1 -> local peering -> MAG1 ; MAG1 -> MAG2
}


def test_packets_after_a_receiver_handover_come_through_the_new_mag(results):
    name, runs = results
    for peering in (False, True):
        run = runs[("receiver-handover", peering)]
        mn = meta(run)["moving"]
        events = rows(run / "events.csv")
        start = next(int(e["t_ns"]) for e in events if e["event"] == "handover_start")
        to_new = [
            e
            for e in events
            if int(e["t_ns"]) > start
            and e["node"] == "mag2"
            and e["event"] in ("mfc_installed", "mfc_updated")
            and f"a-{mn}" in e["detail"]
        ]
        assert to_new, f"{name} peering={peering}: MAG2 never forwarded to a-{mn}"
        got = rows(run / f"receiver-{mn}.csv")
        before = {int(r["hop_limit"]) for r in got if int(r["recv_ns"]) < start}
        after = {int(r["hop_limit"]) for r in got if int(r["send_ns"]) > start + 300e6}
        assert (before, after) == tuple({h} for h in HOPS[(name, peering)]), (name, peering)


FIGURES = {"single-lma-lte": ["fig04", "fig06"], "multi-lma-lte": ["fig08", "fig09", "fig10"]}


def test_figures_and_report_from_the_real_short_runs(results):
    """The analysis pipeline on real runs: figures exist, report numbers equal the CSVs'."""
    name, runs = results
    root = next(iter(runs.values())).parents[3]
    loaded = load_runs(root)
    outcome = make_figures(loaded, root / "figures", None, log=lambda _: None)
    for fig in FIGURES[name]:
        for ext in ("png", "pdf"):
            assert (root / "figures" / f"{fig}.{ext}").stat().st_size > 1000, outcome
    report = write_report(loaded, root).read_text()
    table = table_rows(report)
    for kind in KINDS:
        for peering in ("off", "on"):
            expect = direct_group(root, name, kind, peering)
            cells = table[(name, kind, peering)]
            assert cells[2:6] == [f"{expect[k]:.2f}" for k in ("median", "p95", "max", "jitter")]
            if kind != "delay-space":
                assert cells[7:9] == [f"{expect['missing']:.1f}", f"{expect['lost_ms']:.1f}"]
    # Intervals on every claim with data, a p-value on every on/off row (Wilcoxon, as
    # scipy computes it on the CSVs' per-run numbers).
    assert check_statistics(report, root) == 3
