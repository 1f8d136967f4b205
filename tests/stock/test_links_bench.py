"""The link fidelity bench on netem, in the guest: what ``make bench-links BACKEND=netem
QUICK=1`` runs (``python -m benchmarks.links --quick --backend netem``), written into a
temporary directory instead of the reference results.

Strict on what the guest cannot blur: every packet arrives (nothing lost, nothing left
unaccounted for) and packets reorder exactly as netem's independent draws predict for the
times they were sent. The delay targets (mean within 0.2 ms, sd within 5 %) must be met, or
the miss must be what the profile's control link (same delay, no jitter, measured at the
same moments) shows the guest's own timer noise to be; a miss beyond that fails. The bench
itself counts both as misses (exit status 1), and prints which.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_netem_link_bench_quick(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.links", "--quick", "--backend", "netem"]
    proc = subprocess.run(
        [*cmd, "--results", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900
    )
    print(proc.stdout, proc.stderr)
    report = json.loads((tmp_path / "links.json").read_text())
    assert report["backend"]["backend"] == "netem"
    judged = [r for r in report["profiles"] if not r["noise"]]
    assert [r["profile"] for r in judged] == ["umts", "lte", "tunnel", "peering", "backbone"]
    for r in report["profiles"]:
        acc = r["accounting"]
        # Every packet sent arrived: no loss anywhere, and none hidden (Table I has none).
        assert acc["sent"] == acc["scheduled"] == r["received"], (r["profile"], acc)
        assert acc["loss_ok"] and acc["link_drops"] == acc["socket_drops"] == 0, acc
        # Reordering is what netem's independent draws give packets sent at these times; where
        # the guest's noise blurs the delays, it may reorder up to what that noise would add.
        n, model = r["received"], r["reorder_model"]
        high = max(model, r.get("reorder_model_noisy") or 0.0)
        tol = 3 * math.sqrt(high * (1 - high) / n) + 3 * r["reorder_model_sd"] + 0.005
        rate = r["reorder_rate"]
        assert model - tol <= rate <= high + tol, (r["profile"], rate, model, high)
    for r in judged:
        assert r["pass"] or r.get("noise_limited"), proc.stdout[-4000:]
    assert proc.returncode == (0 if all(r["pass"] for r in judged) else 1), proc.stderr
