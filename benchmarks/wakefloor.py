"""The kernel's floor under the paced case: what each way of being woken costs a
receiver written in C, beside the Python receivers, in the same rounds.

records.py's paced case (4 KiB every 10 us, one connection) leaves aiozcrx ~1.1-1.25x
uvloop BufferedProtocol's CPU per GB, and the profile puts the difference in the
kernel. This asks the question without Python or an event loop library in the way:
``benchmarks/wakefloor.c`` (compiled here with the system's cc, no liburing) receives
the same stream four ways, and the ratio between its modes is the part of the gap
that no user-space work can remove:

- ``c-read``: epoll on the socket, one ``read(2)`` per readiness (what uvloop does);
- ``c-uring-evfd``: what aiozcrx does: DEFER_TASKRUN ring, multishot recv into a
  provided buffer ring, the ring's eventfd in epoll (switched off while we work),
  one ``io_uring_enter`` per wake-up carrying the eventfd's reset as an
  ``IORING_OP_READ``;
- ``c-uring-evfd-read2``: the same with the eventfd reset by ``read(2)``;
- ``c-uring-ringfd``: no eventfd and no DEFER_TASKRUN: the ring fd itself in epoll,
  the task interrupted to run the task work, completions posted before
  ``epoll_wait`` returns.

The Python receivers (default: uvloop BufferedProtocol and aiozcrx uring on uvloop)
run in the same rounds, interleaved, with records.py's sender and its pinning
(receiver CPU 0, sender CPU 1). Receiver CPU per GB and per record, medians
(min-max), and per-round paired ratios against ``c-read`` and against uvloop
BufferedProtocol.

    .venv/bin/python benchmarks/wakefloor.py                  # paced, 5 rounds x 2 s (~2 min)
    .venv/bin/python benchmarks/wakefloor.py --cases paced,unpaced,conns64
    .venv/bin/python benchmarks/wakefloor.py --modes read,uring-evfd@inc+bufs=8+timeout=200 --with ''

A C mode takes wakefloor.c's options after "@", joined by "+": ``inc`` (incremental
buffers), ``bufs=N`` (buffers in the ring, a power of two; default 64), ``size=B``
(buffer size; default 64 KiB), ``timeout=MS`` (epoll_wait's timeout: what a
pending loop timer costs), ``thp``, ``rewind``, ``timing``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import records  # noqa: E402
from common import fmt_range, med  # noqa: E402

C_MODES = ("read", "uring-evfd", "uring-evfd-read2", "uring-ringfd")
# The buffers as aiozcrx uses them: incremental (6.12+), a few posted at a time
DEFAULT_MODES = ("read", "uring-evfd@inc+bufs=8", "uring-evfd-read2@inc+bufs=8", "uring-ringfd@inc+bufs=8")
LABELS = {
    "c-read": "C: epoll + read(2) (uvloop's way)",
    "c-uring-evfd": "C: eventfd + DEFER_TASKRUN, reset as an SQE (aiozcrx's way)",
    "c-uring-evfd-read2": "C: eventfd + DEFER_TASKRUN, reset by read(2)",
    "c-uring-ringfd": "C: ring fd in epoll, no eventfd, no DEFER_TASKRUN",
}


def build(outdir: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("wakefloor.py needs a C compiler (cc): apt-get install gcc")
    exe = os.path.join(outdir, "wakefloor")
    subprocess.run([cc, "-O2", "-Wall", "-o", exe, os.path.join(HERE, "wakefloor.c")], check=True)
    return exe


def split_mode(mode: str) -> tuple[str, dict[str, str]]:
    """"uring-evfd@inc+rewind+bufs=8+size=16384" -> the mode and wakefloor.c's
    environment (WF_INC, WF_REWIND, WF_BUFS, WF_SIZE)."""
    base, _, opts = mode.partition("@")
    env = {}
    for opt in filter(None, opts.split("+")):
        key, _, val = opt.partition("=")
        env["WF_" + key.upper()] = val or "1"
    return base, env


def command(exe: str, mode: str) -> list[str]:
    cpu = common.cpu_of("receiver")
    pin = ["taskset", "-c", cpu] if cpu is not None and shutil.which("taskset") else []
    base, env = split_mode(mode)
    setenv = ["env"] + [f"{k}={v}" for k, v in env.items()] if env else []
    return setenv + pin + [exe, base, "{fd}", "{conns}"]


def label(name: str) -> str:
    if name.startswith("c-"):
        base, _, opts = name.partition("@")
        return LABELS[base] + (f", {opts}" if opts else "")
    return records.BY_NAME[name][1]


def table(runs: dict[str, list[dict]], order: list[str]) -> str:
    summ = {n: records.summarize(runs[n]) for n in order}
    refs = [r for r in ("c-read", "uvloop-buffered") if r in order]
    head = ("| receiver | MB/s | CPU s/GB user | CPU s/GB sys | CPU s/GB total | CPU us / 4 KiB "
            "| completions/wake-up | " + " | ".join(f"paired vs {label(r).split(' (')[0]}" for r in refs) + " |")
    lines = [head, "|" + "---|" * (7 + len(refs))]
    for name in order:
        s = summ[name]
        if "skipped" in s:
            lines.append(f"| {label(name)} | not run: {s['skipped']} |" + " |" * (5 + len(refs)))
            continue
        per_rec = [t * 4096 / 1e3 for t in s["total"]]  # s/GB -> us per 4 KiB
        pw = fmt_range(s["per_wakeup"], 1) if "per_wakeup" in s else "-"
        cols = []
        for ref in refs:
            pr = records.paired(runs, name, ref)
            cols.append(fmt_range(pr, 2) if pr and name != ref else "-")
        lines.append(f"| {label(name)} | {fmt_range(s['mbps'], 0)} | {fmt_range(s['user'])} | "
                     f"{fmt_range(s['sys'])} | {fmt_range(s['total'])} | {fmt_range(per_rec, 2)} | {pw} | "
                     + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    records.add_run_args(ap, "paced")
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES),
                    help="C receivers: " + ", ".join(C_MODES) + "; MODE@opt+opt sets wakefloor.c's "
                    "WF_ options (inc, rewind, thp, timing, bufs=N, size=B, timeout=MS)")
    ap.add_argument("--with", dest="python", default="uvloop-buffered,aiozcrx-uring-uvloop",
                    help="Python receivers from records.py: " + ", ".join(records.BY_NAME))
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 MiB per run, 1 round")
    ap.add_argument("--json", help="write the raw runs here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.bytes = 1, 4 << 20
    modes = [m for m in args.modes.split(",") if m]
    py = [n for n in args.python.split(",") if n]
    cases = [c for c in args.cases.split(",") if c]
    bad = ([m for m in modes if split_mode(m)[0] not in C_MODES] + [n for n in py if n not in records.BY_NAME]
           + [c for c in cases if c not in records.CASES])
    if bad:
        ap.error(f"unknown mode(s), receiver(s) or case(s): {bad}")
    common._cpus()  # before any child: the CPUs to pin to
    tmp = tempfile.mkdtemp(prefix="aiozcrx-wakefloor.")
    try:
        exe = build(tmp)
        order = [f"c-{m}" for m in modes] + py
        all_runs: dict[str, dict[str, list[dict]]] = {}
        out = [f"{platform.uname().release}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
               f"{args.rounds} rounds x {args.seconds:g} s per receiver and case, interleaved; "
               f"receiver pinned to CPU {common.cpu_of('receiver')}, sender to CPU {common.cpu_of('sender')}. "
               "Medians (min-max)."]
        for case in cases:
            runs = records.run_rounds(case, order, args,
                                      lambda name: command(exe, name[2:]) if name.startswith("c-") else None)
            all_runs[case] = runs
            out.append(f"### {records.CASES[case][0]} (`--cases {case}`)\n\n{table(runs, order)}")
        print("\n\n".join(out))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"runs": all_runs, "order": order, "cases": cases}, f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
