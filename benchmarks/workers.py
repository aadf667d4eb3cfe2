"""N workers: `aiozcrx serve` beside N plain uvloop workers, CPU per GB and GB/s.

For 1, 2 and 4 workers (``--workers``), two variants on one shared listening
socket, started fresh for each measurement:

- ``aiozcrx``: ``python -m aiozcrx serve workers:factory --workers N --user nobody
  --loop uvloop`` (aiozcrx.workers: each worker prepares its Receiver, drops to
  nobody, receives with views); engine ``uring`` on the host (loopback),
  ``zcrx`` with ``--nic`` (the simulated NIC of ``run-in-guest.sh --nic``, N NIC
  queues, each worker on its own);
- ``uvloop``: N forked processes, each a uvloop server on the same listener with a
  BufferedProtocol (256 KiB buffer).

Both only count the bytes and close at EOF. The sender is its own process
(``--conns`` connections, one thread each, 1 MiB ``sendall``; in the peer's
network namespace with ``--nic``); it measures the wall time from the first
connect to the last EOF (the server closes after the last byte). CPU is the sum
of the workers' user+system time (``/proc/PID/stat``) across the transfer; the
launchers (idle) are not counted. Variants interleave round by round (the order
rotates); medians with min-max. Ratios: aiozcrx over uvloop with the same N.

    .venv/bin/python benchmarks/workers.py                          # host: engine uring, loopback
    .venv/bin/python benchmarks/workers.py --quick                  # smoke run
    tests/uml/run-in-guest.sh --nic --nic-queues 5 --timeout 1800 -- \\
        '.venv/bin/python benchmarks/workers.py --nic --mib 64 --rounds 3'   # guest: engine zcrx

Must run as root (the workers drop to nobody, as they do in production; with
``--nic`` the NIC is steered: an RSS context over queues 0..N-1 for the port, the
main RSS table on queue 4; restored after each N).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time

if __name__ == "__main__":
    # not in the workers (which import this file for factory() after they dropped
    # to nobody: the interpreter's own files may be unreadable then)
    import argparse
    import platform
    import statistics
    import subprocess
    import tempfile
    import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BLOCK = 1 << 20
CASE = "workers"
OTHER_QUEUE = 4
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the app (aiozcrx serve workers:factory)
class Count(asyncio.Protocol):
    aiozcrx_views = True  # views of the area: nothing copied in user space

    def connection_made(self, transport):
        self.transport = transport
        self.n = 0

    def data_received(self, data):
        self.n += len(data)

    def eof_received(self):
        return False  # close: the sender's EOF wait ends


def factory():
    return Count


class BufferedCount(asyncio.BufferedProtocol):
    def __init__(self):
        self.buf = bytearray(256 * 1024)
        self.n = 0

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.n += nbytes

    def eof_received(self):
        return False


# ---------------------------------------------------------------- sender (its own process)
def send_main(spec: dict) -> None:
    conns, total = spec["conns"], spec["bytes"]
    per = total // conns
    block = memoryview(bytes(range(256)) * (BLOCK // 256))
    socks = [socket.create_connection((spec["host"], spec["port"])) for _ in range(conns)]
    errors: list[str] = []

    def pump(s: socket.socket) -> None:
        try:
            sent = 0
            while sent < per:
                n = min(BLOCK, per - sent)
                s.sendall(block[:n])
                sent += n
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError as e:
            errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=pump, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for s in socks:
        s.close()
    print(json.dumps({"wall": wall, "bytes": per * conns, "errors": errors}), flush=True)


# ---------------------------------------------------------------- measuring
def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / TICK


def wait_until(cond, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class AiozcrxServe:
    def __init__(self, n: int, args: "argparse.Namespace", host: str, port: int) -> None:
        fd, self.stats_path = tempfile.mkstemp(prefix="aiozcrx-bench-workers.", suffix=".json")
        os.close(fd)
        os.unlink(self.stats_path)
        cmd = [sys.executable, "-m", "aiozcrx", "serve", "workers:factory", "--user", "nobody",
               "--loop", "uvloop", "--host", host, "--port", str(port), "--stats-json", self.stats_path,
               "--app-kind", "protocol"]
        if args.nic:
            # engine zcrx's own defaults on a NIC queue (64 MiB area, 16384 refill
            # entries: smaller ones ran the simulated NIC out of buffers, docs/benchmarks.md)
            cmd += ["--engine", "zcrx", "--interface", args.ifname, "--queues", f"0-{n - 1}"]
        else:
            cmd += ["--workers", str(n), "--engine", "uring"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: os.path.exists(self.stats_path) or self.proc.poll() is not None, "aiozcrx serve")
        if self.proc.poll() is not None:
            raise RuntimeError(f"aiozcrx serve exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
        self.pids = [w["pid"] for w in self.stats()["workers"]]

    def stats(self) -> dict:
        for _ in range(100):
            try:
                with open(self.stats_path) as f:
                    return json.load(f)
            except ValueError:
                time.sleep(0.01)  # caught mid-write
        raise RuntimeError("unreadable stats")

    def fresh_stats(self) -> dict:
        before = self.stats()["time"]
        self.proc.send_signal(signal.SIGUSR1)
        return wait_until(lambda: (s := self.stats())["time"] != before and s, "fresh stats")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(300)
        os.unlink(self.stats_path)


class UvloopWorkers:
    def __init__(self, n: int, host: str, port: int) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(4096)
        self.pids = []
        ready_r, ready_w = os.pipe()
        for _ in range(n):
            pid = os.fork()
            if pid == 0:  # a worker: serve until SIGTERM
                code = 0
                try:
                    os.close(ready_r)
                    import uvloop
                    loop = uvloop.new_event_loop()
                    loop.run_until_complete(loop.create_server(BufferedCount, sock=self.listener))
                    loop.add_signal_handler(signal.SIGTERM, loop.stop)
                    os.write(ready_w, b"x")
                    loop.run_forever()
                except BaseException:  # noqa: BLE001 - reported by the missing ready byte
                    code = 1
                finally:
                    os._exit(code)
            self.pids.append(pid)
        os.close(ready_w)
        got = b""
        while len(got) < n:
            more = os.read(ready_r, n)
            if not more:
                raise RuntimeError("a uvloop worker failed to start")
            got += more
        os.close(ready_r)

    def stop(self) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGTERM)
        for pid in self.pids:
            os.waitpid(pid, 0)
        self.listener.close()


@contextlib.contextmanager
def steered(ifname: str, n: int, port: int):
    """An RSS context over queues 0..n-1 for tcp4 to ``port``, the main table on
    queue 4, header split on (as tests/test_workers.py's fixture); undone after."""
    sys.path.insert(0, ROOT)
    from aiozcrx.tools import ethtool as et
    from aiozcrx.tools.nic import wait_queue_released
    ch = et.get_channels(ifname)
    kind = "combined" if ch.get("combined_count") else "rx"
    before = ch.get(f"{kind}_count") or 0
    rings = et.get_rings(ifname)
    ntuple_before = "rx-ntuple-filter" in et.get_features(ifname)["active"]
    undo = []
    try:
        if before < OTHER_QUEUE + 1:
            et.set_channels(ifname, **{f"{kind}_count": OTHER_QUEUE + 1})
            undo.append(lambda: et.set_channels(ifname, **{f"{kind}_count": before}))
        split = {"tcp_data_split": et.TCP_DATA_SPLIT_ENABLED}
        if "hds_thresh" in rings or "hds_thresh_max" in rings:
            split["hds_thresh"] = 0
        et.set_rings(ifname, **split)
        undo.append(lambda: et.set_rings(ifname, tcp_data_split=rings.get("tcp_data_split") or
                                         et.TCP_DATA_SPLIT_UNKNOWN,
                                         **({"hds_thresh": rings["hds_thresh"]} if "hds_thresh" in rings else {})))
        if not ntuple_before:
            et.set_features(ifname, {"rx-ntuple-filter": True})
            undo.append(lambda: et.set_features(ifname, {"rx-ntuple-filter": False}))
        size = len(et.get_rss(ifname).get("indir") or []) or 128
        ctx = et.create_rss_context(ifname, [i % n for i in range(size)])
        undo.append(lambda: et.delete_rss_context(ifname, ctx))
        et.set_rss_indir(ifname, [OTHER_QUEUE] * size)
        undo.append(lambda: et.set_rss_indir(ifname, None))
        loc = et.insert_ntuple_rule(ifname, "tcp4", port, 0, rss_context=ctx)
        undo.append(lambda: et.delete_ntuple_rule(ifname, loc))
        yield
    finally:
        for q in range(n):
            wait_queue_released(ifname, q, timeout=60)
        for step in reversed(undo):
            step()


def measure(variant: str, n: int, args: argparse.Namespace, host: str, port: int) -> dict:
    server = AiozcrxServe(n, args, host, port) if variant == "aiozcrx" else UvloopWorkers(n, host, port)
    try:
        spec = json.dumps({"host": host, "port": port, "conns": args.conns, "bytes": args.mib << 20})
        cmd = [sys.executable, os.path.abspath(__file__), "--send", spec]
        if args.nic:
            cmd = ["ip", "netns", "exec", args.peer_ns, *cmd]
        cpu0 = cpu_seconds(server.pids)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        cpu1 = cpu_seconds(server.pids)
        if out.returncode != 0:
            raise RuntimeError(f"sender failed: {out.stderr[-2000:]}")
        sent = json.loads(out.stdout.splitlines()[-1])
        if sent["errors"]:
            raise RuntimeError(f"sender errors: {sent['errors'][:3]}")
        gb = sent["bytes"] / 1e9
        row = {"variant": variant, "workers": n, "bytes": sent["bytes"], "wall": sent["wall"],
               "gbps": gb / sent["wall"], "cpu": cpu1 - cpu0, "cpu_per_gb": (cpu1 - cpu0) / gb}
        if variant == "aiozcrx":
            t = server.fresh_stats()["total"]
            if t["bytes"] != sent["bytes"]:
                raise RuntimeError(f"aiozcrx workers received {t['bytes']} bytes of {sent['bytes']}")
            row.update(engine=sorted({w.get("engine") for w in server.stats()["workers"]}),
                       copied=t["bytes_copied"], zero_copy=t["bytes_zero_copy"],
                       handed_over=t["handed_over"])
        return row
    finally:
        server.stop()


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt(xs: list[float], digits: int = 2) -> str:
    return f"{med(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"  # a tick (10 ms) of CPU or less: too small to divide by


def table(runs: list[dict], counts: list[int], engine: str) -> str:
    lines = ["| workers | variant | GB/s | CPU s/GB (all workers) | CPU ratio aiozcrx/uvloop | "
             "GB/s ratio aiozcrx/uvloop | bytes copied (kernel or user space) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for n in counts:
        by = {v: [r for r in runs if r["workers"] == n and r["variant"] == v] for v in ("uvloop", "aiozcrx")}
        ratio_cpu = ratio(med([r["cpu_per_gb"] for r in by["aiozcrx"]]), med([r["cpu_per_gb"] for r in by["uvloop"]]))
        ratio_gbps = ratio(med([r["gbps"] for r in by["aiozcrx"]]), med([r["gbps"] for r in by["uvloop"]]))
        for v, rs in by.items():
            label = "uvloop BufferedProtocol" if v == "uvloop" else f"aiozcrx serve, engine {engine}"
            copied = "" if v == "uvloop" else \
                f"{sum(r['copied'] for r in rs) / max(1, sum(r['bytes'] for r in rs)):.0%}"
            lines.append(f"| {n} | {label} | {fmt([r['gbps'] for r in rs])} | "
                         f"{fmt([r['cpu_per_gb'] for r in rs])} | "
                         f"{ratio_cpu if v == 'aiozcrx' else ''} | "
                         f"{ratio_gbps if v == 'aiozcrx' else ''} | {copied} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--send", help=argparse.SUPPRESS)
    ap.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mib", type=int, default=1024, help="MiB sent per measurement (default 1024)")
    ap.add_argument("--conns", type=int, default=8, help="connections per measurement (default 8)")
    ap.add_argument("--nic", action="store_true", help="over the simulated NIC, engine zcrx (in the guest)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 32 MiB")
    ap.add_argument("--json", help="write the raw runs here")
    args = ap.parse_args(argv)
    if args.send:
        send_main(json.loads(args.send))
        return 0
    if os.geteuid() != 0:
        print("benchmarks/workers.py: run as root (the aiozcrx workers drop to nobody)", file=sys.stderr)
        return 77
    if args.quick:
        args.rounds, args.mib = 1, 32
    counts = [int(x) for x in args.workers.split(",")]
    if args.nic:
        args.ifname = os.environ["AIOZCRX_NIC"]
        args.peer_ns = os.environ["AIOZCRX_NIC_PEER_NS"]
        host, port = os.environ["AIOZCRX_NIC_ADDR"], 9300
    else:
        host, port = "127.0.0.1", 0
    engine = "zcrx" if args.nic else "uring"
    runs: list[dict] = []
    for n in counts:
        ctx = steered(args.ifname, n, port) if args.nic else contextlib.nullcontext()
        with ctx:
            for rnd in range(args.rounds):
                order = ["uvloop", "aiozcrx"] if rnd % 2 == 0 else ["aiozcrx", "uvloop"]
                for v in order:
                    p = port
                    if not p:
                        with socket.socket() as s:
                            s.bind((host, 0))
                            p = s.getsockname()[1]
                    r = measure(v, n, args, host, p)
                    runs.append(r)
                    print(f"  round {rnd + 1} {n} workers {v}: {r['gbps']:.2f} GB/s, "
                          f"{r['cpu_per_gb']:.2f} CPU s/GB", file=sys.stderr, flush=True)
    print(f"{args.mib} MiB over {args.conns} connections per measurement, {args.rounds} round(s), "
          f"{'simulated NIC' if args.nic else 'loopback'}; kernel {platform.release()}, "
          f"{os.cpu_count()} CPU(s)\n")
    print(table(runs, counts, engine))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"case": CASE, "runs": runs, "kernel": platform.release()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
