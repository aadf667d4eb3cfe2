"""Peers for the tests: senders in other processes, sockets, byte patterns, and the
fd / mapping counters used to check that nothing leaks."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import multiprocessing
import os
import random
import socket
import struct

BLOCK = 1 << 20
_ctx = multiprocessing.get_context("spawn")


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _stream_blocks(seed: int, total: int):
    rnd = random.Random(seed)
    base = rnd.randbytes(BLOCK)
    sent = 0
    i = 0
    while sent < total:
        n = min(BLOCK, total - sent)
        # vary each block cheaply so a dropped or repeated block changes the hash
        blk = struct.pack("<Q", i) + base[8:n] if n > 8 else base[:n]
        yield blk
        sent += n
        i += 1


def stream_sha256(seed: int, total: int) -> str:
    h = hashlib.sha256()
    for blk in _stream_blocks(seed, total):
        h.update(blk)
    return h.hexdigest()


def enter_netns(name: str | None) -> None:
    """Moves the calling process (a fresh, single-threaded sender) into network
    namespace ``name``, as ``ip netns exec`` does: its sockets are then on the far
    side of the simulated NIC (``run-in-guest.sh --nic``)."""
    if not name:
        return
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # 3.12+
            os.setns(fd, os.CLONE_NEWNET)
        else:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                err = ctypes.get_errno()
                raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _bulk_sender(port: int, seed: int, total: int, mode: str, host: str = "127.0.0.1",
                 netns: str | None = None) -> None:
    enter_netns(netns)
    with socket.create_connection((host, port)) as s:
        for blk in _stream_blocks(seed, total):
            s.sendall(blk)
        if mode == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "eof-wait":
            s.shutdown(socket.SHUT_WR)
            # read whatever the receiver writes back until it closes
            while s.recv(65536):
                pass


def start_sender(port: int, seed: int, total: int, mode: str = "close", *,
                 host: str = "127.0.0.1", netns: str | None = None):
    p = _ctx.Process(target=_bulk_sender, args=(port, seed, total, mode, host, netns), daemon=True)
    p.start()
    return p


def _many_sender(port: int, sizes: list[int], seeds: list[int], host: str = "127.0.0.1",
                 netns: str | None = None) -> None:
    enter_netns(netns)
    socks = [socket.create_connection((host, port)) for _ in sizes]
    for s, size, seed in zip(socks, sizes, seeds):
        # first 4 bytes: the connection's index, so the receiver knows what to expect
        s.sendall(struct.pack("<I", seeds.index(seed)))
    data = [memoryview(payload(seed, size)) for seed, size in zip(seeds, sizes)]
    pos = [0] * len(socks)
    for s in socks:
        s.setblocking(False)
    pending = set(range(len(socks)))
    import selectors
    sel = selectors.DefaultSelector()
    for i in pending:
        sel.register(socks[i], selectors.EVENT_WRITE, i)
    while pending:
        for key, _ in sel.select():
            i = key.data
            try:
                n = socks[i].send(data[i][pos[i]:pos[i] + 65536])
            except BlockingIOError:
                continue
            pos[i] += n
            if pos[i] == len(data[i]):
                sel.unregister(socks[i])
                socks[i].shutdown(socket.SHUT_WR)
                pending.discard(i)
    for s in socks:
        s.setblocking(True)
        s.settimeout(30)
        try:
            s.recv(1)
        except OSError:
            pass
        s.close()


def start_many(port: int, sizes: list[int], seeds: list[int], *, host: str = "127.0.0.1",
               netns: str | None = None):
    p = _ctx.Process(target=_many_sender, args=(port, sizes, seeds, host, netns), daemon=True)
    p.start()
    return p


def queued_interface() -> str:
    """An interface whose rx queues sysfs lists (so a queue number can be out of
    range on it): lo on most hosts; in the UML guest lo lists none, the simulated NIC
    (if any) does. "lo" where none does: tests of the range check skip then."""
    for name in ("lo", *sorted(os.listdir("/sys/class/net"))):
        if os.path.isdir(f"/sys/class/net/{name}/queues/rx-0"):
            return name
    return "lo"


def has_rx_queues(name: str) -> bool:
    return os.path.isdir(f"/sys/class/net/{name}/queues/rx-0")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (like socket.socketpair(), but TCP)."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        b = socket.create_connection(lst.getsockname())
        a, _ = lst.accept()
    return a, b


class Listener:
    """A listening socket (loopback unless ``host``) with an awaitable accept."""

    def __init__(self, backlog: int = 512, host: str = "127.0.0.1", port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=backlog)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    async def accept(self) -> socket.socket:
        conn, _ = await asyncio.get_running_loop().sock_accept(self.sock)
        return conn

    def close(self) -> None:
        self.sock.close()


def open_fds() -> int:
    gc.collect()  # garbage of earlier tests must not be counted, nor freed mid-check
    return len(os.listdir("/proc/self/fd"))


def mappings() -> list[str]:
    gc.collect()
    with open("/proc/self/maps") as f:
        return f.read().splitlines()


#: anonymous mappings at least this large are counted as a Receiver's (its area: 32 MiB
#: by default); Python's allocator stays below it (1 MiB arenas, 8 MiB thread stacks)
_LARGE_ANON = 16 << 20


def receiver_mappings() -> list[str]:
    """The mappings a Receiver makes, from /proc/self/smaps: io_uring's own (rings and
    kernel refill regions: shared mappings of a ring fd), anonymous memory kept out of
    fork (VmFlags dc, MADV_DONTFORK: zcrx areas, user refill regions, buffer rings) and
    large anonymous mappings (the uring and socket engines' areas). Leak checks count
    these, not every line of /proc/self/maps: Python's allocator maps and unmaps
    arenas, large objects and thread stacks on its own schedule, and that count moved
    by one now and then (seen on Python 3.14 in a fresh venv)."""
    gc.collect()
    found, head = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                head = line.rstrip("\n")
                fields = head.split()
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                anonymous = len(fields) < 6
                if "s" in fields[1] or (anonymous and hi - lo >= _LARGE_ANON):
                    found.append(head)
                    head = None
            elif first == "VmFlags:" and head is not None:
                if "dc" in line.split()[1:]:
                    found.append(head)
                head = None
    return found


def is_mapped(addr: int) -> bool:
    for line in mappings():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False


async def join(proc, timeout: float = 60.0) -> int:
    """Waits for a sender process without blocking the loop."""
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.run_in_executor(None, proc.join), timeout)
    return proc.exitcode


async def wait_until(predicate, what: str, timeout: float = 60.0, interval: float = 0.01) -> None:
    """Waits for a condition, however slow the machine; fails (naming it) only if it
    never holds within a generous timeout. Tests wait on conditions, never durations."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        await asyncio.sleep(interval)


def area_full(rx) -> bool:
    """Every buffer of the Receiver's area is held by user code (views kept)."""
    s = rx.stats()
    return s["buffers_outstanding"] == s["buffers_total"]


def queued(sock: socket.socket, limit: int) -> int:
    """Bytes waiting in a socket's receive queue (up to ``limit``), without reading them."""
    try:
        return len(sock.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return 0


async def accept_sinks(rx, lst: Listener, n: int, factory) -> list:
    """Accepts n connections on ``lst`` and wraps each in ``rx`` with ``factory``;
    the protocols, in accept order."""
    protos = []
    for _ in range(n):
        _, p = await rx.wrap(await lst.accept(), factory)
        protos.append(p)
    return protos
