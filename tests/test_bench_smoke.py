"""Smoke test of the benchmark harness: it runs and prints a table. No timing assertions."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_runs_and_prints_aiozcrx_row():
    # the bulk case only: benchmarks/records.py and httpbench.py are smoke-run with --quick by hand
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--cases", "bulk"],
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


def test_bench_kernel_split_and_micro_and_scale_run():
    """The measurement modes the targets are read with: --kernel-split (guest.py),
    micro.py's dispatch timing and view-reuse A/B, scale.py. Tiny sizes; the
    numbers are not checked, only that each produces its rows."""
    py = sys.executable
    bench = os.path.join(ROOT, "benchmarks")
    out = subprocess.run([py, os.path.join(bench, "run.py"), "--quick", "--kernel-split",
                          "--only", "aiozcrx-uring-uvloop"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "- aiozcrx uring, uvloop: " in out.stdout, out.stdout
    out = subprocess.run([py, os.path.join(bench, "micro.py"), "--engines", "uring,uring/no-reuse",
                          "--mib", "8", "--repeat", "1", "--n", "1000", "--no-reference"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| aiozcrx engine uring")]
    assert len(rows) == 2 and all("not run" not in r for r in rows), out.stdout
    # the dispatch column holds a number for the ring engine
    assert all(r.split("|")[3].strip()[0].isdigit() for r in rows), out.stdout
    out = subprocess.run([py, os.path.join(bench, "scale.py"), "--counts", "20", "--kib", "16",
                          "--repeat", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert any(ln.startswith("| 20 |") for ln in out.stdout.splitlines()), out.stdout


def test_bench_tls_runs():
    """benchmarks/tls.py: its rows come out (TLS over aiozcrx and on plain uvloop, the
    A/B of the SSL protocol's feed). No numbers are checked."""
    import shutil
    if shutil.which("openssl") is None:
        import pytest
        pytest.skip("the openssl command is not installed: benchmarks/tls.py makes its certificate with it")
    variants = ["uvloop-tls", "aiozcrx-uring-uvloop-tls"]
    if sys.version_info >= (3, 11):  # the A/B of the BufferedProtocol feed
        variants.append("aiozcrx-uring-uvloop-tls-2copies")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tls.py"), "--quick", "--only",
                          ",".join(variants)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| TLS, ")]
    assert len(rows) == len(variants) and all("TLS_" in r for r in rows), out.stdout


def test_wakefloor_c_receivers_get_every_byte(tmp_path):
    """benchmarks/wakefloor.py builds its C receivers with the system's cc and runs
    them against records.py's sender: every run must receive exactly the bytes sent
    (run_one turns a short count into an error row), in C as in Python."""
    import json

    raw = tmp_path / "floor.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "wakefloor.py"), "--quick",
                          "--cases", "paced,conns64", "--json", str(raw)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(raw.read_text())
    try:
        uring_off = int(open("/proc/sys/kernel/io_uring_disabled").read()) != 0
    except OSError:
        uring_off = False
    for case, runs in data["runs"].items():
        for name, results in runs.items():
            if uring_off and ("uring" in name):
                continue  # io_uring switched off here: those rows say why
            assert results and all(r.get("bytes") for r in results), (case, name, results)


def test_latency_quick_prints_every_server(tmp_path):
    """benchmarks/latency.py (case latency of make bench): a row for every server,
    the plain loops' rows measured; a handful of round trips, no numbers checked."""
    import json

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import latency
    finally:
        sys.path.pop(0)
    raw = tmp_path / "latency.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "latency.py"), "--quick",
                          "--count", "20", "--warmup", "5", "--slow-count", "5", "--slow-warmup", "2",
                          "--json", str(raw)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "kernel eventfd signal: " in lines[0] and 'wake="auto" takes: ' in lines[0], out.stdout
    for _name, label, *_ in latency.VARIANTS:
        assert any(ln.startswith(f"| {label} |") for ln in lines), (label, out.stdout)
    data = json.loads(raw.read_text())
    for name in ("asyncio-protocol", "uvloop-protocol"):
        assert all(r.get("n") for r in data["runs"]["echo"][name]), data["runs"]["echo"][name]


def test_starve_case_runs_and_every_receiver_gets_every_byte(tmp_path):
    """benchmarks/starve.py (make bench's case starve): more connections than
    buffers, slow consumers. Every run receives exactly the bytes sent (run_one
    turns a short count into an error row), and aiozcrx's rows carry its starved
    and re-arm counts. No numbers are checked."""
    import json

    raw = tmp_path / "starve.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "starve.py"), "--quick",
                          "--conns", "96", "--json", str(raw)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| aiozcrx uring")]
    assert len(rows) == 2 and all("not run" not in r for r in rows), out.stdout
    data = json.loads(raw.read_text())
    assert data["conns"] == 96
    for name, results in data["runs"]["starve"].items():
        assert results and all(r.get("bytes") for r in results), (name, results)
        if name.startswith("aiozcrx"):
            assert all("starved_rearms" in r for r in results), (name, results)
