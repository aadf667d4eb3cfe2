"""Real servers: aiohttp and uvicorn through the drop-in loop against plain uvloop and asyncio.

Two measurements per server process (``benchmarks/httpservers.py``):

- **upload**: ``--uploads`` POSTs of ``--upload-mib`` MiB, one after another on one
  keep-alive connection; the server streams each body into sha256 and answers with
  the digest, which must match (else the run is an error). Server CPU per GB.
- **small requests**: ``wrk -t1 -c50 -d<s> --latency`` on ``GET /`` (``Hello, world!``):
  requests/s, server CPU per request, and wrk's median and p99 latency (with 50
  connections always busy the median is mostly queueing: about 50 / requests/s;
  ``benchmarks/latency.py`` measures one round trip at a time). wrk comes from
  Debian (``make bench`` installs it); without it these rows say so.

Every (server, loop) runs in a fresh server process per round, the order rotating
each round; a warm-up upload of 1 MiB and 20 small requests run before anything
is measured. With 2+ CPUs the server is pinned to CPU 0 and the clients (this
process, and wrk through ``taskset``) to CPU 1, so wrk never takes the server's
CPU; wrk's own CPU use is reported (``wait4``) to show it is not the bottleneck.
Server CPU: the summed on-CPU time of all its threads (``/proc/<pid>/task/*/schedstat``,
nanoseconds) read before and after; the user/sys split from ``/proc/<pid>/stat``
(clock ticks, 10 ms: coarse). For the drop-in loop the server's own aiozcrx
statistics (``GET /stats``) must show the uploaded bytes came through aiozcrx.
Medians with min-max over the rounds; ratios of medians against the same server
on plain uvloop and on plain asyncio, and per-round paired ratios against uvloop.

    .venv/bin/python benchmarks/httpbench.py                 # 5 rounds: 4 x 64 MiB uploads, 4 s of wrk
    .venv/bin/python benchmarks/httpbench.py --quick         # smoke run (< 30 s)
    .venv/bin/python benchmarks/httpbench.py --only aiohttp-aiozcrx,aiohttp-uvloop,aiohttp-aiozcrx-256k
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import cpu_of, emit, fmt_range, med, pin  # noqa: E402

BLOCK = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")

VARIANTS = [
    # name, label, server, loop, extra environment
    ("aiohttp-aiozcrx", "aiohttp, aiozcrx drop-in (uvloop base)", "aiohttp", "aiozcrx", {}),
    ("aiohttp-aiozcrx-asyncio", "aiohttp, aiozcrx drop-in (asyncio base)", "aiohttp", "aiozcrx",
     {"AIOZCRX_LOOP": "asyncio"}),
    ("aiohttp-uvloop", "aiohttp, uvloop", "aiohttp", "uvloop", {}),
    ("aiohttp-asyncio", "aiohttp, asyncio", "aiohttp", "asyncio", {}),
    ("uvicorn-aiozcrx", "uvicorn, aiozcrx drop-in (uvloop base)", "uvicorn", "aiozcrx", {}),
    ("uvicorn-aiozcrx-asyncio", "uvicorn, aiozcrx drop-in (asyncio base)", "uvicorn", "aiozcrx",
     {"AIOZCRX_LOOP": "asyncio"}),
    ("uvicorn-uvloop", "uvicorn, uvloop", "uvicorn", "uvloop", {}),
    ("uvicorn-asyncio", "uvicorn, asyncio", "uvicorn", "asyncio", {}),
]
# not in the default set: the drop-in loop with 256 KiB buffers (what uvloop reads at once)
EXTRA = [
    ("aiohttp-aiozcrx-256k", "aiohttp, aiozcrx drop-in (uvloop base), AIOZCRX_BUF_SIZE=256K", "aiohttp",
     "aiozcrx", {"AIOZCRX_BUF_SIZE": "256K"}),
    ("uvicorn-aiozcrx-256k", "uvicorn, aiozcrx drop-in (uvloop base), AIOZCRX_BUF_SIZE=256K", "uvicorn",
     "aiozcrx", {"AIOZCRX_BUF_SIZE": "256K"}),
]
BY_NAME = {v[0]: v for v in VARIANTS + EXTRA}
QUICK = ["aiohttp-aiozcrx", "aiohttp-uvloop", "aiohttp-asyncio",
         "uvicorn-aiozcrx", "uvicorn-uvloop", "uvicorn-asyncio"]


# --------------------------------------------------------------- the server
def server_cpu(pid: int) -> tuple[int, float, float]:
    """(on-CPU ns of all threads, user s, sys s) of a running process."""
    ns = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that went away
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return ns, int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


class Server:
    def __init__(self, variant):
        self.name, _label, self.kind, self.loop, extra = variant
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.listener.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOZCRX_")}
        env.update(extra)
        fd = self.listener.fileno()
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "httpservers.py"), self.kind,
                                      self.loop, "--fd", str(fd)], pass_fds=(fd,), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.listener.close()

    def cpu(self):
        return server_cpu(self.proc.pid)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        out = self.proc.communicate()[0] or ""
        return out


# --------------------------------------------------------------- the client
class Client:
    """One keep-alive HTTP/1.1 connection, blocking; just enough of the protocol."""

    def __init__(self, port: int, timeout: float = 120):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def _response(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("server closed the connection")
            self.buf += more
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise RuntimeError(f"server answered {status!r}")
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if not m:
            raise RuntimeError("response without content-length")
        n = int(m.group(1))
        while len(self.buf) < n:
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("server closed the connection")
            self.buf += more
        body, self.buf = self.buf[:n], self.buf[n:]
        return body

    def get(self, path: str) -> bytes:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        return self._response()

    def upload(self, block: bytes, nblocks: int) -> bytes:
        self.sock.sendall(f"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                          f"Content-Length: {len(block) * nblocks}\r\n\r\n".encode())
        for _ in range(nblocks):
            self.sock.sendall(block)
        return self._response()

    def close(self):
        self.sock.close()


def wait_ready(port: int, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before it answered")
        try:
            c = Client(port, timeout=5)
            try:
                if c.get("/") == b"Hello, world!":
                    return
            finally:
                c.close()
        except (OSError, RuntimeError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not answer within 60 s")
        time.sleep(0.1)  # polling a starting server, not a measurement


def wrk(port: int, seconds: float, conns: int) -> dict:
    """Runs wrk pinned to the client CPU; requests, req/s, errors and wrk's own CPU."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", f"http://127.0.0.1:{port}/"]
    cpu = cpu_of("client")
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpu] + cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _pid, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.strip()[-300:]}")
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m or not rps:
        raise RuntimeError(f"cannot read wrk's output: {out.strip()[-300:]}")
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    sock_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in sock_err.groups()) if sock_err else 0)
    # --latency: "50%  5.44ms" ... "99%  14.14ms" (us, ms or s)
    lat = {q: float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[u]
           for q, v, u in re.findall(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    return {"requests": int(m.group(1)), "rps": float(rps.group(1)), "errors": errors,
            "wrk_cpu": (ru.ru_utime + ru.ru_stime) / wall,
            **({"p50_us": lat["50"], "p99_us": lat["99"]} if len(lat) == 2 else {})}


def run_one(name: str, args, block: bytes, digest: str) -> dict:
    variant = BY_NAME[name]
    srv = Server(variant)
    res: dict = {"name": name}
    try:
        wait_ready(srv.port, srv.proc)
        # warm-up: code paths, lazy imports, the first Receiver
        c = Client(srv.port)
        if c.upload(block, 1).decode() != hashlib.sha256(block).hexdigest():
            raise RuntimeError("warm-up upload: wrong digest")
        for _ in range(20):
            c.get("/")
        before = c.get("/stats") if variant[3] == "aiozcrx" else None
        c.close()
        # upload
        c = Client(srv.port)
        n0, u0, s0 = srv.cpu()
        t0 = time.perf_counter()
        for _ in range(args.uploads):
            got = c.upload(block, args.upload_mib).decode()
            if got != digest:
                raise RuntimeError(f"upload: server's sha256 {got[:16]}... is not the body's {digest[:16]}...")
        t1 = time.perf_counter()
        n1, u1, s1 = srv.cpu()
        after = c.get("/stats") if before is not None else None
        c.close()
        nbytes = args.uploads * args.upload_mib * BLOCK
        res["upload"] = {"bytes": nbytes, "wall": t1 - t0, "cpu": (n1 - n0) / 1e9, "user": u1 - u0,
                         "sys": s1 - s0}
        if after is not None:
            a, b = json.loads(after), json.loads(before)
            res["engines"], res["loop"] = a["engines"], a["loop"]
            through = a["bytes"] - b["bytes"]
            if through < nbytes:
                raise RuntimeError(f"the drop-in loop's Receivers got {through} bytes of the {nbytes} uploaded: "
                                   "not through aiozcrx")
        # small requests
        if shutil.which("wrk") is None:
            res["requests"] = {"skipped": "wrk is not installed (`make bench` installs it from Debian)"}
        else:
            n0, u0, s0 = srv.cpu()
            t0 = time.perf_counter()
            w = wrk(srv.port, args.wrk_seconds, args.conns)
            t1 = time.perf_counter()
            n1, u1, s1 = srv.cpu()
            w.update({"cpu": (n1 - n0) / 1e9, "user": u1 - u0, "sys": s1 - s0, "wall": t1 - t0})
            res["requests"] = w
    except Exception as e:  # noqa: BLE001 - the row says what went wrong
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        out = srv.stop()
        if "error" in res and out.strip():
            res["error"] += " | server: " + out.strip().splitlines()[-1][:200]
    return res


# --------------------------------------------------------------- reporting
def _ok_upload(runs):
    return [r for r in runs if "upload" in r and "error" not in r]


def _ok_req(runs):
    return [r for r in runs if "error" not in r and "rps" in r.get("requests", {})]


def _why(runs, key):
    for r in runs:
        if r.get("error"):
            return r["error"]
        if key in r and "skipped" in r[key]:
            return r[key]["skipped"]
    return "no runs"


def _paired(runs, ref, f):
    out = []
    for a, b in zip(runs[0], runs[1]):
        va, vb = f(a), f(b)
        if va is not None and vb is not None and vb > 0:
            out.append(va / vb)
    return out


def upload_table(results: dict[str, list[dict]], order: list[str], upload_desc: str) -> str:
    lines = [f"| server, loop | MB/s | server CPU s/GB | user s/GB (ticks) | sys s/GB (ticks) | engine "
             f"| vs uvloop | vs asyncio | paired vs uvloop (per round) |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cpu_gb(r):
        u = r.get("upload") if r and "error" not in r else None
        return u["cpu"] / (u["bytes"] / 1e9) if u else None

    for name in order:
        runs = results[name]
        label = BY_NAME[name][1]
        good = _ok_upload(runs)
        if not good:
            lines.append(f"| {label} | not run: {_why(runs, 'upload')} | | | | | | | |")
            continue
        gb = [r["upload"]["bytes"] / 1e9 for r in good]
        mbps = [r["upload"]["bytes"] / r["upload"]["wall"] / 1e6 for r in good]
        cpu = [r["upload"]["cpu"] / g for r, g in zip(good, gb)]
        user = [r["upload"]["user"] / g for r, g in zip(good, gb)]
        sys_ = [r["upload"]["sys"] / g for r, g in zip(good, gb)]
        engine = ",".join(good[0].get("engines", [])) or "-"
        server = BY_NAME[name][2]
        ratios = []
        for ref in (f"{server}-uvloop", f"{server}-asyncio"):
            rg = _ok_upload(results.get(ref, []))
            if rg:
                rc = med([r["upload"]["cpu"] / (r["upload"]["bytes"] / 1e9) for r in rg])
                ratios.append(f"{med(cpu) / rc:.2f}")
            else:
                ratios.append("n/a")
        ref = f"{server}-uvloop"
        pr = _paired((runs, results.get(ref, [])), ref, cpu_gb) if ref in results and ref != name else []
        lines.append(f"| {label} | {fmt_range(mbps, 0)} | {fmt_range(cpu)} | {fmt_range(user, 2)} | "
                     f"{fmt_range(sys_, 2)} | {engine} | {ratios[0]} | {ratios[1]} | "
                     f"{fmt_range(pr, 2) if pr else '-'} |")
    return "\n".join(lines)


def requests_table(results: dict[str, list[dict]], order: list[str]) -> str:
    lines = ["| server, loop | requests/s | server CPU us/request | server CPU busy | wrk CPU busy | errors "
             "| req/s vs uvloop | req/s vs asyncio | paired req/s vs uvloop (per round) | CPU/request vs uvloop "
             "| latency median ms | latency p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def rps(r):
        q = r.get("requests", {}) if r and "error" not in r else {}
        return q.get("rps")

    for name in order:
        runs = results[name]
        label = BY_NAME[name][1]
        good = _ok_req(runs)
        if not good:
            lines.append(f"| {label} | not run: {_why(runs, 'requests')} | | | | | | | | | | |")
            continue
        q = [r["requests"] for r in good]
        r_s = [x["rps"] for x in q]
        us = [x["cpu"] / max(1, x["requests"]) * 1e6 for x in q]
        busy = [x["cpu"] / x["wall"] * 100 for x in q]
        wbusy = [x["wrk_cpu"] * 100 for x in q]
        errors = sum(x["errors"] for x in q)
        server = BY_NAME[name][2]
        ratios = []
        for ref in (f"{server}-uvloop", f"{server}-asyncio"):
            rg = _ok_req(results.get(ref, []))
            ratios.append(f"{med(r_s) / med([r['requests']['rps'] for r in rg]):.2f}" if rg else "n/a")
        ref = f"{server}-uvloop"
        pr = _paired((runs, results.get(ref, [])), ref, rps) if ref in results and ref != name else []
        rg = _ok_req(results.get(ref, []))
        cpu_ratio = (f"{med(us) / med([r['requests']['cpu'] / max(1, r['requests']['requests']) * 1e6 for r in rg]):.2f}"
                     if rg else "n/a")
        lat = [fmt_range([x[k] / 1e3 for x in q], 2) if all(k in x for x in q) else "-"
               for k in ("p50_us", "p99_us")]
        lines.append(f"| {label} | {fmt_range(r_s, 0)} | {fmt_range(us, 1)} | {fmt_range(busy, 0)} % | "
                     f"{fmt_range(wbusy, 0)} % | {errors} | {ratios[0]} | {ratios[1]} | "
                     f"{fmt_range(pr, 2) if pr else '-'} | {cpu_ratio} | {lat[0]} | {lat[1]} |")
    return "\n".join(lines)


def plots(results: dict[str, list[dict]], order: list[str], outdir: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plots skipped: matplotlib is not installed (`make bench` installs it)"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    names = [n for n in order if _ok_upload(results[n]) or _ok_req(results[n])]
    y = list(range(len(names)))
    colors = ["#4C72B0" if BY_NAME[n][3] == "aiozcrx" else "#8C8C8C" for n in names]

    def bars(ax, vals):
        m = [med(v) if v else 0 for v in vals]
        lo = [x - min(v) if v else 0 for x, v in zip(m, vals)]
        hi = [max(v) - x if v else 0 for x, v in zip(m, vals)]
        ax.barh(y, m, xerr=[lo, hi], color=colors, capsize=3)

    bars(a1, [[r["upload"]["cpu"] / (r["upload"]["bytes"] / 1e9) for r in _ok_upload(results[n])] for n in names])
    a1.set_xlabel("server CPU s/GB, upload streamed into sha256 (lower is better)")
    bars(a2, [[r["requests"]["rps"] for r in _ok_req(results[n])] for n in names])
    a2.set_xlabel("requests/s, wrk 50 connections, Hello world (higher is better)")
    a1.set_yticks(y, [BY_NAME[n][1] for n in names])
    a1.invert_yaxis()
    fig.suptitle("aiohttp and uvicorn: the drop-in loop (blue) against plain uvloop and asyncio "
                 "(median, min-max)")
    fig.tight_layout()
    os.makedirs(outdir, exist_ok=True)
    p = os.path.join(outdir, "bench-http.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return f"plot: {os.path.relpath(p, ROOT)}"


def run_all(args) -> dict:
    pin("client")
    order = [n for n in args.only.split(",") if n] if args.only else (QUICK if args.quick else
                                                                      [v[0] for v in VARIANTS])
    block = bytes(range(256)) * (BLOCK // 256)
    h = hashlib.sha256()
    for _ in range(args.upload_mib):
        h.update(block)
    digest = h.hexdigest()
    results: dict[str, list[dict]] = {n: [] for n in order}
    for r in range(args.rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            res = run_one(name, args, block, digest)
            results[name].append(res)
            if "error" in res:
                print(f"  round {r + 1} {name}: {res['error']}", file=sys.stderr)
            else:
                u, q = res["upload"], res.get("requests", {})
                print(f"  round {r + 1} {name}: upload {u['cpu'] / (u['bytes'] / 1e9):.3f} CPU s/GB; "
                      f"{q.get('rps', 0):.0f} req/s", file=sys.stderr)
    return {"results": results, "order": order}


def report(res: dict, args) -> str:
    order, results = res["order"], res["results"]
    pinned = ("server pinned to CPU 0, clients (uploader, wrk) to CPU 1" if cpu_of("client") is not None
              else "not pinned (1 CPU)")
    try:
        import aiohttp
        import uvicorn
        import uvloop
        vers = f"aiohttp {aiohttp.__version__}, uvicorn {uvicorn.__version__} (httptools), uvloop {uvloop.__version__}"
    except ImportError as e:
        vers = str(e)
    wrk_v = ""
    if shutil.which("wrk"):
        wv = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        wrk_v = ", " + (wv.stdout + wv.stderr).strip().splitlines()[0].split(" [")[0]
    head = (f"{platform.uname().release}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {vers}{wrk_v}; "
            f"{args.rounds} rounds, {pinned}. Medians (min-max).")
    up = (f"### Uploads: {args.uploads} x {args.upload_mib} MiB POSTs on one connection, "
          f"streamed into sha256\n\n" + upload_table(results, order, ""))
    rq = (f"### Small requests: `wrk -t1 -c{args.conns} -d{max(1, round(args.wrk_seconds))}s --latency`, "
          f"GET / (Hello, world!)\n\n" + requests_table(results, order))
    return "\n\n".join([head, up, rq])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--uploads", type=int, default=4, help="uploads per measurement")
    ap.add_argument("--upload-mib", type=int, default=64, help="MiB per upload")
    ap.add_argument("--wrk-seconds", type=float, default=4)
    ap.add_argument("--conns", type=int, default=50, help="wrk connections")
    ap.add_argument("--only", default="", help="comma-separated: " + ", ".join(BY_NAME))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 1 x 8 MiB upload, 1 s of wrk, drop-in on uvloop only")
    ap.add_argument("--json", help="write the raw runs here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.uploads, args.upload_mib, args.wrk_seconds = 1, 1, 8, 1
    unknown = [n for n in args.only.split(",") if n and n not in BY_NAME]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(BY_NAME)}")
    res = run_all(args)
    return emit(res, report(res, args), args.json)


if __name__ == "__main__":
    sys.exit(main())
