"""Which wake-up path an io_uring engine uses, and why.

The rings run with SINGLE_ISSUER | DEFER_TASKRUN (RECV_ZC requires it): the kernel
queues each completion as task work that runs only inside our io_uring_enter, so
the event loop needs something in its epoll set that becomes readable when task
work is queued. Two paths (engines/ring.py, "Wake-ups", says how each works):

``eventfd``
    the ring's registered eventfd, one loop reader for the whole ring. The kernel
    signals it when task work is added to an empty list. Some kernels (seen on
    6.18.44-fc builds; newer io_uring code carries the same deferral, to avoid a
    lock recursion through epoll) signal it from an RCU callback for completions
    that start in a socket's wake-up -- every receive -- one grace period (12-20
    ms) late. Nothing is lost, everything is late.
``socket``
    each armed connection's own socket is a loop reader (level-triggered): the
    same wake-up of the socket's wait queue that queues io_uring's task work makes
    the socket readable in the loop's epoll. The eventfd stays registered as the
    backstop for everything that does not start at a socket.

``"auto"`` asks the kernel once per process (``kernel_wake``: a throwaway ring, a
POLL_ADD on a socketpair, a write(): is the eventfd readable when write()
returns?) and takes ``socket`` where the signal is deferred, ``eventfd`` where it
is inline (one reader for every connection, no epoll_ctl per re-arm).
``AIOZCRX_WAKE=eventfd|socket`` in the environment forces a path for every
Receiver whose ``wake=`` is ``"auto"``: the test suite runs the path that
``auto`` does not take this way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import _kernel

from ..config import WAKE_CHOICES, WAKE_PATHS, check_wake  # noqa: F401 - re-exported

#: forces a path where ``wake="auto"``
WAKE_ENV = "AIOZCRX_WAKE"


@dataclass(frozen=True)
class KernelWake:
    """What this kernel does with a DEFER_TASKRUN ring's eventfd for a completion
    that starts in a socket's wake-up."""

    #: True: signalled inside the wake-up; False: deferred (late); None: not known
    inline: bool | None
    #: one line for doctor and stats()
    summary: str


_kernel_wake: KernelWake | None = None


def kernel_wake() -> KernelWake:
    """The probe's answer, asked once per process (the kernel does not change
    under a running process; a forked child inherits the answer)."""
    global _kernel_wake
    if _kernel_wake is None:
        try:
            inline = _kernel.probe_eventfd_inline()
        except OSError as e:
            _kernel_wake = KernelWake(None, f"not known: the probe could not run ({e.strerror or e})")
        else:
            _kernel_wake = KernelWake(inline, "signalled inline (in the socket's wake-up)" if inline
                                      else "DEFERRED for socket completions (an RCU grace period late, "
                                           "12-20 ms)")
    return _kernel_wake


def choose_wake(asked: str) -> tuple[str, str]:
    """(path, why) for an engine whose ``wake=`` is ``asked``."""
    if asked != "auto":
        return asked, f"wake={asked!r} was asked for"
    env = os.environ.get(WAKE_ENV, "").strip()
    if env and env != "auto":
        check_wake(WAKE_ENV, env)
        return env, f"{WAKE_ENV}={env} in the environment"
    k = kernel_wake()
    if k.inline is False:
        return "socket", ("this kernel signals the ring's eventfd late for socket completions "
                          "(deferred to an RCU callback): the sockets' own readiness wakes the loop")
    if k.inline is True:
        return "eventfd", "this kernel signals the ring's eventfd inline: one reader for the whole ring"
    return "socket", f"the kernel's eventfd signal is {k.summary}: the sockets' readiness works either way"


def other_path() -> str:
    """The path ``"auto"`` does not take on this kernel (the suite forces it
    through ``AIOZCRX_WAKE`` so that both paths run on every machine)."""
    env = os.environ.pop(WAKE_ENV, None)
    try:
        chosen, _why = choose_wake("auto")
    finally:
        if env is not None:
            os.environ[WAKE_ENV] = env
    return WAKE_PATHS[1 - WAKE_PATHS.index(chosen)]

