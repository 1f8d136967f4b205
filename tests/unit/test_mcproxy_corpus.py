"""Real mcproxy files: accepted, refused or disabled where mcproxy does, and meaning the same.

The oracle is ``mcproxy_grammar``, a reading of mcproxy's own parser; the files and where
they come from are in ``data/mcproxy-corpus`` (``SOURCES``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import DEFAULT_TABLE, AddressMatch, Config, ConfigDisabled, ConfigError, load
from tests.unit import mcproxy_grammar

CORPUS = Path(__file__).parent / "data" / "mcproxy-corpus"
FILES = sorted(CORPUS.glob("*.conf"))
REPO = Path(__file__).resolve().parents[2]


def interval(m: AddressMatch, family: int) -> tuple[int, int]:
    if m.kind == "any":
        return (0, 2 ** (32 if family == 4 else 128) - 1)
    assert m.first is not None and m.last is not None
    return (int(m.first), int(m.last))


def meaning(cfg: Config) -> dict:
    """Our parse in the oracle's terms."""
    instances, filters, matching = {}, {}, {}
    for inst in cfg.instances:
        lone = not inst.table_id_explicit and inst.table_id == DEFAULT_TABLE[cfg.family]
        instances[inst.name] = {
            "upstreams": list(inst.upstreams),
            "downstreams": list(inst.downstreams),
            "table": "default" if lone else inst.table_id,
        }
        for b in inst.filters:
            rules = [
                (r.ifname, interval(r.group, cfg.family), interval(r.source, cfg.family))
                for r in b.table.rules
            ]
            filters[(inst.name, b.role, b.ifname, b.direction)] = (b.kind, rules)
        matching[inst.name] = {
            d: (rm.mode, rm.timeout_ms or 0) for d, rm in sorted(inst.rule_matching.items())
        }
    return {
        "protocol": cfg.protocol,
        "instances": instances,
        "filters": filters,
        "rulematching": matching,
    }


def ours(path: Path) -> tuple[str, object]:
    try:
        return ("accepted", meaning(load(path)))
    except ConfigDisabled:
        return ("disabled", None)
    except ConfigError as exc:
        return ("rejected", exc.line)


def test_corpus_has_at_least_20_real_files_each_with_a_source():
    sources = (CORPUS / "SOURCES").read_text()
    assert len(FILES) >= 20
    for f in FILES:
        assert f"\n{f.name}\t" in sources, f"{f.name} has no line in SOURCES"


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_file_is_read_as_mcproxy_reads_it(path):
    expected = mcproxy_grammar.read(path.read_text())
    got = ours(path)
    assert got[0] == expected[0], f"{path.name}: mcproxy {expected}, we {got}"
    if expected[0] == "accepted":
        exp = dict(expected[1])
        exp["rulematching"] = {k: dict(sorted(v.items())) for k, v in exp["rulematching"].items()}
        assert got[1] == exp
    elif expected[0] == "rejected":
        first, last = expected[1]
        assert first <= got[1] <= last, (
            f"{path.name}: mcproxy refuses lines {first}-{last}, we {got[1]}"
        )


def test_corpus_covers_every_outcome_and_the_five_classes_of_issue_11():
    outcomes = {f.name: mcproxy_grammar.read(f.read_text()) for f in FILES}
    kinds = [o[0] for o in outcomes.values()]
    assert kinds.count("accepted") >= 15 and "rejected" in kinds and "disabled" in kinds
    accepted = [o[1] for o in outcomes.values() if o[0] == "accepted"]
    insts = [i for m in accepted for i in m["instances"].values()]
    assert any(set(i["upstreams"]) & set(i["downstreams"]) for i in insts)  # up+down
    assert any(not i["upstreams"] for i in insts)  # querier-only
    assert any("protocol IGMPv3;\nprotocol MLDv2;" in f.read_text() for f in FILES)


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_check_mode_exit_status_follows_mcproxy(path):
    res = subprocess.run(
        [sys.executable, "-m", "proxy", "-t", "-f", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    kind = mcproxy_grammar.read(path.read_text())[0]
    assert res.returncode == (2 if kind == "rejected" else 0), res.stderr
    out = (res.stdout + res.stderr).strip()
    assert out.count("\n") == 0, out
    if kind == "disabled":
        assert "disables the proxy" in out
