"""What TLS costs a receiver: aiozcrx (asyncio's SSL protocol on a ZcrxTransport)
against TLS on plain uvloop (its own SSL protocol) and on the stock loop, with the
plaintext receivers beside them for scale.

One TLS connection over 127.0.0.1; the sender is its own process (the stdlib's
blocking ``ssl`` socket, TLS 1.3, AES-256-GCM) writing ``--mib`` MiB of 1 MiB
blocks. Each receiver runs in a fresh process; its CPU time
(``getrusage(RUSAGE_SELF)``, from ``connection_made`` to the last byte) is the
receiver's alone: handshake, decryption, the protocol's calls. Variants are
interleaved round by round; the table gives medians (min-max).

    .venv/bin/python benchmarks/tls.py                   # 3 rounds x 512 MiB
    .venv/bin/python benchmarks/tls.py --mib 1024 --rounds 5
    .venv/bin/python benchmarks/tls.py --quick           # smoke run: 16 MiB, 1 round

The certificate is made with the openssl command in a temporary directory.
Columns: GB/s (decimal GB of plaintext / wall seconds), receiver CPU s/GB (user,
sys, total), and the total against TLS on plain uvloop (below 1.00 = cheaper).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BLOCK = 1 << 20

VARIANTS = [
    # name, label, loop, receiver (loop: the loop's own transport), tls
    ("uvloop-tls", "TLS, uvloop (its own SSL protocol)", "uvloop", "loop", True),
    ("asyncio-tls", "TLS, asyncio", "asyncio", "loop", True),
    ("aiozcrx-uring-uvloop-tls", "TLS, aiozcrx uring, uvloop", "uvloop", "uring", True),
    ("aiozcrx-uring-asyncio-tls", "TLS, aiozcrx uring, asyncio", "asyncio", "uring", True),
    ("aiozcrx-socket-uvloop-tls", "TLS, aiozcrx socket, uvloop", "uvloop", "socket", True),
    # A/B: the SSL protocol fed as any BufferedProtocol (copy into its get_buffer(),
    # then into its BIO) instead of straight into its BIO (3.11+)
    ("aiozcrx-uring-uvloop-tls-2copies", "TLS, aiozcrx uring, uvloop, fed as a BufferedProtocol",
     "uvloop", "uring", True),
    ("uvloop-plain", "plaintext, uvloop", "uvloop", "loop", False),
    ("aiozcrx-uring-uvloop-plain", "plaintext, aiozcrx uring, uvloop", "uvloop", "uring", False),
]
BY_NAME = {v[0]: v for v in VARIANTS}


def make_cert(d: str) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("benchmarks/tls.py needs the openssl command (apt-get install openssl)")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


# ------------------------------------------------------------------ sender
def sender_main(port: int, total: int, tls: bool, cert: str) -> None:
    block = memoryview(bytes(range(256)) * (BLOCK // 256))
    raw = socket.create_connection(("127.0.0.1", port))
    s = ssl.create_default_context(cafile=cert).wrap_socket(raw, server_hostname="localhost") if tls else raw
    with s:
        sent = 0
        while sent < total:
            n = min(BLOCK, total - sent)
            s.sendall(block[:n])
            sent += n
        # wait for the receiver to close: its CPU clock stops at the last byte
        s.settimeout(120)
        try:
            s.recv(1)
        except (OSError, ssl.SSLError):
            pass


# ---------------------------------------------------------------- receiver
class Counter:
    def __init__(self, total: int, done: asyncio.Future[dict]) -> None:
        self.total = total
        self.done = done
        self.bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.t0 = time.perf_counter()
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.bytes >= self.total and not self.done.done():
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            self.done.set_result({
                "wall": time.perf_counter() - self.t0, "bytes": self.bytes,
                "user": r1.ru_utime - self.r0.ru_utime, "sys": r1.ru_stime - self.r0.ru_stime,
                "engine": self.transport.get_extra_info("aiozcrx_engine"),
                "cipher": (self.transport.get_extra_info("cipher") or ("",))[0]})
            self.transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"lost after {self.bytes} bytes: {exc!r}"))

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


async def receive(kind: str, total: int, tls: bool, cert: str, key: str) -> dict:
    import multiprocessing

    loop = asyncio.get_running_loop()
    ctx = None
    if tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
    done: asyncio.Future[dict] = loop.create_future()

    def factory() -> Counter:
        return Counter(total, done)

    if kind == "loop":
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx)
    else:
        sys.path.insert(0, ROOT)
        import aiozcrx
        if os.environ.get("AIOZCRX_BENCH_TLS_2COPIES"):
            from aiozcrx import transport
            transport._tls_sink = transport._buffered_sink  # the generic path, for the A/B
        server = await aiozcrx.create_server(factory, "127.0.0.1", 0, ssl=ctx, engine=kind,
                                             receiver_options={"views": "opt-in"})
    port = server.sockets[0].getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(target=sender_main, args=(port, total, tls, cert))
    proc.start()
    try:
        return await asyncio.wait_for(done, 600)
    finally:
        server.close()
        await loop.run_in_executor(None, proc.join, 120)


def child_main(name: str, total: int, cert: str, key: str) -> None:
    _, _, loop_name, kind, tls = BY_NAME[name]
    if loop_name == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        res = loop.run_until_complete(receive(kind, total, tls, cert, key))
    finally:
        loop.close()
    print(json.dumps(res))


# ------------------------------------------------------------------ driver
def run_one(name: str, total: int, cert: str, key: str) -> dict:
    env = dict(os.environ)
    if name.endswith("-2copies"):
        env["AIOZCRX_BENCH_TLS_2COPIES"] = "1"
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, "--total", str(total),
                          "--cert", cert, "--key", key], capture_output=True, text=True, timeout=900,
                         cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(vals: list[float], digits: int = 3) -> str:
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(vals):.{digits}f}-{max(vals):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=512, help="MiB per connection (default 512)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="16 MiB, 1 round: checks that it runs")
    ap.add_argument("--only", help="comma-separated variant names")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, args.total, args.cert, args.key)
        return
    if args.quick:
        args.mib, args.rounds = 16, 1
    names = args.only.split(",") if args.only else [v[0] for v in VARIANTS]
    for n in names:
        if n not in BY_NAME:
            raise SystemExit(f"unknown variant {n!r}; known: {', '.join(BY_NAME)}")
    if sys.version_info < (3, 11):
        # 3.10's SSL protocol is a plain Protocol: there is no BufferedProtocol feed to compare
        if args.only and any(n.endswith("-2copies") for n in names):
            raise SystemExit("the -2copies variant needs Python 3.11+ (3.10's SSL protocol is "
                             "not a BufferedProtocol)")
        names = [n for n in names if not n.endswith("-2copies")]
    total = args.mib * BLOCK
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_cert(d)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                results[n].append(run_one(n, total, cert, key))
    print(f"TLS receive, {args.mib} MiB per connection over loopback, {args.rounds} round(s); "
          f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}")
    print()
    print("| receiver | GB/s | CPU s/GB user | sys | total | vs TLS on uvloop |")
    print("|---|---|---|---|---|---|")
    ref = None
    if "uvloop-tls" in results:
        ref = statistics.median((x["user"] + x["sys"]) / (x["bytes"] / 1e9) for x in results["uvloop-tls"])
    for n in names:
        rs = results[n]
        gbps = [x["bytes"] / 1e9 / x["wall"] for x in rs]
        user = [x["user"] / (x["bytes"] / 1e9) for x in rs]
        sys_ = [x["sys"] / (x["bytes"] / 1e9) for x in rs]
        tot = [u + s for u, s in zip(user, sys_)]
        ratio = f"{statistics.median(tot) / ref:.2f}" if ref else "-"
        label = BY_NAME[n][1]
        cipher = rs[0]["cipher"]
        if cipher:
            label += f" [{cipher}]"
        print(f"| {label} | {fmt(gbps, 2)} | {fmt(user)} | {fmt(sys_)} | {fmt(tot)} | {ratio} |")


if __name__ == "__main__":
    main()
