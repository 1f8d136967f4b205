"""The ``lab`` fixture: namespaces, links and processes that are removed even on failure."""

from __future__ import annotations

import os

import pytest

from tests.netns.lab import Lab


@pytest.fixture
def lab(tmp_path):
    os.makedirs("/run/pmiplab", exist_ok=True)
    the_lab = Lab(tmp_path)
    try:
        yield the_lab
    finally:
        the_lab.close()
