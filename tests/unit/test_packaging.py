"""`pip install .` installs the proxy alone; the laboratory's dependencies are the `lab` extra."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"pandas", "matplotlib", "numpy", "scipy", "contourpy", "kiwisolver", "scapy"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;(]", r, maxsplit=1)[0].lower() for r in requirements}


def test_core_dependencies_pull_in_no_analysis_package():
    core = names(project().get("dependencies", []))
    assert not core & HEAVY, core & HEAVY


def test_the_lab_extra_has_the_analysis_packages_and_make_installs_it():
    lab = names(project()["optional-dependencies"]["lab"])
    assert {"pandas", "matplotlib", "numpy", "scipy", "scapy"} <= lab
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-e '\.\[lab,dev\]'", makefile)


def test_the_console_scripts_exist():
    scripts = project()["scripts"]
    for name in ("pymcproxy", "pymcproxy-ctl"):
        module, func = scripts[name].split(":")
        assert module.split(".")[0] == "proxy", scripts[name]
        assert callable(getattr(importlib.import_module(module), func)), scripts[name]


def test_the_daemon_runs_without_any_of_the_lab_packages():
    """With every lab package made unimportable, the daemon still imports and answers -h."""
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in sorted(HEAVY | {"mininet"}))
    code = f"import sys; {blocked}; sys.argv = ['pymcproxy', '-h']; import proxy.__main__ as m; m.main()"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def prerequisites(target: str) -> set[str]:
    """The prerequisites `make` would build first for `target`, transitively."""
    proc = subprocess.run(
        ["make", "-pnq", "-f", "Makefile"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    rules: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([\w./-]+):(?!=)\s*(.*)$", line)
        if m and not line.startswith(("#", "\t")):
            deps = m.group(2).replace("|", " ").split()
            rules.setdefault(m.group(1), set()).update(deps)
    seen: set[str] = set()
    todo = [target]
    while todo:
        for dep in rules.get(todo.pop(), set()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_analysis_targets_do_not_ask_for_root_or_apt():
    for target in ("figures", "report", "lint", "install"):
        deps = prerequisites(target)
        assert not deps & {"sysdeps", "lab"}, (target, deps)
    for target in ("experiment", "test", "bench", "topo", "list"):
        assert "sysdeps" in prerequisites(target), target
