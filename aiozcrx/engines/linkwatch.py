"""Noticing that a network interface went away (rtnetlink link notifications).

When the device of a bound zcrx queue is removed, the kernel takes the queue's
memory provider back (the queue's uninstall hook drops the device) and tells
io_uring nothing: the armed RECV_ZC stays armed, the sockets stay open, and the
connections just stop (measured on the simulated NIC, 7.2). The zcrx engine
watches the interface itself: an rtnetlink socket subscribed to link
notifications, read by the event loop like any other fd, costs nothing until a
link changes somewhere in the network namespace.

A notification is only a hint to look: "gone" is decided by asking the kernel
for the interface's name by its index (which fails once it has left this
namespace), so a delete message about a bridge port, a message we misparse or an
overrun receive queue (ENOBUFS: notifications were lost) can never end a
connection that is fine, nor hide a removal.
"""

from __future__ import annotations

import errno
import socket
import struct

RTMGRP_LINK = 0x1        # multicast group of link notifications (RTNLGRP_LINK)
RTM_DELLINK = 17
NLMSG_HDR = struct.Struct("=IHHII")   # struct nlmsghdr: len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # struct ifinfomsg: family, type, index, flags, change


def interface_exists(ifindex: int) -> bool:
    """Whether ``ifindex`` names an interface of this network namespace."""
    try:
        socket.if_indextoname(ifindex)
    except OSError:
        return False
    return True


class LinkWatch:
    """Link notifications for one interface, on a non-blocking netlink socket
    (``fileno()`` for ``loop.add_reader``). Raises OSError where netlink cannot be
    opened (e.g. a seccomp filter)."""

    def __init__(self, ifindex: int):
        self.ifindex = ifindex
        self._sock = socket.socket(socket.AF_NETLINK,
                                   socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, RTMGRP_LINK))
        except OSError:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def gone(self) -> bool:
        """Reads the notifications that arrived; True when the interface is gone.
        Called when the socket is readable (and once right after subscribing,
        for a removal that came before the subscription)."""
        look = False
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the queue overran: what was lost may matter
                    look = True
                    continue
                raise
            look = look or self._mentions_removal(data)
        return look and not interface_exists(self.ifindex)

    def _mentions_removal(self, data: bytes) -> bool:
        off = 0
        while off + NLMSG_HDR.size <= len(data):
            length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, off)
            if length < NLMSG_HDR.size:
                return True  # malformed: look for ourselves
            body = off + NLMSG_HDR.size
            if kind == RTM_DELLINK and body + IFINFOMSG.size <= len(data):
                if IFINFOMSG.unpack_from(data, body)[2] == self.ifindex:
                    return True
            off += (length + 3) & ~3
        return False

    def close(self) -> None:
        self._sock.close()
