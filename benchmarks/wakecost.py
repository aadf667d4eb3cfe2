"""What one loop wake-up costs the receiver: syscalls, Python frames, completions.

A paced sender (its own process) writes one ``--record``-byte record every
``--gap-us`` microseconds for ``--seconds`` over loopback TCP, the case where
each wake-up has little data (about one record) to share its fixed costs. The
receiver (a fresh process per variant and mode) counts bytes and keeps nothing.

Three modes per variant, each its own run, because each instrument slows the
receiver down and so changes how much arrives per wake-up:

- ``syscalls``: ``perf stat`` counts the receiver's syscalls (tracepoints, not
  the sender's) once it is set up; reported: syscalls per wake-up, where a wake-up
  is an ``epoll_wait`` call (the loop's), and the names that make up the rest;
- ``frames``: ``sys.setprofile`` in the receiver's loop thread counts every Python
  frame entered while receiving, split into aiozcrx's own (``aiozcrx/``), the
  protocol's ``data_received``, and everything else (the event loop's own Python:
  asyncio's ``Handle._run`` and ``_run_once``; uvloop has none);
- ``cpu``: nothing attached; receiver CPU seconds per GB (``getrusage``) and the
  dispatcher's own counters (wake-ups, io_uring_enter calls, read(2) calls on the
  eventfd, NODEV refill flushes, calls into the engine's Python slow path).

Counts (syscalls, frames, completions per wake-up) do not depend on how loaded
the machine is; CPU seconds do, and are labelled with the load average seen.

Usage::

    .venv/bin/python benchmarks/wakecost.py                       # all variants, all modes
    .venv/bin/python benchmarks/wakecost.py --only aiozcrx-uring-uvloop --modes cpu --rounds 5
    .venv/bin/python benchmarks/wakecost.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common import BufferedSink, ProtoSink  # benchmarks/ is sys.path[0]

HERE = os.path.dirname(os.path.abspath(__file__))

VARIANTS = {
    # name: (loop, kind, engine)
    "uvloop-buffered": ("uvloop", "buffered", None),
    "asyncio-buffered": ("asyncio", "buffered", None),
    "aiozcrx-uring-uvloop": ("uvloop", "aiozcrx", "uring"),
    "aiozcrx-uring-asyncio": ("asyncio", "aiozcrx", "uring"),
    "aiozcrx-zcrx-copy-uvloop": ("uvloop", "aiozcrx", "zcrx-copy"),
    "aiozcrx-zcrx-copy-asyncio": ("asyncio", "aiozcrx", "zcrx-copy"),
}
DEFAULT = ["uvloop-buffered", "aiozcrx-uring-uvloop", "aiozcrx-uring-asyncio",
           "aiozcrx-zcrx-copy-uvloop"]
MODES = ("syscalls", "frames", "cpu")


# ------------------------------------------------------------------ sender
def sender_main(port: int, record: int, gap_us: float, seconds: float) -> None:
    """One record every gap_us, spinning between them (sleep() cannot pace 10 us)."""
    rec = bytes(range(256)) * (record // 256) + bytes(record % 256)
    gap = gap_us / 1e6
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clock = time.perf_counter
        t = start = clock()
        end = start + seconds
        while t < end:
            s.sendall(rec)
            t += gap
            while clock() < t:
                pass
        s.shutdown(socket.SHUT_WR)


# --------------------------------------------------------------- receivers: common.py


class FrameCounter:
    """sys.setprofile hook: Python frames entered, by who runs them."""

    PROTO = {"data_received", "buffer_updated", "get_buffer"}

    def __init__(self):
        import aiozcrx
        self.pkg = os.path.dirname(os.path.abspath(aiozcrx.__file__)) + os.sep
        self.counts = collections.Counter()
        self.names = collections.Counter()

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename.startswith(self.pkg):
            who = "aiozcrx"
            self.names[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        elif code.co_name in self.PROTO and code.co_filename == __file__:
            who = "protocol"
        else:
            who = "loop"
            self.names[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        self.counts[who] += 1


async def receive(variant: str, listener: socket.socket, start_sender, mode: str) -> dict:
    loopname, kind, engine = VARIANTS[variant]
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    start_sender()
    conn, _ = await loop.sock_accept(listener)
    listener.close()
    done = loop.create_future()
    out = {}
    counter = FrameCounter() if mode == "frames" else None
    if kind == "aiozcrx":
        import aiozcrx
        async with aiozcrx.Receiver(engine=engine) as rx:
            if counter:
                sys.setprofile(counter)
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            _t, proto = await rx.wrap(conn, lambda: ProtoSink(done))
            await done
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            sys.setprofile(None)
            st = rx.stats()
        out.update({k: st.get(k) for k in ("completions", "wakeups", "idle_wakeups", "enters",
                                             "eventfd_reads", "eventfd_sqe_reads", "slow_path_calls",
                                             "refill_flushes")})
        out["engine"] = rx.engine
    else:
        factory = (lambda: BufferedSink(done)) if kind == "buffered" else (lambda: ProtoSink(done))
        if counter:
            sys.setprofile(counter)
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        _t, proto = await loop.connect_accepted_socket(factory, conn)
        await done
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        sys.setprofile(None)
    out.update({"name": variant, "bytes": proto.bytes, "calls": proto.calls,
                "cpu": (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)})
    if counter:
        out["frames"] = dict(counter.counts)
        out["frame_names"] = dict(counter.names.most_common(12))
    return out


def child_main(args) -> None:
    variant = args.child
    loopname, kind, engine = VARIANTS[variant]
    if engine == "zcrx-copy":
        import aiozcrx

        async def probe():
            try:
                async with aiozcrx.Receiver(engine=engine, area_size=4 << 20):
                    return None
            except Exception as e:  # noqa: BLE001 - reported as the reason
                return f"{type(e).__name__}: {e}"

        why = asyncio.run(probe())
        if why:
            print(json.dumps({"name": variant, "unavailable": why}))
            return
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # the parent starts the sender (not a child of this process: strace -f
    # would follow it), once told the port
    def start_sender():
        print(json.dumps({"port": port}), flush=True)

    coro = receive(variant, listener, start_sender, args.mode)
    if loopname == "uvloop":
        import uvloop
        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------- orchestration
SYSCALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "io_uring_enter", "io_uring_register",
            "read", "write", "recvfrom", "recvmsg", "sendto", "futex")


def parse_perf(path: str) -> dict[str, int]:
    """perf stat -x, output: count,unit,event,... -> {syscall name: count, "total": n}"""
    calls = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            ev = parts[2]
            name = "total" if ev == "raw_syscalls:sys_enter" else ev.rsplit("sys_enter_", 1)[-1]
            if int(parts[0]):
                calls[name] = int(parts[0])
    return calls


def run_once(variant: str, mode: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--mode", mode]
    trace = tracer = sender = None
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(child.stdout.readline() or "{}")
        if "port" not in first:
            child.wait(60)
            return first or {"name": variant, "error": f"exit {child.returncode}"}
        if mode == "syscalls":
            # attached once the receiver is up (its imports and set-up stay out of
            # the count); perf counts syscall tracepoints in the kernel, without
            # stopping the receiver (strace's ptrace stops slow each syscall so much
            # that the pump would never find the ring idle)
            fd, trace = tempfile.mkstemp(prefix="wakecost-perf-")
            os.close(fd)
            events = ",".join(["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in SYSCALLS])
            tracer = subprocess.Popen(["perf", "stat", "-x", ",", "-o", trace, "-e", events,
                                       "-p", str(child.pid)], stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # perf has no "attached" signal; half a second is plenty
        sender = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sender",
                                   str(first["port"]), "--record", str(args.record),
                                   "--gap-us", str(args.gap_us), "--seconds", str(args.seconds)])
        line = child.stdout.readline()
        child.wait(args.seconds * 20 + 60)
        sender.wait(60)
        if tracer is not None:
            tracer.wait(60)  # exits with its target, after writing the counts
        if child.returncode != 0 or not line:
            return {"name": variant, "error": f"exit {child.returncode}"}
        res = json.loads(line)
        if trace:
            res["syscalls"] = parse_perf(trace)
        return res
    finally:
        for p in (sender, child, tracer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if trace:
            os.unlink(trace)


def perf_works() -> bool:
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "true"],
                       capture_output=True, text=True)
    return r.returncode == 0 and "not supported" not in r.stderr


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def report(results: dict, args) -> str:
    lines = [f"paced sender: {args.record} B every {args.gap_us} us for {args.seconds} s; "
             f"load average at start {args.load[0]:.2f}, at end {os.getloadavg()[0]:.2f}", ""]
    # syscalls
    lines += ["**Syscalls per wake-up** (perf stat, syscall tracepoints of the receiver "
              "process; a wake-up is one epoll_wait)", "",
              "| variant | wake-ups | syscalls / wake-up | per wake-up, by name | data calls / wake-up |",
              "|---|---|---|---|---|"]
    for name, modes in results.items():
        r = modes.get("syscalls")
        if not r:
            continue
        if "syscalls" not in r:
            lines.append(f"| {name} | {r.get('unavailable') or r.get('error')} | | | |")
            continue
        sc = dict(r["syscalls"])
        w = max(sum(sc.get(n, 0) for n in ("epoll_wait", "epoll_pwait", "epoll_pwait2")), 1)
        # the loop's own work beside receiving (the Receiver's set-up and close,
        # interpreter exit) is a few hundred calls: left in, under 0.01 per wake-up
        total = sc.pop("total", 0)
        named = sorted(sc.items(), key=lambda kv: -kv[1])
        other = total - sum(v for _k, v in named)
        by = ", ".join(f"{k} {v / w:.2f}" for k, v in named) + f", other {other / w:.2f}"
        lines.append(f"| {name} | {w} | {total / w:.2f} | {by} | {r['calls'] / w:.2f} |")
    # frames
    lines += ["", "**Python frames per wake-up** (sys.setprofile; wake-ups from the "
              "dispatcher's counter, aiozcrx only)", "",
              "| variant | wake-ups | aiozcrx frames / wake-up | loop frames / wake-up | "
              "protocol frames / wake-up | aiozcrx frames seen |", "|---|---|---|---|---|---|"]
    for name, modes in results.items():
        r = modes.get("frames")
        if not r or "frames" not in r:
            continue
        w = r.get("wakeups")
        f = r["frames"]
        if not w:
            lines.append(f"| {name} | - | total {f.get('aiozcrx', 0)} | total {f.get('loop', 0)} | "
                         f"total {f.get('protocol', 0)} | |")
            continue
        names = ", ".join(f"{k} {v}" for k, v in r["frame_names"].items() if "aiozcrx" not in k
                          and not k.startswith(("base_events", "events", "selectors", "selector_events")))
        lines.append(f"| {name} | {w} | {f.get('aiozcrx', 0) / w:.3f} | {f.get('loop', 0) / w:.2f} | "
                     f"{f.get('protocol', 0) / w:.2f} | {names[:160]} |")
    # cpu
    lines += ["", f"**CPU per GB, measured under load** (getrusage of the receiver process, "
              f"{args.rounds} rounds, median (min-max)); dispatcher counters per wake-up", "",
              "| variant | CPU s/GB | completions / wake-up | enters / wake-up | eventfd read(2) / wake-up "
              "| eventfd read SQEs / wake-up | NODEV flushes / wake-up | slow-path calls / wake-up |",
              "|---|---|---|---|---|---|---|---|"]
    for name, modes in results.items():
        runs = [r for r in modes.get("cpu_runs", []) if r.get("bytes")]
        if not runs:
            r = (modes.get("cpu_runs") or [{}])[0]
            if r:
                lines.append(f"| {name} | {r.get('unavailable') or r.get('error')} | | | | | | |")
            continue
        spg = [r["cpu"] / (r["bytes"] / 1e9) for r in runs]
        cell = f"{med(spg):.3f} ({min(spg):.3f}-{max(spg):.3f})"

        def per(key, r=runs):
            vals = [x[key] / x["wakeups"] for x in r if x.get("wakeups") and x.get(key) is not None]
            return f"{med(vals):.2f}" if vals else "-"
        lines.append(f"| {name} | {cell} | {per('completions')} | {per('enters')} | "
                     f"{per('eventfd_reads')} | {per('eventfd_sqe_reads')} | {per('refill_flushes')} | "
                     f"{per('slow_path_calls')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(DEFAULT), help="comma-separated variants: "
                    + ", ".join(VARIANTS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--record", type=int, default=4096)
    ap.add_argument("--gap-us", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the cpu mode")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--sender", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sender:
        return sender_main(args.sender, args.record, args.gap_us, args.seconds)
    if args.child:
        return child_main(args)
    names = [n for n in args.only.split(",") if n]
    modes = [m for m in args.modes.split(",") if m]
    for n in names:
        if n not in VARIANTS:
            ap.error(f"unknown variant {n!r}")
    if "syscalls" in modes and not perf_works():
        print("perf cannot count syscall tracepoints here: mode syscalls left out", file=sys.stderr)
        modes.remove("syscalls")
    args.load = os.getloadavg()
    results = {n: {} for n in names}
    for mode in modes:
        rounds = args.rounds if mode == "cpu" else 1
        for i in range(rounds):
            order = names[i % len(names):] + names[:i % len(names)]  # rotate: spread slow phases
            for n in order:
                r = run_once(n, mode, args)
                if mode == "cpu":
                    results[n].setdefault("cpu_runs", []).append(r)
                else:
                    results[n][mode] = r
                print(f"{n} {mode}: {json.dumps({k: v for k, v in r.items() if k != 'frame_names'})}",
                      file=sys.stderr)
    print(report(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
