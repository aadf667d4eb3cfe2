"""Kernel errnos turned into advice: the cause in words and the fix.

The engines know the context (which interface, which queue, which step); the
ABI layer only returns errnos. Everything that names a fix lives here.
"""

from __future__ import annotations

import errno
import os
import resource
from typing import TYPE_CHECKING

from ..config import NIC_AREA_SIZE
from ..errors import (EngineUnavailable, UringUnavailable, ZcrxBufferSizeRefused, ZcrxDeviceRemoved,
                      ZcrxUnavailable)

if TYPE_CHECKING:
    from ..config import Config

KNOWN_ZCRX_DRIVERS = ("bnxt_en", "mlx5_core", "gve", "fbnic")


def interface_driver(name: str) -> str:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{name}/device/driver"))
    except OSError:
        return "virtual" if name != "lo" else "loopback"


def _xdp_attached(iface: str) -> bool:
    """Whether an XDP program is attached to ``iface`` (asked only on an error path)."""
    import json
    import subprocess
    try:
        out = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", iface],
                             capture_output=True, text=True, timeout=10).stdout
        return any("xdp" in link for link in json.loads(out or "[]"))
    except (OSError, ValueError, subprocess.SubprocessError):
        return False


# Running out of file descriptors, whichever engine's set-up met it
FD_CAUSES: dict[int | None, tuple[str, str]] = {
    errno.EMFILE: ("this process has no file descriptor left (RLIMIT_NOFILE)",
                   "raise `ulimit -n`, or close the fds the process does not need"),
    errno.ENFILE: ("the system's file table is full", "raise sysctl fs.file-max"),
}


def fd_error(engine: str, e: OSError) -> EngineUnavailable:
    """An engine's fds (eventfd, epoll, timerfd) could not be made."""
    cause, fix = FD_CAUSES.get(e.errno, (f"{e.strerror}", ""))
    return EngineUnavailable(engine, e.errno or errno.EIO, cause, fix)


def uring_error(engine: str, e: OSError) -> UringUnavailable:
    err = e.errno
    causes: dict[int | None, tuple[str, str]] = {
        **FD_CAUSES,
        errno.ENOSYS: ("this kernel has no io_uring", "use engine='socket'"),
        errno.EPERM: ("io_uring is disabled (sysctl kernel.io_uring_disabled) or blocked by seccomp",
                      "set kernel.io_uring_disabled=0, or allow io_uring_* syscalls in the seccomp profile"),
        errno.EINVAL: ("this kernel lacks IORING_SETUP_DEFER_TASKRUN / provided buffer rings (needs 6.1+)",
                       "use engine='socket' or a newer kernel"),
        errno.ENOMEM: ("cannot lock memory for the ring or buffers (RLIMIT_MEMLOCK)", "raise `ulimit -l`"),
    }
    cause, fix = causes.get(err, (f"{e.strerror}", ""))
    return UringUnavailable(engine, err or errno.EIO, cause, fix)


def _memlock() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


def zcrx_error(engine: str, config: Config, e: OSError, *, nodev: bool) -> ZcrxUnavailable:
    """Why registering a zcrx instance failed, for ``config``'s interface/queue."""
    # the kernel's refusals carry an errno (aiozcrx._kernel raises OSError(errno, ...))
    err = e.errno if e.errno is not None else errno.EIO
    causes: dict[int, tuple[str, str]]
    if nodev:
        where = "ZCRX_REG_NODEV"
        causes = {
            errno.EINVAL: ("this kernel has no ZCRX_REG_NODEV (needs Linux 7.1+)", "use engine='uring' or a 7.1+ kernel"),
            errno.EOPNOTSUPP: ("this kernel has no io_uring zcrx (CONFIG_IO_URING_ZCRX)", "use engine='uring'"),
        }
    else:
        iface, queue = config.interface, config.queue
        assert iface is not None, "the zcrx engine opens only with interface= and queue="
        drv = interface_driver(iface)
        where = f"{iface} queue {queue}"
        causes = {
            errno.EOPNOTSUPP: (f"{iface} ({drv}) has no queue API" if drv not in KNOWN_ZCRX_DRIVERS
                               else f"{iface} ({drv}) refused: header/data split off or driver too old",
                               f"use a NIC whose driver supports zcrx ({', '.join(KNOWN_ZCRX_DRIVERS)}); "
                               f"run `aiozcrx doctor --interface {iface}`"),
            errno.EINVAL: (f"{where}: bad queue or header/data split not enabled",
                           f"`aiozcrx nic setup --interface {iface} --queue {queue}`"),
            errno.EEXIST: ((f"{iface} has an XDP program attached: a memory provider cannot bind "
                            f"a queue under XDP"), f"detach it (`ip link set dev {iface} xdp off`)")
                           if _xdp_attached(iface) else
                           (f"{where} is already bound to a memory provider",
                            "close the other zcrx user of this queue or pick another queue"),
            errno.ERANGE: (f"{where}: queue out of range", "pick a queue below the channel count (`ethtool -l`)"),
        }
    causes[errno.EPERM] = ("registering zcrx needs CAP_NET_ADMIN",
                           "run as root or grant CAP_NET_ADMIN (setcap cap_net_admin+ep)")
    smaller = "pass a smaller area_size" if nodev else \
        f"pass a smaller area_size= (on a NIC queue the default is {NIC_AREA_SIZE >> 20} MiB)"
    causes[errno.ENOMEM] = (f"cannot pin a {config.area_size}-byte area: RLIMIT_MEMLOCK is {_memlock()}",
                            f"raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd) or {smaller}")
    if (e.strerror or "").startswith("madvise(MADV_DONTFORK)"):  # aiozcrx._kernel.DONTFORK
        # not the kernel's refusal: the memory it would pin could not be kept out
        # of forked children, and it is not registered without that
        causes[err] = (e.strerror or "madvise(MADV_DONTFORK) failed", "")
    cause, fix = causes.get(err, (f"{where}: {e.strerror}", ""))
    return ZcrxUnavailable(engine, err, cause, fix)


def _kernel_version() -> tuple[int, int]:
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def _kib(n: int) -> str:
    return f"{n >> 10} KiB" if n >= 1024 else f"{n} bytes"


def rx_buf_len_error(engine: str, config: Config, e: OSError, size: int, *, nodev: bool,
                     contiguous: int | None) -> ZcrxUnavailable:
    """Registering with ``rx_buf_len=size`` (larger than a page) failed: the typed
    error naming what refused it (the kernel, NODEV, the area, the driver), or,
    for a refusal that is not about the size, ``zcrx_error``'s.
    ``contiguous``: what the area's physical runs allow (_kernel.area_contiguity)."""
    err = e.errno if e.errno is not None else errno.EIO
    want = f"rx_buf_len={size} ({_kib(size)})"
    smaller = "leave rx_buf_len at its default (the page size) or pass rx_buf_len='auto'"
    if _kernel_version() < (7, 0) and err == errno.EINVAL:
        return ZcrxBufferSizeRefused(
            engine, err, f"{want}: this kernel ({os.uname().release}) has no rx_buf_len (needs Linux 7.0+)",
            smaller, rx_buf_len=size, refused_by="kernel")
    if nodev:
        if err == errno.EOPNOTSUPP:
            return ZcrxBufferSizeRefused(
                engine, err, f"{want}: a ZCRX_REG_NODEV instance (engine 'zcrx-copy') takes only the page "
                f"size ({os.sysconf('SC_PAGE_SIZE')}): the kernel copies into the area a page at a time",
                "leave rx_buf_len out for engine 'zcrx-copy'", rx_buf_len=size, refused_by="nodev")
        return zcrx_error(engine, config, e, nodev=True)
    iface, queue = config.interface, config.queue
    assert iface is not None, "the zcrx engine opens only with interface= and queue="
    drv = interface_driver(iface)
    if err == errno.ERANGE and contiguous is not None and contiguous < size:
        return ZcrxBufferSizeRefused(
            engine, err, f"{want}: the area is not physically contiguous enough: its memory comes in "
            f"runs that allow buffers of at most {_kib(contiguous)} (the kernel needs every DMA "
            f"segment of the area to be a multiple of the buffer size)",
            f"back the area with huge pages (hugepages=True, after `sysctl vm.nr_hugepages=N`; or "
            f"transparent huge pages), ask for rx_buf_len<={contiguous}, or pass rx_buf_len='auto'",
            rx_buf_len=size, refused_by="area", contiguous=contiguous)
    if err == errno.EOPNOTSUPP:
        return ZcrxBufferSizeRefused(
            engine, err, f"{want}: {iface} ({drv}) does not take a receive buffer size: its driver has "
            f"no queue config for it (QCFG_RX_PAGE_SIZE; bnxt has it since 7.0) or no queue API at all",
            smaller + f"; `aiozcrx doctor --interface {iface}` tells whether zcrx works there at all",
            rx_buf_len=size, refused_by="driver")
    if err == errno.ERANGE:
        if contiguous is not None:  # the area allows it: the driver's range does not
            return ZcrxBufferSizeRefused(
                engine, err, f"{want}: {iface} ({drv}) queue {queue} refused the size: out of its "
                f"driver's range", "pass a smaller power of two, or rx_buf_len='auto'",
                rx_buf_len=size, refused_by="driver", contiguous=contiguous)
        return ZcrxBufferSizeRefused(
            engine, err, f"{want}: refused (ERANGE): out of the range of {iface}'s driver ({drv}), or "
            f"the area is not physically contiguous in runs of that size (/proc/self/pagemap, "
            f"which needs CAP_SYS_ADMIN, could not tell which)",
            "pass a smaller power of two or rx_buf_len='auto'; hugepages=True for a contiguous area",
            rx_buf_len=size, refused_by="unknown")
    if err == errno.EINVAL:
        return ZcrxBufferSizeRefused(
            engine, err, f"{want}: {iface} ({drv}) queue {queue} refused it: its driver does not take "
            f"that size, or the queue is not set up (header/data split)",
            f"{smaller}; `aiozcrx nic setup --interface {iface} --queue {queue}` if the page size "
            f"fails too", rx_buf_len=size, refused_by="driver")
    return zcrx_error(engine, config, e, nodev=False)


def area_error(engine: str, config: Config, e: OSError,
               cls: type[EngineUnavailable] = EngineUnavailable) -> EngineUnavailable:
    """The receive area could not be mapped (mmap), for any engine."""
    err = e.errno if e.errno is not None else errno.ENOMEM  # aiozcrx._kernel.map_area sets it
    if config.hugepages:
        cause = f"cannot map a {config.area_size}-byte area with huge pages: {os.strerror(err)}"
        fix = "reserve huge pages (sysctl vm.nr_hugepages) or pass hugepages=False"
    else:
        cause = f"cannot map a {config.area_size}-byte area: {os.strerror(err)}"
        fix = "pass a smaller area_size"
    return cls(engine, err or errno.ENOMEM, cause, fix)


def device_removed(engine: str, interface: str, queue: int, ifindex: int) -> ZcrxDeviceRemoved:
    """The interface of a bound zcrx queue went away (engines/linkwatch.py)."""
    return ZcrxDeviceRemoved(
        engine, errno.ENODEV,
        f"network interface {interface} (ifindex {ifindex}) was removed while its RX queue "
        f"{queue} was bound to this Receiver (device deleted or unplugged, driver unbound, or "
        f"moved to another network namespace): nothing more arrives on its connections",
        f"close this Receiver; once {interface} is back, set it up again (`aiozcrx nic setup "
        f"--interface {interface} --queue {queue}`) and open a new Receiver, or use "
        f"engine='auto', which falls back to another engine meanwhile",
        interface=interface, queue=queue)


def out_of_memory_error() -> OSError:
    """A connection that lost received bytes because memory ran out while they
    were being delivered (its buffer went back to the kernel): it ends with this."""
    return OSError(errno.ENOMEM, "out of memory while delivering received data: bytes of this "
                   "connection were lost, so it is closed (the other connections go on)")
