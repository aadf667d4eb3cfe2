"""More connections than buffers, slow consumers: the starved buffer ring.

256 connections (``--conns``) send back to back, round robin, 64 KiB per send
(records.py's sender and pinning: receiver CPU 0, sender CPU 1). aiozcrx receives
them on a small area, 64 buffers of 16 KiB (1 MiB, as in issue 25), so the
kernel's buffer ring runs dry again and again; each consumer keeps the views it
got and releases them two turns of the loop later (a consumer that holds data for
a while). A connection whose request ended for want of buffers then waits until
buffers come back, and the starved connections take turns (docs/concepts.md,
"What holding a view costs"); re-armed at once, as before the fix, that was a
busy loop through the kernel (14.7 million re-arms for 5 GB).

The reference is uvloop BufferedProtocol (256 KiB buffer per connection) with the
same connections and the same deferral (its data is in its own buffer: nothing to
hold). Measured: GB/s, receiver CPU per GB (``getrusage`` of the receiver
process), and for aiozcrx the starved episodes, re-arms and re-arms of starved
connections per GB (``Receiver.stats()``). Every run must receive exactly the
bytes the sender sent. Variants interleaved round by round, medians (min-max).

    .venv/bin/python benchmarks/starve.py                 # 5 rounds x 2 s
    .venv/bin/python benchmarks/starve.py --quick         # smoke run
    .venv/bin/python benchmarks/starve.py --conns 600 --only aiozcrx-uring-uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import records  # noqa: E402
from common import BufferedSink, ProtoSink, fmt_range, med  # noqa: E402

CASE = "starve"
AREA_SIZE = 1 << 20
BUF_SIZE = 16 * 1024
VARIANTS = ("uvloop-buffered", "aiozcrx-uring-uvloop", "aiozcrx-uring-asyncio")
COUNTERS = ("starved", "rearms", "starved_rearms")


class Deferred:
    """Processes what it got two turns of the loop later (one callback chain per
    batch); aiozcrx's views are kept until then."""

    def __init__(self, done=None):
        super().__init__(done)
        self.kept: list = []
        self._due = False

    def _defer(self) -> None:
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(asyncio.get_running_loop().call_soon, self._done)

    def _done(self) -> None:
        self._due = False
        self.kept.clear()


class SlowProtoSink(Deferred, ProtoSink):
    def data_received(self, data):
        super().data_received(data)
        self.kept.append(data)
        self._defer()

    def connection_lost(self, exc):
        self.kept.clear()
        super().connection_lost(exc)


class SlowBufferedSink(Deferred, BufferedSink):
    def buffer_updated(self, nbytes):
        super().buffer_updated(nbytes)
        self._defer()


async def receive(name: str, socks: list[socket.socket]) -> dict:
    _n, _label, _loop, kind, engine = records.BY_NAME[name]
    loop = asyncio.get_running_loop()
    dones = [loop.create_future() for _ in socks]
    rx = None
    if kind == "aiozcrx":
        import aiozcrx
        rx = aiozcrx.Receiver(engine=engine, area_size=AREA_SIZE, buf_size=BUF_SIZE)
        await rx.__aenter__()
        protos = [(await rx.wrap(s, lambda d=d: SlowProtoSink(d)))[1] for s, d in zip(socks, dones)]
    else:
        protos = [(await loop.connect_accepted_socket(lambda d=d: SlowBufferedSink(d), s))[1]
                  for s, d in zip(socks, dones)]
    st0 = rx.stats() if rx is not None else {}
    window = await records.measured(protos, dones)
    counts = {}
    if rx is not None:
        st = rx.stats()
        counts = {k: st[k] - st0.get(k, 0) for k in COUNTERS if k in st}
        await rx.__aexit__(None, None, None)
    return {"name": name, "bytes": sum(p.bytes for p in protos), "calls": sum(p.calls for p in protos),
            **window, **counts}


def child_main(name: str, fd: int, conns: int) -> None:
    common.pin("receiver")
    listener = socket.socket(fileno=fd)
    socks = []
    for _ in range(conns):
        s, _ = listener.accept()
        s.setblocking(False)
        socks.append(s)
    listener.close()
    coro = receive(name, socks)
    if records.BY_NAME[name][2] == "uvloop":
        import uvloop
        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result))


def table(runs: dict[str, list[dict]], order: list[str]) -> str:
    summ = {n: records.summarize(runs[n]) for n in order}
    ref = summ.get("uvloop-buffered", {})
    lines = ["| receiver | GB/s | CPU s/GB total | total vs uvloop Buffered | paired vs uvloop Buffered "
             "(per round) | starved episodes / GB | re-arms / GB | starved re-arms / GB |",
             "|---|---|---|---|---|---|---|---|"]
    for name in order:
        s = summ[name]
        label = records.BY_NAME[name][1]
        if "skipped" in s:
            lines.append(f"| {label} | not run: {s['skipped']} | | | | | | |")
            continue
        vs = f"{med(s['total']) / med(ref['total']):.2f}" if "total" in ref else "n/a"
        pr = records.paired(runs, name, "uvloop-buffered")
        per_gb = []
        for k in COUNTERS:
            xs = [r[k] / (r["bytes"] / 1e9) for r in runs[name] if r.get("bytes") and k in r]
            per_gb.append(fmt_range(xs, 0) if xs else "-")
        lines.append(f"| {label} | {fmt_range([m / 1e3 for m in s['mbps']], 2)} | {fmt_range(s['total'])} | {vs} | "
                     f"{fmt_range(pr, 2) if pr and name != 'uvloop-buffered' else '-'} | " + " | ".join(per_gb) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    records.add_run_args(ap, CASE)
    ap.add_argument("--conns", type=int, default=256, help="connections (more than the area's 64 buffers)")
    ap.add_argument("--only", default="", help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 MiB per run, 1 round")
    ap.add_argument("--json", help="write the raw runs here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child, args.fd, args.conns)
        return 0
    if args.quick:
        args.rounds, args.bytes = 1, 32 << 20
    order = [n for n in args.only.split(",") if n] or list(VARIANTS)
    bad = [n for n in order if n not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}")
    records.set_conns(CASE, args.conns)  # the sender (another process) gets it through the environment
    common._cpus()  # before any child: the CPUs to pin to
    what = f"{args.bytes} bytes" if args.bytes else f"{args.seconds:g} s"

    def command(name: str) -> list[str]:
        return [sys.executable, os.path.abspath(__file__), "--child", name, "--fd", "{fd}",
                "--conns", "{conns}"]

    runs = records.run_rounds(CASE, order, args, command)
    print(f"{platform.uname().release}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{args.conns} connections, 64 KiB sends round robin; {args.rounds} rounds x {what} per receiver, "
          f"interleaved; receiver pinned to CPU {common.cpu_of('receiver')}, sender to CPU "
          f"{common.cpu_of('sender')}; aiozcrx area {AREA_SIZE >> 10} KiB of {BUF_SIZE >> 10} KiB buffers "
          f"({AREA_SIZE // BUF_SIZE}); every consumer keeps what it got for two turns of the loop. "
          "Medians (min-max).\n")
    print(table(runs, order))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": {CASE: runs}, "order": order, "conns": args.conns}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
