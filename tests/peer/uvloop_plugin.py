"""pytest plugin for uvloop's own test suite (tests/ of its source distribution), loaded
by ``run_uvloop_suite.py`` into a pytest process of its own (``-p uvloop_plugin``).

uvloop's test classes take their loop from two mixins of ``uvloop._testbase``:
``UVTestCase`` (``uvloop.new_event_loop()``) and ``AIOTestCase``
(``asyncio.new_event_loop()``). With AIOZCRX_PEER_MODE=aiozcrx this plugin makes
both return aiozcrx's drop-in loop instead, through its public factory
``aiozcrx.new_event_loop()``: on the uvloop base (AIOZCRX_LOOP=uvloop) for the UV
classes, on the stock asyncio base (AIOZCRX_LOOP=asyncio) for the AIO classes; the
policy the tests install makes the same loops. With AIOZCRX_PEER_MODE=base
nothing is changed: each class runs on its own loop (the reference run).
AIOZCRX_PEER_MODE=uv-on-asyncio (a diagnosis: ``run_uvloop_suite.py --uv-on-asyncio``)
runs the UV classes on the stock asyncio loop.

One harness adaptation in aiozcrx mode: ``BaseTestCase.is_asyncio_loop()`` tells
the stock loop by its class's module name (``asyncio.*``); the drop-in loop's class
lives in ``aiozcrx.loop`` whatever its base, so it answers by the base class instead.

Every test's outcome (failed if any phase or subtest failed) goes as one JSON line
to AIOZCRX_PEER_RESULTS, written as it ends.
"""

from __future__ import annotations

import asyncio
import faulthandler
import importlib.util
import json
import os
import re
import sys
from typing import Any

import pytest

MODE = os.environ.get("AIOZCRX_PEER_MODE", "base")


def _load_testbase() -> Any:
    """``uvloop._testbase`` from the same source distribution as the tests."""
    import uvloop

    path = os.environ.get("AIOZCRX_PEER_TESTBASE")
    if not path:
        import uvloop._testbase as tb
        return tb
    spec = importlib.util.spec_from_file_location("uvloop._testbase", path)
    assert spec is not None and spec.loader is not None
    tb = importlib.util.module_from_spec(spec)
    sys.modules["uvloop._testbase"] = tb
    spec.loader.exec_module(tb)
    uvloop._testbase = tb  # type: ignore[attr-defined]
    return tb


def zcrx_loop(base: str) -> asyncio.AbstractEventLoop:
    """aiozcrx's drop-in loop on ``base`` ("uvloop" or "asyncio"), made as users make
    it: ``aiozcrx.new_event_loop()`` with AIOZCRX_LOOP set."""
    import aiozcrx

    old = os.environ.get("AIOZCRX_LOOP")
    os.environ["AIOZCRX_LOOP"] = base
    try:
        return aiozcrx.new_event_loop()
    finally:
        if old is None:
            del os.environ["AIOZCRX_LOOP"]
        else:
            os.environ["AIOZCRX_LOOP"] = old


def _policy(base: str) -> asyncio.AbstractEventLoopPolicy:
    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return zcrx_loop(base)
    return Policy()


def patch_testbase(tb: Any) -> None:
    tb.UVTestCase.new_loop = lambda self: zcrx_loop("uvloop")
    tb.UVTestCase.new_policy = lambda self: _policy("uvloop")
    tb.AIOTestCase.new_loop = lambda self: zcrx_loop("asyncio")
    tb.AIOTestCase.new_policy = lambda self: _policy("asyncio")
    tb.BaseTestCase.is_asyncio_loop = (
        lambda self: isinstance(self.loop, asyncio.base_events.BaseEventLoop))


def pytest_configure(config: pytest.Config) -> None:
    global _tb
    _tb = _load_testbase()
    if MODE == "aiozcrx":
        patch_testbase(_tb)
    elif MODE == "uv-on-asyncio":
        # a diagnosis, not a run of the suite: uvloop's tests (UV classes, with the
        # tests it skips on asyncio) on the stock asyncio loop. The drop-in loop's
        # TLS is asyncio's SSL protocol on both bases: a UV test failing here too
        # fails on aiozcrx/uvloop for asyncio's reasons.
        _tb.UVTestCase.new_loop = lambda self: asyncio.new_event_loop()
        _tb.UVTestCase.new_policy = lambda self: asyncio.DefaultEventLoopPolicy()
    elif MODE != "base":
        raise pytest.UsageError(f"AIOZCRX_PEER_MODE={MODE!r}: expected base or aiozcrx")


_tb: Any = None
_bases: dict[str, str] = {}


def base_of(cls: Any) -> str:
    """Which loop a test class runs on: "uvloop" (UVTestCase), "asyncio"
    (AIOTestCase), "" (neither: not a test of a loop; not run)."""
    if isinstance(cls, type) and issubclass(cls, _tb.UVTestCase):
        return "uvloop"
    if isinstance(cls, type) and issubclass(cls, _tb.AIOTestCase):
        return "asyncio"
    return ""


def _read_ids(var: str) -> set[str] | None:
    path = os.environ.get(var)
    if not path:
        return None
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Only the tests of a loop (UV and AIO classes); AIOZCRX_PEER_DONE: ids already
    run (a run resumed after a test hung or crashed its process)."""
    done = _read_ids("AIOZCRX_PEER_DONE") or set()
    keep, drop = [], []
    for item in items:
        base = base_of(getattr(item, "cls", None))
        if base and item.nodeid not in done:
            _bases[item.nodeid] = base
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


_results: dict[str, dict[str, Any]] = {}
_out: Any = None


def _emit(rec: dict[str, Any]) -> None:
    global _out
    path = os.environ.get("AIOZCRX_PEER_RESULTS")
    if not path:
        return
    if _out is None:
        _out = open(path, "a")
    _out.write(json.dumps(rec) + "\n")
    _out.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    """One test: a "start" record first (a test that hangs or kills the process is
    known by it), its outcome after; AIOZCRX_PEER_TIMEOUT seconds at most, then the
    process exits with every thread's traceback (the runner goes on without it)."""
    _emit({"id": item.nodeid, "base": _bases.get(item.nodeid, ""), "outcome": "started", "why": ""})
    timeout = float(os.environ.get("AIOZCRX_PEER_TIMEOUT") or 0)
    if timeout:
        faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        outcome = yield
    finally:
        if timeout:
            faulthandler.cancel_dump_traceback_later()
    res = _results.get(item.nodeid, {"outcome": "passed", "why": "", "parts": []})
    if outcome.excinfo is not None:  # pytest itself failed on this test
        res = {"outcome": "failed", "why": f"pytest: {outcome.excinfo[1]!r}"[:300], "parts": [{"@phase": "call"}]}
    _emit({"id": item.nodeid, "base": _bases.get(item.nodeid, ""), **res})


def _short(rep: pytest.TestReport) -> str:
    crash = getattr(rep.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).splitlines()[0][:300] if crash.message else ""
    if isinstance(rep.longrepr, tuple):  # a skip: (file, line, reason)
        return str(rep.longrepr[2])[:300]
    return str(rep.longrepr).strip().splitlines()[-1][:300] if rep.longrepr else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A test failed if any phase or subtest did; ``parts`` says which: a subtest's
    parameters, or {"@phase": setup|call|teardown} for the test itself ("tearDown":
    in the suite's tearDown, which runs inside pytest's call phase)."""
    res = _results.setdefault(report.nodeid, {"outcome": "passed", "why": "", "parts": []})
    res["seconds"] = round(res.get("seconds", 0.0) + (report.duration or 0.0), 3)
    context = getattr(report, "context", None)  # a subtest's report
    if report.failed:
        kwargs = getattr(context, "kwargs", None) if context is not None else None
        if kwargs:
            res["parts"].append({str(k): str(v) for k, v in kwargs.items()})
        else:
            in_teardown = re.search(r":\d+: in tearDown\b", report.longreprtext or "")
            res["parts"].append({"@phase": "tearDown" if in_teardown else report.when})
        if res["outcome"] != "failed":
            res["outcome"], res["why"] = "failed", f"{report.when}: {_short(report)}"
    elif (report.skipped and res["outcome"] == "passed" and report.when in ("setup", "call")
          and context is None):  # a skipped subtest does not skip its test
        if not hasattr(report, "wasxfail"):
            res["outcome"], res["why"] = "skipped", _short(report)


_exitstatus = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exitstatus
    _exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Exits at once: a failed test of the suite can leave threads behind (its blocking
    peers in a TLS handshake that never comes), and the interpreter would wait for
    them for ever at exit. The results are written already."""
    if _out is not None:
        _out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exitstatus)
