"""Run the benchmarks: ``python -m tests.benchmarks [NAME ...] [--quick]`` (``make bench``).

Each benchmark prints its figures; RESULTS.md records them with the command that made them.
The convergence benchmark caches its runs under runs/bench-convergence, so only its first
full run takes hours.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "step": "tests.benchmarks.bench_step",
    "secagg": "tests.benchmarks.bench_secagg",
    "convergence": "tests.benchmarks.bench_convergence",
    "second-moment": "tests.benchmarks.bench_second_moment",
    "ingest": "tests.benchmarks.bench_ingest",
    "agent": "tests.benchmarks.bench_agent",
    "cohort": "tests.benchmarks.bench_cohort",
    "fleet": "tests.benchmarks.bench_fleet",
    "warm-up": "tests.benchmarks.bench_warm_up",
    "secure-cohort": "tests.benchmarks.bench_secure_cohort",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"from {', '.join(BENCHMARKS)}; default: all")
    parser.add_argument("--quick", action="store_true", help="a short smoke run of each")
    args = parser.parse_args()
    if unknown := sorted(set(args.names) - set(BENCHMARKS)):
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    failed = []
    for name in args.names or list(BENCHMARKS):
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(BENCHMARKS[name])
        if module.main(["--quick"] if args.quick else []) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
