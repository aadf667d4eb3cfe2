"""Many connections on one Receiver: memory per connection and CPU per completion.

    .venv/bin/python benchmarks/scale.py                       # 100, 1000, 10000 connections
    .venv/bin/python benchmarks/scale.py --counts 100,1000 --engine socket --loop asyncio

For each count N, in a fresh receiver process: a sender process opens N loopback
connections; the receiver wraps each on one Receiver. Measured while the N
connections are attached and armed (before any data), divided by N: the Python heap
it took (tracemalloc, exact) and the RSS growth (pages; coarse for small N). Then
every connection receives --kib KiB (the sender writes round-robin in 4 KiB pieces)
and the receiver's CPU (user+sys, getrusage) is divided by the completions it saw;
that includes each connection's EOF and close, a fixed share per completion for a
given --kib. getrusage's user/sys split is tick-sampled (meaningless for the short
100-connection runs), so the user-space cost is also measured exactly: total CPU
minus the thread CPU spent inside the io_uring syscalls aiozcrx makes (the
kernel's receive work; epoll_wait and interrupts stay in, so it overstates ours),
in separate runs (reading that clock costs syscalls of its own). Each count runs --repeat times (fresh processes, counts interleaved);
medians with min-max. Target (d): both flat from 100 to 10,000 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time

PIECE = 4096


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sender(port: int, n: int, kib: int) -> None:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    # wait for the receiver to say it has attached everything
    go = socks[0].recv(1)
    if go == b"q":  # the receiver measured memory only
        return
    assert go == b"g"
    piece = b"x" * PIECE
    left = {s: kib * 1024 for s in socks}
    for s in socks:
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    while left:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                n_sent = s.send(piece[: min(PIECE, left[s])])
            except BlockingIOError:
                continue
            left[s] -= n_sent
            if not left[s]:
                sel.unregister(s)
                del left[s]
                s.shutdown(socket.SHUT_WR)
    for s in socks:
        s.close()


async def receive(n: int, kib: int, engine: str, buf_size: int, heap: bool = False,
                  split: bool = False) -> dict:
    import tracemalloc

    import aiozcrx

    loop = asyncio.get_running_loop()
    lst = socket.create_server(("127.0.0.1", 0), backlog=4096)
    lst.setblocking(False)
    port = lst.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sender", str(port),
                             "--n", str(n), "--kib", str(kib)])
    done = 0
    all_done = loop.create_future()

    class Sink(asyncio.Protocol):
        def data_received(self, view):
            pass

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            nonlocal done
            done += 1
            if done == n and not all_done.done():
                all_done.set_result(None)

    async with aiozcrx.Receiver(engine=engine, area_size=64 << 20, buf_size=buf_size,
                                cq_entries=16384) as rx:
        rss0 = _rss_kib()
        if heap:  # its own run: tracemalloc's bookkeeping would show in the RSS
            tracemalloc.start()
        heap0 = tracemalloc.get_traced_memory()[0]
        transports = []
        for _ in range(n):
            conn, _ = await loop.sock_accept(lst)
            t, _p = await rx.wrap(conn, Sink)
            transports.append(t)
        await asyncio.sleep(0.2)  # let every receive request be submitted
        heap1 = tracemalloc.get_traced_memory()[0]
        rss1 = _rss_kib()
        from common import ring_dispatcher  # benchmarks/ is sys.path[0]

        dispatcher = ring_dispatcher(rx)
        if split and dispatcher is not None:
            dispatcher.set_timing(True)  # thread CPU inside our io_uring syscalls
        if heap:
            tracemalloc.stop()
            transports[0].write(b"q")  # the sender leaves without sending
            await asyncio.sleep(0.1)
            for t in transports:
                t.abort()
            lst.close()
            proc.wait()
            return {"connections": n, "heap_bytes_per_conn": (heap1 - heap0) / n}
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        s0 = rx.stats()
        t0 = time.perf_counter()
        transports[0].write(b"g")
        await asyncio.wait_for(all_done, 600)
        t1 = time.perf_counter()
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        s1 = rx.stats()
    lst.close()
    proc.wait()
    completions = s1["completions"] - s0["completions"]
    inside = (s1.get("syscall_cpu_ns", 0) - s0.get("syscall_cpu_ns", 0)) / 1e9
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"connections": n, "engine": rx.engine, "rss_kib_per_conn": (rss1 - rss0) / n,
            "completions": completions, "bytes": s1["bytes"] - s0["bytes"],
            "cpu_ns_per_completion": cpu / max(completions, 1) * 1e9,
            "user_ns_per_completion": (c1.ru_utime - c0.ru_utime) / max(completions, 1) * 1e9,
            "outside_ns_per_completion": (cpu - inside) / max(completions, 1) * 1e9 if split else None,
            "wall_s": t1 - t0, "rearms": s1["rearms"] - s0["rearms"],
            "starved": s1["starved"] - s0["starved"], "wakeups": s1["wakeups"] - s0["wakeups"]}


def _range(rows: list[dict], key, fmt="{:.0f}") -> str:
    import statistics

    xs = [key(r) for r in rows]
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="100,1000,10000")
    ap.add_argument("--kib", type=int, default=256, help="KiB each connection receives")
    ap.add_argument("--engine", default="uring")
    ap.add_argument("--buf-size", type=int, default=4096,
                    help="4096 (default): every completion is at most one 4 KiB piece, so counts compare")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sender", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--heap", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 connections x 16 KiB, 1 run")
    args = ap.parse_args(argv)
    if args.quick:
        args.counts, args.kib, args.repeat = "20", 16, 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.sender:
        sender(args.sender, args.n, args.kib)
        return 0
    if args.child:
        coro = receive(args.child, args.kib, args.engine, args.buf_size, args.heap, args.split)
        if args.loop == "uvloop":
            import uvloop
            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
        print(json.dumps(result))
        return 0
    counts = []
    for n in (int(x) for x in args.counts.split(",")):
        if n + 64 > hard:
            print(f"{n} connections: skipped, RLIMIT_NOFILE hard limit is {hard}")
            continue
        counts.append(n)
    rows: dict[int, list[dict]] = {n: [] for n in counts}
    heap: dict[int, float] = {}

    def child(n: int, *extra: str) -> dict | None:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(n),
                              "--kib", str(args.kib), "--engine", args.engine,
                              "--buf-size", str(args.buf_size), "--loop", args.loop, *extra],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            print(f"{n} connections: failed\n{out.stderr[-2000:]}")
            return None
        return json.loads(out.stdout.strip().splitlines()[-1])

    for n in counts:
        r = child(n, "--heap")
        if r is None:
            return 1
        heap[n] = r["heap_bytes_per_conn"]
    split_rows: dict[int, list[dict]] = {n: [] for n in counts}
    ring = args.engine != "socket"
    for _ in range(args.repeat):
        for n in counts:
            r = child(n)
            if r is None:
                return 1
            rows[n].append(r)
            if ring:  # the timed run apart: its clock reads cost syscalls of their own
                r = child(n, "--split")
                if r is None:
                    return 1
                split_rows[n].append(r)
    print(f"engine {args.engine} on {args.loop}, buf_size {args.buf_size}, {args.kib} KiB per connection, "
          f"sender writes 4 KiB pieces round-robin; {args.repeat} runs per count, medians (min-max)\n")
    print("| connections | Python heap bytes / connection | RSS KiB / connection | completions | "
          "CPU ns / completion (user+sys) | outside io_uring syscalls ns / completion | "
          "user ns / completion (sampled) | completions / wake-up | re-arms | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in counts:
        rs = rows[n]
        print(f"| {n} | {heap[n]:.0f} | "
              f"{_range(rs, lambda r: r['rss_kib_per_conn'], '{:.1f}')} | {rs[0]['completions']} | "
              f"{_range(rs, lambda r: r['cpu_ns_per_completion'])} | "
              f"{_range(split_rows[n], lambda r: r['outside_ns_per_completion']) if split_rows[n] else '-'} | "
              f"{_range(rs, lambda r: r['user_ns_per_completion'])} | "
              f"{_range(rs, lambda r: r['completions'] / max(r['wakeups'], 1), '{:.1f}')} | "
              f"{_range(rs, lambda r: r['rearms'])} | {_range(rs, lambda r: r['wall_s'], '{:.2f}')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
