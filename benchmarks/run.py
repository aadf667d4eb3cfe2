"""``make bench``: receiver CPU of aiozcrx against asyncio and uvloop, case by case.

Cases (``--cases``, default all):

- ``bulk`` (this file): bulk loopback receive, one TCP connection, 1 MiB sends;
- ``records`` (``benchmarks/records.py --profile``): 4 KiB records, paced (one every
  10 us), back to back, and over 64 connections; syscalls and Python frames per
  wake-up of the paced case;
- ``http`` (``benchmarks/httpbench.py``): aiohttp and uvicorn uploads and small
  requests (wrk) through the drop-in loop against plain uvloop and asyncio;
- ``floor`` (``benchmarks/wakefloor.py``): the paced case received by small C
  programs (epoll + read(2); io_uring woken through its eventfd, as aiozcrx is;
  the ring fd in epoll) beside uvloop and aiozcrx: what the kernel alone charges;
- ``latency`` (``benchmarks/latency.py``): 64-byte echo round trips, one at a time,
  through plain asyncio / uvloop servers and aiozcrx servers (engine uring with each
  wake-up path, engine socket): median, p90, p99 and round trips/s;
- ``starve`` (``benchmarks/starve.py``): 256 connections on an area of 64
  buffers, consumers that keep their views a while: CPU per GB and GB/s against
  uvloop BufferedProtocol, starved episodes and re-arms per GB;
- ``workers`` (``benchmarks/workers.py``): 1, 2 and 4 workers of ``aiozcrx serve``
  (engine uring, loopback; as root: the workers drop to nobody) beside as many
  plain uvloop workers on one listener: CPU s/GB of all workers and GB/s.

Bulk: one TCP connection over 127.0.0.1; the sender is its own process (``sendall`` of
1 MiB blocks for ``--seconds``, or a fixed byte count with ``--quick``). Every
receiver variant runs in a fresh process of its own, so the CPU time it reports
(``getrusage(RUSAGE_SELF)`` of that process, taken from accept to EOF) is the receiver's
alone. Variants are interleaved round by round (the order rotates each round);
the table gives medians with min-max over the rounds.

    .venv/bin/python benchmarks/run.py                 # every case (+ the guest), writes docs/
    .venv/bin/python benchmarks/run.py --quick         # smoke run of every case, tiny sizes, 1 round, < 1 min
    .venv/bin/python benchmarks/run.py --cases bulk --rounds 5 --seconds 5
    .venv/bin/python benchmarks/run.py --only uvloop-buffered,aiozcrx-uring-uvloop   # bulk only

A full run (not ``--quick``/``--no-write``/``--no-guest``) then runs engine zcrx-copy,
which needs Linux 7.1+, against uvloop inside the User-Mode Linux 7.x guest
(``benchmarks/guest.py``) and adds that table and target (c) to the report.

``--nic`` (inside ``tests/uml/run-in-guest.sh --nic``, after ``aiozcrx nic setup``
has steered the port to the queue): every variant receives over the simulated NIC
instead of loopback, the sender in the peer's network namespace, so that engine
``zcrx`` (a NIC queue: true zero copy) can be compared with the others on the same
path. Port ``AIOZCRX_BENCH_PORT`` (default 9300), queue ``AIOZCRX_BENCH_QUEUE``
(default 1).

Columns: GB/s (bytes / wall seconds, decimal GB), receiver CPU seconds per GB
(user, sys, total), bytes per data_received call, and the ratio of the total
CPU s/GB to uvloop BufferedProtocol's and uvloop Protocol's medians in the same
run (below 1.00 = cheaper).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time

from common import (EXTRA_VARIANTS, RECEIVER_OPTIONS, UNORDERED_REFILLS, VARIANTS,  # benchmarks/ is sys.path[0]
                    BufferedSink, ProtoSink, fmt_range, med, ring_dispatcher)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BLOCK = 1 << 20
BY_NAME = {v[0]: v for v in VARIANTS + EXTRA_VARIANTS}
#: the variants that ask for a receive buffer size (the others: the page size)
RX_BUF_LEN = {"aiozcrx-zcrx-16k-uvloop": 16 << 10, "aiozcrx-zcrx-32k-uvloop": 32 << 10,
              "aiozcrx-zcrx-64k-uvloop": 64 << 10}
# make bench's cases: bulk is this file; the others are scripts of their own, run in turn
CASES = {
    "bulk": (None, "bulk loopback receive, 1 MiB sends, one connection"),
    "records": ("records.py", "4 KiB records: paced, back to back, 64 connections"),
    "http": ("httpbench.py", "aiohttp and uvicorn through the drop-in loop"),
    "floor": ("wakefloor.py", "the kernel's floor under the paced case: C receivers beside ours"),
    "latency": ("latency.py", "request/response round trips: 64 B echo"),
    "starve": ("starve.py", "256 connections on 64 buffers, slow consumers: the starved buffer ring"),
    "workers": ("workers.py", "1, 2 and 4 workers: aiozcrx serve beside as many uvloop workers"),
}


# ----------------------------------------------------------------- sender
def nic_env() -> dict:
    """Where --nic receives: the simulated NIC of `run-in-guest.sh --nic`."""
    return {"ifname": os.environ["AIOZCRX_NIC"], "addr": os.environ["AIOZCRX_NIC_ADDR"],
            "peer_ns": os.environ["AIOZCRX_NIC_PEER_NS"],
            "port": int(os.environ.get("AIOZCRX_BENCH_PORT", "9300")),
            "queue": int(os.environ.get("AIOZCRX_BENCH_QUEUE", "1"))}


def sender_main(port: int, seconds: float, total: int, host: str = "127.0.0.1") -> None:
    block = bytes(range(256)) * (BLOCK // 256)
    view = memoryview(block)
    with socket.create_connection((host, port)) as s:
        if total:
            sent = 0
            while sent < total:
                n = min(BLOCK, total - sent)
                s.sendall(view[:n])
                sent += n
        else:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                s.sendall(block)
        s.shutdown(socket.SHUT_WR)


# ---------------------------------------------------------------- receivers (the protocols: common.py)
def probe_engine(engine: str, **kw) -> tuple[bool, str]:
    """Tries ``Receiver(engine=...)`` in this process; (works, why not)."""
    import aiozcrx

    async def go():
        try:
            async with aiozcrx.Receiver(engine=engine, area_size=4 << 20, **kw) as rx:
                return True, rx.engine
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            return False, f"{type(e).__name__}: {e}"

    return asyncio.run(go())


async def receive(variant, port_cb, listener, buf_size, area_size, kernel_split=False,
                  nic=None) -> dict:
    name, _label, _loopname, kind, engine = variant
    loop = asyncio.get_running_loop()
    listener.setblocking(False)

    async def connect():
        port_cb()
        conn, _ = await loop.sock_accept(listener)
        listener.close()
        return conn

    # engine zcrx binds its NIC queue first: binding restarts the queue, which drops
    # the packets in flight (and TCP then waits for a retransmission timeout)
    conn = None if engine == "zcrx" else await connect()
    done = loop.create_future()
    stats = {}
    if kind == "aiozcrx":
        import aiozcrx
        # set up (ring, area, registration) before the clock starts: a one-off cost
        where = {}
        if engine == "zcrx":
            # On a NIC queue the area must hold what the socket's receive buffer
            # (tcp_rmem max: 16 MB in the guest) and the completions not yet handled
            # (8192 CQEs x 4 KiB) can pin: TCP reopens its window as soon as RECV_ZC
            # takes the data, before we return the buffers. With 32 MiB the NIC ran
            # out on one CPU in about half the rounds (drops, TCP retransmission
            # timeouts: 0.3 instead of 1 GB/s); 64 MiB never did. The refill ring is
            # as large as the area: with 4096 entries for the buffers, returns beyond
            # it waited for our next round and the NIC ran dry before that.
            area_size = max(area_size, 64 << 20)
            nbufs = area_size // 4096
            where = {"interface": nic["ifname"], "queue": nic["queue"],
                     "rq_entries": min(32768, 1 << (nbufs - 1).bit_length())}
            if name in RX_BUF_LEN:
                where["rx_buf_len"] = RX_BUF_LEN[name]
        async with aiozcrx.Receiver(engine=engine, area_size=area_size, buf_size=buf_size,
                                    **where, **RECEIVER_OPTIONS.get(name, {})) as rx:
            if conn is None:
                conn = await connect()
            dispatcher = ring_dispatcher(rx)
            if name in UNORDERED_REFILLS:
                rx._engine.area.set_refill_order(False)  # a measurement switch, as set_timing
            if kernel_split and dispatcher is not None:
                dispatcher.set_timing(True)  # thread CPU inside our io_uring syscalls
            t0 = time.perf_counter()
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            _t, proto = await rx.wrap(conn, lambda: ProtoSink(done))
            await done
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            t1 = time.perf_counter()
            st = rx.stats()
            # wake-ups of either path (eventfd, or the sockets': concepts, "Wake-ups")
            stats = {"completions": st.get("completions"),
                     "merged_completions": st.get("merged_completions", 0),
                     "wakeups": st.get("wakeups", 0) + st.get("socket_wakeups", 0),
                     "engine": rx.engine, "wake": st.get("wake")}
            if engine == "zcrx":
                stats["refill_flushes"] = st.get("refill_flushes")
                stats["rx_buf_len"] = st.get("rx_buf_len")
            if "syscall_cpu_ns" in st:
                stats["syscall_cpu"] = st["syscall_cpu_ns"] / 1e9
    else:
        factory = (lambda: ProtoSink(done)) if kind == "protocol" else (lambda: BufferedSink(done))
        t0 = time.perf_counter()
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        _t, proto = await loop.connect_accepted_socket(factory, conn)
        await done
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        t1 = time.perf_counter()
    return {"name": name, "bytes": proto.bytes, "calls": proto.calls, "wall": t1 - t0,
            "user": c1.ru_utime - c0.ru_utime, "sys": c1.ru_stime - c0.ru_stime, **stats}


def child_main(args) -> None:
    variant = BY_NAME[args.child]
    loopname = variant[2]
    nic = nic_env() if args.nic else None
    if variant[3] == "aiozcrx" and variant[4] in ("zcrx-copy", "zcrx"):
        if variant[4] == "zcrx" and nic is None:
            print(json.dumps({"name": variant[0], "unavailable": "engine zcrx needs a NIC queue "
                              "(--nic, inside tests/uml/run-in-guest.sh --nic)"}))
            return
        where = {"interface": nic["ifname"], "queue": nic["queue"]} if variant[4] == "zcrx" else {}
        ok, why = probe_engine(variant[4], **where)
        if not ok:
            print(json.dumps({"name": variant[0], "unavailable": why}))
            return
        if where:  # the probe's queue binding goes in the ring's exit work: let it go
            from aiozcrx.tools.nic import wait_queue_released
            wait_queue_released(where["interface"], where["queue"])
    if nic:
        # over the simulated NIC: the sender in the peer's network namespace
        listener = socket.create_server((nic["addr"], nic["port"]))
        port, host, prefix = nic["port"], nic["addr"], ["ip", "netns", "exec", nic["peer_ns"]]
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        port, host, prefix = listener.getsockname()[1], "127.0.0.1", []
    total = args.bytes
    procs = []

    def start_sender():
        procs.append(subprocess.Popen(
            prefix + [sys.executable, os.path.abspath(__file__), "--sender", str(port),
                      "--host", host, "--seconds", str(args.seconds), "--bytes", str(total)]))

    coro = receive(variant, start_sender, listener, args.buf_size, args.area_size, args.kernel_split,
                   nic)
    try:
        if loopname == "uvloop":
            import uvloop
            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
    except BaseException:
        for p in procs:  # a sender blocked on a socket nobody reads would never exit
            p.kill()
        raise
    for p in procs:
        p.wait()
    print(json.dumps(result))


# ------------------------------------------------------------ orchestration
def run_child(name: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--seconds", str(args.seconds),
           "--bytes", str(args.bytes), "--buf-size", str(args.buf_size), "--area-size", str(args.area_size)]
    if args.kernel_split:
        cmd.append("--kernel-split")
    if args.nic:
        cmd.append("--nic")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 10 + 120)
    if out.returncode != 0:
        return {"name": name, "error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for name, runs in results.items():
        good = [r for r in runs if "bytes" in r and r["bytes"] > 0]
        if not good:
            why = next((r.get("unavailable") or r.get("error") for r in runs
                        if r.get("unavailable") or r.get("error")), "no runs")
            summary[name] = {"skipped": why}
            continue
        gbps = [r["bytes"] / r["wall"] / 1e9 for r in good]
        user = [r["user"] / (r["bytes"] / 1e9) for r in good]
        sys_ = [r["sys"] / (r["bytes"] / 1e9) for r in good]
        tot = [(r["user"] + r["sys"]) / (r["bytes"] / 1e9) for r in good]
        per_call = [r["bytes"] / max(1, r["calls"]) for r in good]
        # CPU outside the io_uring syscalls we make (kernel work on our behalf,
        # measured with the thread CPU clock): see --kernel-split
        outside = [(r["user"] + r["sys"] - r["syscall_cpu"]) / (r["bytes"] / 1e9)
                   for r in good if "syscall_cpu" in r]
        summary[name] = {"n": len(good), "gbps": gbps, "user": user, "sys": sys_, "total": tot,
                         "bytes_per_call": med(per_call),
                         "completions": med([r["completions"] for r in good if r.get("completions")])
                         if any(r.get("completions") for r in good) else None,
                         "completions_per_gb": [r["completions"] / (r["bytes"] / 1e9) for r in good
                                                if r.get("completions")],
                         "rx_buf_len": good[0].get("rx_buf_len"),
                         "errors": len(runs) - len(good)}
        if outside and len(outside) == len(good):
            summary[name]["outside_syscalls"] = outside
        summary[name]["bytes_per_call_runs"] = per_call
        if all(r.get("completions") for r in good):
            summary[name]["completions_per_gb"] = [r["completions"] / (r["bytes"] / 1e9) for r in good]
    return summary


def table(summary: dict, order: list[str]) -> str:
    ref_b = summary.get("uvloop-buffered", {}).get("total")
    ref_p = summary.get("uvloop-protocol", {}).get("total")
    lines = ["| receiver | GB/s | CPU s/GB user | CPU s/GB sys | CPU s/GB total | bytes/call "
             "| total vs uvloop Buffered | total vs uvloop Protocol |",
             "|---|---|---|---|---|---|---|---|"]
    for name in order:
        s = summary.get(name)
        if s is None:
            continue
        label = BY_NAME[name][1]
        if "skipped" in s:
            lines.append(f"| {label} | not run: {s['skipped']} | | | | | | |")
            continue
        rb = f"{med(s['total']) / med(ref_b):.2f}" if ref_b and med(ref_b) > 0 else "n/a"
        rp = f"{med(s['total']) / med(ref_p):.2f}" if ref_p and med(ref_p) > 0 else "n/a"
        lines.append(f"| {label} | {fmt_range(s['gbps'], 2)} | {fmt_range(s['user'])} | "
                     f"{fmt_range(s['sys'])} | {fmt_range(s['total'])} | {s['bytes_per_call']:.0f} | {rb} | {rp} |")
    return "\n".join(lines)


def plots(summary: dict, order: list[str], outdir: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plots skipped: matplotlib is not installed (`pip install matplotlib` to get them)"
    names = [n for n in order if n in summary and "skipped" not in summary[n]]
    labels = [BY_NAME[n][1] for n in names]
    os.makedirs(outdir, exist_ok=True)
    # CPU s/GB stacked user/sys, with the min-max of the total as error bars
    fig, ax = plt.subplots(figsize=(9, 4.8))
    user = [med(summary[n]["user"]) for n in names]
    sys_ = [med(summary[n]["sys"]) for n in names]
    tot = [med(summary[n]["total"]) for n in names]
    lo = [t - min(summary[n]["total"]) for t, n in zip(tot, names)]
    hi = [max(summary[n]["total"]) - t for t, n in zip(tot, names)]
    y = range(len(names))
    ax.barh(y, user, label="user", color="#4C72B0")
    ax.barh(y, sys_, left=user, label="sys", color="#DD8452")
    ax.errorbar(tot, y, xerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("receiver CPU seconds per GB (median, min-max; lower is better)")
    ax.legend(loc="lower right")
    ax.set_title("Loopback bulk receive, one TCP connection: receiver CPU cost")
    fig.tight_layout()
    p1 = os.path.join(outdir, "bench-cpu-per-gb.png")
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    g = [med(summary[n]["gbps"]) for n in names]
    lo = [v - min(summary[n]["gbps"]) for v, n in zip(g, names)]
    hi = [max(summary[n]["gbps"]) - v for v, n in zip(g, names)]
    ax.barh(y, g, xerr=[lo, hi], color="#55A868", capsize=3)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s (median, min-max; sender-bound, see text)")
    ax.set_title("Loopback bulk receive, one TCP connection: throughput")
    fig.tight_layout()
    p2 = os.path.join(outdir, "bench-gbps.png")
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return f"plots: {os.path.relpath(p1, ROOT)}, {os.path.relpath(p2, ROOT)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of every case (default: 7 for bulk, the scripts' own for the others)")
    ap.add_argument("--cases", default=None,
                    help="comma-separated, of: " + ", ".join(f"{k} ({v[1]})" for k, v in CASES.items())
                    + "; default all, only bulk with --only/--nic/--summary-json/--kernel-split")
    ap.add_argument("--seconds", type=float, default=3.0, help="sender duration per run")
    ap.add_argument("--bytes", type=int, default=0, help="send this many bytes instead of --seconds")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 MiB per run, 1 round, no files written")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--buf-size", type=int, default=65536, help="aiozcrx buf_size")
    ap.add_argument("--area-size", type=int, default=32 << 20, help="aiozcrx area_size")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks-results.md"))
    ap.add_argument("--img", default=os.path.join(ROOT, "docs", "img"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--summary-json", action="store_true",
                    help="also print one line 'SUMMARY-JSON {...}' with the medians (for benchmarks/guest.py)")
    ap.add_argument("--no-guest", action="store_true",
                    help="skip the zcrx-copy comparison in the User-Mode Linux guest (benchmarks/guest.py), "
                         "which a full run (not --quick/--no-write) adds to the report when the guest runs here")
    ap.add_argument("--kernel-split", action="store_true",
                    help="aiozcrx ring engines: also measure the thread CPU spent inside our io_uring "
                         "syscalls (the kernel's receive work) and report CPU s/GB outside them; "
                         "for User-Mode Linux, whose getrusage books kernel time as user")
    ap.add_argument("--nic", action="store_true",
                    help="receive over the simulated NIC (inside tests/uml/run-in-guest.sh --nic, "
                         "the port steered with `aiozcrx nic setup`); needed by the zcrx variants")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sender", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.sender is not None:
        sender_main(args.sender, args.seconds, args.bytes, args.host)
        return 0
    if args.child:
        child_main(args)
        return 0
    explicit_rounds = args.rounds is not None
    if args.rounds is None:
        args.rounds = 7
    if args.quick:
        args.rounds, args.bytes, args.no_write = 1, 8 << 20, True
    if args.cases is None:
        narrow = args.only or args.nic or args.summary_json or args.kernel_split
        args.cases = "bulk" if narrow else ",".join(CASES)
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {', '.join(CASES)}")

    order = [v[0] for v in VARIANTS if v[4] != "zcrx" or args.nic]
    if args.only:
        order = [n for n in args.only.split(",") if n]
        unknown = [n for n in order if n not in BY_NAME]
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(BY_NAME)}")
    if "bulk" not in cases:
        order = []
    t_start = time.time()
    what = f"{args.bytes} bytes" if args.bytes else f"{args.seconds:g} s"
    uname = platform.uname()
    header = tab = ""
    results: dict[str, list[dict]] = {n: [] for n in order}
    summary: dict = {}
    if order:
        results, summary, tab, header = bulk(args, order, what)
    # the other cases, each its own script (benchmarks/records.py, benchmarks/httpbench.py)
    sections = []
    for case in cases:
        if case == "bulk":
            continue
        script, title = CASES[case]
        cmd = [sys.executable, os.path.join(HERE, script)]
        if args.quick:
            cmd.append("--quick")
        elif explicit_rounds:
            cmd += ["--rounds", str(args.rounds)]
        if case == "records" and not args.quick:
            cmd.append("--profile")
        fd, raw = tempfile.mkstemp(prefix="aiozcrx-bench.", suffix=".json")
        os.close(fd)
        cmd += ["--json", raw]
        print(f"\n# {title}: {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:-2])}",
              file=sys.stderr)
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            with open(raw) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = None
        finally:
            os.unlink(raw)
        text = out.stdout.strip() if out.returncode == 0 else \
            f"not run: `{os.path.basename(script)}` exited {out.returncode}\n\n{out.stdout.strip()[-2000:]}"
        print()
        print(f"## {title}")
        print()
        print(text)
        sections.append((case, title, " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                                               for c in cmd[1:-2]), text, data))
    guest_text = ""
    if not args.no_write and not args.no_guest and order:
        # engine zcrx-copy needs 7.1+: its rows come from the 7.x guest (its own
        # run, its own uvloop references: one CPU there, compare within it)
        import guest
        print("\n# the 7.x guest (benchmarks/guest.py) ...", file=sys.stderr)
        status, text = guest.run_guest(args.rounds, args.seconds)
        nic_status, nic_text = guest.run_guest_nic(args.rounds, args.seconds)
        text += ("\n\nOver the simulated NIC (run-in-guest.sh --nic; sender in the peer "
                 "namespace; engine zcrx on a NIC queue):\n" + nic_text)
        guest_text = text
        print()
        print("In the 7.x guest (User-Mode Linux, benchmarks/guest.py):")
        print(text)
    if not args.no_write:
        notes = [plots(summary, order, args.img)] if order else []
        for case, _title, _cmd, _text, data in sections:
            if data is None:
                continue
            if case == "records":
                import records
                notes.append(records.plots(data["runs"], data["order"], args.img))
            elif case == "http":
                import httpbench
                notes.append(httpbench.plots(data["results"], data["order"], args.img))
        note = "; ".join(notes)
        print()
        print(note)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        cmdline = "benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.out, "w") as f:
            f.write("# Benchmark results (generated by benchmarks/run.py)\n\n")
            f.write(f"Command: `{cmdline.strip()}`, started "
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))} on {uname.system} "
                    f"{uname.release} ({uname.machine}, {os.cpu_count()} CPUs)\n\n{note}\n\n")
            if order:
                f.write(f"## Bulk (one connection, 1 MiB sends)\n\n{header}\n\n{tab}\n\n")
            for _case, title, cmd, text, _data in sections:
                f.write(f"## {title} (`{cmd}`)\n\n{text}\n\n")
            if guest_text:
                f.write("## In the 7.x guest (User-Mode Linux, `benchmarks/guest.py`)\n\n")
                f.write(guest_text.strip() + "\n\n")
            f.write("Raw per-run results of the bulk case (JSON lines; the other cases: run their "
                    "script with `--json`):\n\n```\n")
            for name in order:
                for res in results[name]:
                    f.write(json.dumps(res) + "\n")
            f.write("```\n")
    return 0


def bulk(args, order: list[str], what: str):
    """The bulk case (1 MiB sends, one connection): runs, prints; (results, summary, table, header)."""
    # zcrx-copy: detect once (in a child, so nothing of it stays in this process)
    zc = [n for n in order if BY_NAME[n][4] == "zcrx-copy"]
    zc_why = None
    if zc:
        out = subprocess.run([sys.executable, "-c",
                              "import sys, json; sys.path.insert(0, %r); import run; "
                              "print(json.dumps(run.probe_engine('zcrx-copy')))" % HERE],
                             capture_output=True, text=True, timeout=60)
        try:
            ok, why = json.loads(out.stdout.strip().splitlines()[-1])
        except Exception:  # noqa: BLE001
            ok, why = False, (out.stderr.strip().splitlines() or ["probe failed"])[-1]
        if not ok:
            zc_why = why
    results: dict[str, list[dict]] = {n: [] for n in order}
    if zc_why:
        for n in zc:
            results[n].append({"name": n, "unavailable": f"zcrx-copy unavailable here ({zc_why})"})
    runnable = [n for n in order if not (zc_why and n in zc)]
    print(f"# {len(runnable)} variants x {args.rounds} rounds, {what} each", file=sys.stderr)
    t_start = time.time()
    for r in range(args.rounds):
        k = r % len(runnable) if runnable else 0
        rotated = runnable[k:] + runnable[:k]
        for name in rotated:
            res = run_child(name, args)
            results[name].append(res)
            if "bytes" in res:
                print(f"  round {r + 1} {name}: {res['bytes'] / res['wall'] / 1e9:.2f} GB/s, "
                      f"{(res['user'] + res['sys']) / (res['bytes'] / 1e9):.3f} CPU s/GB", file=sys.stderr)
            else:
                print(f"  round {r + 1} {name}: {res.get('error') or res.get('unavailable')}", file=sys.stderr)
    summary = summarize(results)
    tab = table(summary, order)
    uname = platform.uname()
    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))} on {uname.system} "
              f"{uname.release} ({uname.machine}, {os.cpu_count()} CPUs), Python {platform.python_version()}; "
              f"{args.rounds} rounds x {what} per receiver, aiozcrx buf_size={args.buf_size}, "
              f"area_size={args.area_size}. Medians (min-max).")
    print(header)
    print()
    print(tab)
    split = [n for n in order if "outside_syscalls" in summary.get(n, {})]
    if split:
        print()
        print("CPU outside the io_uring syscalls aiozcrx makes (total - thread CPU inside them), s/GB:")
        for n in split:
            print(f"- {BY_NAME[n][1]}: {fmt_range(summary[n]['outside_syscalls'])}")
    if args.summary_json:
        keys = ("gbps", "user", "sys", "total", "outside_syscalls", "bytes_per_call_runs",
                "completions_per_gb")
        print("SUMMARY-JSON " + json.dumps({
            n: ({"skipped": s["skipped"]} if "skipped" in s else
                # a key with no values (a receiver that counts no completions) is left out
                {**{k: med(s[k]) for k in keys if s.get(k)},
                 "ranges": {k: [min(s[k]), max(s[k])] for k in keys if s.get(k)},
                 "rounds": {k: s[k] for k in keys if s.get(k)},
                 # per round, in round order (guest.py pairs them): the large-buffer table
                 **{f"{k}_runs": s[k] for k in ("total", "outside_syscalls", "completions_per_gb") if s.get(k)},
                 "bytes_per_call": s["bytes_per_call"], "rx_buf_len": s.get("rx_buf_len")})
            for n, s in summary.items()}))
    return results, summary, tab, header


if __name__ == "__main__":
    sys.exit(main())
