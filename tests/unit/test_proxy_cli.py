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


def pymcproxy(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "proxy", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)


def test_check_accepts_a_valid_file(tmp_path):
    conf = tmp_path / "ok.conf"
    conf.write_text('protocol MLDv2;\npinstance mag1(3): "up0" ==> "d1" "d2";\n')
    for args in (["-t", "-f", str(conf)], ["--check", str(conf)], ["-t", str(conf)]):
        res = pymcproxy(*args)
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"{conf}: ok (MLDv2, 1 instance(s))\n"


def test_check_rejects_a_bad_file_with_file_line_and_column(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "protocol MLDv2;\npinstance mag1: up0 ==> d1;\npinstance mag1 upstream up0 in whitelist table nosuch;\n"
    )
    res = pymcproxy("-t", "-f", str(conf))
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
    # The checkout may be private to root (a clone under /root): the unprivileged user runs
    # a copy of the daemon package (standard library only) from a directory it can read.
    with tempfile.TemporaryDirectory(prefix="pmlt") as tmp:
        os.chmod(tmp, 0o755)
        shutil.copytree(
            REPO / "proxy", Path(tmp) / "proxy", ignore=shutil.ignore_patterns("__pycache__")
        )
        conf = Path(tmp) / "p.conf"
        conf.write_text("protocol MLDv2;\npinstance p: up0 ==> d1;\n")
        for path in Path(tmp).rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        cmd += ["/usr/bin/python3", "-m", "proxy", "-f", str(conf)]
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stderr
    assert (
        res.stderr.strip()
        == "error: pymcproxy needs root (raw sockets and kernel multicast routing)"
    )


def test_ctl_without_a_daemon_is_one_line(tmp_path):
    res = pymcproxy("ctl", "--socket", str(tmp_path / "none.sock"), "show")
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot reach pymcproxy") and res.stderr.count("\n") == 1


def test_disable_exits_0_with_one_line_in_check_and_run_mode(tmp_path):
    conf = tmp_path / "off.conf"
    conf.write_text("protocol IGMPv3;\ndisable;\npinstance p: a ==> b;\n")
    for args in (["-t", "-f", str(conf)], ["-f", str(conf), "--ctl", str(tmp_path / "c.sock")]):
        res = pymcproxy(*args)
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"{conf}:2: 'disable;' - this file disables the proxy\n"
        assert res.stderr == ""
    assert not (tmp_path / "c.sock").exists()


def test_help_lists_mcproxy_flags_with_their_meanings():
    res = pymcproxy("-h")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for flag, words in {
        "-f FILE, --file FILE": "configuration file",
        "-t [FILE], --check [FILE]": "only check the configuration",
        "-d, --debug": "debug logging",
        "-v, --verbose": "twice (-vv)",
        "-s, --status": "every 2 seconds",
        "-c, --check-kernel": "kernel features",
        "-r, --reset-rp-filter": "reverse path filter",
        "--pidfile PATH": "pid",
        "--syslog": "syslog",
    }.items():
        assert flag in text and words in text, (flag, text)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_check_kernel_prints_mcproxy_style_feature_lines_and_exits_0():
    # In a network namespace of its own, so no table of this host is touched.
    cmd = ["unshare", "-n", sys.executable, "-m", "proxy", "-c"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "Check the currently available kernel features."
    assert " - root privileges: Ok" in lines
    for fam in ("ipv4", "ipv6"):
        assert f" - {fam} multicast routing: Ok" in lines
        assert f" - {fam} routing tables: Ok" in lines
        assert f" - {fam} multiple tables: Ok" in lines


def test_bad_ssm_range_is_one_line_and_exit_2(tmp_path):
    conf = tmp_path / "p.conf"
    conf.write_text("protocol MLDv2;\npinstance p: up0 ==> d1;\n")
    res = pymcproxy("-f", str(conf), "--ssm-range", "232.0.0.0/8")
    assert res.returncode == 2
    assert (
        res.stderr.strip().splitlines()[-1].endswith("232.0.0.0/8 is not an IPv6 multicast prefix")
    )
