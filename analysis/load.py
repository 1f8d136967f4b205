"""Loading of run directories (results layout contract) into tidy pandas DataFrames.

Layout: ``results/<scenario>/<kind>/peering-<on|off>/run-<NN>/`` with ``sender.csv``
(seq,send_ns), ``receiver-<node>.csv`` (seq,send_ns,recv_ns[,hop_limit]), ``events.csv``
(t_ns,event,node,detail) and ``meta.json`` (with ``"completed"``). Runs that did not
complete, or whose files are missing or malformed, are not loaded but listed in
`Runs.excluded` with the reason, because the runner writes results while we read them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import metrics
from experiments import layout
from experiments.layout import (
    EVENTS_CSV,
    HANDOVER_EVENT,
    KINDS,
    META_JSON,
    PEERING_DIR_RE,
    PEERINGS,
    RECEIVER_COLUMNS,
    RECEIVER_GLOB,
    RUN_DIR_RE,
    SCENARIOS,
    SENDER_COLUMNS,
    SENDER_CSV,
    STREAM_START_EVENT,
    receiver_of,
)

__all__ = ["KINDS", "PEERINGS", "SCENARIOS", "LoadError", "Runs", "load_runs"]

RUN_KEYS = ["scenario", "kind", "peering", "run"]

_RUN_DIR, _PEERING_DIR = RUN_DIR_RE, PEERING_DIR_RE


class LoadError(ValueError):
    """A run directory cannot be used; the message is the reason shown to the user."""


@dataclass
class Runs:
    """Tidy tables of a set of runs.

    packets: one row per received packet per receiver (duplicates included, flagged).
    sent:    one row per sent packet per run.
    events:  one row per event per run.
    runs:    one row per run with its metadata (`meta` holds the whole meta.json).
    excluded: (run directory, reason) for every run that was not loaded.
    """

    packets: pd.DataFrame
    sent: pd.DataFrame
    events: pd.DataFrame
    runs: pd.DataFrame
    excluded: list[tuple[str, str]] = field(default_factory=list)

    def select(
        self,
        scenario: str | None = None,
        kind: str | None = None,
        peering: str | None = None,
    ) -> Runs:
        """The subset of runs matching the given scenario / kind / peering ("on"/"off")."""
        wanted = {"scenario": scenario, "kind": kind, "peering": peering}

        def pick(df: pd.DataFrame) -> pd.DataFrame:
            mask = pd.Series(True, index=df.index)
            for col, value in wanted.items():
                if value is not None:
                    mask &= df[col] == value
            return df[mask]

        return Runs(
            pick(self.packets),
            pick(self.sent),
            pick(self.events),
            pick(self.runs),
            list(self.excluded),
        )

    @property
    def empty(self) -> bool:
        """True when no run was loaded."""
        return self.runs.empty


PACKET_COLUMNS = [
    *RUN_KEYS,
    "receiver",
    "seq",
    "send_ns",
    "recv_ns",
    "hop_limit",
    "delay_ms",
    "arrival",
    "duplicate",
    "jitter_ms",
    "ipdv_ms",
    "t_ms",
    "t_ho_ms",
    "focus",
    "receiver_mag",
    "receiver_lma",
    "receiver_locality",
    "link_backend",
    "seed",
    "run_dir",
]
SENT_COLUMNS = [*RUN_KEYS, "seq", "send_ns"]
EVENT_COLUMNS = [*RUN_KEYS, *layout.EVENT_COLUMNS, "t_ho_ms"]
RUN_COLUMNS = [
    *RUN_KEYS,
    "run_dir",
    "link_backend",
    "seed",
    "rate",
    "duration",
    "handover_at_ms",
    "stream_start_ns",
    "handover_ns",
    "moving_node",
    "receivers",
    "receiver_info",
    "n_sent",
    "git_commit",
    "meta",
]


def _lookup(meta: dict[str, Any], *keys: str) -> Any:
    """First of `keys` found at the top level of meta.json or in its parameter block."""
    blocks = [meta] + [meta[k] for k in ("parameters", "params") if isinstance(meta.get(k), dict)]
    for block in blocks:
        for key in keys:
            if block.get(key) is not None:
                return block[key]
    return None


def _scalar(value: Any) -> Any:
    """A meta value fit for a DataFrame cell: scalars as they are, structures as JSON text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, sort_keys=True)


def _peering_str(value: Any) -> str | None:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.lower() in ("on", "off", "true", "false"):
        return "on" if value.lower() in ("on", "true") else "off"
    return None


def _receiver_info(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """receiver node -> {mag, lma, locality} from meta["receivers"] (list or mapping)."""
    raw = meta.get("receivers")
    items: list[tuple[str, dict[str, Any]]] = []
    if isinstance(raw, dict):
        items = [(str(k), v if isinstance(v, dict) else {}) for k, v in raw.items()]
    elif isinstance(raw, list):
        for entry in raw:
            if isinstance(entry, str):
                items.append((entry, {}))
            elif isinstance(entry, dict):
                name = next((entry[k] for k in ("node", "name", "receiver") if k in entry), None)
                if name is not None:
                    items.append((str(name), entry))
    info = {}
    for name, entry in items:
        locality = next(
            (entry[k] for k in ("locality", "position", "relation", "relative") if k in entry),
            None,
        )
        if locality is None and isinstance(entry.get("local"), bool):
            locality = "local" if entry["local"] else "remote"
        info[name] = {
            "receiver_mag": entry.get("mag"),
            "receiver_lma": entry.get("lma"),
            "receiver_locality": locality,
        }
    return info


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """Read one CSV of a run; the integer stamp columns must be complete and integral."""
    if not path.is_file():
        raise LoadError(f"{path.name} missing")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LoadError(f"{path.name} unreadable: {str(exc).splitlines()[0]}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LoadError(f"{path.name} lacks column(s) {', '.join(missing)}")
    for col in required:
        if col in ("seq", "send_ns", "recv_ns", "t_ns"):
            if df[col].isna().any():
                raise LoadError(f"{path.name} has empty {col} values")
            try:
                df[col] = df[col].astype(np.int64)
            except (ValueError, TypeError) as exc:
                raise LoadError(f"{path.name} has non-integer {col} values") from exc
    return df


def _identity(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """scenario/kind/peering/run from meta.json, falling back to the directory names."""
    parts = run_dir.resolve().parts
    path_run = _RUN_DIR.match(parts[-1])
    path_peering = _PEERING_DIR.match(parts[-2]) if len(parts) >= 2 else None
    ident = {
        "scenario": meta.get("scenario") or (parts[-4] if len(parts) >= 4 else None),
        "kind": meta.get("kind") or (parts[-3] if len(parts) >= 3 else None),
        "peering": _peering_str(meta.get("peering"))
        or (path_peering.group(1) if path_peering else None),
        "run": next(
            (meta[k] for k in ("run", "run_index", "rep", "repetition") if k in meta),
            int(path_run.group(1)) if path_run else None,
        ),
    }
    missing = [k for k, v in ident.items() if v is None]
    if missing:
        raise LoadError(f"cannot tell {', '.join(missing)} from meta.json or the path")
    try:
        ident["run"] = int(ident["run"])
    except (TypeError, ValueError) as exc:
        raise LoadError(f"run index {ident['run']!r} is not an integer") from exc
    return ident


def _load_one(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(run row, packets, sent, events) of one run directory, or LoadError with the reason."""
    meta_path = run_dir / META_JSON
    if not meta_path.is_file():
        raise LoadError("meta.json missing (run not finished?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LoadError(f"meta.json unreadable: {exc}") from exc
    if not isinstance(meta, dict):
        raise LoadError("meta.json is not an object")
    if meta.get("completed") is not True:
        raise LoadError(f"completed is {json.dumps(meta.get('completed'))}, not true")
    ident = _identity(run_dir, meta)

    sent = _read_csv(run_dir / SENDER_CSV, list(SENDER_COLUMNS))[list(SENDER_COLUMNS)]
    events = _read_csv(run_dir / EVENTS_CSV, ["t_ns", "event"])
    for col in ("node", "detail"):
        if col not in events.columns:
            events[col] = None
    events = events[list(layout.EVENT_COLUMNS)]

    rx_info = _receiver_info(meta)
    files = sorted(run_dir.glob(RECEIVER_GLOB))
    if not files:
        raise LoadError("no receiver-*.csv")
    present = {receiver_of(f) for f in files}
    absent = sorted(set(rx_info) - present)
    if absent:
        raise LoadError(f"receiver file(s) missing for {', '.join(absent)}")

    # Reference times on the probes' clock: the stream start and the L2 detach.
    def first_event(name: str) -> int | None:
        hits = events.loc[events["event"] == name, "t_ns"]
        return int(hits.min()) if len(hits) else None

    stream_start = first_event(STREAM_START_EVENT)
    if stream_start is None:
        stream_start = int(sent["send_ns"].min()) if len(sent) else None
    handover_ns = first_event(HANDOVER_EVENT)
    handover_at_ms = _lookup(meta, "handover_at_ms")
    if ident["kind"] != "delay-space" and handover_ns is None:
        if handover_at_ms is None or stream_start is None:
            raise LoadError(f"no {HANDOVER_EVENT} event and no handover_at_ms")
        handover_ns = stream_start + int(float(handover_at_ms) * metrics.NS_PER_MS)
    moving = None
    if handover_ns is not None:
        nodes = events.loc[events["event"] == HANDOVER_EVENT, "node"].dropna()
        moving = str(nodes.iloc[0]) if len(nodes) else None

    # Per receiver: where it sits and whether the run is about it. Kept on the run row too,
    # so that a receiver that got no packet at all still has a row in the metric tables.
    receiver_info: dict[str, dict[str, Any]] = {}
    frames = []
    for path in files:
        node = receiver_of(path)
        rx = _read_csv(path, list(RECEIVER_COLUMNS[:3]))
        if "hop_limit" not in rx.columns:
            rx["hop_limit"] = np.nan
        try:
            rx["hop_limit"] = pd.to_numeric(rx["hop_limit"]).astype(float)
        except (ValueError, TypeError) as exc:
            raise LoadError(f"{path.name} has non-numeric hop_limit values") from exc
        rx = rx[["seq", "send_ns", "recv_ns", "hop_limit"]].copy()
        rx["receiver"] = node
        rx = _annotate_receiver(rx)
        receiver_info[node] = {
            "receiver_mag": None,
            "receiver_lma": None,
            "receiver_locality": None,
            **rx_info.get(node, {}),
            "focus": is_focus_receiver(node, moving, ident["kind"], present),
        }
        for key, value in receiver_info[node].items():
            rx[key] = value
        frames.append(rx)
    packets = pd.concat(frames, ignore_index=True)

    ref = stream_start if stream_start is not None else 0
    packets["t_ms"] = (packets["send_ns"] - ref) / metrics.NS_PER_MS
    has_ho = handover_ns is not None
    packets["t_ho_ms"] = (
        (packets["send_ns"] - handover_ns) / metrics.NS_PER_MS if has_ho else math.nan
    )
    events = events.copy()
    events["t_ho_ms"] = (events["t_ns"] - handover_ns) / metrics.NS_PER_MS if has_ho else math.nan

    run_row = {
        **ident,
        "run_dir": str(run_dir),
        "link_backend": _scalar(_lookup(meta, "link_backend", "backend")),
        "seed": _scalar(_lookup(meta, "seed", "seeds")),
        "rate": _lookup(meta, "rate", "rate_pps"),
        "duration": _lookup(meta, "duration", "duration_s"),
        "handover_at_ms": handover_at_ms,
        "stream_start_ns": stream_start,
        "handover_ns": handover_ns,
        "moving_node": moving,
        "receivers": ",".join(sorted(present)),
        "receiver_info": receiver_info,
        "n_sent": len(sent),
        "git_commit": _lookup(meta, "git_commit", "commit"),
        "meta": meta,
    }
    common = {**ident, "link_backend": run_row["link_backend"], "seed": run_row["seed"]}
    for df in (packets, sent, events):
        for key, value in common.items():
            df[key] = value
    packets["run_dir"] = str(run_dir)
    return run_row, packets, sent, events


def _annotate_receiver(rx: pd.DataFrame) -> pd.DataFrame:
    """Arrival index, duplicate flag, delay, RFC 3550 jitter and IPDV of one receiver's packets."""
    rx = rx.sort_values("recv_ns", kind="stable").reset_index(drop=True)
    rx["arrival"] = np.arange(len(rx))
    rx["duplicate"] = rx["seq"].duplicated()
    rx["delay_ms"] = metrics.one_way_delay_ms(rx["send_ns"], rx["recv_ns"])
    # Jitter describes the stream the application gets: duplicates are not part of it.
    firsts = ~rx["duplicate"]
    rx["jitter_ms"] = math.nan
    rx.loc[firsts, "jitter_ms"] = metrics.rfc3550_jitter(
        rx.loc[firsts, "send_ns"], rx.loc[firsts, "recv_ns"]
    ).series_ms
    # RFC 3393 IPDV of each first arrival whose predecessor seq also arrived (else NaN).
    ipdv = metrics.ipdv_ms(
        rx.loc[firsts, "seq"], rx.loc[firsts, "send_ns"], rx.loc[firsts, "recv_ns"]
    )
    rx["ipdv_ms"] = math.nan
    rx.loc[firsts, "ipdv_ms"] = rx.loc[firsts, "seq"].map(ipdv).astype(float)
    return rx


def is_focus_receiver(node: str, moving: str | None, kind: str, receivers: set[str]) -> bool:
    """Whether a receiver is the one the run is about.

    delay-space and sender-handover: every receiver. receiver-handover: the node named by
    the handover_start event; if that node is not a receiver (or unnamed), every receiver.
    """
    if kind != "receiver-handover" or moving is None or moving not in receivers:
        return True
    return node == moving


def find_run_dirs(paths_or_root: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run directories named by the arguments: a run directory itself, or any directory
    below which `run-NN` directories are found (figures/ and bench/ are never runs)."""
    if isinstance(paths_or_root, str | Path):
        paths_or_root = [paths_or_root]
    found: list[Path] = []
    for raw in paths_or_root:
        path = Path(raw)
        if not path.is_dir():
            raise LoadError(f"{path}: not a directory")
        if _RUN_DIR.match(path.name) or (path / META_JSON).is_file():
            found.append(path)
            continue
        found.extend(
            p
            for p in sorted(path.rglob("run-*"))
            if p.is_dir()
            and _RUN_DIR.match(p.name)
            and not {"figures", "bench"} & set(p.relative_to(path).parts)
        )
    return sorted(dict.fromkeys(found))


def load_runs(
    paths_or_root: str | Path | Iterable[str | Path],
    *,
    scenario: str | None = None,
    kind: str | None = None,
    peering: str | None = None,
) -> Runs:
    """Load every run directory under `paths_or_root` (a root, run dirs, or a mix).

    Runs whose meta.json is missing, unreadable or not `"completed": true`, or whose CSVs
    are missing or malformed, are skipped and listed in `Runs.excluded`. The optional
    filters keep only matching runs (filtered-out runs are not "excluded").
    """
    rows, packets, sent, events = [], [], [], []
    excluded: list[tuple[str, str]] = []
    for run_dir in find_run_dirs(paths_or_root):
        try:
            row, pk, se, ev = _load_one(run_dir)
        except LoadError as exc:
            excluded.append((str(run_dir), str(exc)))
            continue
        wanted = {"scenario": scenario, "kind": kind, "peering": peering}
        if any(v is not None and row[k] != v for k, v in wanted.items()):
            continue
        rows.append(row)
        packets.append(pk)
        sent.append(se)
        events.append(ev)

    def concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)[columns]

    runs_df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    # Nullable integers: epoch nanoseconds do not survive a detour through float64.
    for col in ("stream_start_ns", "handover_ns"):
        runs_df[col] = pd.array([row[col] for row in rows], dtype="Int64")
    if len(runs_df):
        runs_df = runs_df.sort_values(RUN_KEYS, kind="stable").reset_index(drop=True)
    pk_df = concat(packets, PACKET_COLUMNS)
    pk_df["hop_limit"] = pd.array(pk_df["hop_limit"].astype(float).round(), dtype="Int64")
    return Runs(pk_df, concat(sent, SENT_COLUMNS), concat(events, EVENT_COLUMNS), runs_df, excluded)
