"""Tests that need a stock kernel (netem, ip6tnl, Open vSwitch, multicast routing tables).

They run inside the user-mode Linux guest of the stock-kernel lane (``make test-stock``),
which sets ``PMIPLAB_GUEST=1``; anywhere else they are skipped, so ``make test`` on the
host (whose kernel lacks netem) stays green.
"""

from __future__ import annotations

import os

import pytest

IN_GUEST = os.environ.get("PMIPLAB_GUEST") == "1"
KERNEL = os.environ.get("PMIPLAB_GUEST_KERNEL", "")


@pytest.fixture(autouse=True)
def _stock_guest_only():
    if not IN_GUEST:
        pytest.skip("needs the stock-kernel guest: run `make test-stock` (sets PMIPLAB_GUEST=1)")
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
