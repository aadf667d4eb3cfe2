"""Micro-benchmark of the per-completion path: view creation + data_received + recycle.

Two parts, printed as one markdown table:

1. Pure-Python floors (no I/O), ns per iteration, best of ``--repeat``:
   - ``slice``: ``area[off:off + 4096]`` of a whole-area memoryview, then dropped;
   - ``call``: a bare ``protocol.data_received(view)`` with a prebuilt view;
   - ``slice+call``: both, what a pure-Python dispatcher could do at best (with no
     release notification, so no recycling).
2. Real completions: a sender process streams ``--mib`` MiB over loopback TCP; the
   receiver (this process) takes it with ``Receiver(engine=E, buf_size=4096)`` so
   each completion carries at most 4 KiB, and for reference with uvloop's
   BufferedProtocol reading into a 4 KiB buffer (one callback per 4 KiB read).
   Reported per completion: dispatch ns (ring engines: wall time inside the C
   dispatcher's drain + refill publish, clock_gettime around each round: exactly
   view creation + ``data_received`` + recycle, nothing else), user CPU ns (the
   same plus the event loop's share and syscall entry, from
   ``getrusage(RUSAGE_SELF)``; the kernel splits user/sys by tick sampling, so
   this column is noisy for short runs), sys CPU ns (the kernel: copy to user
   space, io_uring/syscall work) and total; medians over ``--repeat``
   interleaved runs.

Usage:
    .venv/bin/python benchmarks/micro.py                      # host: engines uring, socket
    .venv/bin/python benchmarks/micro.py --engines uring --mib 256 --repeat 3
    .venv/bin/python benchmarks/micro.py --guest              # zcrx-copy in the UML 7.x guest
    # same as: tests/uml/run-in-guest.sh -- '.venv/bin/python benchmarks/micro.py --engines zcrx-copy,uring'

``--guest`` re-runs this script inside ``tests/uml/run-in-guest.sh`` (one CPU in the
guest, so the sender and receiver share it: compare within the guest run only)
with engines zcrx-copy and uring; zcrx-copy completions are 4 KiB (one page).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHUNK = 4096


# the same counting protocols as the bulk benchmark (run.py), reading 4 KiB here
from common import BufferedSink, ProtoSink as Sink, ring_dispatcher  # noqa: E402  (benchmarks/ is sys.path[0])


def BufSink(done):  # noqa: N802 - a protocol factory named like the class it makes
    return BufferedSink(done, CHUNK)


# ------------------------------------------------------------ pure floors
def floors(n: int, repeat: int) -> dict[str, float]:
    area = memoryview(bytes(32 << 20)).toreadonly()
    nslots = (32 << 20) // CHUNK
    offs = [(i % nslots) * CHUNK for i in range(n)]
    proto = Sink()
    dr = proto.data_received
    view = area[:CHUNK]
    out = {}

    def t_slice():
        t = time.perf_counter_ns()
        for off in offs:
            v = area[off:off + CHUNK]
            del v
        return time.perf_counter_ns() - t

    def t_call():
        t = time.perf_counter_ns()
        for _off in offs:
            dr(view)
        return time.perf_counter_ns() - t

    def t_both():
        t = time.perf_counter_ns()
        for off in offs:
            dr(area[off:off + CHUNK])
        return time.perf_counter_ns() - t

    def t_empty():
        t = time.perf_counter_ns()
        for _off in offs:
            pass
        return time.perf_counter_ns() - t

    res = {"empty": [], "slice": [], "call": [], "slice+call": []}
    for _ in range(repeat):
        res["empty"].append(t_empty() / n)
        res["slice"].append(t_slice() / n)
        res["call"].append(t_call() / n)
        res["slice+call"].append(t_both() / n)
    for k, v in res.items():
        out[k] = min(v)
    return out


# ------------------------------------------------------------ real completions
async def _receive(engine: str, total: int) -> dict:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    sender = subprocess.Popen([sys.executable, os.path.join(HERE, "run.py"), "--sender", str(port),
                               "--bytes", str(total)])
    conn, _ = await loop.sock_accept(listener)
    listener.close()
    done = loop.create_future()
    try:
        if engine == "uvloop-buffered-4k":
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            _t, proto = await loop.connect_accepted_socket(lambda: BufSink(done), conn)
            await done
            t1 = time.perf_counter()
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            completions = proto.calls
            wakeups = None
            dispatch_ns = None
        else:
            import aiozcrx
            name, _, variant = engine.partition("/")  # "uring/no-reuse": view reuse off
            async with aiozcrx.Receiver(engine=name, buf_size=CHUNK, area_size=16 << 20) as rx:
                dispatcher = ring_dispatcher(rx)
                if dispatcher is not None:
                    dispatcher.set_timing(True)  # clock_gettime around each dispatch round
                    if variant == "no-reuse":
                        dispatcher.set_view_reuse(False)
                c0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                _t, proto = await rx.wrap(conn, lambda: Sink(done))
                await done
                t1 = time.perf_counter()
                c1 = resource.getrusage(resource.RUSAGE_SELF)
                st = rx.stats()
                completions = st["completions"]
                wakeups = st.get("wakeups")
                dispatch_ns = st.get("dispatch_ns")
    except BaseException:
        conn.close()  # unblock the sender before waiting for it
        sender.kill()
        raise
    finally:
        sender.wait()
    return {"engine": engine, "bytes": proto.bytes, "calls": proto.calls, "completions": completions,
            "wakeups": wakeups, "dispatch_ns": dispatch_ns, "wall": t1 - t0, "user": c1.ru_utime - c0.ru_utime, "sys": c1.ru_stime - c0.ru_stime}


def one_run(engine: str, total: int) -> dict:
    """Each run in a fresh child process: clean accounting, nothing carried over."""
    code = ("import sys, json; sys.path.insert(0, %r); import micro, uvloop; "
            "print(json.dumps(uvloop.run(micro._receive(%r, %d))))" % (HERE, engine, total))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"engine": engine, "error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]}
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="uring,socket",
                    help="aiozcrx engines, comma-separated; ENGINE/no-reuse turns view reuse off")
    ap.add_argument("--mib", type=int, default=512, help="MiB per run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000, help="iterations of the pure floors")
    ap.add_argument("--no-reference", action="store_true", help="skip uvloop BufferedProtocol 4 KiB")
    ap.add_argument("--guest", action="store_true", help="run inside tests/uml/run-in-guest.sh with zcrx-copy")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 MiB, 1 run, 1000 floor iterations")
    args = ap.parse_args(argv)
    if args.quick:
        args.mib, args.repeat, args.n = 8, 1, 1000

    if args.guest:
        runner = os.path.join(ROOT, "tests", "uml", "run-in-guest.sh")
        chk = subprocess.run([runner, "--check"], capture_output=True, text=True)
        if chk.returncode != 0:
            print(f"guest unavailable: {(chk.stdout + chk.stderr).strip()}")
            return 77
        inner = (f"{shlex.quote(sys.executable)} benchmarks/micro.py --engines zcrx-copy,uring "
                 f"--mib {args.mib} --repeat {args.repeat} --n {args.n}")
        return subprocess.run([runner, "--timeout", "1200", "--", inner], cwd=ROOT).returncode

    fl = floors(args.n, args.repeat)
    engines = [e for e in args.engines.split(",") if e]
    if not args.no_reference:
        engines.append("uvloop-buffered-4k")
    total = args.mib << 20
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.repeat):
        k = r % len(engines)
        for e in engines[k:] + engines[:k]:
            runs[e].append(one_run(e, total))
    print(f"Per-completion cost, {platform.uname().release}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}{' (guest)' if os.environ.get('AIOZCRX_GUEST') else ''}; "
          f"{args.mib} MiB per run, {args.repeat} runs, medians (min-max)\n")
    print("| path | bytes/completion | dispatch ns/completion | user ns/completion | sys ns/completion | "
          "total ns/completion | user CPU s/GB | total CPU s/GB | completions/s | completions/wakeup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("slice", "call", "slice+call"):
        print(f"| pure Python `{name}` (no I/O, best of {args.repeat}, loop overhead "
              f"{fl['empty']:.0f} ns included) | {CHUNK} | - | {fl[name]:.0f} | - | {fl[name]:.0f} | - | - | - | - |")
    for e in engines:
        good = [x for x in runs[e] if "completions" in x and x["completions"]]
        label = "uvloop BufferedProtocol, 4 KiB buffer (reference)" if e == "uvloop-buffered-4k" \
            else f"aiozcrx engine {e}, buf_size 4096"
        if not good:
            err = next((x.get("error") for x in runs[e] if x.get("error")), "no completions")
            print(f"| {label} | not run: {err} | | | | | | | | |")
            continue

        def col(f, nd=0):
            xs = [f(x) for x in good]
            return f"{statistics.median(xs):.{nd}f} ({min(xs):.{nd}f}-{max(xs):.{nd}f})"

        timed = all(x.get("dispatch_ns") for x in good)
        print(f"| {label} | {col(lambda x: x['bytes'] / x['completions'])} | "
              f"{col(lambda x: x['dispatch_ns'] / x['completions']) if timed else '-'} | "
              f"{col(lambda x: x['user'] / x['completions'] * 1e9)} | "
              f"{col(lambda x: x['sys'] / x['completions'] * 1e9)} | "
              f"{col(lambda x: (x['user'] + x['sys']) / x['completions'] * 1e9)} | "
              f"{col(lambda x: x['user'] / (x['bytes'] / 1e9), 3)} | "
              f"{col(lambda x: (x['user'] + x['sys']) / (x['bytes'] / 1e9), 3)} | "
              f"{col(lambda x: x['completions'] / x['wall'] / 1e6, 2)} M | "
              f"{col(lambda x: x['completions'] / x['wakeups'], 1) if all(x.get('wakeups') for x in good) else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
