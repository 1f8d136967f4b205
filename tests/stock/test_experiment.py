"""The path every user's machine takes: ``make experiment ... BACKEND=netem`` end to end.

In the guest (netem, ip6tnl and multicast routing tables), single-lma-lte runs twice per
peering on each backend, with the same seeds: netem with ip6tnl MAG-LMA tunnels, then the
userspace emulator with point-to-point tunnels. The lane runs the receiver handover (the
paper's headline) to stay within its time; ``PMIPLAB_STOCK_KIND=all`` runs every kind (12
runs per backend, about four times as long). Both must complete with the proxy
forwarding (the moving receiver gets the stream before and after its handover), and
their delay statistics must agree. Their handover loss does not, yet: see the xfail. The
side-by-side table is written to ``results/stock/single-lma-lte.md`` in the checkout, the
runs themselves to ``results/stock/<backend>/``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from analysis.load import load_runs
from analysis.tables import group_summary, receiver_metrics
from lab.paths import REPO
from tests.stock.conftest import KERNEL

SCENARIO = "single-lma-lte"
BACKENDS = {"netem": "ip6tnl", "emulator": "p2p"}
WALL: dict[str, float] = {}
OUT = Path(os.environ.get("PMIPLAB_STOCK_RESULTS", REPO / "results" / "stock"))
KIND = os.environ.get("PMIPLAB_STOCK_KIND", "receiver-handover")
KINDS = 3 if KIND == "all" else 1
# Runs take 30-60 s each in the one-CPU guest (build, daemons, 3 s of stream, teardown).
pytestmark = pytest.mark.timeout(900 * KINDS * 2)


def make_experiment(results: Path, backend: str, tunnels: str) -> subprocess.CompletedProcess:
    cmd = [
        "make",
        "--no-print-directory",
        "experiment",
        f"SCENARIO={SCENARIO}",
        f"KIND={KIND}",
        "REPS=2",
        f"BACKEND={backend}",
        f"TUNNELS={tunnels}",
        f"RESULTS={results}",
        "FORCE=1",
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900 * KINDS)


@pytest.fixture(scope="module")
def runs():
    if KERNEL != "custom":
        pytest.skip("needs the custom UML kernel (multicast routing tables): make uml-kernel")
    out = {}
    for backend, tunnels in BACKENDS.items():
        results = OUT / backend  # in the checkout: kept after the guest powers off
        shutil.rmtree(results, ignore_errors=True)
        started = time.monotonic()
        done = make_experiment(results, backend, tunnels)
        WALL[backend] = time.monotonic() - started
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{SCENARIO}-{backend}.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out[backend] = results
    return out


def test_every_run_completes_on_its_backend_and_tunnel(runs):
    for backend, results in runs.items():
        metas = [json.loads(p.read_text()) for p in results.glob(f"{SCENARIO}/*/*/*/meta.json")]
        assert len(metas) == KINDS * 2 * 2, (backend, len(metas))  # kinds x peerings x seeds
        assert {m["completed"] for m in metas} == {True}
        assert {m["link_backend"] for m in metas} == {backend}
        assert {m["tunnels"] for m in metas} == {BACKENDS[backend]}
        for csv in results.glob(f"{SCENARIO}/*/*/*/receiver-*.csv"):
            seqs = {int(line.split(",")[0]) for line in csv.read_text().splitlines()[1:]}
            # The proxies forwarded before the handover (at packet 50) and after it.
            assert min(seqs) < 50 and max(seqs) >= 290, (backend, csv, len(seqs))


def _table(results: Path):
    runs = load_runs(results)
    return group_summary(runs, receiver_metrics(runs)).set_index(["kind", "peering"])


def test_netem_and_emulator_agree_on_the_peering_table(runs):
    tables = {backend: _table(results) for backend, results in runs.items()}
    cols = ["delay_median", "delay_p95", "jitter_mean", "lost_pct", "ho_missing"]
    lines = [
        f"# {SCENARIO}, KIND={KIND}, REPS=2, seeds 1-2: netem (ip6tnl) vs emulator (p2p), guest",
        "",
        "make experiment wall time: "
        + ", ".join(f"{b} {WALL.get(b, math.nan):.0f} s" for b in BACKENDS),
        "",
        "| kind | peering | " + " | ".join(f"{c} netem | {c} emu" for c in cols) + " |",
        "|---|---|" + "---|---|" * len(cols),
    ]
    netem, emu = tables["netem"], tables["emulator"]
    assert list(netem.index) == list(emu.index)
    for key in netem.index:
        cells = [f"{netem.at[key, c]:.2f} | {emu.at[key, c]:.2f}" for c in cols]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{SCENARIO}.md").write_text("\n".join(lines) + "\n")
    for key in netem.index:
        # Same Table I profiles and seeds: the delay statistics agree (within 10 %, at least
        # 3 ms: two runs each, and the guest's own noise).
        for col in ("delay_median", "delay_p95"):
            d_n, d_e = netem.at[key, col], emu.at[key, col]
            assert abs(d_n - d_e) <= max(3.0, 0.1 * d_e), (key, col, d_n, d_e)


@pytest.mark.xfail(
    strict=True,
    reason="in the guest a netem move costs ~1.1 s of ip/tc processes (break ~0.57 s, make "
    "~0.56 s), which the emulator does in one control message: 81-86 lost packets vs 8.5-9.5",
)
def test_netem_and_emulator_agree_on_handover_loss(runs):
    netem, emu = (_table(runs[b]) for b in ("netem", "emulator"))
    for key in netem.index:
        h_n, h_e = netem.at[key, "ho_missing"], emu.at[key, "ho_missing"]
        assert not math.isnan(h_n) and abs(h_n - h_e) <= max(5.0, 0.5 * h_e), (key, h_n, h_e)
