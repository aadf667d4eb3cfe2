"""Shared test setup.

- Every async test runs on the stock asyncio loop and on uvloop (pytest-asyncio's
  loop-factory hook parametrizes them).
- ``guest`` tests need a 7.1+ kernel with ZCRX_REG_NODEV. On the host they are
  skipped with the reason; inside the User-Mode Linux guest (AIOZCRX_GUEST=1) a
  skip of a guest test is turned into a failure: there it must run.
- ``nic`` tests need the simulated NIC of ``tests/uml/run-in-guest.sh --nic``
  (netdevsim with the project's extension, AIOZCRX_NIC set): skipped elsewhere,
  and a skip where the NIC is there is a failure.
"""

from __future__ import annotations

import asyncio
import functools
import os

import pytest
import uvloop

IN_GUEST = os.environ.get("AIOZCRX_GUEST") == "1"
HAVE_NIC = IN_GUEST and bool(os.environ.get("AIOZCRX_NIC"))


def pytest_asyncio_loop_factories(config, item):
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@functools.lru_cache(maxsize=None)
def zcrx_copy_reason() -> str | None:
    """None if engine "zcrx-copy" works here, else why not."""
    from aiozcrx.tools.probe import choose_engine

    _engine, tried = choose_engine()
    for name, ok, why in tried:
        if name == "zcrx-copy":
            return None if ok else why
    return "not probed"


@pytest.fixture
def need_zcrx_copy():
    why = zcrx_copy_reason()
    if why is not None:
        pytest.skip(f"needs zcrx with ZCRX_REG_NODEV (Linux 7.1+): {why}; "
                    "`make test` runs this in the User-Mode Linux guest")


class SimNic:
    """The simulated NIC (``run-in-guest.sh --nic``): ``name`` here, its linked peer
    in network namespace ``peer_ns``; IPv4 and IPv6 addresses on both."""

    def __init__(self, env=os.environ):
        self.name = env["AIOZCRX_NIC"]
        self.addr = env["AIOZCRX_NIC_ADDR"]
        self.addr6 = env["AIOZCRX_NIC_ADDR6"]
        self.peer_ns = env["AIOZCRX_NIC_PEER_NS"]
        self.peer_addr = env["AIOZCRX_NIC_PEER_ADDR"]
        self.peer_addr6 = env["AIOZCRX_NIC_PEER_ADDR6"]


@pytest.fixture
def sim_nic() -> SimNic:
    if not os.environ.get("AIOZCRX_NIC"):
        pytest.skip("needs the simulated NIC of the guest tier (`tests/uml/run-in-guest.sh "
                    "--nic`; `make test` runs the nic tests there)")
    return SimNic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not (IN_GUEST and rep.skipped) or hasattr(rep, "wasxfail"):
        return
    if item.get_closest_marker("guest") is not None:
        rep.outcome = "failed"
        rep.longrepr = f"guest test skipped inside the guest (must run here): {rep.longrepr}"
    elif HAVE_NIC and item.get_closest_marker("nic") is not None:
        rep.outcome = "failed"
        rep.longrepr = f"nic test skipped with the simulated NIC present (must run): {rep.longrepr}"
