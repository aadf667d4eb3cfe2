"""Latency: request/response round trips through a server, aiozcrx against plain loops.

Case ``echo``: one connection over 127.0.0.1, TCP_NODELAY on both ends; the client
sends 64 bytes and waits for the server to echo all 64 back, one round trip at a
time. The client is a process of its own with a blocking socket (no timeout, so no
``poll()`` before each ``recv``) and ``time.perf_counter_ns`` around each round trip;
it runs ``--warmup`` round trips first (not counted: they also wait out the server's
start) and then ``--count``, and checks that every echo is the bytes it sent.

Servers, each a fresh process per run, on an inherited listening socket:

- plain asyncio and plain uvloop: ``loop.create_server(Echo, sock=...)``;
- aiozcrx engine ``uring`` through ``aiozcrx.create_server``, on asyncio and on
  uvloop, with ``wake="auto"`` (the start-up probe's choice), and forced
  ``wake="eventfd"`` and ``wake="socket"``;
- aiozcrx engine ``socket`` (no ring) on both loops.

The echo protocol is the same everywhere: ``transport.write(bytes(data))``.
``AIOZCRX_WAKE`` is removed from the servers' environment, so ``auto`` is the
probe's own choice. With 2+ CPUs the server is pinned to CPU 0 and the client to
CPU 1 (``sched_setaffinity``). Variants interleaved round by round, the order
rotating; per run the client reports the median, p90 and p99 round trip and round
trips per second; the table gives medians (min-max) over the rounds, the ratio of
each median to the plain server's on the same loop (asyncio-based against plain
asyncio, uvloop-based against plain uvloop) and the per-round paired ratio.

A kernel that defers a DEFER_TASKRUN ring's eventfd signal (``aiozcrx doctor``;
``aiozcrx.engines.wake.kernel_wake()``) makes each round trip of the forced
``eventfd`` variants wait one RCU grace period (~16 ms): where the probe says so,
those variants run at most ``--slow-count`` round trips (and ``--slow-warmup``)
per run, and every run stops measuring after ``--budget`` seconds; the output says
which runs were capped.

    .venv/bin/python benchmarks/latency.py                  # 5 rounds x 2000 round trips (~1-2 min)
    .venv/bin/python benchmarks/latency.py --quick          # smoke run: 1 round x 200 (< 30 s)
    .venv/bin/python benchmarks/latency.py --only asyncio-protocol,aiozcrx-uring-asyncio --rounds 9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import cpu_of, emit, fmt_range, med, pin  # noqa: E402

WAKE_ENV = "AIOZCRX_WAKE"  # aiozcrx.engines.wake.WAKE_ENV: not imported, to keep aiozcrx out of this process

CASES = {
    # name: (label, bytes per request and per response)
    "echo": ("64-byte echo round trips, one connection, TCP_NODELAY", 64),
}

VARIANTS = [
    # name, label, loop, engine (None: the loop's own server), wake (None: not a ring)
    ("asyncio-protocol", "asyncio Protocol (loop.create_server)", "asyncio", None, None),
    ("aiozcrx-uring-asyncio", "aiozcrx uring, asyncio, wake auto", "asyncio", "uring", "auto"),
    ("aiozcrx-uring-asyncio-eventfd", "aiozcrx uring, asyncio, wake eventfd", "asyncio", "uring", "eventfd"),
    ("aiozcrx-uring-asyncio-socket", "aiozcrx uring, asyncio, wake socket", "asyncio", "uring", "socket"),
    ("aiozcrx-socket-asyncio", "aiozcrx socket, asyncio", "asyncio", "socket", None),
    ("uvloop-protocol", "uvloop Protocol (loop.create_server)", "uvloop", None, None),
    ("aiozcrx-uring-uvloop", "aiozcrx uring, uvloop, wake auto", "uvloop", "uring", "auto"),
    ("aiozcrx-uring-uvloop-eventfd", "aiozcrx uring, uvloop, wake eventfd", "uvloop", "uring", "eventfd"),
    ("aiozcrx-uring-uvloop-socket", "aiozcrx uring, uvloop, wake socket", "uvloop", "uring", "socket"),
    ("aiozcrx-socket-uvloop", "aiozcrx socket, uvloop", "uvloop", "socket", None),
]
BY_NAME = {v[0]: v for v in VARIANTS}
REF = {"asyncio": "asyncio-protocol", "uvloop": "uvloop-protocol"}  # the plain server of each loop


# ------------------------------------------------------------------- client
def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list."""
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q) - 1))]


def client_main(port: int, size: int, count: int, warmup: int, budget: float) -> None:
    pin("sender")
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = bytes(i % 251 for i in range(size))
    buf = bytearray(size)
    view = memoryview(buf)
    send, recv_into = s.sendall, s.recv_into

    def round_trip() -> None:
        send(msg)
        got = 0
        while got < size:
            n = recv_into(view[got:], size - got)
            if not n:
                raise SystemExit(f"the server closed the connection after {got} of {size} bytes")
            got += n

    for _ in range(warmup):
        round_trip()
    clock = time.perf_counter_ns
    lat = []
    t_start = clock()
    deadline = t_start + int(budget * 1e9)
    for _ in range(count):
        t0 = clock()
        round_trip()
        t1 = clock()
        lat.append(t1 - t0)
        if buf != msg:
            raise SystemExit("the echo is not the bytes sent")
        if t1 > deadline:
            break
    wall = (clock() - t_start) / 1e9
    s.close()
    lat.sort()
    print(json.dumps({"n": len(lat), "asked": count, "warmup": warmup, "wall": wall,
                      "capped": len(lat) < count, "rtps": len(lat) / wall,
                      "median_us": percentile(lat, 0.5) / 1e3, "p90_us": percentile(lat, 0.9) / 1e3,
                      "p99_us": percentile(lat, 0.99) / 1e3, "max_us": lat[-1] / 1e3,
                      "mean_us": sum(lat) / len(lat) / 1e3}))


# ------------------------------------------------------------------- server
class Echo(asyncio.Protocol):
    def __init__(self, done: asyncio.Future):
        self.done = done

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # the loops set it already; the same on every server, to be sure
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.transport.write(bytes(data))  # aiozcrx's data is a view, valid only during the call

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def serve(variant, listener: socket.socket) -> dict:
    name, _label, _loop, engine, wake = variant
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    res: dict = {"name": name}
    if engine is None:
        srv = await loop.create_server(lambda: Echo(done), sock=listener)
    else:
        import aiozcrx
        opts = {"wake": wake} if wake else {}
        srv = await aiozcrx.create_server(lambda: Echo(done), sock=listener, engine=engine,
                                          receiver_options=opts)
    try:
        await done  # the client's one connection has closed
        if engine is not None:
            st = srv.receiver.stats()
            res["engine"] = srv.receiver.engine
            for k in ("wake", "wake_reason", "kernel_eventfd", "wakeups", "socket_wakeups"):
                if k in st:
                    res[k] = st[k]
    finally:
        srv.close()
        await srv.wait_closed()
    return res


def server_main(name: str, fd: int) -> None:
    pin("receiver")
    variant = BY_NAME[name]
    coro = serve(variant, socket.socket(fileno=fd))
    if variant[2] == "uvloop":
        import uvloop
        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result))


# ------------------------------------------------------------ orchestration
def child_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != WAKE_ENV}


def probe() -> dict:
    """What the kernel does with the eventfd and what wake="auto" takes, asked in a
    child (nothing of aiozcrx stays in this process), AIOZCRX_WAKE removed."""
    code = ("import json; from aiozcrx.engines.wake import kernel_wake, choose_wake; k = kernel_wake(); "
            "print(json.dumps({'inline': k.inline, 'summary': k.summary, 'auto': choose_wake('auto')[0]}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=child_env())
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        why = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        return {"inline": None, "summary": f"not known: the probe failed ({why})", "auto": "?"}


def slow(name: str, kernel: dict) -> bool:
    """A forced eventfd wake-up on a kernel that does not signal it inline."""
    return BY_NAME[name][4] == "eventfd" and kernel["inline"] is not True


def run_one(name: str, case: str, args, count: int, warmup: int) -> dict:
    listener = socket.create_server(("127.0.0.1", 0))
    port, fd = listener.getsockname()[1], listener.fileno()
    me = os.path.abspath(__file__)
    srv = subprocess.Popen([sys.executable, me, "--server", name, "--fd", str(fd)], pass_fds=(fd,),
                           env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listener.close()
    cli = subprocess.Popen([sys.executable, me, "--client", str(port), "--size", str(CASES[case][1]),
                            "--count", str(count), "--warmup", str(warmup), "--budget", str(args.budget)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c_out, c_err = cli.communicate(timeout=args.budget + 120)
        s_out, s_err = srv.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        for p in (cli, srv):
            p.kill()
            p.communicate()
        return {"name": name, "error": "timed out"}
    if srv.returncode != 0 or cli.returncode != 0:
        err = s_err if srv.returncode != 0 else c_err
        return {"name": name, "error": (err.strip().splitlines() or ["exit status"])[-1][:300]}
    res = json.loads(s_out.strip().splitlines()[-1])
    res.update(json.loads(c_out.strip().splitlines()[-1]))
    return res


def run_all(args, order: list[str], kernel: dict) -> dict:
    runs: dict[str, dict[str, list[dict]]] = {}
    sizes = {n: ((min(args.count, args.slow_count), min(args.warmup, args.slow_warmup)) if slow(n, kernel)
                 else (args.count, args.warmup)) for n in order}
    for case in args.cases:
        runs[case] = {n: [] for n in order}
        for r in range(args.rounds):
            k = r % len(order)
            for name in order[k:] + order[:k]:
                res = run_one(name, case, args, *sizes[name])
                runs[case][name].append(res)
                what = (f"median {res['median_us']:.0f} us, p99 {res['p99_us']:.0f} us, {res['rtps']:.0f}/s"
                        if "n" in res else res["error"])
                print(f"  {case} round {r + 1} {name}: {what}", file=sys.stderr)
    return {"kernel": kernel, "order": order, "cases": args.cases, "sizes": sizes, "runs": runs}


# --------------------------------------------------------------- reporting
def paired(runs: dict[str, list[dict]], name: str, ref: str) -> list[float]:
    """Per-round ratio of the medians, name / ref (both ran in that round)."""
    return [a["median_us"] / b["median_us"] for a, b in zip(runs.get(name, []), runs.get(ref, []))
            if "n" in a and "n" in b]


def table(runs: dict[str, list[dict]], order: list[str]) -> str:
    lines = ["| server | wake path | round trips/run | median us | p90 us | p99 us | round trips/s "
             "| median vs plain, same loop | paired vs plain (per round) | eventfd / socket wake-ups per round trip |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in order:
        _n, label, loopname, engine, _wake = BY_NAME[name]
        good = [r for r in runs[name] if "n" in r]
        if not good:
            why = next((r["error"] for r in runs[name] if "error" in r), "no runs")
            lines.append(f"| {label} | not run: {why} |" + " |" * 8)
            continue
        path = good[0].get("wake") or ("-" if engine is None else f"- (engine {good[0].get('engine')})")
        ns = sorted({r["n"] for r in good})
        nrt = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
        if any(r["capped"] for r in good):
            nrt += " (budget)"
        ref = REF[loopname]
        ref_good = [r for r in runs.get(ref, []) if "n" in r]
        ratio = pcol = "-"
        if ref_good and name != ref:
            ratio = f"{med([r['median_us'] for r in good]) / med([r['median_us'] for r in ref_good]):.2f}"
            pr = paired(runs, name, ref)
            pcol = fmt_range(pr, 2) if pr else "-"
        wk = "-"
        if "wake" in good[0]:  # a ring engine (engine socket's "wakeups" are its own epoll's)
            per = [(r["wakeups"] / (r["n"] + r["warmup"]), r.get("socket_wakeups", 0) / (r["n"] + r["warmup"]))
                   for r in good]
            wk = f"{med([e for e, _ in per]):.2f} / {med([s for _, s in per]):.2f}"
        lines.append(f"| {label} | {path} | {nrt} | {fmt_range([r['median_us'] for r in good], 1)} | "
                     f"{fmt_range([r['p90_us'] for r in good], 1)} | {fmt_range([r['p99_us'] for r in good], 1)} | "
                     f"{fmt_range([r['rtps'] for r in good], 0)} | {ratio} | {pcol} | {wk} |")
    return "\n".join(lines)


def report(res: dict, args) -> str:
    kernel, order = res["kernel"], res["order"]
    pinned = ("server pinned to CPU 0, client to CPU 1" if cpu_of("receiver") is not None
              else "not pinned (1 CPU)")
    head = (f"{platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
            f"kernel eventfd signal: {kernel['summary']}; wake=\"auto\" takes: {kernel['auto']}. "
            f"{args.rounds} round{'s' if args.rounds != 1 else ''} x {args.count} round trips per server (after {args.warmup} not counted), "
            f"{pinned}. Medians (min-max) over the rounds; ratios against plain asyncio / plain uvloop.")
    capped = [n for n in order if res["sizes"][n][0] < args.count]
    if capped:
        c, w = res["sizes"][capped[0]]
        head += (f"\n\nCapped: {'; '.join(BY_NAME[n][1] for n in capped)} ran {c} round trips per run "
                 f"(after {w}): on this kernel each of their round trips waits for the deferred eventfd signal.")
    budget = sorted({n for runs in res["runs"].values() for n, rs in runs.items() if any(r.get("capped") for r in rs)})
    if budget:
        head += (f"\n\n(budget): {'; '.join(BY_NAME[n][1] for n in budget)} stopped measuring after "
                 f"{args.budget:g} s in some runs.")
    parts = [head]
    for case in res["cases"]:
        parts.append(f"### {CASES[case][0]} (`--cases {case}`)\n\n{table(res['runs'][case], order)}")
    return "\n\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", type=int, default=None, help="measured round trips per run (default 2000)")
    ap.add_argument("--warmup", type=int, default=None, help="round trips before them (default 100)")
    ap.add_argument("--slow-count", type=int, default=200,
                    help="at most this many for the forced-eventfd servers where the kernel defers the signal")
    ap.add_argument("--slow-warmup", type=int, default=20)
    ap.add_argument("--budget", type=float, default=5.0, help="seconds of measuring per run at most")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--only", default="", help="comma-separated servers: " + ", ".join(BY_NAME))
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round x 200 round trips (after 20; 50 after 5 where capped)")
    ap.add_argument("--json", help="write the raw runs here")
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client is not None:
        client_main(args.client, args.size, args.count, args.warmup, args.budget)
        return 0
    if args.server:
        server_main(args.server, args.fd)
        return 0
    if args.quick:
        args.rounds = 1
        args.slow_count, args.slow_warmup = min(args.slow_count, 50), min(args.slow_warmup, 5)
    if args.count is None:
        args.count = 200 if args.quick else 2000
    if args.warmup is None:
        args.warmup = 20 if args.quick else 100
    order = [n for n in args.only.split(",") if n] or [v[0] for v in VARIANTS]
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = [n for n in order if n not in BY_NAME] + [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"unknown server(s) or case(s) {unknown}")
    res = run_all(args, order, probe())
    return emit(res, report(res, args), args.json)


if __name__ == "__main__":
    sys.exit(main())
