"""Exceptions raised by aiozcrx. Each names the cause and, where there is one, the fix."""

from __future__ import annotations

import errno as _errno
import os


def errno_name(err: int) -> str:
    """Symbolic errno; EOPNOTSUPP rather than its alias ENOTSUP, as the kernel docs say."""
    if err == _errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return _errno.errorcode.get(err, str(err))


class AiozcrxError(Exception):
    """Base class of aiozcrx's own exceptions."""


class EngineUnavailable(AiozcrxError, OSError):
    """An engine asked for by name cannot run here.

    ``errno`` and ``strerror`` are set as on any OSError; ``engine`` names the engine
    and ``cause`` says why in words (the str() of the exception adds the fix).
    """

    def __init__(self, engine: str, err: int, cause: str, fix: str = ""):
        self.engine = engine
        self.cause = cause
        self.fix = fix
        name = errno_name(err)
        text = f"{name}: {cause}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(err, text)

    @property
    def reason(self) -> str:
        """Short form used in fallback reasons: "EOPNOTSUPP: lo has no queue API"."""
        return f"{errno_name(self.errno or 0)}: {self.cause}"

    def __str__(self) -> str:  # OSError's default prints "[Errno N] ..."
        return f"engine {self.engine!r} unavailable: {self.strerror}"


class ZcrxUnavailable(EngineUnavailable):
    """The zcrx engines ("zcrx", "zcrx-copy") cannot register here."""


class ZcrxBufferSizeRefused(ZcrxUnavailable):
    """The zcrx receive buffer size asked for (``Receiver(rx_buf_len=...)``) was
    refused. ``rx_buf_len`` is the size asked for; ``refused_by`` says by what:

    - ``"kernel"``: the kernel has no ``rx_buf_len`` (needs Linux 7.0+);
    - ``"nodev"``: engine "zcrx-copy" (ZCRX_REG_NODEV) takes only the page size
      (EOPNOTSUPP);
    - ``"area"``: the area's memory is not physically contiguous in runs of that
      size (ERANGE); ``contiguous`` is the largest size its runs allow, as read
      from /proc/self/pagemap (None where that cannot be read). Back the area
      with huge pages (``hugepages=True``), ask for at most ``contiguous``, or
      use ``rx_buf_len="auto"``;
    - ``"driver"``: the NIC's driver does not take it: no queue config for the
      buffer size (EOPNOTSUPP), or a size outside its range (ERANGE/EINVAL);
    - ``"unknown"``: ERANGE where the area's layout could not be read (no
      CAP_SYS_ADMIN for /proc/self/pagemap): the area or the driver's range.

    ``errno`` is the kernel's.
    """

    def __init__(self, engine: str, err: int, cause: str, fix: str = "", *,
                 rx_buf_len: int, refused_by: str, contiguous: int | None = None) -> None:
        self.rx_buf_len = rx_buf_len
        self.refused_by = refused_by
        self.contiguous = contiguous
        super().__init__(engine, err, cause, fix)


class ZcrxDeviceRemoved(ZcrxUnavailable, ConnectionAbortedError):
    """The network interface of a zcrx Receiver's queue went away while the queue
    was bound (device unplugged or deleted, driver unbound, moved to another
    network namespace): the kernel takes the queue back without telling io_uring,
    and no more data reaches the Receiver's connections.

    Every connection of that Receiver ends with ``connection_lost(exc)`` (a
    ``ConnectionAbortedError`` too, so code that handles dropped connections
    handles it), and ``Receiver.wrap()`` raises it. ``errno`` is ENODEV;
    ``interface`` and ``queue`` say which queue it was.
    """

    def __init__(self, engine: str, err: int, cause: str, fix: str = "", *,
                 interface: str = "", queue: int | None = None) -> None:
        self.interface = interface
        self.queue = queue
        super().__init__(engine, err, cause, fix)

    def __str__(self) -> str:
        return f"engine {self.engine!r}: {self.strerror}"


class ProcessForked(AiozcrxError, RuntimeError):
    """A Receiver, one of its transports, or its ring, used in a process forked
    from the one that opened it ("opened in another process (fork)").

    The child shares the parent's ring and sockets: whatever it did with them
    would take the parent's completions or data, or write into the parent's
    refill ring. So in the child every Receiver and transport method raises this,
    and views inherited across the fork are inert (their release does nothing;
    they read as zeros). Open a Receiver of the child's own instead; copy what it
    needs of a view (``bytes(view)``) before forking. See docs/security.md.
    """


def process_forked(what: str) -> ProcessForked:
    """The error for ``what`` (e.g. "Receiver") used in a forked child."""
    return ProcessForked(
        f"aiozcrx: this {what} was opened in another process (fork): a forked child cannot use "
        "it, its ring, its transports or its views (they are the parent's); open a Receiver of "
        "its own in the child")


class UringUnavailable(EngineUnavailable):
    """io_uring itself cannot be used (disabled, blocked by seccomp, too old)."""


def os_error(err: int, what: str) -> OSError:
    """An OSError for a negative errno returned by the ABI layer."""
    return OSError(err, f"{what}: {os.strerror(err)}")


class MemlockTooSmall(ZcrxUnavailable):
    """The workers' zcrx areas would not fit under RLIMIT_MEMLOCK.

    io_uring pins each area and charges it to the user that created the ring,
    against that user's RLIMIT_MEMLOCK, unless the process has CAP_IPC_LOCK
    (root has). Raised by ``aiozcrx.workers.Launcher`` before any worker starts;
    ``limit`` and ``needed`` are bytes, ``workers`` how many areas.
    """

    def __init__(self, engine: str, *, limit: int, needed: int, workers: int, per_worker: int) -> None:
        self.limit = limit
        self.needed = needed
        self.workers = workers
        self.per_worker = per_worker
        super().__init__(
            engine, _errno.ENOMEM,
            f"{workers} workers pin {needed} bytes ({per_worker} each: area, refill ring, ring) but "
            f"RLIMIT_MEMLOCK is {limit} bytes and this process lacks CAP_IPC_LOCK",
            f"raise the limit to at least {needed} bytes (`ulimit -l {(needed + 1023) // 1024}`, "
            f"LimitMEMLOCK={needed} in systemd), grant CAP_IPC_LOCK, or pass a smaller --area-size")


class WorkerFailed(AiozcrxError, RuntimeError):
    """A worker could not start (its queue could not be prepared, its privileges
    not dropped, its application not imported): the message is the worker's own
    error. ``error`` is the typed exception where it was one (e.g. a
    ``ZcrxUnavailable`` rebuilt from the worker's report), else None."""

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        self.error = error
        super().__init__(message)
