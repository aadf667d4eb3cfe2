"""The decision taken when a receive request completes (engines.base.decide), as a
table: one row per kind of completion and state. Pure: no kernel, no loop."""

from __future__ import annotations

import errno

import pytest

from aiozcrx.engines.base import Action, decide

E = errno
TABLE = [
    # res,            more,  wanted -> action
    (4096,            True,  True,  Action.KEEP),     # data, request still armed
    (4096,            True,  False, Action.KEEP),     # data while a pause's cancel is in flight
    (4096,            False, True,  Action.REARM),    # the multishot ended after data
    (4096,            False, False, Action.IDLE),
    (0,               False, True,  Action.EOF),
    (0,               False, False, Action.EOF),      # EOF while paused: reported (held by the transport)
    (-E.ECANCELED,    False, True,  Action.REARM),    # a stall/reset kick, or pause+resume
    (-E.ECANCELED,    False, False, Action.IDLE),     # the pause's cancel
    (-E.ENOSPC,       False, True,  Action.REARM),    # CQ overflow: the bytes wait in the socket
    (-E.ENOSPC,       False, False, Action.IDLE),     # ... also while a cancel was pending
    (-E.ENOBUFS,      False, True,  Action.STARVE),   # buffer ring empty
    (-E.ENOMEM,       False, True,  Action.STARVE),   # zcrx area exhausted
    (-E.ENOBUFS,      False, False, Action.IDLE),
    (-E.ECONNRESET,   False, True,  Action.ERROR),
    (-E.ECONNRESET,   False, False, Action.ERROR),    # reported even while paused
    (-E.ETIMEDOUT,    False, True,  Action.ERROR),
    (-E.EINVAL,       False, True,  Action.ERROR),
]


@pytest.mark.parametrize("res, more, wanted, action", TABLE,
                         ids=[f"{r}-{'more' if m else 'end'}-{'wanted' if w else 'stopped'}"
                              for r, m, w, _ in TABLE])
def test_decide(res, more, wanted, action):
    assert decide(res, more, wanted) is action


@pytest.mark.parametrize("err", sorted(set(errno.errorcode) - {errno.ECANCELED, errno.ENOSPC, errno.EINTR,
                                                                errno.EAGAIN, errno.ENOBUFS, errno.ENOMEM}))
def test_every_other_errno_is_an_error_never_a_silent_stop(err):
    assert decide(-err, False, True) is Action.ERROR
    assert decide(-err, False, False) is Action.ERROR
