"""Which worker a connection belongs to, and passing it there unread.

A connection's packets arrive on one RX queue (the NIC's steering: an RSS
context over the workers' queues); the socket remembers that queue's NAPI
instance (``SO_INCOMING_NAPI_ID``), and the netdev family lists each RX queue's
NAPI id (``tools.ethtool.netdev_queues``). Data placed on zcrx queue A can only
be received through the ring registered on A (another ring gets EFAULT), so the
worker that accepted a connection on another worker's queue passes the socket to
that worker over a UNIX datagram socket (SCM_RIGHTS) without reading a byte; the
receiving worker checks the sender's credentials (SCM_CREDENTIALS: the same uid,
and a process whose parent is the launcher) before it takes the socket.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import time
from typing import Callable, Iterator

SO_INCOMING_NAPI_ID = getattr(socket, "SO_INCOMING_NAPI_ID", 56)
SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)
SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_MSG = b"aiozcrx-conn"


def incoming_napi_id(sock: socket.socket) -> int:
    """The NAPI id of the queue the socket's last packet came in on (0: none known,
    e.g. loopback, or a kernel without CONFIG_NET_RX_BUSY_POLL)."""
    try:
        napi: int = sock.getsockopt(socket.SOL_SOCKET, SO_INCOMING_NAPI_ID)
    except OSError:
        return 0
    return napi


class QueueMap:
    """NAPI id -> RX queue of ``interface``, read from the netdev family; read
    again (at most every ``refresh`` seconds) when an id is not known: restarting
    a queue (binding a memory provider to it) can give it a new NAPI instance.
    ``unknown``: lookups of a non-zero id that no read explained."""

    def __init__(self, interface: str | None, refresh: float = 0.5,
                 reader: Callable[[str], list[tuple[int, int]]] | None = None) -> None:
        self.interface = interface
        self._refresh = refresh
        self._reader = reader or _rx_napi_ids
        self._map: dict[int, int] = {}
        self._read_at = -1e9
        self.reads = 0
        self.unknown = 0
        self.error = ""

    def read(self) -> None:
        if self.interface is None:
            return
        self._read_at = time.monotonic()
        self.reads += 1
        try:
            # merged, not replaced: a queue restarted (bound to a memory provider) can
            # get a new NAPI instance, and a connection accepted meanwhile still
            # carries the old id; ids are not reused while the old ones matter
            self._map.update({napi: queue for queue, napi in self._reader(self.interface) if napi})
            self.error = ""
        except OSError as e:
            self.error = f"netdev QUEUE_GET on {self.interface}: {e}"

    def queue_of(self, napi_id: int) -> int | None:
        if not napi_id or self.interface is None:
            return None
        queue = self._map.get(napi_id)
        if queue is None and time.monotonic() - self._read_at >= self._refresh:
            self.read()
            queue = self._map.get(napi_id)
        if queue is None:
            self.unknown += 1
        return queue

    def napi_of(self, queue: int) -> int:
        """The queue's newest NAPI id (0: unknown)."""
        return max((n for n, q in self._map.items() if q == queue), default=0)


def _rx_napi_ids(interface: str) -> list[tuple[int, int]]:
    from ..tools import ethtool  # noqa: PLC0415 - netlink, needs no compiled core
    return [(q["id"], q["napi_id"] or 0) for q in ethtool.netdev_queues(interface)
            if q["type"] == "rx" and q["id"] is not None]


def send_connection(channel: socket.socket, sock: socket.socket) -> None:
    """Passes ``sock``'s fd over ``channel`` (a worker's inbox). Raises
    BlockingIOError when the inbox is full (the caller waits for it to drain)."""
    channel.sendmsg([_MSG], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))],
                    socket.MSG_DONTWAIT)


class Rejected(Exception):
    """A message on a worker's inbox that is not a connection from a sibling."""


def parent_of(pid: int) -> int:
    """The parent pid of ``pid`` (/proc/PID/stat), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def receive_connection(inbox: socket.socket, *, uid: int, launcher_pid: int,
                       siblings: set[int] | frozenset[int] = frozenset()) -> socket.socket:
    """Takes one connection from ``inbox`` (SO_PASSCRED set on it). Raises
    BlockingIOError when there is none, Rejected (every fd received closed) when
    the sender is not a sibling worker of the same uid: a process whose parent is
    ``launcher_pid``, or one of ``siblings`` (every worker the launcher started: a
    worker that handed a connection over and then exited, in a rolling restart,
    has no parent any more when the message is read)."""
    fds_size = socket.CMSG_SPACE(4 * 4)
    cred_size = socket.CMSG_SPACE(_UCRED.size)
    msg, ancdata, _flags, _addr = inbox.recvmsg(64, fds_size + cred_size, socket.MSG_DONTWAIT)
    fds: list[int] = []
    cred: tuple[int, int, int] | None = None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[:len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
        elif level == socket.SOL_SOCKET and kind == SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid, cuid, cgid = _UCRED.unpack(data[:_UCRED.size])
            cred = (pid, cuid, cgid)
    problem = ""
    if cred is None:
        problem = "no credentials (SO_PASSCRED off?)"
    elif cred[1] != uid:
        problem = f"sender uid {cred[1]} is not the workers' uid {uid}"
    elif cred[0] not in siblings and parent_of(cred[0]) != launcher_pid:
        problem = f"sender pid {cred[0]} is not a worker of launcher {launcher_pid}"
    elif msg != _MSG or len(fds) != 1:
        problem = f"not one connection ({len(fds)} fds, {msg[:16]!r})"
    if problem:
        for fd in fds:
            os.close(fd)
        raise Rejected(problem)
    return socket.socket(fileno=fds[0])


def accept_ready(listener: socket.socket, limit: int = 64) -> Iterator[socket.socket]:
    """The connections waiting on a non-blocking listener, up to ``limit`` a
    wake-up (the loop's other work goes on between batches). A connection that
    ended before it was taken (ECONNABORTED, EPROTO) is passed over; out of fds or
    memory, it stops and the next wake-up tries again; any other error raises."""
    for _ in range(limit):
        try:
            conn, _addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                continue
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                return
            raise
        yield conn
