"""One set of Receiver settings, validated before any kernel object exists.

``Config`` is what ``Receiver``, ``create_server``/``create_connection`` and
``aiozcrx doctor``'s engine probe all build and check the same way; engines read
it and never re-validate. ``validate()`` is pure (it asks the kernel nothing but
whether a named interface exists), so a bad argument never leaves an fd, a
mapping or a registration behind.
"""

from __future__ import annotations

import dataclasses
import glob
import mmap
import socket
from typing import Any

PAGE_SIZE = mmap.PAGESIZE

#: engine names, best first (``"auto"`` tries them in this order)
ENGINES = ("zcrx", "zcrx-copy", "uring", "socket")

#: who gets memoryviews: every protocol ("always"), or only protocols that opt in
#: (``aiozcrx_views = True``, e.g. by subclassing ``aiozcrx.ViewProtocol``) while
#: the others get ``bytes`` ("opt-in", what the drop-in event loop uses)
VIEWS = ("always", "opt-in")

#: what happens to a connection whose views hold its share of the area
#: (``max_held``): its further data comes as ``bytes`` copies, its buffers back
#: at once ("copy", the default: asyncio never stops a protocol that did not ask
#: for it), or it stops receiving until it releases views ("pause")
OVER_SHARE = ("copy", "pause")

#: how the ring engines learn of new completions (``aiozcrx/engines/wake.py``):
#: ``"auto"`` asks the kernel once per process
WAKE_PATHS = ("eventfd", "socket")
WAKE_CHOICES = ("auto", *WAKE_PATHS)


def check_wake(name: str, value: object) -> str:
    """``value`` if it is a wake-up choice, else TypeError/ValueError naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if value not in WAKE_CHOICES:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, WAKE_CHOICES))}, got {value!r}")
    return value


DEFAULT_AREA_SIZE = 32 * 1024 * 1024
DEFAULT_RQ_ENTRIES = 4096
#: the defaults on a NIC queue (engine "zcrx"), where the NIC drops what arrives
#: while the refill ring is empty: with 32 MiB / 4096 the simulated NIC of the
#: guest tier dropped packets in about half the rounds of the guest benchmark,
#: with 64 MiB / 16384 never (docs/nic-guide.md, "Area and refill ring sizes")
NIC_AREA_SIZE = 64 * 1024 * 1024
NIC_RQ_ENTRIES = 16384
#: the settings whose default depends on the engine (``Config.for_engine``)
SIZED_BY_ENGINE = ("area_size", "rq_entries")
DEFAULT_BUF_SIZE = 64 * 1024
#: the most bytes one view gathers from completions that are contiguous in the
#: area (merged views, ``max_view``); measured in docs/benchmarks.md
DEFAULT_MAX_VIEW = 256 * 1024
MAX_VIEW_LIMIT = (1 << 31) - 1   # a byte count the kernel and the C layer carry as an int
DEFAULT_CQ_ENTRIES = 8192
MAX_RQ_ENTRIES = 32768          # the kernel rejects more (without IORING_SETUP_CLAMP)
MAX_BUFFERS = 32768             # a provided buffer ring holds at most 2**15 buffers
MAX_BUF_SIZE = 1 << 30          # a completion's byte count is a signed 32-bit int
MIN_CQ_ENTRIES = 8
MAX_CQ_ENTRIES = 65536
#: the largest zcrx receive buffer asked for (``rx_buf_len``): the refill path
#: keeps a returned length in 20 bits; drivers take far less (bnxt 32 KiB)
MAX_RX_BUF_LEN = 512 * 1024
#: where ``rx_buf_len="auto"`` starts: one TSO/GRO packet is at most 64 KiB and
#: each packet starts a buffer of its own, so larger buffers would not mean
#: fewer completions
AUTO_RX_BUF_LEN = 64 * 1024


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _int(name: str, value: object) -> int:
    # bool is an int subclass; `rq_entries=True` is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value


def _bool(name: str, value: object) -> bool:
    # `copy="no"` must not mean True
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def socket_family(sock: socket.socket) -> int:
    """The kernel's word on a socket's family: ``socket.fromfd()`` and
    ``socket(fileno=...)`` can carry a wrong ``.family`` (uvicorn ``--fd`` declares
    AF_UNIX for whatever it is given, and accepted sockets inherit it)."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    except OSError:
        return sock.family


def rx_queue_count(interface: str) -> int | None:
    n = len(glob.glob(f"/sys/class/net/{interface}/queues/rx-*"))
    return n or None


@dataclasses.dataclass(frozen=True)
class Config:
    """Receiver settings; see ``Receiver`` for what each one means."""

    engine: str = "auto"
    interface: str | None = None
    queue: int | None = None
    # None: not given; the engine that opens takes its default (``for_engine``)
    area_size: int | None = None
    rq_entries: int | None = None
    copy: bool = False
    buf_size: int = DEFAULT_BUF_SIZE
    hugepages: bool = False
    kernel_region: bool = False
    cq_entries: int = DEFAULT_CQ_ENTRIES
    notifications: bool = True
    views: str = "always"
    max_held: int | None = None
    wake: str = "auto"
    over_share: str = "copy"
    max_view: int = DEFAULT_MAX_VIEW
    # zcrx receive buffer size: None (the page size, what every kernel and
    # driver takes), a power of two in bytes, or "auto"
    rx_buf_len: int | str | None = None

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def receiver_options(self) -> dict[str, Any]:
        """These settings as ``Receiver`` keyword arguments: Config's fields are
        the Receiver's options, declared here once (tests/test_config.py holds the
        Receiver's and the servers' signatures to them)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def for_engine(self, engine: str) -> "Config":
        """These settings as ``engine`` runs them: ``area_size`` and ``rq_entries``
        not given take their defaults, on a NIC queue (engine "zcrx") the larger
        ``NIC_AREA_SIZE`` / ``NIC_RQ_ENTRIES``, else ``DEFAULT_AREA_SIZE`` /
        ``DEFAULT_RQ_ENTRIES``. Values given always stay."""
        nic = engine == "zcrx"
        area = self.area_size if self.area_size is not None else \
            (NIC_AREA_SIZE if nic else DEFAULT_AREA_SIZE)
        rq = self.rq_entries if self.rq_entries is not None else \
            (NIC_RQ_ENTRIES if nic else DEFAULT_RQ_ENTRIES)
        return self.replace(area_size=area, rq_entries=rq)

    @property
    def area_bytes(self) -> int:
        """``area_size`` of a config an engine runs (``for_engine`` filled it)."""
        if self.area_size is None:
            raise RuntimeError("area_size is decided per engine: use Config.for_engine()")
        return self.area_size

    @property
    def refill_entries(self) -> int:
        """``rq_entries`` of a config an engine runs (``for_engine`` filled it)."""
        if self.rq_entries is None:
            raise RuntimeError("rq_entries is decided per engine: use Config.for_engine()")
        return self.rq_entries

    def defaulted(self) -> tuple[str, ...]:
        """The settings of ``SIZED_BY_ENGINE`` not given (their default depends on
        the engine)."""
        return tuple(name for name in SIZED_BY_ENGINE if getattr(self, name) is None)

    @property
    def held_limit(self) -> int:
        """Bytes one connection's views may hold (``max_held``; a quarter of the
        area by default; engines see ``area_size`` given: ``for_engine``)."""
        if self.max_held is not None:
            return self.max_held
        return (self.area_size if self.area_size is not None else DEFAULT_AREA_SIZE) // 4

    def validate(self, *, shared: bool = False) -> "Config":
        """Raises TypeError (wrong type) or ValueError (out of range; an unknown
        interface or queue unless ``engine="auto"``, see ``nic_problem``) naming the
        argument and what it accepts; returns self.

        ``shared``: the settings of a Receiver made with ``share_with=``, whose
        interface and queue come from the Receiver it shares (engine "zcrx" needs
        neither given here)."""
        if not isinstance(self.engine, str):
            raise TypeError(f"engine must be a str, got {type(self.engine).__name__}")
        if self.engine != "auto" and self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: choose 'auto' or one of {', '.join(ENGINES)}")
        for name in ("copy", "hugepages", "kernel_region", "notifications"):
            _bool(name, getattr(self, name))
        if not isinstance(self.views, str):
            raise TypeError(f"views must be a str, got {type(self.views).__name__}")
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {', '.join(map(repr, VIEWS))}, got {self.views!r}")
        check_wake("wake", self.wake)
        if not isinstance(self.over_share, str):
            raise TypeError(f"over_share must be a str, got {type(self.over_share).__name__}")
        if self.over_share not in OVER_SHARE:
            raise ValueError(f"over_share must be one of {', '.join(map(repr, OVER_SHARE))}, "
                             f"got {self.over_share!r}")

        # not given: the checks below hold for both defaults (DEFAULT_AREA_SIZE, the
        # smaller, for buf_size; NIC_AREA_SIZE is a multiple of it with half as many
        # buffers as MAX_BUFFERS allows at the smallest buf_size)
        area_size = _int("area_size", self.area_size) if self.area_size is not None else DEFAULT_AREA_SIZE
        if area_size <= 0 or area_size % PAGE_SIZE:
            raise ValueError(f"area_size must be a positive multiple of the page size ({PAGE_SIZE}), got {area_size!r}")
        buf_size = _int("buf_size", self.buf_size)
        if not is_pow2(buf_size) or not PAGE_SIZE <= buf_size <= min(area_size, MAX_BUF_SIZE):
            raise ValueError(f"buf_size must be a power of two between {PAGE_SIZE} and "
                             f"min(area_size, {MAX_BUF_SIZE}), got {buf_size!r}")
        if area_size % buf_size:
            raise ValueError(f"area_size ({area_size}) must be a multiple of buf_size ({buf_size})")
        if area_size // buf_size > MAX_BUFFERS:
            raise ValueError(f"area_size / buf_size must be at most {MAX_BUFFERS} buffers "
                             f"(buffer ring limit), got {area_size // buf_size}; raise buf_size")
        rq_entries = _int("rq_entries", self.rq_entries) if self.rq_entries is not None else NIC_RQ_ENTRIES
        if not is_pow2(rq_entries) or rq_entries > MAX_RQ_ENTRIES:
            raise ValueError(f"rq_entries must be a power of two between 1 and {MAX_RQ_ENTRIES}, got {rq_entries!r}")
        cq_entries = _int("cq_entries", self.cq_entries)
        if not is_pow2(cq_entries) or not MIN_CQ_ENTRIES <= cq_entries <= MAX_CQ_ENTRIES:
            raise ValueError(f"cq_entries must be a power of two between {MIN_CQ_ENTRIES} and "
                             f"{MAX_CQ_ENTRIES}, got {cq_entries!r}")

        max_view = _int("max_view", self.max_view)
        if not 0 <= max_view <= MAX_VIEW_LIMIT:
            raise ValueError(f"max_view must be between 0 (up to the page size: every completion its own view) and "
                             f"{MAX_VIEW_LIMIT} bytes, got {max_view!r}")

        self._check_rx_buf_len(area_size)

        if self.max_held is not None:
            max_held = _int("max_held", self.max_held)
            if self.area_size is None and self.engine == "zcrx":
                area_size = NIC_AREA_SIZE  # the area engine "zcrx" gets (or, shared, the other's: checked on open)
            if not 0 < max_held <= area_size:
                given = "" if self.area_size is not None else \
                    (f" (the default for engine {self.engine!r}; pass a larger area_size= for more)"
                     if self.engine != "auto" else
                     " (the default unless the engine opened is 'zcrx' on a NIC queue: 64 MiB there; "
                     "pass area_size= to be sure)")
                raise ValueError(f"max_held must be between 1 and area_size ({area_size}) bytes{given}, "
                                 f"got {max_held!r}")

        interface = self.interface
        if interface is not None:
            if not isinstance(interface, str):
                raise TypeError(f"interface must be a str like 'eth0', got {type(interface).__name__}")
            if not interface or "/" in interface or "\0" in interface:
                raise ValueError(f"interface must be an interface name like 'eth0', got {interface!r}")
        if self.queue is not None:
            queue = _int("queue", self.queue)
            if queue < 0:
                raise ValueError(f"queue must be a non-negative integer, got {queue!r}")
            if interface is None:
                raise ValueError("queue= needs interface= (a queue is a hardware queue of one NIC)")
        # an interface or queue this machine does not have: an error for an engine
        # asked for by name; "auto" passes over zcrx and says why (Receiver.fallback_reason)
        problem = self.nic_problem()
        if problem is not None and self.engine != "auto":
            raise ValueError(problem)
        if self.engine == "zcrx" and not shared and (interface is None or self.queue is None):
            raise ValueError("engine='zcrx' needs interface= and queue= (the NIC queue flows are steered to)")
        return self

    def _check_rx_buf_len(self, area_size: int) -> None:
        value = self.rx_buf_len
        if value is None or value == "auto":
            pass
        elif isinstance(value, str):
            raise ValueError(f"rx_buf_len must be 'auto' or a size in bytes, got {value!r}")
        else:
            n = _int("rx_buf_len", value)
            if not is_pow2(n) or not PAGE_SIZE <= n <= MAX_RX_BUF_LEN:
                raise ValueError(f"rx_buf_len must be a power of two between the page size ({PAGE_SIZE}) "
                                 f"and {MAX_RX_BUF_LEN} bytes, or 'auto'; got {n!r}")
            if area_size % n:
                raise ValueError(f"area_size ({area_size}) must be a multiple of rx_buf_len ({n})")
        if value is not None and self.engine in ("uring", "socket"):
            raise ValueError(f"rx_buf_len is the zcrx engines' buffer size; engine {self.engine!r} "
                             "takes buf_size= instead")

    def nic_problem(self) -> str | None:
        """Why ``interface``/``queue`` name no NIC queue on this machine (an unknown
        interface, a queue out of range), or None. ``validate()`` raises it as a
        ValueError for an engine asked for by name; with ``engine="auto"`` the
        Receiver passes over zcrx and gives it as the reason."""
        interface = self.interface
        if interface is None:
            return None
        try:
            socket.if_nametoindex(interface)
        except OSError:
            return f"unknown interface {interface!r}: it is not in `ip link`"
        if self.queue is not None:
            count = rx_queue_count(interface)
            if count is not None and self.queue >= count:
                return (f"queue {self.queue} out of range: {interface} has {count} rx queue(s) "
                        f"(0..{count - 1}); see `ethtool -l {interface}`")
        return None


_SIZE_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """A size as people write it on a command line or in the environment:
    ``33554432``, ``32M``, ``64K``, ``1GiB``. ValueError when it is none."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = _SIZE_SUFFIXES.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    try:
        return int(t) * mult
    except ValueError:
        raise ValueError(f"expected a size like 33554432, 32M or 64K, got {text!r}") from None
