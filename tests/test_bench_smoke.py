"""Smoke test of the benchmark harness: it runs and prints a table. No timing assertions."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_runs_and_prints_aiozcrx_row():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("| receiver |") for line in lines), out.stdout
    rows = [line for line in lines if line.startswith("| aiozcrx ")]
    assert rows, out.stdout
    # at least one aiozcrx engine actually ran (a number in the GB/s column, not "not run")
    assert any(not row.split("|")[2].strip().startswith("not run") for row in rows), out.stdout
    # --quick writes nothing
    assert "plots:" not in out.stdout
