"""Writing a ``Config`` back in the grammar, defaults left out."""

from __future__ import annotations

import re
from dataclasses import fields

from proxy.config.grammar import TIMER_KEYS, seconds
from proxy.config.model import Config, DownstreamOptions
from proxy.config.rules import DEFAULT_RULE_MATCHING, Rule, Table
from proxy.config.selection import (
    CATCH_ALL,
    DEFAULT_MIGRATE,
    DEFAULT_OVERLAP,
    DEFAULT_REVERT,
    Selection,
    Takeover,
    number,
)
from proxy.config.tokens import RESERVED
from proxy.timers import PROFILES, Timers

_BARE = re.compile(r"[A-Za-z0-9_]+(?:[.-]+[A-Za-z0-9_]+)*")


def _q(name: str) -> str:
    if not name or '"' in name or "\n" in name:
        raise ValueError(f"name {name!r} cannot be written in mcproxy.conf")
    if _BARE.fullmatch(name) and name.lower() not in RESERVED:
        return name
    return f'"{name}"'


def _render_rule(rule: Rule) -> str:
    prefix = _q(rule.ifname) if rule.ifname is not None else ""
    return f"{prefix}({rule.group} | {rule.source})"


def _render_timers(timers: Timers) -> str | None:
    """``timers`` arguments for ``timers``, from the profile needing the fewest overrides."""
    best: tuple[int, str, list[str]] | None = None
    for profile, base in PROFILES.items():
        diff = [f.name for f in fields(Timers) if getattr(timers, f.name) != getattr(base, f.name)]
        if any(getattr(timers, name) is None for name in diff):
            continue  # the grammar cannot set a field back to "derived"
        if best is None or len(diff) < best[0]:
            best = (len(diff), profile, diff)
    if best is None:
        raise ValueError(f"timers {timers} cannot be written in mcproxy.conf")
    _, profile, diff = best
    words = [] if profile == "default" else ["profile", profile]
    keys = {field_name: key for key, (field_name, _) in TIMER_KEYS.items()}
    for name in diff:
        value = getattr(timers, name)
        unit = "s" if TIMER_KEYS[keys[name]][1] is seconds else ""
        words += [keys[name], number(value) + unit]
    return " ".join(words) or None


def _render_table(table: Table, config: Config) -> str:
    if table.name is not None and config.tables.get(table.name) == table:
        return f"table {_q(table.name)}"
    return "table {" + " ".join(_render_rule(r) for r in table.rules) + "}"


def _render_selection(p: str, sel: Selection) -> list[str]:
    out = []
    for c in sel.candidates:
        up = f"{p} upstream {_q(c.ifname)}"
        if c.priority:
            out.append(f"{up} priority {c.priority};")
        for record in c.records:
            parts = "" if record == CATCH_ALL else f" {record}"
            out.append(f"{up} select{parts};")
        if sel.default == c.ifname:
            out.append(f"{up} default;")
        if c.takeover != Takeover():
            out.append(f"{up} takeover {c.takeover};")
    for key, value, default in (
        ("revert", sel.revert, DEFAULT_REVERT),
        ("migrate", sel.migrate, DEFAULT_MIGRATE),
    ):
        if value != default:
            out.append(f"{p} upstream * {key} {value};")
    if sel.overlap != DEFAULT_OVERLAP:
        out.append(f"{p} upstream * overlap {number(sel.overlap)}s;")
    if not out:
        # Every value is a default: one statement still says that selection is on.
        out.append(f"{p} upstream * revert {sel.revert};")
    return out


def render(config: Config) -> str:
    """Write ``config`` in the grammar, leaving defaults out.

    ``parse(render(c)) == c`` for every ``c`` that ``parse`` made. Hand-built configs read
    back equal when their implicit table ids follow the file's assignment rule
    (``Config.build`` makes sure of that).
    """
    out = [f"protocol {config.protocol};"]
    for table in config.tables.values():
        assert table.name is not None
        out.append("")
        if not table.rules:
            out.append(f"table {_q(table.name)} {{}};")
            continue
        out.append(f"table {_q(table.name)} {{")
        out += [f"    {_render_rule(rule)}" for rule in table.rules]
        out.append("};")
    for inst in config.instances:
        p = f"pinstance {_q(inst.name)}"
        table_id = f"({inst.table_id})" if inst.table_id_explicit else ""
        ups = " ".join(map(_q, inst.upstreams))
        downs = " ".join(map(_q, inst.downstreams))
        out += ["", f"{p}{table_id}: {ups} ==> {downs};"]
        if inst.peerings:
            out.append(f"{p} peering {' '.join(map(_q, inst.peerings))};")
        timers = _render_timers(inst.timers)
        if timers:
            out.append(f"{p} timers {timers};")
        for direction, default in DEFAULT_RULE_MATCHING.items():
            rm = inst.rule_matching.get(direction, default)
            if rm != default:
                timeout = f" {rm.timeout_ms}" if rm.mode == "mutex" else ""
                out.append(f"{p} upstream * {direction} rulematching {rm.mode}{timeout};")
        for b in inst.filters:
            ifname = "*" if b.ifname == "*" else _q(b.ifname)
            table = _render_table(b.table, config)
            out.append(f"{p} {b.role} {ifname} {b.direction} {b.kind} {table};")
        for ifname in inst.downstreams:
            opts = inst.downstream_options.get(ifname, DownstreamOptions(config.version))
            if opts.version != config.version:
                out.append(f"{p} downstream {_q(ifname)} version {opts.version};")
            if not opts.querier_election:
                out.append(f"{p} downstream {_q(ifname)} querier-election off;")
            if opts.subscribers:
                nets = " ".join(map(str, opts.subscribers))
                out.append(f"{p} downstream {_q(ifname)} subscribers {nets};")
        if inst.selection is not None:
            out += _render_selection(p, inst.selection)
    return "\n".join(out) + "\n"
