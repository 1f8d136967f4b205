"""Tests under tests/netns and tests/e2e build network namespaces: they need root (CI has it)."""

from __future__ import annotations

import os

import pytest

NEEDS_ROOT = ("tests/netns", "tests/e2e")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces (CI runs as root)")
    for item in items:
        if any(part in str(item.fspath) for part in NEEDS_ROOT):
            item.add_marker(skip)
