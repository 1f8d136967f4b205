"""Fixtures for tests that build namespaces: they need root, which CI has."""

from __future__ import annotations

import os

import pytest

from tests.netns.lab import Lab


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces (CI runs as root)")
    for item in items:
        if "tests/netns" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def lab(tmp_path):
    os.makedirs("/run/pmiplab", exist_ok=True)
    the_lab = Lab(tmp_path)
    try:
        yield the_lab
    finally:
        the_lab.close()
