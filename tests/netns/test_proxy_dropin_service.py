"""The daemon started as systemd starts it: readiness on $NOTIFY_SOCKET, pidfile, log lines."""

from __future__ import annotations

import os
import re
import socket
import subprocess

from lab.netns import NetLab as Lab
from lab.netns import wait_for
from lab.paths import PY
from proxy import service
from proxy.ctl import request
from tests.netns.test_proxy import access


def test_notify_writes_one_datagram_to_a_path_or_an_abstract_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    for name, address in ((str(path), str(path)), ("@pmlt-notify-test", "\0pmlt-notify-test")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", name)
            assert service.notify("READY=1\nSTATUS=x")
            assert s.recv(4096) == b"READY=1\nSTATUS=x"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert service.notify("READY=1") is False


def test_ready_comes_only_after_the_instances_are_up_and_pidfile_lives_with_the_daemon(lab: Lab):
    px = lab.ns("px")
    access(lab, px, 1), access(lab, px, 2)
    lab.link(px, "up0", lab.ns("up"), "e0")
    conf = lab.tmp / "p.conf"
    conf.write_text("protocol MLDv2;\npinstance a: up0 ==> d1;\npinstance b(7): up0 ==> d2;\n")
    notify, pidfile, ctl = lab.tmp / "notify.sock", lab.tmp / "p.pid", lab.tmp / "p.ctl"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(15)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    args = [PY, "-m", "proxy", "-f", str(conf), "--ctl", str(ctl), "--pidfile", str(pidfile)]
    proc = lab.spawn(px, args, "p.log", env=env)
    try:
        message = sock.recv(4096).decode()
        # At READY=1 the kernel has every instance's mrules and the control socket answers
        # with every interface on a vif (per-table vifs are not in /proc/net/ip6_mr_vif).
        rules = lab.sh(px, "ip -6 mrule show")
        show = request(str(ctl), {"cmd": "show"})
        assert pidfile.read_text() == f"{proc.pid}\n"
        assert message.splitlines() == [
            "READY=1",
            "STATUS=running 2 instance(s)",
            f"MAINPID={proc.pid}",
        ]
        for rule in ("iif up0 lookup 1", "iif d1 lookup 1", "iif up0 lookup 7", "iif d2 lookup 7"):
            assert re.search(rf"{rule}\b", rules), rules
        vifs = {
            (i["name"], n): v["vif"] for i in show["instances"] for n, v in i["interfaces"].items()
        }
        assert set(vifs) == {("a", "up0"), ("a", "d1"), ("b", "up0"), ("b", "d2")}
        assert None not in vifs.values(), vifs
        assert ctl.exists()
        proc.terminate()
        sock.settimeout(5)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            lab.stop(proc)
        sock.close()
    assert not pidfile.exists()
    log = (lab.tmp / "p.log").read_text().splitlines()
    dated = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")
    assert log and all(dated.match(line) for line in log), log


def test_pidfile_of_a_running_daemon_is_refused_in_one_line(lab: Lab, tmp_path):
    px = lab.ns("px")
    access(lab, px, 1)
    conf = tmp_path / "p.conf"
    conf.write_text("protocol MLDv2;\npinstance a: ==> d1;\n")
    pidfile = tmp_path / "p.pid"
    holder = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_text(f"{holder.pid}\n")
        args = ["ip", "netns", "exec", px, PY, "-m", "proxy", "-f", str(conf)]
        args += ["--ctl", str(tmp_path / "c"), "--pidfile", str(pidfile)]
        res = subprocess.run(args, capture_output=True, text=True, timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 1
    assert res.stderr == f"error: {pidfile} names running process {holder.pid}\n"
    assert pidfile.read_text() == f"{holder.pid}\n"


def test_status_flag_prints_each_instance_on_stdout(lab: Lab):
    px = lab.ns("px")
    access(lab, px, 1)
    conf = lab.tmp / "s.conf"
    conf.write_text("protocol MLDv2;\npinstance lma(1): ==> d1;\n")
    args = [PY, "-m", "proxy", "-f", str(conf), "--ctl", str(lab.tmp / "s.ctl"), "-s"]
    out = lab.tmp / "s.out"
    with open(out, "w") as f:
        proc = lab.spawn(px, args, stdout=f, stderr=subprocess.DEVNULL)

        def lines() -> list[str]:
            return [x for x in out.read_text().splitlines() if x.startswith("instance lma")]

        try:
            assert wait_for(lambda: len(lines()) >= 2, 15), out.read_text()  # 2 s apart
        finally:
            lab.stop(proc)
    lines = lines()
    assert len(lines) >= 2, out.read_text()
    assert lines[0].startswith("instance lma table 1: d1(downstream); groups ")
