"""End-to-end tests run whole experiments; like tests/netns they need root (CI has it)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces (CI runs as root)")
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(skip)
