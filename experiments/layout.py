"""The results layout: where a run's files go and what their columns are (the contract with
``analysis``, which reads runs through this module and nothing else of ``experiments``).

``<results>/<scenario>/<kind>/peering-<on|off>/run-<NN>/`` holds:

- ``sender.csv`` (``SENDER_COLUMNS``): one row per sent probe;
- ``receiver-<node>.csv`` (``RECEIVER_COLUMNS``): one row per received packet, duplicates
  included, kernel receive time;
- ``events.csv`` (``EVENT_COLUMNS``): every daemon's and the runner's events, time-sorted;
- ``meta.json``: the scenario, every parameter, seeds, links, versions, and ``"completed"``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from proxy.events import EventLog

KINDS = ("delay-space", "receiver-handover", "sender-handover")
SCENARIOS = ("single-lma-lte", "single-lma-umts", "multi-lma-lte", "multi-lma-umts")
PEERINGS = ("off", "on")

SENDER_CSV = "sender.csv"
EVENTS_CSV = "events.csv"
META_JSON = "meta.json"
RECEIVER_PREFIX, RECEIVER_SUFFIX = "receiver-", ".csv"
RECEIVER_GLOB = f"{RECEIVER_PREFIX}*{RECEIVER_SUFFIX}"

SENDER_COLUMNS = ("seq", "send_ns")
RECEIVER_COLUMNS = ("seq", "send_ns", "recv_ns", "hop_limit")
EVENT_COLUMNS = EventLog.COLUMNS  # t_ns,event,node,detail: one format for every writer

HANDOVER_EVENT = "handover_start"
STREAM_START_EVENT = "stream_start"

RUN_DIR_RE = re.compile(r"^run-(\d+)$")
PEERING_DIR_RE = re.compile(r"^peering-(on|off)$")


def onoff(peering: bool) -> str:
    return PEERINGS[int(peering)]


@dataclass(frozen=True)
class RunKey:
    """Which run: scenario, kind, peering and its index among the repetitions."""

    scenario: str
    kind: str
    peering: bool
    index: int

    def path(self, root: Path) -> Path:
        return (
            root
            / self.scenario
            / self.kind
            / f"peering-{onoff(self.peering)}"
            / f"run-{self.index:02d}"
        )

    def label(self) -> str:
        return f"{self.scenario} {self.kind} peering-{onoff(self.peering)} run-{self.index:02d}"


def receiver_csv(run_dir: Path, node: str) -> Path:
    return run_dir / f"{RECEIVER_PREFIX}{node}{RECEIVER_SUFFIX}"


def receiver_of(path: Path) -> str:
    """The node name in a ``receiver-<node>.csv`` file name."""
    return path.name[len(RECEIVER_PREFIX) : -len(RECEIVER_SUFFIX)]


def read_meta(run_dir: Path) -> dict | None:
    """``meta.json`` of a run, or None when it is missing or unreadable."""
    try:
        meta = json.loads((run_dir / META_JSON).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_complete(run_dir: Path) -> bool:
    meta = read_meta(run_dir)
    return meta is not None and meta.get("completed") is True
