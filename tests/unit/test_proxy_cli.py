"""The daemon's command line: configuration checks and user errors are one line and an exit code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def pymcproxy(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "proxy", *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)


def test_check_accepts_a_valid_file(tmp_path):
    conf = tmp_path / "ok.conf"
    conf.write_text('protocol MLDv2;\npinstance mag1(3): "up0" ==> "d1" "d2";\n')
    res = pymcproxy("-c", str(conf))
    assert res.returncode == 0, res.stderr
    assert "ok (MLDv2, 1 instance(s))" in res.stdout


def test_check_rejects_a_bad_file_with_file_line_and_column(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "protocol MLDv2;\npinstance mag1: up0 ==> d1;\npinstance mag1 upstream up0 in whitelist table nosuch;\n"
    )
    res = pymcproxy("-c", str(conf))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{conf}:3:"), res.stderr
    assert "Traceback" not in res.stderr


def test_running_a_bad_file_starts_nothing(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("protocol MLDv7;\n")
    res = pymcproxy("-f", str(conf), "--ctl", str(tmp_path / "ctl.sock"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert not (tmp_path / "ctl.sock").exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody"
)
def test_not_root_is_one_line_and_exit_2():
    # pytest's tmp_path is private to root: the unprivileged user reads this one in /tmp.
    with tempfile.NamedTemporaryFile("w", suffix=".conf", prefix="pmlt") as conf:
        conf.write("protocol MLDv2;\npinstance p: up0 ==> d1;\n")
        conf.flush()
        os.chmod(conf.name, 0o644)
        res = pymcproxy("-f", conf.name, user="65534")
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == "error: pymcproxy needs root (raw sockets and kernel multicast routing)"
    )


def test_ctl_without_a_daemon_is_one_line(tmp_path):
    res = pymcproxy("ctl", "--socket", str(tmp_path / "none.sock"), "show")
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot reach pymcproxy") and res.stderr.count("\n") == 1
