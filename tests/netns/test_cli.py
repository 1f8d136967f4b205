"""The interactive Mininet CLI on a PMIPv6 topology, driven by a script."""

from __future__ import annotations

import subprocess
import sys
import uuid

from lab import clean


def test_cli_runs_commands_in_the_nodes_and_cleans_up(tmp_path):
    script = tmp_path / "cli.script"
    script.write_text(
        "mag1 ip -6 -br addr show dev a-n11\nproxy mag1\nlinks\nn11 ping -6 -c1 -W3 2001:db8:8004::10\n"
    )
    prefix = "pmlt" + uuid.uuid4().hex[:4]
    code = (
        "from topologies.cli import interactive;"
        f"interactive('single-lma', script={str(script)!r}, prefix={prefix!r})"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        ).stdout
    finally:
        clean.cleanup(prefix, log=lambda *_: None)
    assert "fe80::1/64" in out  # the MAG's shared access link-local
    assert "instance mag1_lma1 (table 11)" in out and "peering    p1m2l1" in out
    assert "tunnel" in out and "lte" in out
    assert "1 received" in out, out
    assert clean.list_netns(prefix) == []
