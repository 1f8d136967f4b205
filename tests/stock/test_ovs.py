"""Open vSwitch in the guest: a standalone bridge forwards between two namespaces."""

from __future__ import annotations

from tests.stock.netns import lab, ping_rtts, sh


def test_ovs_standalone_bridge_forwards(ovs):
    bridge = "pmlsbr0"
    with lab() as lb:
        a, b = lb.ns("a"), lb.ns("b")
        try:
            sh(
                "ovs-vsctl",
                f"--db={ovs}",
                "add-br",
                bridge,
                "--",
                "set-fail-mode",
                bridge,
                "standalone",
            )
            for ns, addr in ((a, "198.18.2.1/24"), (b, "198.18.2.2/24")):
                port = f"{lb.prefix}{ns[-1]}"
                sh("ip", "link", "add", port, "type", "veth", "peer", "name", f"{port}p")
                sh("ip", "link", "set", f"{port}p", "netns", ns, "name", "eth0")
                sh("ip", "link", "set", port, "up")
                sh("ovs-vsctl", f"--db={ovs}", "add-port", bridge, port)
                sh("ip", "link", "set", "eth0", "up", ns=ns)
                sh("ip", "addr", "add", addr, "dev", "eth0", ns=ns)
            assert len(ping_rtts(a, "198.18.2.2", count=3)) == 3
        finally:
            sh("ovs-vsctl", f"--db={ovs}", "--if-exists", "del-br", bridge, check=False)
            for ns in (a, b):
                sh("ip", "link", "del", f"{lb.prefix}{ns[-1]}", check=False)
