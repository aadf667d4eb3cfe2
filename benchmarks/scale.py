"""Many connections on one Receiver: memory per connection and CPU per completion.

    .venv/bin/python benchmarks/scale.py                       # 100, 1000, 10000 connections
    .venv/bin/python benchmarks/scale.py --counts 100,1000 --engine socket

For each count N, in a fresh receiver process: a sender process opens N loopback
connections; the receiver wraps each on one Receiver. Measured: RSS growth while the
N connections are attached and armed (before any data), divided by N; then every
connection receives --kib KiB (the sender writes round-robin in 4 KiB pieces) and the
receiver's CPU (user+sys, getrusage) is divided by the completions it saw. Target (d):
both flat from 100 to 10,000 connections.
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


async def receive(n: int, kib: int, engine: str, buf_size: int) -> dict:
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
        transports = []
        for _ in range(n):
            conn, _ = await loop.sock_accept(lst)
            t, _p = await rx.wrap(conn, Sink)
            transports.append(t)
        await asyncio.sleep(0.2)  # let every receive request be submitted
        rss1 = _rss_kib()
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
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"connections": n, "engine": rx.engine, "rss_kib_per_conn": (rss1 - rss0) / n,
            "completions": completions, "bytes": s1["bytes"] - s0["bytes"],
            "cpu_ns_per_completion": cpu / max(completions, 1) * 1e9,
            "user_ns_per_completion": (c1.ru_utime - c0.ru_utime) / max(completions, 1) * 1e9,
            "wall_s": t1 - t0, "rearms": s1["rearms"] - s0["rearms"],
            "starved": s1["starved"] - s0["starved"], "wakeups": s1["wakeups"] - s0["wakeups"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="100,1000,10000")
    ap.add_argument("--kib", type=int, default=64, help="KiB each connection receives")
    ap.add_argument("--engine", default="uring")
    ap.add_argument("--buf-size", type=int, default=65536)
    ap.add_argument("--sender", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.sender:
        sender(args.sender, args.n, args.kib)
        return 0
    if args.child:
        print(json.dumps(asyncio.run(receive(args.child, args.kib, args.engine, args.buf_size))))
        return 0
    rows = []
    for n in (int(x) for x in args.counts.split(",")):
        if n + 64 > hard:
            print(f"{n} connections: skipped, RLIMIT_NOFILE hard limit is {hard}")
            continue
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(n),
                              "--kib", str(args.kib), "--engine", args.engine,
                              "--buf-size", str(args.buf_size)],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            print(f"{n} connections: failed\n{out.stderr[-2000:]}")
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"engine {args.engine}, buf_size {args.buf_size}, {args.kib} KiB per connection, "
          f"sender writes 4 KiB pieces round-robin\n")
    print("| connections | RSS KiB / connection | completions | CPU ns / completion (user+sys) | user ns / completion | completions / wake-up | re-arms | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['connections']} | {r['rss_kib_per_conn']:.1f} | {r['completions']} | "
              f"{r['cpu_ns_per_completion']:.0f} | {r['user_ns_per_completion']:.0f} | "
              f"{r['completions'] / max(r['wakeups'], 1):.1f} | {r['rearms']} | {r['wall_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
