"""Small records over loopback: paced, back to back, and over 64 connections.

Three cases, each a stream of 4 KiB records (one ``send()`` each, TCP_NODELAY):

- ``paced``: one connection, one record every 10 us (the sender keeps an absolute
  schedule and busy-waits between records; 410 MB/s);
- ``unpaced``: one connection, records back to back;
- ``conns64``: 64 connections, records round robin over them, back to back.

Every receiver variant runs in a fresh process of its own; the sender is another
process. With 2+ CPUs the receiver is pinned to CPU 0 and the sender to CPU 1
(``sched_setaffinity``), so the paced sender's busy wait never takes the
receiver's CPU. The receiver accepts all connections, wraps them, starts its
counters and writes one byte ``g`` on each; the sender starts only then, so no
set-up is measured and no backlog piles up before the clock starts. The sender
stops after ``--seconds`` and shuts its write side; the receiver stops its
counters at the last EOF and must have received exactly the bytes the sender
sent (else the run is an error).

Measured: receiver CPU (``getrusage(RUSAGE_SELF)``, all of its threads) per GB,
bytes per ``data_received`` / ``buffer_updated`` call, and for aiozcrx its own
counters (completions and eventfd wake-ups). Variants interleaved round by round
(the order rotates), medians with min-max; ratios of medians against uvloop
BufferedProtocol, uvloop Protocol and asyncio Protocol of the same run, and the
per-round paired ratio against uvloop BufferedProtocol.

``--profile`` (a diagnostic mode, not a measurement of speed) runs the paced case
once per variant under ``perf stat`` (syscall tracepoints, switched on and off by
the receiver through perf's control fifo exactly around the measured window) and
once more with ``sys.setprofile`` counting Python frame entries (calls and
coroutine resumptions) by function. Per loop iteration (one ``epoll_wait``
return: what a wake-up of the event loop is for every loop here) it reports the
syscalls by name and the Python frames; the frame hook slows the receiver, so
that run's own records per wake-up are shown beside its frames.

    .venv/bin/python benchmarks/records.py                   # 5 rounds x 2 s, 3 cases
    .venv/bin/python benchmarks/records.py --quick           # smoke run (< 30 s)
    .venv/bin/python benchmarks/records.py --cases paced --only uvloop-buffered,aiozcrx-uring-uvloop
    .venv/bin/python benchmarks/records.py --profile         # syscalls and frames per wake-up
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import VARIANTS as RUN_VARIANTS  # noqa: E402
from common import BufferedSink, ProtoSink, _cpus, cpu_of, emit, fmt_range, med, pin  # noqa: E402

RECORD = 4096
PERIOD_NS = 10_000

CASES = {
    # name: (label, connections, paced)
    "paced": ("paced 4 KiB records, one every 10 us, one connection", 1, True),
    "unpaced": ("4 KiB records back to back, one connection", 1, False),
    "conns64": ("4 KiB records back to back, round robin over 64 connections", 64, False),
    # not in the default set: run.py's bulk case covers it; here for wakefloor.py's C floor
    "bulk": ("1 MiB sends back to back, one connection", 1, False),
    # starve.py's (its --conns: set_conns)
    "starve": ("64 KiB sends back to back, round robin over 256 connections", 256, False),
}
DEFAULT_CASES = ("paced", "unpaced", "conns64")
SEND_SIZE = {"bulk": 1 << 20, "starve": 64 << 10}  # bytes per send(); RECORD for the others


def set_conns(case: str, n: int) -> None:
    """Another number of connections for ``case``, here and in the processes this
    one starts (the sender reads it from the environment)."""
    os.environ[f"BENCH_CONNS_{case.upper()}"] = str(n)
    _conns_from_env()


def _conns_from_env() -> None:
    for case, (label, n, paced) in CASES.items():
        n = int(os.environ.get(f"BENCH_CONNS_{case.upper()}", n))
        CASES[case] = (label.replace(f" {CASES[case][1]} connections", f" {n} connections"), n, paced)


_conns_from_env()

# run.py's receivers (name, label, loop, kind, engine), the host ones this case
# compares: the stock and uvloop protocols, uring on both loops, socket on uvloop
RECORDS_VARIANTS = ("asyncio-protocol", "asyncio-buffered", "uvloop-protocol", "uvloop-buffered",
                    "aiozcrx-uring-uvloop", "aiozcrx-uring-asyncio", "aiozcrx-socket-uvloop")
VARIANTS = [v for v in RUN_VARIANTS if v[0] in RECORDS_VARIANTS]
BY_NAME = {v[0]: v for v in VARIANTS}
REFS = (("uvloop-buffered", "uvloop Buffered"), ("uvloop-protocol", "uvloop Protocol"),
        ("asyncio-protocol", "asyncio Protocol"))
# the syscalls a wake-up is made of, counted by name; the rest is "other"
SYSCALLS = ("epoll_wait", "epoll_pwait", "read", "readv", "recvfrom", "recvmsg", "write", "sendto",
            "io_uring_enter")


# ------------------------------------------------------------------ pinning
# ------------------------------------------------------------------- sender
def sender_main(port: int, case: str, seconds: float, total: int) -> None:
    pin("sender")
    _label, nconns, paced = CASES[case]
    socks = []
    for _ in range(nconns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    for s in socks:
        if s.recv(1) != b"g":
            raise SystemExit("receiver went away before the start")
    size = SEND_SIZE.get(case, RECORD)
    rec = bytes(range(256)) * (size // 256)
    sent = late = 0
    clock = time.perf_counter_ns
    t0 = clock()
    deadline = t0 + int(seconds * 1e9)
    limit = total // size if total else None
    if paced:
        s = socks[0]
        send = s.sendall
        nxt = t0
        while True:
            now = clock()
            if now < nxt:
                continue  # busy wait: a sleep cannot keep a 10 us schedule
            if now - nxt > PERIOD_NS:
                late += 1
                if now - nxt > 100 * PERIOD_NS:  # preempted: start the schedule again
                    nxt = now
            send(rec)
            sent += 1
            nxt += PERIOD_NS
            if (limit is not None and sent >= limit) or (limit is None and now >= deadline):
                break
    else:
        sends = [s.sendall for s in socks]
        n = len(sends)
        while True:
            for _ in range(256):
                sends[sent % n](rec)
                sent += 1
            if (limit is not None and sent >= limit) or (limit is None and clock() >= deadline):
                break
    t1 = clock()
    for s in socks:
        s.shutdown(socket.SHUT_WR)
    for s in socks:
        while s.recv(65536):  # until the receiver closes: it has seen everything
            pass
        s.close()
    print(json.dumps({"records": sent, "bytes": sent * size, "late": late,
                      "seconds": (t1 - t0) / 1e9}))


# ----------------------------------------------------------------- receiver
class PerfControl:
    """perf stat's control fifo: counters on and off around the measured window."""

    def __init__(self, ctl: str | None, ack: str | None):
        self.ctl = self.ack = None
        if ctl:
            self.ctl = open(ctl, "w")
            self.ack = open(ack)

    def _say(self, what: str) -> None:
        if self.ctl is not None:
            self.ctl.write(what + "\n")
            self.ctl.flush()
            self.ack.readline()

    def enable(self) -> None:
        self._say("enable")

    def disable(self) -> None:
        self._say("disable")


class FrameCounter:
    """Python frame entries (calls, coroutine and generator resumptions) by code object."""

    def __init__(self):
        self.counts = collections.Counter()

    def __call__(self, frame, event, arg):
        if event == "call":
            self.counts[frame.f_code] += 1

    def by_name(self) -> dict[str, int]:
        out = collections.Counter()
        for code, n in self.counts.items():
            name = getattr(code, "co_qualname", code.co_name)
            mod = os.path.basename(code.co_filename).rsplit(".", 1)[0]
            out[f"{mod}.{name}"] += n
        return dict(out)


async def receive(variant, socks, perf: PerfControl, frames: FrameCounter | None) -> dict:
    name, _label, _loopname, kind, engine = variant
    loop = asyncio.get_running_loop()
    dones = [loop.create_future() for _ in socks]
    stats: dict = {}
    rx = None
    if kind == "aiozcrx":
        import aiozcrx
        rx = aiozcrx.Receiver(engine=engine)  # the defaults: buf_size 64 KiB, area 32 MiB
        await rx.__aenter__()
        protos = [(await rx.wrap(s, lambda d=d: ProtoSink(d)))[1] for s, d in zip(socks, dones)]
    elif kind == "protocol":
        protos = [(await loop.connect_accepted_socket(lambda d=d: ProtoSink(d), s))[1]
                  for s, d in zip(socks, dones)]
    else:
        protos = [(await loop.connect_accepted_socket(lambda d=d: BufferedSink(d), s))[1]
                  for s, d in zip(socks, dones)]
    st0 = rx.stats() if rx is not None else {}
    perf.enable()
    if frames is not None:
        sys.setprofile(frames)
    window = await measured(protos, dones)
    if frames is not None:
        sys.setprofile(None)
    perf.disable()
    if rx is not None:
        st = rx.stats()
        stats = {"engine": rx.engine}
        for k in ("completions", "wakeups", "idle_wakeups", "enters", "socket_wakeups"):
            if k in st:
                stats[k] = st[k] - st0.get(k, 0)
        # wake-ups of either path (the eventfd's, and the sockets' where the kernel
        # signals the eventfd late: docs/concepts.md, "Wake-ups")
        stats["wakeups"] = stats.get("wakeups", 0) + stats.pop("socket_wakeups", 0)
        stats["wake"] = st.get("wake")
        await rx.__aexit__(None, None, None)
    return {"name": name, "bytes": sum(p.bytes for p in protos), "calls": sum(p.calls for p in protos),
            **window, **stats}


async def measured(protos, dones) -> dict:
    """The measured window: writes the start byte ``g`` on every connection (the
    sender starts then) and waits for every end of stream; its wall time and the
    receiver's CPU (user, sys) in seconds."""
    t0 = time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    for p in protos:
        p.transport.write(b"g")
    await asyncio.gather(*dones)
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    t1 = time.perf_counter()
    return {"wall": t1 - t0, "user": c1.ru_utime - c0.ru_utime, "sys": c1.ru_stime - c0.ru_stime}


def child_main(args) -> None:
    pin("receiver")
    variant = BY_NAME[args.child]
    listener = socket.socket(fileno=args.fd)
    socks = []
    for _ in range(CASES[args.case][1]):
        s, _ = listener.accept()
        s.setblocking(False)
        socks.append(s)
    listener.close()
    perf = PerfControl(args.perf_ctl, args.perf_ack)
    frames = FrameCounter() if args.frames else None
    coro = receive(variant, socks, perf, frames)
    if variant[2] == "uvloop":
        import uvloop
        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    if frames is not None:
        result["frames"] = frames.by_name()
    print(json.dumps(result))


# ------------------------------------------------------------ orchestration
def perf_events() -> list[str]:
    return ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{s}" for s in SYSCALLS]


def run_one(name: str, case: str, args, profile: str | None = None,
            command: list[str] | None = None) -> dict:
    """One receiver run and its sender; profile None, "syscalls" or "frames".
    ``command``: another receiver program (wakefloor.py's C receivers), its
    arguments with "{fd}" for the listening socket and "{conns}" for how many
    connections to accept; it prints the same JSON line as ours."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=max(128, CASES[case][1]))
    port = listener.getsockname()[1]
    if command is not None:
        cmd = [a.format(fd=listener.fileno(), conns=CASES[case][1]) for a in command]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--case", case,
               "--fd", str(listener.fileno())]
    tmp = None
    if profile:
        tmp = tempfile.mkdtemp(prefix="aiozcrx-bench-perf.")
        ctl, ack, out = (os.path.join(tmp, n) for n in ("ctl", "ack", "out"))
        os.mkfifo(ctl)
        os.mkfifo(ack)
        cmd += ["--perf-ctl", ctl, "--perf-ack", ack] + (["--frames"] if profile == "frames" else [])
        cmd = ["perf", "stat", "-x,", "-o", out, "--control", f"fifo:{ctl},{ack}", "-D", "-1",
               "-e", ",".join(perf_events()), "--"] + cmd
    total = args.bytes
    timeout = args.seconds * 10 + 120
    recv = subprocess.Popen(cmd, pass_fds=(listener.fileno(),), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    listener.close()
    snd = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sender", str(port),
                            "--case", case, "--seconds", str(args.seconds), "--bytes", str(total)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r_out, r_err = recv.communicate(timeout=timeout)
        s_out, s_err = snd.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        recv.kill()
        snd.kill()
        recv.communicate()
        snd.communicate()
        return {"name": name, "error": f"timed out after {timeout} s"}
    try:
        if recv.returncode != 0 or snd.returncode != 0:
            err = r_err if recv.returncode != 0 else s_err
            return {"name": name, "error": (err.strip().splitlines() or [f"exit {recv.returncode}"])[-1]}
        res = json.loads(r_out.strip().splitlines()[-1])
        sent = json.loads(s_out.strip().splitlines()[-1])
        if res["bytes"] != sent["bytes"]:
            return {"name": name, "error": f"received {res['bytes']} bytes, the sender sent {sent['bytes']}"}
        res["late"] = sent["late"]
        res["records"] = sent["records"]
        res["send_seconds"] = sent["seconds"]
        if profile:
            res["syscalls"] = read_perf(os.path.join(tmp, "out"))
        return res
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def read_perf(path: str) -> dict[str, int]:
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or ":" not in parts[2]:
                continue
            ev = parts[2]
            key = "total" if ev == "raw_syscalls:sys_enter" else ev.split("sys_enter_", 1)[-1]
            try:
                counts[key] = int(parts[0])
            except ValueError:  # "<not counted>" / "<not supported>"
                counts[key] = 0
    return counts


def summarize(runs: list[dict]) -> dict:
    good = [r for r in runs if r.get("bytes")]
    if not good:
        why = next((r.get("error") for r in runs if r.get("error")), "no runs")
        return {"skipped": why}
    gb = [r["bytes"] / 1e9 for r in good]
    s = {"n": len(good), "errors": len(runs) - len(good),
         "mbps": [r["bytes"] / r["wall"] / 1e6 for r in good],
         "user": [r["user"] / g for r, g in zip(good, gb)],
         "sys": [r["sys"] / g for r, g in zip(good, gb)],
         "total": [(r["user"] + r["sys"]) / g for r, g in zip(good, gb)],
         "bytes_per_call": med([r["bytes"] / max(1, r["calls"]) for r in good]),
         "late": med([r["late"] / max(1, r["records"]) for r in good])}
    if all(r.get("wakeups") for r in good):
        s["per_wakeup"] = [r["completions"] / r["wakeups"] for r in good]
    return s


def paired(runs: dict[str, list[dict]], name: str, ref: str) -> list[float]:
    """Per-round ratio name/ref of total CPU per GB (both ran in that round)."""
    out = []
    for a, b in zip(runs.get(name, []), runs.get(ref, [])):
        if a.get("bytes") and b.get("bytes"):
            ta = (a["user"] + a["sys"]) / a["bytes"]
            tb = (b["user"] + b["sys"]) / b["bytes"]
            out.append(ta / tb)
    return out


def table(case_runs: dict[str, list[dict]], order: list[str]) -> str:
    summ = {n: summarize(case_runs[n]) for n in order}
    head = ("| receiver | MB/s | CPU s/GB user | CPU s/GB sys | CPU s/GB total | bytes/call "
            "| completions/wake-up | " + " | ".join(f"total vs {lbl}" for _, lbl in REFS)
            + " | paired vs uvloop Buffered (per round) |")
    lines = [head, "|" + "---|" * (8 + len(REFS))]
    for name in order:
        s = summ[name]
        label = BY_NAME[name][1]
        if "skipped" in s:
            lines.append(f"| {label} | not run: {s['skipped']} |" + " |" * (6 + len(REFS)))
            continue
        ratios = []
        for ref, _lbl in REFS:
            r = summ.get(ref)
            ratios.append(f"{med(s['total']) / med(r['total']):.2f}" if r and "total" in r else "n/a")
        pr = paired(case_runs, name, "uvloop-buffered")
        pcol = fmt_range(pr, 2) if pr and name != "uvloop-buffered" else "-"
        pw = fmt_range(s["per_wakeup"], 1) if "per_wakeup" in s else "-"
        lines.append(f"| {label} | {fmt_range(s['mbps'], 0)} | {fmt_range(s['user'])} | {fmt_range(s['sys'])} | "
                     f"{fmt_range(s['total'])} | {s['bytes_per_call']:.0f} | {pw} | " + " | ".join(ratios)
                     + f" | {pcol} |")
    return "\n".join(lines)


def loop_waits(name: str, sc: dict) -> int:
    """The loop's own poll calls: epoll_pwait for uvloop (libuv), epoll_wait for
    asyncio. (Engine socket's own epoll instance adds epoll_wait calls of its own
    on uvloop: they are syscalls of the wake-up, not wake-ups.)"""
    if BY_NAME[name][2] == "uvloop" and sc.get("epoll_pwait"):
        return sc["epoll_pwait"]
    return max(1, sc.get("epoll_wait", 0))


def profile_table(prof: dict[str, dict], order: list[str]) -> str:
    """Per wake-up (epoll_wait call) of the paced case: syscalls by name, Python frames."""
    shown = [s for s in SYSCALLS if any(prof[n].get("syscalls", {}).get(s) for n in prof if "syscalls" in prof[n])]
    lines = ["| receiver | records / wake-up | syscalls / wake-up | " + " | ".join(shown)
             + " | other | CPU us / wake-up | Python frames / wake-up (records / wake-up in that run) "
             "| aiozcrx wake-ups (eventfd) / loop wake-up |",
             "|" + "---|" * (6 + len(shown) + 1)]
    for name in order:
        p = prof.get(name)
        if not p or "syscalls" not in p:
            why = (p or {}).get("error", "not run")
            lines.append(f"| {BY_NAME[name][1]} | not run: {why} |" + " |" * (4 + len(shown) + 1))
            continue
        sc = p["syscalls"]
        waits = loop_waits(name, sc)
        per = [sc.get(s, 0) / waits for s in shown]
        other = (sc.get("total", 0) - sum(sc.get(s, 0) for s in shown)) / waits
        fr = p.get("frames_run")
        if fr and "frames" in fr:
            fw = loop_waits(name, fr["syscalls"])
            fcol = f"{sum(fr['frames'].values()) / fw:.1f} ({fr['bytes'] / RECORD / fw:.2f})"
        else:
            fcol = "not run: " + (fr or {}).get("error", "?")
        ew = f"{p['wakeups'] / waits:.2f}" if p.get("wakeups") else "-"
        lines.append(f"| {BY_NAME[name][1]} | {p['bytes'] / RECORD / waits:.2f} | {sc.get('total', 0) / waits:.2f} | "
                     + " | ".join(f"{x:.2f}" for x in per) + f" | {other:.2f} | "
                     f"{(p['user'] + p['sys']) / waits * 1e6:.1f} | {fcol} | {ew} |")
    return "\n".join(lines)


def top_frames(prof: dict[str, dict], order: list[str], k: int = 10) -> str:
    out = []
    for name in order:
        fr = (prof.get(name) or {}).get("frames_run")
        if not fr or "frames" not in fr:
            continue
        waits = loop_waits(name, fr["syscalls"])
        top = [kv for kv in sorted(fr["frames"].items(), key=lambda kv: -kv[1])[:k] if kv[1] / waits >= 0.05]
        out.append(f"- {BY_NAME[name][1]}: " + ", ".join(f"`{fn}` {n / waits:.2f}" for fn, n in top))
    return "\n".join(out)


def plots(all_runs: dict[str, dict[str, list[dict]]], order: list[str], outdir: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plots skipped: matplotlib is not installed (`make bench` installs it)"
    cases = [c for c in CASES if c in all_runs]
    fig, axes = plt.subplots(1, len(cases), figsize=(5.2 * len(cases), 4.6), sharey=True, squeeze=False)
    for ax, case in zip(axes[0], cases):
        summ = {n: summarize(all_runs[case][n]) for n in order}
        names = [n for n in order if "skipped" not in summ[n]]
        y = list(range(len(names)))
        user = [med(summ[n]["user"]) for n in names]
        sys_ = [med(summ[n]["sys"]) for n in names]
        tot = [med(summ[n]["total"]) for n in names]
        lo = [t - min(summ[n]["total"]) for t, n in zip(tot, names)]
        hi = [max(summ[n]["total"]) - t for t, n in zip(tot, names)]
        ax.barh(y, user, label="user", color="#4C72B0")
        ax.barh(y, sys_, left=user, label="sys", color="#DD8452")
        ax.errorbar(tot, y, xerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=1)
        ax.set_yticks(y, [BY_NAME[n][1] for n in names])
        ax.set_title(CASES[case][0], fontsize=9)
        ax.set_xlabel("receiver CPU s/GB (median, min-max)")
    axes[0][0].invert_yaxis()
    axes[0][0].legend(loc="lower right")
    fig.suptitle("4 KiB records over loopback: receiver CPU per GB (lower is better)")
    fig.tight_layout()
    os.makedirs(outdir, exist_ok=True)
    p = os.path.join(outdir, "bench-records.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return f"plot: {os.path.relpath(p, ROOT)}"


def run_rounds(case: str, order: list[str], args, command_of=None) -> dict[str, list[dict]]:
    """args.rounds rounds of every receiver in order, the order rotating by one each
    round; command_of(name): another receiver program for run_one, or None."""
    runs: dict[str, list[dict]] = {n: [] for n in order}
    for r in range(args.rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            res = run_one(name, case, args, command=command_of(name) if command_of else None)
            runs[name].append(res)
            if res.get("bytes"):
                print(f"  {case} round {r + 1} {name}: {(res['user'] + res['sys']) / (res['bytes'] / 1e9):.3f} "
                      f"CPU s/GB, {res['bytes'] / res['wall'] / 1e6:.0f} MB/s", file=sys.stderr)
            else:
                print(f"  {case} round {r + 1} {name}: {res.get('error')}", file=sys.stderr)
    return runs


def run_all(args) -> dict:
    """Runs the cases (interleaved within each case) and the profile; returns everything."""
    _cpus()  # before any child: the CPUs to pin to (BENCH_CPUS)
    order = [v[0] for v in VARIANTS]
    if args.only:
        order = [n for n in args.only.split(",") if n]
    cases = [c for c in args.cases.split(",") if c]
    all_runs: dict[str, dict[str, list[dict]]] = {}
    for case in cases:
        all_runs[case] = run_rounds(case, order, args)
    prof = None
    if args.profile:
        prof = {}
        if shutil.which("perf") is None:
            prof = {n: {"error": "perf is not installed (`make bench` installs linux-perf)"} for n in order}
        else:
            for name in order:
                p = run_one(name, "paced", args, profile="syscalls")
                if p.get("bytes"):
                    p["frames_run"] = run_one(name, "paced", args, profile="frames")
                prof[name] = p
                print(f"  profile {name}: {'ok' if p.get('bytes') else p.get('error')}", file=sys.stderr)
    return {"runs": all_runs, "profile": prof, "order": order, "cases": cases}


def report(res: dict, args) -> str:
    order = res["order"]
    parts = []
    pinned = ("receiver pinned to CPU 0, sender to CPU 1" if cpu_of("receiver") is not None
              else "not pinned (1 CPU)")
    what = f"{args.bytes} bytes" if args.bytes else f"{args.seconds:g} s"
    parts.append(f"{platform.uname().release}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
                 f"{args.rounds} rounds x {what} per receiver and case, {pinned}; aiozcrx defaults "
                 f"(buf_size 64 KiB, area 32 MiB). Medians (min-max).")
    for case in res["cases"]:
        runs = res["runs"][case]
        lates = [r["late"] / r["records"] for rs in runs.values() for r in rs if r.get("records")]
        extra = (f" Sender: {100 * med(lates):.1f} % of records later than 10 us behind schedule (median over runs)."
                 if CASES[case][2] and lates else "")
        parts.append(f"### {CASES[case][0]} (`--cases {case}`)\n\n{table(runs, order)}\n{extra}".rstrip())
    if res.get("profile") is not None:
        parts.append("### Per wake-up, paced case (`--profile`: perf stat syscall tracepoints and "
                     "sys.setprofile, one run each)\n\n" + profile_table(res["profile"], order)
                     + "\n\nPython frames per wake-up, the most frequent (frames run):\n\n"
                     + top_frames(res["profile"], order))
    return "\n\n".join(parts)


def add_run_args(ap: argparse.ArgumentParser, cases: str) -> None:
    """The options of a run of cases (records.py's, wakefloor.py's)."""
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="sender duration per run")
    ap.add_argument("--bytes", type=int, default=0, help="send this many bytes instead of --seconds")
    ap.add_argument("--cases", default=cases, help="comma-separated: " + ", ".join(CASES))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap, ",".join(DEFAULT_CASES))
    ap.add_argument("--only", default="", help="comma-separated variants: " + ", ".join(BY_NAME))
    ap.add_argument("--profile", action="store_true", help="also syscalls and Python frames per wake-up (paced)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 MiB per run, 1 round, with --profile")
    ap.add_argument("--json", help="write the raw runs here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--case", default="paced", help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--perf-ctl", help=argparse.SUPPRESS)
    ap.add_argument("--perf-ack", help=argparse.SUPPRESS)
    ap.add_argument("--frames", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sender", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sender is not None:
        sender_main(args.sender, args.case, args.seconds, args.bytes)
        return 0
    if args.child:
        child_main(args)
        return 0
    if args.quick:
        args.rounds, args.bytes, args.profile = 1, 4 << 20, True
    unknown = [n for n in args.only.split(",") if n and n not in BY_NAME] + \
        [c for c in args.cases.split(",") if c and c not in CASES]
    if unknown:
        ap.error(f"unknown variant(s) or case(s) {unknown}")
    res = run_all(args)
    return emit(res, report(res, args), args.json)


if __name__ == "__main__":
    sys.exit(main())
