"""``python -m benchmarks suite SUITE.yaml [--seeds 0 --budgets 0.1 ...]``
| ``python -m benchmarks tables [RESULTS.jsonl]``."""

import argparse
from pathlib import Path

import torch

from benchmarks.readme import ReadmeError, regenerate
from benchmarks.suite import load_suite, run_suite
from benchmarks.tables import write_tables
from rscompress.errors import UserError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="verb", required=True)
    suite_args = sub.add_parser("suite", help="run the missing cells of a suite, then write its tables")
    suite_args.add_argument("suite", type=Path)
    suite_args.add_argument("--datasets", nargs="+", help="only the parents/cells of these datasets")
    suite_args.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    suite_args.add_argument(
        "--budgets", nargs="+", type=float, help="only these budgets (MACs, or params for a params cell)"
    )
    suite_args.add_argument("--models", nargs="+", help="only the parents (teachers) of these models")
    suite_args.add_argument(
        "--methods",
        nargs="+",
        help="only these methods, by record label (bn-global, distill-dkd; none: the parents' own records)",
    )
    suite_args.add_argument("--students", nargs="+", help="only the distillation cells of these student models")
    suite_args.add_argument("--threads", type=int, help="torch threads (1 when two suites share 2 cores)")
    sub.add_parser(
        "tables",
        help="markdown table + plots from a results file; with none, every table from the committed records "
        "and benchmarks/README.md from benchmarks/README.template.md",
    ).add_argument("results", type=Path, nargs="?")
    args = parser.parse_args(argv)
    if args.verb == "suite":
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            appended = run_suite(
                args.suite,
                datasets=args.datasets,
                seeds=args.seeds,
                budgets=args.budgets,
                models=args.models,
                methods=args.methods,
                students=args.students,
            )
        except UserError as exc:
            parser.error(str(exc))
        print(f"{appended} new records")
        results = load_suite(args.suite).results
    elif args.results is None:
        try:
            written = regenerate()
        except ReadmeError as exc:
            parser.error(str(exc))
        print("wrote " + ", ".join(str(p) for p in written))
        return
    else:
        results = args.results
    table, plots = write_tables(results)
    print(f"wrote {table} and {', '.join(str(p) for p in plots)}")


if __name__ == "__main__":
    main()
