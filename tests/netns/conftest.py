"""The ``lab`` fixture: namespaces, links and processes that are removed even on failure."""

from __future__ import annotations

import pytest

from lab.netns import NetLab
from lab.paths import run_dir


@pytest.fixture
def lab(tmp_path):
    run_dir()
    the_lab = NetLab(tmp_path)
    try:
        yield the_lab
    finally:
        the_lab.close()
