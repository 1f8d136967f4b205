"""A new user's first run in a fresh clone: outputs go to results/, no tracked file changes.

The clone borrows the running test's virtualenv (a symlink, and make told not to remake the
install stamp), so the test costs a short experiment, not a pip install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lab import clean

REPO = Path(__file__).resolve().parents[2]
SCENARIO, KIND = "single-lma-lte", "receiver-handover"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs to run from the project's virtualenv (make test)")
    path = tmp_path_factory.mktemp("first run") / "x"
    git(REPO, "clone", "--quiet", str(REPO), str(path))
    (path / ".venv").symlink_to(Path(sys.prefix))
    return path


def make(clone: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_figures_and_report_refuse_an_empty_results_directory(clone):
    for target in ("figures", "report"):
        proc = make(clone, target)
        errors = [line for line in proc.stderr.splitlines() if not line.startswith("make:")]
        assert proc.returncode != 0, proc.stdout
        assert len(errors) == 1 and errors[0].startswith("error: results directory"), errors
    (clone / "results").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "analysis", "report", "--results", "results"],
        cwd=clone,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no completed runs under results") and (
        proc.stderr.count("\n") == 1
    ), proc.stderr
    assert not (clone / "results" / "REPORT.md").exists()
    (clone / "results").rmdir()


@pytest.mark.timeout(420)
def test_make_experiment_changes_no_tracked_file(clone):
    prefix = "pmlt" + uuid.uuid4().hex[:4]
    proc = make(
        clone,
        "experiment",
        f"SCENARIO={SCENARIO}",
        f"KIND={KIND}",
        "REPS=1",
        "DURATION=1.5",
        f"PREFIX={prefix}",
        timeout=400,
    )
    assert clean.list_netns(prefix) == []
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for peering in ("off", "on"):
        meta = clone / "results" / SCENARIO / KIND / f"peering-{peering}" / "run-01" / "meta.json"
        assert json.loads(meta.read_text())["completed"] is True
    assert "runs" in (clone / "results" / "REPORT.md").read_text()
    assert (clone / "results" / "figures" / "fig06.png").stat().st_size > 1000
    # Nothing tracked changed, and nothing new shows up either (results/ is ignored).
    assert git(clone, "status", "--porcelain") == ""
    assert git(clone, "ls-files", "results") == ""
