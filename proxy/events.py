"""Timestamped events shared by the daemons of a run: ``t_ns,event,node,detail`` CSV rows.

All namespaces share one kernel clock (CLOCK_REALTIME), so rows written by the proxies,
the PMIPv6 agents and the probes of a run line up on one time axis.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterable
from pathlib import Path


class EventLog:
    """Appends ``t_ns,event,node,detail`` rows to a CSV that other processes may append to too.

    Each row is one ``write`` on an O_APPEND descriptor, so rows of concurrent writers never
    interleave; the header is written by whoever creates the file.
    """

    COLUMNS = ("t_ns", "event", "node", "detail")

    def __init__(self, path: Path | None, node: str) -> None:
        self.node = node
        self.rows: list[tuple[int, str, str, str]] = []
        self._fd: int | None = None
        if path is None:
            return
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(self._fd, self._line(self.COLUMNS))
        except FileExistsError:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    @staticmethod
    def _line(values: Iterable[object]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue().encode()

    def emit(self, event: str, detail: str = "", t_ns: int | None = None) -> int:
        """Log one event (now, unless ``t_ns`` is given) and return its time."""
        t = time.time_ns() if t_ns is None else t_ns
        row = (t, event, self.node, detail)
        self.rows.append(row)
        if self._fd is not None:
            os.write(self._fd, self._line(row))
        return t

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
