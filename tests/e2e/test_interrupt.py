"""Ctrl-C in the middle of a study keeps finished runs, marks the current one, cleans the network."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lab import clean
from lab.netns import wait_for
from lab.paths import REPO


def completed(path: Path) -> bool | None:
    try:
        return json.loads((path / "meta.json").read_text())["completed"]
    except (OSError, ValueError, KeyError):
        return None


def test_interrupt_keeps_finished_runs_and_cleans_up(tmp_path):
    prefix = "pmlt" + uuid.uuid4().hex[:4]
    runs = tmp_path / "single-lma-lte" / "delay-space" / "peering-off"
    cmd = [
        sys.executable,
        "-m",
        "experiments",
        "run",
        "single-lma-lte",
        "--kind",
        "delay-space",
        "--peering",
        "off",
        "--reps",
        "3",
        "--duration",
        "2",
        "--results",
        str(tmp_path),
        "--prefix",
        prefix,
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert wait_for(lambda: completed(runs / "run-02") is False, 60), "run-02 never started"
        time.sleep(1.0)  # inside run-02's measurement
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        clean.cleanup(prefix, log=lambda *_: None)
    assert proc.returncode == 130, out
    assert completed(runs / "run-01") is True
    assert completed(runs / "run-02") is False
    assert "KeyboardInterrupt" in json.loads((runs / "run-02" / "meta.json").read_text())["error"]
    assert not (runs / "run-03").exists()
    assert (runs / "run-01" / "receiver-n21.csv").stat().st_size > 1000
    assert clean.list_netns(prefix) == [], "namespaces left behind"


def test_unknown_scenario_is_one_line_with_the_valid_names():
    res = subprocess.run(
        [sys.executable, "-m", "experiments", "run", "no-such"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "single-lma-lte" in res.stderr and "multi-lma-umts" in res.stderr
