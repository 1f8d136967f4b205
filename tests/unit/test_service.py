"""Log lines of the daemon: dated with levels on a stream or file, tagged for syslog."""

from __future__ import annotations

import logging
import os
import re
import socket

import pytest

from proxy import service


def plain_logger(name: str) -> logging.Logger:
    """``name``'s logger as the daemon has it: level from the root, records to the root.

    (Importing Mininet elsewhere in the test run makes new loggers Mininet's own class,
    with a level and a handler of their own: ``name`` and each of its ancestors, such as
    ``pymcproxy`` for ``pymcproxy.a``, are reset.)
    """
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        lg = logging.getLogger(".".join(parts[:i]))
        lg.setLevel(logging.NOTSET)
        lg.propagate, lg.disabled = True, False
        for h in list(lg.handlers):
            lg.removeHandler(h)
    return logging.getLogger(name)


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_file_log_lines_are_dated_with_level_and_logger(tmp_path):
    path = tmp_path / "p.log"
    service.setup_logging(logging.INFO, str(path))
    plain_logger("pymcproxy.a").info("link up: %s", "d1")
    plain_logger("pymcproxy").debug("not shown at INFO")
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO pymcproxy\.a: link up: d1", lines[0]
    ), lines


def test_syslog_lines_carry_facility_daemon_priority_and_pid_tag(tmp_path):
    address = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(address)
        s.settimeout(5)
        service.setup_logging(logging.DEBUG, syslog=True, syslog_address=address)
        plain_logger("pymcproxy").warning("upstream %s lost", "up0")
        msg = s.recv(4096).decode()
    # <28> = facility daemon (3) * 8 + warning (4); syslog dates the line itself.
    assert msg.rstrip("\0") == f"<28>pymcproxy[{os.getpid()}]: WARNING pymcproxy: upstream up0 lost"
