"""A/B of two checkouts of aiozcrx on the records cases (``benchmarks/records.py``).

Runs ``records.py`` from checkout A and checkout B in turn (the order alternates
each time), ``--rounds 2`` per run, receivers ``uvloop-buffered`` and
``aiozcrx-uring-uvloop`` (or ``--only``). In every round both receivers ran back to
back, so the ratio aiozcrx / uvloop BufferedProtocol of that round is paired and
machine drift cancels; the report gives, per checkout and case, the median of
those per-round ratios with min-max, and the median CPU s/GB of each receiver.
Each checkout needs its own ``.venv`` (``make .venv/.installed`` there).

    git worktree add --detach ../aiozcrx-base <commit> && make -C ../aiozcrx-base .venv/.installed
    .venv/bin/python benchmarks/ab.py --a ../aiozcrx-base --b . --alternations 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REF = "uvloop-buffered"


def run_records(tree: str, cases: str, only: str, out: str, extra: list[str]) -> dict:
    subprocess.run([os.path.join(tree, ".venv", "bin", "python"), os.path.join(tree, "benchmarks", "records.py"),
                    "--cases", cases, "--only", only, "--rounds", "2", "--json", out] + extra,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        runs: dict = json.load(f)["runs"]
    return runs


def paired(runs: dict, subject: str) -> dict[str, list[tuple[float, float, float]]]:
    """case -> [(subject / REF, subject CPU s/GB, REF CPU s/GB)] per round."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for case, by_name in runs.items():
        rounds: dict[int, dict[str, float]] = {}
        for name, results in by_name.items():
            for k, r in enumerate(results):
                if r.get("bytes"):
                    rounds.setdefault(k, {})[name] = (r["user"] + r["sys"]) / (r["bytes"] / 1e9)
        for d in rounds.values():
            if subject in d and REF in d:
                out.setdefault(case, []).append((d[subject] / d[REF], d[subject], d[REF]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="checkout A (with its .venv)")
    ap.add_argument("--b", required=True, help="checkout B (with its .venv)")
    ap.add_argument("--alternations", type=int, default=4, help="runs per checkout")
    ap.add_argument("--cases", default="paced,unpaced,conns64")
    ap.add_argument("--subject", default="aiozcrx-uring-uvloop")
    ap.add_argument("--quick", action="store_true", help="smoke run: one run each, paced, 4 MiB per receiver")
    args = ap.parse_args(argv)
    extra: list[str] = []
    if args.quick:
        args.alternations, args.cases, extra = 1, "paced", ["--bytes", str(4 << 20)]
    trees = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    only = f"{REF},{args.subject}"
    got: dict[str, dict[str, list[tuple[float, float, float]]]] = {"A": {}, "B": {}}
    with tempfile.TemporaryDirectory(prefix="aiozcrx-ab.") as tmp:
        for i in range(args.alternations):
            order = ["A", "B"] if i % 2 == 0 else ["B", "A"]
            for t in order:
                runs = run_records(trees[t], args.cases, only, os.path.join(tmp, f"{t}{i}.json"), extra)
                for case, rows in paired(runs, args.subject).items():
                    got[t].setdefault(case, []).extend(rows)
                print(f"run {i + 1}/{args.alternations} {t} done", file=sys.stderr, flush=True)
    print(f"A = {trees['A']}\nB = {trees['B']}\n")
    print(f"| checkout | case | paired {args.subject} / {REF} per round, median (min-max) | n "
          f"| {args.subject} CPU s/GB | {REF} CPU s/GB |")
    print("|---|---|---|---|---|---|")
    for t in ("A", "B"):
        for case, rows in got[t].items():
            rs = sorted(r[0] for r in rows)
            print(f"| {t} | {case} | {statistics.median(rs):.3f} ({rs[0]:.3f}-{rs[-1]:.3f}) | {len(rs)} "
                  f"| {statistics.median(r[1] for r in rows):.3f} | {statistics.median(r[2] for r in rows):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
