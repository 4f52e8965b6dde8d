"""``python -m benchmarks suite SUITE.yaml`` | ``python -m benchmarks tables RESULTS.jsonl``."""

import argparse
from pathlib import Path

from benchmarks.suite import load_suite, run_suite
from benchmarks.tables import write_tables

parser = argparse.ArgumentParser(prog="python -m benchmarks")
sub = parser.add_subparsers(dest="verb", required=True)
sub.add_parser("suite", help="run the missing cells of a suite, then write its tables").add_argument("suite", type=Path)
sub.add_parser("tables", help="markdown table + plots from a results file").add_argument("results", type=Path)
args = parser.parse_args()
if args.verb == "suite":
    print(f"{run_suite(args.suite)} new records")
    results = load_suite(args.suite).results
else:
    results = args.results
table, plots = write_tables(results)
print(f"wrote {table} and {', '.join(str(p) for p in plots)}")
