"""Where the lab keeps things on the host: the checkout, the runtime directory, pid files.

Every pid file, control socket and emulator socket the lab makes lives in ``RUN_DIR`` and is
named ``<prefix>-<key>``, so that ``lab.clean`` finds it by the prefix that made it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_DIR = Path("/run/pmiplab")
PY = sys.executable


def run_dir() -> Path:
    """``RUN_DIR``, created if it does not exist yet."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    return RUN_DIR


def runtime_path(prefix: str, key: str, suffix: str) -> Path:
    """``RUN_DIR/<prefix>-<key><suffix>``: a control socket, pid file or emulator socket."""
    return RUN_DIR / f"{prefix}-{key}{suffix}"


def write_pidfile(path: Path, pid: int, marker: str) -> None:
    """Record ``pid``; ``lab.clean`` stops it only while its command line contains ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n{marker}\n")


def is_root() -> bool:
    return os.geteuid() == 0
