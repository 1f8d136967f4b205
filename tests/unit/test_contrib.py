"""The operator files in contrib/: the unit's command lines parse, the sample config reads."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from proxy import __main__ as cli
from proxy.config import ConfigDisabled, load, parse

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"


def test_unit_is_type_notify_and_its_commands_are_pymcproxy_command_lines():
    unit = (CONTRIB / "pymcproxy.service").read_text()
    keys = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert keys["Type"] == "notify"
    assert keys["PIDFile"] == "/run/pymcproxy.pid"
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(keys[key])
        assert argv[:2] == ["/usr/bin/env", "pymcproxy"]
        args = cli.parser().parse_args(argv[2:])
        assert args.file == "/etc/pymcproxy.conf"
    run = cli.parser().parse_args(shlex.split(keys["ExecStart"])[2:])
    assert run.pidfile == keys["PIDFile"] and run.check is None
    assert cli.parser().parse_args(shlex.split(keys["ExecStartPre"])[2:]).check == ""


def test_sample_config_is_disabled_until_edited_and_valid_once_enabled():
    path = CONTRIB / "pymcproxy.conf"
    with pytest.raises(ConfigDisabled):
        load(path)
    text = path.read_text().replace("\ndisable;", "\n# disable;")
    cfg = parse(text, str(path))
    assert [(i.name, i.upstreams, i.downstreams, i.table_id) for i in cfg.instances] == [
        ("wan2lan", ("eth0",), ("br-lan",), 253)
    ]
    # Every commented example is valid too.
    examples = "\n".join(
        line[1:]
        for line in text.splitlines()
        if line.startswith("#pinstance") or line.startswith("#table")
    )
    assert len(parse(text + "\n" + examples, str(path)).instances) == 3
