"""``python -m benchmarks all|goodput|latency|scale [--quick] [--results DIR]`` (``make bench``).

Writes ``DIR/<name>.json`` and ``.csv`` per benchmark (default ``results/bench``), their
figures (fig02 through analysis.figures), and ``DIR/SUMMARY.md``: every target with its
measured value and verdict. Needs root (network namespaces). A missed target is reported,
never an error: the exit status is 0 unless a benchmark could not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from benchmarks import goodput, latency, scale, summary
from benchmarks.results import RESULTS
from lab.paths import run_dir

BENCHMARKS = {"goodput": goodput, "latency": latency, "scale": scale}
NAMES = tuple(BENCHMARKS)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds: namespaces are removed in finally


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("which", choices=("all", *NAMES))
    p.add_argument("--quick", action="store_true", help="short run (under 2 minutes in all)")
    p.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    p.add_argument("--keep-tmp", action="store_true", help="keep DIR/tmp-* (proxy logs)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the benchmarks need root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    run_dir()
    args.results.mkdir(parents=True, exist_ok=True)
    names = NAMES if args.which == "all" else (args.which,)
    t0 = time.monotonic()
    failed = []
    for name in names:
        module = BENCHMARKS[name]
        t = time.monotonic()
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        try:
            module.run(args.results, args.quick, log=lambda s: print(s, flush=True))
        except Exception as exc:  # noqa: BLE001 - report and go on with the next benchmark
            print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
        finally:
            if not args.keep_tmp:
                shutil.rmtree(args.results / f"tmp-{name}", ignore_errors=True)
        print(f"== {name} took {time.monotonic() - t:.1f} s", flush=True)
    path = summary.write(args.results)
    print(f"wrote {path} (all benchmarks: {time.monotonic() - t0:.1f} s)")
    print(path.read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
