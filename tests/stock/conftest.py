"""Tests that need a stock kernel (netem, ip6tnl, Open vSwitch, multicast routing tables).

They run inside the user-mode Linux guest of the stock-kernel lane (``make test-stock``),
which sets ``PMIPLAB_GUEST=1``; anywhere else they are skipped, so ``make test`` on the
host (whose kernel lacks netem) stays green.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_GUEST = os.environ.get("PMIPLAB_GUEST") == "1"
KERNEL = os.environ.get("PMIPLAB_GUEST_KERNEL", "")
GUEST_OVS = Path(__file__).resolve().parents[2] / "stock" / "guest-ovs"


@pytest.fixture(autouse=True)
def _stock_guest_only():
    if not IN_GUEST:
        pytest.skip("needs the stock-kernel guest: run `make test-stock` (sets PMIPLAB_GUEST=1)")
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")


@pytest.fixture
def ovs():
    """Open vSwitch running in the guest for the test; its database socket."""
    if not shutil.which("ovs-vswitchd"):
        pytest.skip("Open vSwitch is not installed (apt-get install openvswitch-switch)")
    try:
        subprocess.run([GUEST_OVS, "start"], check=True, timeout=60)
        yield "unix:/run/openvswitch/db.sock"
    finally:
        subprocess.run([GUEST_OVS, "stop"], timeout=60)
