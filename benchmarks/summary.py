"""``SUMMARY.md``: every benchmark number and target in markdown, from the result files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks import goodput as gp


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, bool):
        return "pass" if x else "**MISS**"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _verdict(ok: Any) -> str:
    return "-" if ok is None else ("pass" if ok else "**MISS**")


def _miss(t: dict[str, Any]) -> str:
    v = _verdict(t["pass"])
    return v + (f" by {t['missed_by']:.2f}" if t.get("missed_by") is not None else "")


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += [
        "| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return out


def goodput_section(results: Path) -> tuple[list[str], list[list[Any]]]:
    rows = _load(results / "goodput.json")
    run = _load(results / "goodput-run.json") or {}
    if not rows:
        return ["## Goodput (Fig. 2)", "", "not run"], []
    lines = ["## Goodput (Fig. 2)", ""]
    stamp = rows[0].get("run", {})
    lines.append(
        f"IPv4, {run.get('offered', '')}; router egress HTB 1 Gbit/s per receiver; median of "
        f"{run.get('config', {}).get('reps', '?')} repetition(s); loadavg "
        f"{stamp.get('machine', {}).get('loadavg_start')} -> "
        f"{run.get('machine', {}).get('loadavg_end')}. Goodput per receiver in MB/s; ratio "
        "= multicast / unicast of the same repetition (median)."
    )
    lines.append("")
    payloads = sorted({r["payload_bytes"] for r in rows})
    recvs = sorted({r["receivers"] for r in rows})
    head = ["payload [B]", "line rate"]
    for n in recvs:
        head += [
            f"unicast x{n}",
            f"ours x{n}",
            f"igmpproxy x{n}",
            f"ratio ours x{n}",
            f"ratio igmpproxy x{n}",
        ]
    table = []
    by = {(r["mode"], r["payload_bytes"], r["receivers"]): r for r in rows}
    for p in payloads:
        line: list[Any] = [str(p), gp.line_rate_MBps(p)]
        for n in recvs:
            u, o, i = (by.get((m, p, n), {}) for m in gp.MODES)
            line += [
                u.get("goodput_MBps"),
                o.get("goodput_MBps"),
                i.get("goodput_MBps"),
                o.get("ratio_to_unicast"),
                i.get("ratio_to_unicast"),
            ]
        table.append(line)
    lines += _table(head, table)
    targets = []
    whys = []
    for r in run.get("ratios", []):
        if r["mode"] == "multicast-ours" and r["pass"] is not None:
            what = f"goodput ratio ours/unicast, {r['payload_bytes']} B x{r['receivers']}"
            if r.get("missed_by"):
                whys.append(f"- {what}: {r.get('why', '')}")
            targets.append([what, ">= 0.95", r["ratio"], _miss(r)])
    if whys:
        lines += ["", "Misses (ours):", "", *whys]
    return lines, targets


def latency_section(results: Path) -> tuple[list[str], list[list[Any]]]:
    lat = _load(results / "latency.json")
    if not lat:
        return ["## Control-plane latency", "", "not run"], []
    s = lat["summary"]
    lines = ["## Control-plane latency", ""]
    cfg = lat.get("config", {})
    lines.append(
        f"{cfg.get('trials')} join/leave and {cfg.get('attach_trials')} attach trials per arm, "
        f"on the wire (listener's interface). Ours: LMQT 100 ms; igmpproxy: compiled-in "
        f"LMQT 2 x 10 s. loadavg {lat['machine'].get('loadavg_start')} -> "
        f"{lat['machine'].get('loadavg_end')}. All values in ms."
    )
    lines.append("")
    head = ["arm", "metric", "n", "p50", "p95", "p99", "max", "failures"]
    rows = []
    for arm, m in s.items():
        for key, fail in (
            ("join_ms", "join_failures"),
            ("leave_ms", "leave_failures"),
            ("attach_ms", "attach_failures"),
            ("attach_report_after_up_ms", None),
        ):
            d = m.get(key, {})
            rows.append(
                [
                    arm,
                    key.removesuffix("_ms").replace("_", " "),
                    d.get("n"),
                    d.get("p50"),
                    d.get("p95"),
                    d.get("p99"),
                    d.get("max"),
                    m.get(fail, "") if fail else "",
                ]
            )
    lines += _table(head, rows)
    targets = [[t["target"], t["limit"], t["measured"], _miss(t)] for t in lat.get("targets", [])]
    return lines, targets


def scale_section(results: Path) -> tuple[list[str], list[list[Any]]]:
    sc = _load(results / "scale.json")
    if not sc:
        return ["## Scale", "", "not run"], []
    lines = ["## Scale", ""]
    lines.append(
        "Reports crafted with scapy, offered as fast as the proxy's socket takes them. "
        "records/s = records / time until every report was processed (sentinel); CPU of the "
        "proxy process; MFC install rate with a source starting a flow to every group."
    )
    lines.append("")
    head = [
        "proxy",
        "fam",
        "groups",
        "listeners",
        "downstreams",
        "records",
        "records/s",
        "processed [s]",
        "upstream ok [s]",
        "CPU s/1000 reports",
        "us/record",
        "RSS peak [MB]",
        "MFC installs/s",
        "note",
    ]
    rows = []
    for r in sc["rows"]:
        rows.append(
            [
                r["proxy"],
                r["family"].removeprefix("IPv"),
                r["groups"],
                r["listeners"],
                r["downstreams"],
                r.get("records"),
                r.get("records_per_s"),
                r.get("processed_s"),
                r.get("upstream_converged_s"),
                r.get("cpu_s_per_1000_reports"),
                r.get("us_per_record"),
                r.get("rss_peak_mb"),
                r.get("mfc_install_per_s"),
                (r.get("error") or "")[:80],
            ]
        )
    lines += _table(head, rows)
    prof = (sc.get("profile") or {}).get("py_spy") or {}
    if prof.get("self"):
        lines += [
            "",
            f"Profiler (py-spy, {prof['samples']} samples, 10000 groups x 10 "
            "listeners): top functions by own time / inclusive time",
            "",
        ]
        top = [[p["function"], p["share"] * 100] for p in prof["self"][:8]]
        lines += _table(["function (self)", "% samples"], top)
        lines.append("")
        inc = [[p["function"], p["share"] * 100] for p in prof["inclusive"][:12]]
        lines += _table(["function (inclusive)", "% samples"], inc)
    mfc = (sc.get("profile") or {}).get("py_spy_mfc") or {}
    if mfc.get("self"):
        lines += ["", f"Profiler during the MFC phase (py-spy, {mfc['samples']} samples):", ""]
        lines += _table(
            ["function (self)", "% samples"],
            [[p["function"], p["share"] * 100] for p in mfc["self"][:6]],
        )
        lines.append("")
        lines += _table(
            ["function (inclusive)", "% samples"],
            [[p["function"], p["share"] * 100] for p in mfc["inclusive"][:6]],
        )
    targets = [[t["target"], t["limit"], t["measured"], _miss(t)] for t in sc.get("targets", [])]
    return lines, targets


def render(results: Path) -> str:
    sections, targets = [], []
    for fn in (goodput_section, latency_section, scale_section):
        lines, t = fn(results)
        sections.append("\n".join(lines))
        targets += t
    commit = None
    for name in ("latency.json", "scale.json", "goodput-run.json"):
        d = _load(results / name)
        if d:
            commit = d.get("git_commit")
            mach = d.get("machine", {})
            break
    else:
        mach = {}
    head = [
        "# Benchmark summary",
        "",
        f"commit `{commit}`; {mach.get('cpu_model', '?')}, {mach.get('nproc', '?')} CPUs; "
        f"`{mach.get('uname', '?')}`",
        "",
        "## Targets",
        "",
        *_table(["target", "limit", "measured", "verdict"], targets),
    ]
    return "\n".join(head) + "\n\n" + "\n\n".join(sections) + "\n"


def write(results: Path) -> Path:
    path = results / "SUMMARY.md"
    path.write_text(render(results))
    return path
