"""The script runner behind tests/test_contract.py (and its worker process).

A *script* (plain JSON, made by the hypothesis strategy in test_contract.py) says
how several connections behave: what each protocol does inside its callbacks, and a
sequence of *steps* driven from outside (peer sends, FINs, resets, attaching a
connection, transport calls made by the application). ``run_script`` plays one
script against one implementation:

- ``engine=None``: the reference, asyncio's selector transport
  (``loop.connect_accepted_socket``) on a stock asyncio loop;
- ``engine="uring"|"socket"|"zcrx-copy"``: ``aiozcrx.Receiver(engine).wrap``.

and returns a normalised *trace* per connection that must be identical for both.

Determinism
-----------
After every step the driver waits for a *settled* state, defined from what the
protocol saw, identically for both implementations (``Run.settled``): for every
attached connection, connection_lost was called, or the application paused it (a
paused transport legitimately receives nothing), or it received every byte its peer
sent (and the EOF / reset the peer sent); a closing transport is never settled (its
connection_lost is due); nothing scheduled with call_soon is pending. Waits are on an
asyncio.Event set by every callback, with a generous timeout; hitting it is a
failure ("hang"), never a sleep.

Chunk boundaries legitimately differ (asyncio reads up to 256 KiB, the engines
deliver per buffer, zcrx-copy per page), so they are never compared, and a reaction
tied to data fires in the data_received call that completes the bytes of one
peer send step. That call is the same byte position on both sides only when the
send found the connection *clean* (reading, not paused, everything sent so far
received): only then is the reaction armed (decided from protocol-side state, so
again identically). A reaction that raises in get_buffer fires on the first
get_buffer after such a send (asyncio calls get_buffer before recv_into, the
engines when they hold data: either way none of the step's bytes were received).

Raising in connection_made is generated: both report it to the loop's exception
handler and go on (compared by exception type and text).

Messages up to 1 MiB: a peer send of BIG_SEND or more is made (from a thread) only
to a clean connection, which takes all of it within the step; anything else stays
within MAX_CONN_BYTES per connection. Writes: ``write`` is a few bytes (the kernel
takes them at once), ``write_big`` 1 MiB, more than the small socket buffers
(OUR_SNDBUF, PEER_RCVBUF) and any high-water mark drawn (``limits``:
set_write_buffer_limits in connection_made) take together, so pause_writing comes
inside that write() on both sides, and resume_writing once the peer reads (step
``drain``: it reads until everything written has reached it, or at the end). A
closing transport with a big write still buffered is settled (it waits for the
peer); a peer's reset with a big write buffered is not, until connection_lost (the
write side meets the reset: asyncio's writer callback runs whether or not reading
is paused). What reaches the peer after a connection that had a big write buffered was
aborted (or closed with received bytes unread: asyncio's socket then sends RST and
the kernel drops what it had not sent) is compared as "a prefix of what was
written". ``swap``: set_protocol() to a new protocol of the other kind (Protocol,
BufferedProtocol); callbacks on a replaced protocol are listed as such.
get_extra_info("socket"/"sockname"/"peername") is compared in connection_made and
connection_lost.

Races of the reference itself that are left out on purpose:
- a peer reset discards whatever the *peer's* kernel has not yet transmitted: before
  a reset the driver waits until the peer's send queue (SIOCOUTQ) is empty, and each
  connection carries at most MAX_CONN_BYTES so a paused receiver's socket buffer
  always takes everything (the receiver's own kernel keeps queued bytes readable
  after a reset, and asyncio delivers them before ConnectionResetError);
- resume_reading after a kept-open EOF makes asyncio (and uvloop) read the EOF a
  second time (a second eof_received, at a time the settled state cannot pin
  down): resume_reading on a connection that already saw EOF is skipped;
- how the peer sees our close (FIN or RST) depends on whether unread bytes were
  still in our socket, and the engines may legitimately have pulled bytes into
  their backlog while paused: only the bytes the peer reads are compared;
- is_reading() is not compared: after a kept-open EOF asyncio says True, uvloop
  False.

The reference runs on a stock asyncio loop even when the engine runs on uvloop:
uvloop's own transport is not the selector transport (it replaces an exception
from get_buffer by RuntimeError('unhandled error (or an empty buffer) in
get_buffer()'), its context messages differ); the contract is asyncio's.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import select
import socket
import struct
import sys
import termios
import traceback

SETTLE_TIMEOUT = float(os.environ.get("AIOZCRX_CONTRACT_SETTLE_TIMEOUT", "10"))
MAX_CONN_BYTES = 24 * 1024  # a paused receiver's socket takes all of it (see above)
BIG_SEND = 64 * 1024        # a send this large goes only to a clean connection (see above)
# write flow control: our send buffer and the peer's receive buffer are fixed and
# small, so the kernel takes at most about SOCKET_BYTES of what we write until the
# peer reads; a big write (WRITE_BIG) is over any high-water mark drawn plus that,
# and is the only write that can pause the protocol's writing
OUR_SNDBUF = PEER_RCVBUF = 32 * 1024
WRITE_BIG = 1 << 20
RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)


_PERIOD = 1 << 16  # the pattern repeats every 64 KiB
_periods: dict[int, bytes] = {}


def pattern(conn: int, start: int, n: int) -> bytes:
    """Connection ``conn``'s bytes [start, start+n): distinct per connection and per
    position (within 64 KiB), so cross-connection delivery, loss, duplication and
    reordering all change what a connection receives."""
    base = _periods.get(conn)
    if base is None:
        mul = 2 * conn + 3
        base = _periods[conn] = bytes(((k * mul + (k >> 8) * 7 + conn * 101) & 0xFF)
                                      for k in range(_PERIOD))
    at = start % _PERIOD
    return (base * ((at + n) // _PERIOD + 1))[at:at + n]


def summary(data: bytes) -> str:
    """Bytes as the trace shows them: in full when short, else length and digest."""
    if len(data) <= 4096:
        return data.decode("latin-1")
    return (f"<{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:16]} "
            f"{data[:48].decode('latin-1')!r}...{data[-48:].decode('latin-1')!r}>")


def queued(sock, request: int) -> int:
    """Bytes in a socket's send queue (``termios.TIOCOUTQ``) or receive queue
    (``termios.FIONREAD``)."""
    buf = bytearray(4)
    fcntl.ioctl(sock.fileno(), request, buf)
    return int(struct.unpack("i", buf)[0])


class ScriptError(Exception):
    """Raised by a scripted reaction; its message names who raised it."""


class Hang(Exception):
    pass


def norm_exc(exc) -> str:
    if exc is None:
        return "None"
    if isinstance(exc, OSError) and exc.errno in RESET_ERRNOS:
        return "reset"  # ConnectionResetError / BrokenPipeError / OSError(ECONNRESET)
    if isinstance(exc, OSError):
        return f"OSError:{errno.errorcode.get(exc.errno, exc.errno)}"
    return f"{type(exc).__name__}:{exc}"


class Conn:
    def __init__(self, run: "Run", i: int, spec: dict):
        self.run = run
        self.i = i
        self.spec = spec
        self.transport = None
        self.sock = None            # our side, until attached (or closed unattached)
        self.peer = None
        self.attached = False
        self.dead = False           # closed without being attached (Receiver closed)
        # protocol-side state
        self.received = bytearray()
        self.calls: list[str] = []
        self.handler: list[list[str]] = []
        self.lost = "not called"
        self.lost_called = False
        self.paused = False
        self.eof_seen = False
        self.wrote_eof = False
        self.types: set[str] = set()
        self.progress: list[str] = []
        self.buffered = bool(spec.get("buffered"))  # the current protocol's kind
        self.gen = 0                # the current protocol (set_protocol makes a new one)
        self.extra: list[dict] = []
        self.written = bytearray()  # what write() took, in order
        self.big_written = False    # a write_big was made
        self.big_pending = False    # ... and the peer has not read it all yet
        self.unread_at_lost = False
        self.our_name = self.peer_name = None
        # peer-side state
        self.sent = 0
        self.fin_sent = False
        self.rst_sent = False
        self.peer_got = bytearray()
        # reactions armed by the driver for the send in progress
        self.arm_data = None        # (threshold, actions, tag)
        self.arm_getbuf = None      # ("raise" | "empty", tag)

    # -- recording --
    def note(self, name: str) -> None:
        self.run.changed.set()
        if self.lost_called and name != "lost":
            name = name + "-after-lost"
        if self.run.in_call:
            # asyncio never calls a protocol back from inside a transport method
            name = name + f"-inside-{self.run.in_call[-1]}()"
        if name.startswith("data") and self.calls and self.calls[-1] == name:
            return
        self.calls.append(name)

    def settled(self) -> bool:
        if not self.attached or self.lost_called:
            return True
        if self.rst_sent and self.big_pending:
            return False  # the reset meets our buffered write: connection_lost is due
        if self.transport.is_closing():
            # connection_lost is due, unless a big write waits for the peer to read
            return self.big_pending and self.transport.get_write_buffer_size() > 0
        if self.paused:
            return True
        if len(self.received) < self.sent:
            return False
        if (self.fin_sent or self.rst_sent) and not self.eof_seen:
            return False  # the EOF, or the reset's connection_lost, is due
        return True

    def state(self) -> str:
        return f"{len(self.received)}{'E' if self.eof_seen else ''}{'L' if self.lost_called else ''}"

    # -- callbacks (called by the protocol objects) --
    def on_made(self, transport) -> None:
        self.transport = transport
        self.note("made")
        self.extra.append(self.extra_info())
        if self.spec.get("limits"):
            transport.set_write_buffer_limits(*self.spec["limits"])
        self.run.act_all(self, self.spec.get("made", []), f"c{self.i}.made")

    def extra_info(self) -> dict:
        """get_extra_info's socket keys, in terms both runs share."""
        t = self.transport
        sock = t.get_extra_info("socket")
        return {"socket": None if sock is None else [int(sock.family), int(sock.type)],
                "sockname": t.get_extra_info("sockname") == self.our_name,
                "peername": t.get_extra_info("peername") == self.peer_name}

    def on_data(self, data: bytes, kind: str) -> None:
        self.types.add(kind)
        self.note("data-while-paused" if self.paused else "data")
        self.received += data
        arm = self.arm_data
        if arm is not None and len(self.received) >= arm[0]:
            self.arm_data = None
            self.run.act_all(self, arm[1], arm[2])

    def on_get_buffer(self, buf):
        arm = self.arm_getbuf
        if arm is not None:
            self.arm_getbuf = None
            if arm[0] == "raise":
                raise ScriptError(arm[1])
            return bytearray(0)
        return buf

    def on_eof(self):
        self.eof_seen = True
        self.note("eof")
        eof = self.spec.get("eof", {})
        self.run.act_all(self, eof.get("actions", []), f"c{self.i}.eof")
        return bool(eof.get("keep", False))

    def on_lost(self, exc) -> None:
        self.note("lost")
        self.unread_at_lost = len(self.received) < self.sent
        self.extra.append(self.extra_info())
        if self.lost_called:
            self.lost = self.lost + "+" + norm_exc(exc)  # twice: a bug, keep both
        else:
            self.lost = norm_exc(exc)
        self.lost_called = True
        self.arm_data = self.arm_getbuf = None
        self.run.act_all(self, self.spec.get("lost", []), f"c{self.i}.lost")


class _Callbacks:
    """What both protocol kinds share: each is one generation of its connection's
    protocol (set_protocol makes the next); a callback on a replaced one is noted."""

    def __init__(self, conn: Conn):
        self.c = conn
        self.gen = conn.gen

    def replaced(self, name: str) -> bool:
        if self.gen != self.c.gen:
            self.c.note(f"{name}-on-replaced-protocol")
            return True
        return False

    def connection_made(self, transport):
        self.c.on_made(transport)

    def eof_received(self):
        if self.replaced("eof"):
            return None
        return self.c.on_eof()

    def connection_lost(self, exc):
        if not self.replaced("lost"):
            self.c.on_lost(exc)

    def pause_writing(self):
        if not self.replaced("pause_writing"):
            self.c.note("pause_writing")

    def resume_writing(self):
        if not self.replaced("resume_writing"):
            self.c.note("resume_writing")


class ScriptProtocol(_Callbacks, asyncio.Protocol):
    def data_received(self, data):
        if self.replaced("data"):
            return
        if type(data) is memoryview:
            kind = "memoryview" if data.readonly else "memoryview-rw"
        else:
            kind = type(data).__name__
        self.c.on_data(bytes(data), kind)  # a copy: no view is kept


class ScriptBufferedProtocol(_Callbacks, asyncio.BufferedProtocol):
    def __init__(self, conn: Conn):
        super().__init__(conn)
        self.buf = bytearray(conn.spec.get("bufsize", 4096))

    def get_buffer(self, sizehint):
        if self.gen != self.c.gen:
            return self.buf
        return self.c.on_get_buffer(self.buf)

    def buffer_updated(self, nbytes):
        if not self.replaced("data"):
            self.c.on_data(bytes(self.buf[:nbytes]), "buffered")


def new_protocol(c: Conn) -> asyncio.BaseProtocol:
    return ScriptBufferedProtocol(c) if c.buffered else ScriptProtocol(c)


class Run:
    def __init__(self, script: dict, engine: str | None):
        self.script = script
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.pending = 0
        self.in_call: list[str] = []  # transport methods the harness is inside of
        self.rx = None
        self.group_closed = False
        self.conns = [Conn(self, i, spec) for i, spec in enumerate(script["conns"])]
        self.global_handler: list[list[str]] = []
        self.driver_errors: list[str] = []

    # -- the loop's exception handler --
    def exception_handler(self, loop, context) -> None:
        exc = context.get("exception")
        rec = [type(exc).__name__, str(exc)] if exc is not None else ["-", context.get("message", "")]
        conn = None
        proto = context.get("protocol")
        transport = context.get("transport")
        for c in self.conns:
            if c.transport is not None and (transport is c.transport or
                                            (proto is not None and getattr(proto, "c", None) is c)):
                conn = c
        if conn is None and isinstance(exc, ScriptError):
            conn = self.conns[int(str(exc).split(".")[0][1:])]
        if conn is None:
            tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
            self.global_handler.append(rec + [context.get("message", ""), tb[-2000:]])
        else:
            conn.handler.append(rec)
        self.changed.set()

    # -- actions (inside callbacks, or from the driver) --
    def act_all(self, actor: Conn, actions, tag: str) -> None:
        raise_it = False
        for name, target in actions:
            if name == "raise":
                raise_it = True
                continue
            self.act(name, self.conns[target], f"{tag}>{target}")
        if raise_it:
            raise ScriptError(tag)

    def act(self, name: str, c: Conn, tag: str) -> None:
        self.changed.set()
        self.in_call.append(name)
        try:
            self._act(name, c, tag)
        finally:
            self.in_call.pop()

    def _act(self, name: str, c: Conn, tag: str) -> None:
        if name == "rx_close":
            self.receiver_close()
            return
        if not c.attached or c.transport is None or c.lost_called:
            return
        t = c.transport
        if name == "pause":
            t.pause_reading()
            c.paused = True
        elif name == "resume":
            if c.eof_seen:
                return  # asyncio would read the EOF again (see the module docstring)
            c.paused = False
            t.resume_reading()
        elif name == "resume_soon":
            self.pending += 1

            def later():
                self.pending -= 1
                self.act("resume", c, tag)

            self.loop.call_soon(later)
        elif name == "close":
            t.close()
        elif name == "abort":
            t.abort()
        elif name in ("write", "write_big"):
            if not c.wrote_eof:
                data = f"[{tag}]".encode()
                if name == "write_big":
                    data = data.ljust(WRITE_BIG, b".")
                t.write(data)
                c.written += data
                if name == "write_big":
                    c.big_written = c.big_pending = True
        elif name == "swap":
            c.gen += 1
            c.buffered = not c.buffered
            t.set_protocol(new_protocol(c))
            c.note("swapped")
        elif name == "write_eof":
            t.write_eof()
            c.wrote_eof = True
        else:
            raise AssertionError(f"unknown action {name!r}")

    def receiver_close(self) -> None:
        """Receiver.close() for aiozcrx; for the reference the equivalent is
        aborting every transport: connection_lost(None) for each, no more data."""
        if self.group_closed:
            return
        self.group_closed = True
        if self.engine is not None:
            self.rx.close()
        else:
            for c in self.conns:
                if c.attached and not c.lost_called:
                    c.transport.abort()

    # -- waiting --
    def is_settled(self) -> bool:
        return self.pending == 0 and all(c.settled() for c in self.conns)

    async def settle(self, what: str) -> None:
        deadline = self.loop.time() + SETTLE_TIMEOUT
        while not self.is_settled():
            self.changed.clear()
            left = deadline - self.loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                stuck = [f"c{c.i}: sent={c.sent} received={len(c.received)} fin={c.fin_sent} "
                         f"rst={c.rst_sent} eof={c.eof_seen} paused={c.paused} "
                         f"closing={c.transport.is_closing()} lost={c.lost_called} {c.transport!r}"
                         for c in self.conns if not c.settled()]
                raise Hang(f"not settled {SETTLE_TIMEOUT}s after {what}: {'; '.join(stuck)}"
                           f"{'; pending call_soon' if self.pending else ''}") from None

    async def poll(self, done, what: str) -> None:
        """Waits until ``done()`` (a condition outside the loop: a socket's queues)."""
        deadline = self.loop.time() + SETTLE_TIMEOUT
        while not done():
            if self.loop.time() > deadline:
                raise Hang(what)
            await asyncio.sleep(0.001)

    async def peer_read(self, c: Conn) -> None:
        """The peer reads until everything our side wrote has reached it: the
        transport's buffer and our socket's send queue are empty, and nothing is
        left in the peer's receive queue (or the peer saw our end)."""
        ours = c.transport.get_extra_info("socket")

        def read_all_there_is() -> bool:
            try:
                # (select: a socket with a timeout waits in recv even with MSG_DONTWAIT)
                while select.select([c.peer], [], [], 0)[0]:
                    chunk = c.peer.recv(1 << 20)
                    if not chunk:
                        return True  # our end
                    c.peer_got += chunk
            except OSError as e:
                if e.errno not in RESET_ERRNOS:
                    raise
                return True  # our side reset it: what reached the peer is compared at the end
            return c.lost_called or (c.transport.get_write_buffer_size() == 0
                                     and queued(ours, termios.TIOCOUTQ) == 0
                                     and queued(c.peer, termios.FIONREAD) == 0)

        await self.poll(read_all_there_is, f"c{c.i}: what we wrote never reached the peer")
        c.big_pending = False

    async def wait_peer_flushed(self, c: Conn) -> None:
        await self.poll(lambda: queued(c.peer, termios.TIOCOUTQ) == 0,
                        f"c{c.i}: the peer's send queue never emptied")

    # -- steps --
    async def attach(self, c: Conn) -> None:
        if self.group_closed:
            c.sock.close()
            c.sock = None
            c.dead = True
            return
        c.attached = True  # before connection_made: its reactions may address it
        sock, c.sock = c.sock, None
        if self.engine is None:
            await self.loop.connect_accepted_socket(lambda: new_protocol(c), sock)
        else:
            await self.rx.wrap(sock, lambda: new_protocol(c))

    async def step(self, k: int, st: dict) -> None:
        op = st["op"]
        if op == "rx_close":
            self.receiver_close()
            return
        c = self.conns[st["c"]]
        if op == "attach":
            await self.attach(c)
            return
        if op == "do":
            try:
                self.act(st["act"], c, f"drv{k}")
            except Exception as e:  # noqa: BLE001 - recorded, compared
                self.driver_errors.append(f"step{k}:{norm_exc(e)}")
            return
        # peer steps: none once our side is gone (a send to a closed socket races
        # with the RST it draws) or the peer itself has reset / half-closed
        if c.lost_called or c.dead or c.rst_sent:
            return
        if op == "send":
            if c.fin_sent:
                return
            n = st["n"]
            clean = (c.attached and not c.paused and not c.transport.is_closing()
                     and len(c.received) == c.sent and not c.eof_seen)
            if n >= BIG_SEND and not clean:
                return  # it would stay in the socket buffers (see the module docstring)
            if clean:
                if st.get("on_data"):
                    c.arm_data = (c.sent + n, st["on_data"], f"c{c.i}.data{k}")
                if st.get("on_getbuf") and c.buffered:
                    c.arm_getbuf = (st["on_getbuf"], f"c{c.i}.getbuf{k}")
            data = pattern(c.i, c.sent, n)
            c.sent += n
            if n < BIG_SEND:
                c.peer.sendall(data)
            else:  # from a thread: the loop receives meanwhile
                try:
                    await asyncio.to_thread(c.peer.sendall, data)
                except OSError:
                    if not c.lost_called:  # our side closed it (a raising callback)
                        raise
        elif op == "drain":
            if c.attached:
                await self.peer_read(c)
        elif op == "fin":
            if c.fin_sent:
                return
            c.peer.shutdown(socket.SHUT_WR)
            c.fin_sent = True
        elif op == "rst":
            await self.wait_peer_flushed(c)
            c.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.peer.close()
            c.rst_sent = True
        else:
            raise AssertionError(f"unknown step {st!r}")

    async def play(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as lst:
            for c in self.conns:
                c.peer = socket.socket()
                c.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PEER_RCVBUF)
                c.peer.connect(lst.getsockname())
                c.peer.settimeout(SETTLE_TIMEOUT)
                c.sock, _ = lst.accept()
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, OUR_SNDBUF)
                c.our_name, c.peer_name = c.sock.getsockname(), c.peer.getsockname()
        for k, st in enumerate(self.script["steps"]):
            await self.step(k, st)
            await self.settle(f"step {k} {st}")
            for c in self.conns:
                c.arm_data = c.arm_getbuf = None
                c.progress.append(c.state())
        # the end: the application closes what is still open, while each peer reads
        # what our writes delivered (how the peer saw the end, FIN or RST, is not
        # compared: see the module docstring)
        readers = [asyncio.ensure_future(asyncio.to_thread(self.peer_read_to_end, c))
                   for c in self.conns if not c.rst_sent]
        try:
            for c in self.conns:
                if c.attached and not c.lost_called:
                    c.transport.close()
                elif c.sock is not None:
                    c.sock.close()
                    c.sock = None
            await self.settle("the final close()")
        finally:
            await asyncio.gather(*readers)

    @staticmethod
    def peer_read_to_end(c: Conn) -> None:
        try:
            while chunk := c.peer.recv(1 << 20):
                c.peer_got += chunk
        except socket.timeout:
            c.peer_got += b"<peer: no EOF: our socket was never closed>"
        except OSError as e:
            if e.errno not in RESET_ERRNOS:
                c.peer_got += f"<peer: {e!r}>".encode()
        c.peer.close()

    def peer_view(self, c: Conn) -> str:
        got = bytes(c.peer_got)
        if c.big_written and (c.big_pending or c.unread_at_lost) and c.written.startswith(got):
            return "<a prefix of what was written>"
        return summary(got)

    def trace(self, error: str | None) -> dict:
        conns = []
        for c in self.conns:
            ok = bytes(c.received) == pattern(c.i, 0, len(c.received))
            conns.append({
                "attached": c.attached,
                "calls": c.calls,
                "received": len(c.received),
                "pattern_ok": ok,
                "lost": c.lost,
                "handler": c.handler,
                "progress": c.progress,
                "peer_got": self.peer_view(c),
                "extra": c.extra,
                "types": sorted(c.types),
            })
        return {"conns": conns, "global_handler": self.global_handler,
                "driver_errors": self.driver_errors, "error": error}


async def run_script(script: dict, engine: str | None) -> dict:
    if engine == "reference":  # the harness checking itself: the reference twice
        engine = None
    run = Run(script, engine)
    loop = run.loop
    old = loop.get_exception_handler()
    loop.set_exception_handler(run.exception_handler)
    error = None
    try:
        if engine is None:
            await run.play()
        else:
            import aiozcrx
            cfg = script.get("rx", {})
            run.rx = aiozcrx.Receiver(engine=engine, area_size=4 << 20,
                                      buf_size=cfg.get("buf_size", 4096), copy=cfg.get("copy", False))
            async with run.rx:
                await run.play()
    except Hang as e:
        error = f"hang: {e}"
    except Exception as e:  # noqa: BLE001 - reported as the run's error
        error = "".join(traceback.format_exception(e))[-3000:]
    finally:
        for c in run.conns:
            for s in (c.sock, c.peer):
                if s is not None:
                    s.close()
            if c.attached and c.transport is not None and not c.lost_called:
                try:
                    c.transport.abort()
                except Exception:  # noqa: BLE001
                    pass
        await asyncio.sleep(0)
        loop.set_exception_handler(old)
    return run.trace(error)


def worker_main() -> None:
    """One JSON request per line on stdin: {"script": ..., "engine": ...}; one JSON
    reply per line: {"ref": trace, "impl": trace}. The reference runs on a stock
    asyncio loop, the engine on the loop named in argv[1]."""
    loop_kind = sys.argv[1]
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the reply channel
    if loop_kind == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    # two loops for the worker's life (asyncio.Runner would do, but not on 3.10)
    ref_loop, impl_loop = asyncio.new_event_loop(), factory()
    try:
        for line in sys.stdin:
            req = json.loads(line)
            asyncio.set_event_loop(ref_loop)
            reply = {"ref": ref_loop.run_until_complete(run_script(req["script"], None))}
            asyncio.set_event_loop(impl_loop)
            reply["impl"] = impl_loop.run_until_complete(run_script(req["script"], req["engine"]))
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        ref_loop.close()
        impl_loop.close()


if __name__ == "__main__":
    worker_main()
