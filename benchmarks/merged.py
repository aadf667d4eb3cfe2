"""Merged views on the host: what the C dispatcher and ``data_received`` cost per GB
of zcrx completions, with and without merging, on a fake zcrx ring.

No kernel can register zcrx here, so the completions come from the fake ring of the
tests (``tests/fakering.py``: a CQ, a refill ring and an area in plain memory, the
same ``Area`` and ``Dispatcher`` a zcrx engine runs). Each batch is 256 completions
of one connection, one 4 KiB page each, in ascending pages, as a NIC queue whose page
pool hands out ascending niovs posts them (the refill order: docs/concepts.md,
"Merged views"); the CQ entries are written once and only the tail moves, so the
Python here costs nothing per completion. Per batch: ``Dispatcher.run()`` (drain:
read the CQEs, merge, make or reuse the views, call ``data_received``, release, write
the refill entries), ``Area.publish()`` (reorder and publish the refills) and the
"kernel" taking them (the ring's head set to its tail). Measured with the thread's
CPU clock: the user-space part of a zcrx receiver, what ``guest.py`` calls "CPU
outside the io_uring syscalls" less the event loop's own share, without the guest's
noise. Interleaved rounds, medians (min-max).

    .venv/bin/python benchmarks/merged.py                  # 7 rounds x 1 GiB per setting
    .venv/bin/python benchmarks/merged.py --quick
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from fakering import F_MORE, PAGE, FakeZcrx, user_data  # noqa: E402

BATCH = 256


class Counter:
    """Counts bytes and calls; keeps nothing (as run.py's receivers)."""

    def __init__(self):
        self.bytes = 0
        self.calls = 0

    def data_received(self, view):
        self.bytes += len(view)
        self.calls += 1


def one_run(max_view: int, total: int) -> dict:
    z = FakeZcrx(nbufs=BATCH * 2, cq_entries=BATCH * 2, rq_entries=BATCH * 4)
    if hasattr(z.d, "set_max_view"):   # a build before merged views: none merge anyway
        z.d.set_max_view(max_view)
    sink = Counter()
    z.connect(sink.data_received, slot=0, gen=1)
    ud = user_data(0, 1)
    for i in range(BATCH * 2):   # every CQ slot once: page i % BATCH, all with F_MORE
        ctypes.memmove(z.cqes + i * 32, struct.pack("<QiIQQ", ud, PAGE, F_MORE, (i % BATCH) * PAGE, 0), 32)
    batches = total // (BATCH * PAGE)
    rq_head, rq_tail = z.region, z.region + 64
    t0 = time.thread_time_ns()
    for _ in range(batches):
        z._put_u32(z.ktail, z._u32(z.ktail) + BATCH)
        z.run()
        z.area.publish(False)
        z._put_u32(rq_head, z._u32(rq_tail))     # the kernel takes every refill
    t1 = time.thread_time_ns()
    n = batches * BATCH
    assert sink.bytes == n * PAGE and z.area.stats()["buffers_outstanding"] == 0
    return {"ns_per_completion": (t1 - t0) / n, "s_per_gb": (t1 - t0) / 1e9 / (sink.bytes / 1e9),
            "bytes_per_call": sink.bytes / sink.calls}


def fmt(xs, spec):
    return f"{format(statistics.median(xs), spec)} ({format(min(xs), spec)}-{format(max(xs), spec)})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mib", type=int, default=1024, help="per run")
    ap.add_argument("--max-views", default="4096,16384,65536,262144",
                    help="comma-separated max_view settings (4096: one view per completion)")
    ap.add_argument("--quick", action="store_true", help="1 round x 64 MiB")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.mib = 1, 64
    settings = [int(x) for x in args.max_views.split(",")]
    runs: dict[int, list[dict]] = {m: [] for m in settings}
    for r in range(args.rounds):
        k = r % len(settings)
        for m in settings[k:] + settings[:k]:
            runs[m].append(one_run(m, args.mib << 20))
    base = settings[0]
    print(f"{args.rounds} rounds x {args.mib} MiB per setting, 4 KiB completions in batches of {BATCH}; "
          f"thread CPU; medians (min-max)\n")
    print("| max_view | bytes per data_received | ns per completion | CPU s/GB | vs max_view=%d (paired) |" % base)
    print("|---|---|---|---|---|")
    for m in settings:
        rs = runs[m]
        paired = [a["s_per_gb"] / b["s_per_gb"] for a, b in zip(rs, runs[base])]
        print(f"| {m} | {fmt([x['bytes_per_call'] for x in rs], '.0f')} | "
              f"{fmt([x['ns_per_completion'] for x in rs], '.1f')} | {fmt([x['s_per_gb'] for x in rs], '.4f')} | "
              f"{fmt(paired, '.2f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
