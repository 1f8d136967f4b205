"""Command line: `python -m analysis figures|report|summary`.

Errors are one line on stderr and a non-zero exit status (2 for bad input).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.figures import make_figures
from analysis.load import LoadError, Runs, load_runs
from analysis.report import summary_table, write_report


def _results_dir(raw: str) -> Path:
    path = Path(raw)
    if not path.is_dir():
        raise LoadError(
            f"results directory {path} does not exist: run `make experiment SCENARIO=...` first"
        )
    return path


def _note_excluded(excluded: list[tuple[str, str]]) -> None:
    for path, reason in excluded:
        print(f"excluded {path}: {reason}", file=sys.stderr)


def _completed_runs(results: Path) -> Runs:
    """The completed runs under `results`; none at all is an error (nothing to report on)."""
    runs = load_runs(results)
    if runs.empty:
        excluded = f" ({len(runs.excluded)} incomplete or unreadable)" if runs.excluded else ""
        raise LoadError(
            f"no completed runs under {results}{excluded}: run `make experiment SCENARIO=...` first"
        )
    _note_excluded(runs.excluded)
    return runs


def cmd_figures(args: argparse.Namespace) -> int:
    results = _results_dir(args.results)
    runs = _completed_runs(results)
    outcome = make_figures(runs, results / "figures", results / "bench" / "goodput.json")
    print(f"{len(outcome.written)} file(s) written, {len(outcome.skipped)} figure(s) skipped")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    results = _results_dir(args.results)
    runs = _completed_runs(results)
    path = write_report(runs, results, args.output)
    print(f"wrote {path} ({len(runs.runs)} runs, {len(runs.excluded)} excluded)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    runs = load_runs(args.run_dirs)
    _note_excluded(runs.excluded)
    if runs.empty:
        raise LoadError("no completed runs among the given directories")
    print(summary_table(runs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    figures = sub.add_parser("figures", help="draw fig02, fig04-fig10 into RESULTS/figures")
    figures.add_argument("--results", default="results", help="results root (default: results)")
    figures.set_defaults(func=cmd_figures)
    report = sub.add_parser("report", help="write RESULTS/REPORT.md")
    report.add_argument("--results", default="results", help="results root (default: results)")
    report.add_argument("--output", default=None, help="report path (default: RESULTS/REPORT.md)")
    report.set_defaults(func=cmd_report)
    summary = sub.add_parser("summary", help="print a peering on/off table for run directories")
    summary.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs or roots")
    summary.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
