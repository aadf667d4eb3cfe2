"""What the benchmark scripts share: the receivers they compare (VARIANTS), the
counting protocols, the C dispatcher of a Receiver, CPU pinning, and how a case
script reports (median, range, emit). Below every script of benchmarks/ (run.py
runs the others as cases and imports some of them for their plots; none of them
imports run.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics

BUFFERED_SIZE = 256 * 1024

VARIANTS = [
    # name, label, loop, kind, engine
    ("asyncio-protocol", "asyncio Protocol", "asyncio", "protocol", None),
    ("asyncio-buffered", "asyncio BufferedProtocol 256 KiB", "asyncio", "buffered", None),
    ("uvloop-protocol", "uvloop Protocol", "uvloop", "protocol", None),
    ("uvloop-buffered", "uvloop BufferedProtocol 256 KiB", "uvloop", "buffered", None),
    ("aiozcrx-uring-uvloop", "aiozcrx uring, uvloop", "uvloop", "aiozcrx", "uring"),
    ("aiozcrx-uring-asyncio", "aiozcrx uring, asyncio", "asyncio", "aiozcrx", "uring"),
    ("aiozcrx-socket-uvloop", "aiozcrx socket, uvloop", "uvloop", "aiozcrx", "socket"),
    ("aiozcrx-socket-asyncio", "aiozcrx socket, asyncio", "asyncio", "aiozcrx", "socket"),
    ("aiozcrx-zcrx-copy-uvloop", "aiozcrx zcrx-copy, uvloop", "uvloop", "aiozcrx", "zcrx-copy"),
    ("aiozcrx-zcrx-copy-asyncio", "aiozcrx zcrx-copy, asyncio", "asyncio", "aiozcrx", "zcrx-copy"),
    # a NIC queue (--nic: the simulated NIC of the guest tier)
    ("aiozcrx-zcrx-uvloop", "aiozcrx zcrx (NIC queue), uvloop", "uvloop", "aiozcrx", "zcrx"),
    ("aiozcrx-zcrx-asyncio", "aiozcrx zcrx (NIC queue), asyncio", "asyncio", "aiozcrx", "zcrx"),
    # large receive buffers on the NIC queue (Receiver(rx_buf_len=...), 7.0+; run.py RX_BUF_LEN)
    ("aiozcrx-zcrx-16k-uvloop", "aiozcrx zcrx rx_buf_len 16 KiB, uvloop", "uvloop", "aiozcrx", "zcrx"),
    ("aiozcrx-zcrx-32k-uvloop", "aiozcrx zcrx rx_buf_len 32 KiB, uvloop", "uvloop", "aiozcrx", "zcrx"),
    ("aiozcrx-zcrx-64k-uvloop", "aiozcrx zcrx rx_buf_len 64 KiB, uvloop", "uvloop", "aiozcrx", "zcrx"),
]
# Measurements of one option, not in the default set (`--only` names them; guest.py --merged):
# merged views off (max_view=4096: one view per completion) and the refill ring
# published in release order instead of descending (docs/concepts.md, "Merged views")
EXTRA_VARIANTS = [
    ("aiozcrx-zcrx-unmerged-uvloop", "aiozcrx zcrx (NIC queue), max_view=4096, uvloop", "uvloop", "aiozcrx", "zcrx"),
    ("aiozcrx-zcrx-unordered-uvloop", "aiozcrx zcrx (NIC queue), refills unordered, uvloop", "uvloop", "aiozcrx",
     "zcrx"),
    ("aiozcrx-zcrx-copy-unmerged-uvloop", "aiozcrx zcrx-copy, max_view=4096, uvloop", "uvloop", "aiozcrx",
     "zcrx-copy"),
    ("aiozcrx-zcrx-copy-unordered-uvloop", "aiozcrx zcrx-copy, refills unordered, uvloop", "uvloop", "aiozcrx",
     "zcrx-copy"),
]
RECEIVER_OPTIONS = {"aiozcrx-zcrx-unmerged-uvloop": {"max_view": 4096},
                    "aiozcrx-zcrx-copy-unmerged-uvloop": {"max_view": 4096}}
UNORDERED_REFILLS = {"aiozcrx-zcrx-unordered-uvloop", "aiozcrx-zcrx-copy-unordered-uvloop"}


# ---------------------------------------------------------------- receivers
class Sink:
    """Counts bytes; keeps nothing (views are released as soon as the call returns)."""

    def __init__(self, done=None):
        self.done = done
        self.bytes = 0
        self.calls = 0
        self.buf = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.bytes += len(data)
        self.calls += 1

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if self.done is not None and not self.done.done():
            self.done.set_result(exc)

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass


class ProtoSink(Sink, asyncio.Protocol):
    pass


class BufferedSink(Sink, asyncio.BufferedProtocol):
    def __init__(self, done=None, size: int = BUFFERED_SIZE):
        super().__init__(done)
        self.buf = bytearray(size)

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.bytes += nbytes
        self.calls += 1


def ring_dispatcher(rx):
    """The C dispatcher of a Receiver on a ring engine, None on engine socket. Its
    set_timing / set_view_reuse switches are for measurements, so they are reached
    through the private engine here, in one place."""
    return getattr(rx._engine, "dispatcher", None)


# -------------------------------------------------------------------- CPUs
def _cpus() -> list[int]:
    """The CPUs this benchmark may use: those of the first process that asked
    (kept in BENCH_CPUS for its children, which may have been pinned already)."""
    if "BENCH_CPUS" not in os.environ:
        os.environ["BENCH_CPUS"] = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    return [int(c) for c in os.environ["BENCH_CPUS"].split(",")]


def cpu_of(role: str) -> str | None:
    """Receivers and servers on the first CPU, senders and load generators on the
    second; None on a 1-CPU machine."""
    cpus = _cpus()
    if len(cpus) < 2:
        return None
    return str(cpus[0] if role == "receiver" else cpus[1])


def pin(role: str) -> str:
    """Pins this process to its role's CPU (cpu_of). Returns what it did."""
    cpu = cpu_of(role)
    if cpu is None:
        return "not pinned (1 CPU)"
    os.sched_setaffinity(0, {int(cpu)})
    return f"CPU {cpu}"


# ----------------------------------------------------------------- reports
def med(xs):
    return statistics.median(xs) if xs else float("nan")


def emit(res: dict, text: str, json_path: str | None) -> int:
    """How a case script ends (records.py, httpbench.py, latency.py): its report on
    stdout (run.py's section text), its raw runs in ``--json``'s file; exit status 0."""
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f)
    return 0


def fmt_range(xs, nd=3):
    return f"{med(xs):.{nd}f} ({min(xs):.{nd}f}-{max(xs):.{nd}f})"
