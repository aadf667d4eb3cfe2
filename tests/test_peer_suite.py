"""The pieces of `make test-peers` (tests/peer/run_uvloop_suite.py), quickly: the
list of uvloop tests that may fail on the drop-in loop parses and gives every entry
its reason, and a failure is judged as the runner says (a deviation unless listed
or failing on the base loop too). The suite itself runs in `make test-peers`."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import sys
from pathlib import Path

import pytest

PEER = Path(__file__).resolve().parent / "peer"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, PEER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


suite = _load("run_uvloop_suite")


def test_the_listing_parses_and_every_entry_has_a_reason():
    listing = suite.Listing.load()
    assert listing.entries, "an empty list: then say so in the file, and drop this check"
    for e in listing.entries:
        assert len(e.reason) > 40, f"{e.pattern}: say why, in a sentence: {e.reason!r}"
        module = e.pattern.split("::")[0].removeprefix("tests/").removesuffix(".py")
        assert module in suite.MODULES, f"{e.pattern}: {module} is not run by the suite"
        assert e.section in ("not applicable", "known deviation")


@pytest.mark.parametrize("text, error", [
    ("tests/test_tcp.py::A::test_b  why", "entry before any section"),
    ("[not applicable]\ntests/test_tcp.py::A::test_b", "has no reason"),
    ("[maybe]\n", "unknown section"),
    ("[not applicable]\ntest_b  why", "is not a test id"),
    ("[not applicable]\ntests/test_tcp.py::A::test_b[x]  why", "expected key=value"),
    ("[not applicable]\ntests/test_tcp.py::A::b  one\n[known deviations]\ntests/test_tcp.py::A::b  two",
     "listed twice"),
])
def test_listing_errors(text, error):
    with pytest.raises(ValueError, match=error):
        suite.Listing.parse(text)


LISTING = suite.Listing.parse("""
# a comment
[not applicable]
tests/test_tcp.py::Test_UV_TCP::test_private  pokes a private attribute of uvloop's loop
[known deviations]
tests/test_tcp.py::Test_*_TCP::test_both  differs on both bases, for a reason
tests/test_context.py::Test_UV_Context::test_sub[use_ssl=True]  only its TLS subtests differ
""")
CALL, TEARDOWN = {"@phase": "call"}, {"@phase": "tearDown"}
TLS, TCP = {"use_ssl": "True", "f": "x"}, {"use_ssl": "False", "f": "x"}


def test_listing_match():
    m = LISTING.match
    assert m("tests/test_tcp.py::Test_UV_TCP::test_private", [CALL])[0] == "not applicable"
    assert m("tests/test_tcp.py::Test_AIO_TCP::test_private", [CALL]) is None
    assert m("tests/test_tcp.py::Test_AIO_TCP::test_both", [CALL])[0] == "known deviation"
    sub = "tests/test_context.py::Test_UV_Context::test_sub"
    assert m(sub, [TLS, TLS])[0] == "known deviation"
    # the suite's tearDown failing after listed subtests failed is theirs
    assert m(sub, [TLS, TEARDOWN])[0] == "known deviation"
    # a plain TCP subtest, or the test body itself, is not listed
    assert m(sub, [TLS, TCP]) is None
    assert m(sub, [TLS, CALL]) is None
    assert m(sub, [TEARDOWN]) is None


def R(tid, outcome, base="uvloop", parts=None):
    return suite.Result(tid, base, outcome, "why", parts if parts is not None else
                        ([CALL] if outcome == "failed" else []))


def test_classify_and_summary():
    t = "tests/test_tcp.py::Test_UV_TCP::"
    zcrx = {r.id: r for r in [
        R(t + "test_ok", "passed"), R(t + "test_skip", "skipped"),
        R(t + "test_private", "failed"),                    # listed: not applicable
        R(t + "test_both", "failed"),                       # listed: known
        R(t + "test_new", "failed"),                        # passes on base: a deviation
        R(t + "test_flaky", "failed"),                      # passes on a second run
        R(t + "test_broken", "failed"),                     # fails on base too
        R("tests/test_tcp.py::Test_AIO_TCP::test_ok", "passed", "asyncio"),
    ]}
    base = {r.id: r for r in [R(t + "test_new", "passed"), R(t + "test_flaky", "passed"),
                              R(t + "test_broken", "failed"), R(t + "test_private", "passed"),
                              R(t + "test_both", "passed")]}
    retry = {r.id: r for r in [R(t + "test_new", "failed"), R(t + "test_flaky", "passed")]}
    verdicts = {v.result.id.split("::")[-1]: v.category
                for v in suite.classify(zcrx, base, retry, LISTING)}
    assert verdicts == {"test_ok": "passed", "test_skip": "skipped",
                        "test_private": "not applicable", "test_both": "known deviation",
                        "test_new": "DEVIATION", "test_flaky": "passed on retry",
                        "test_broken": "fails on base"}
    vs = suite.classify(zcrx, base, retry, LISTING)
    assert suite.counts(vs, "uvloop") == {
        "run": 6, "passed": 2, "failed": 1, "n/a": 1, "known": 1, "skipped": 1,
        "fails on base": 1, "passed on retry": 1}
    out = io.StringIO()
    assert suite.summarize(vs, LISTING, out) is False
    text = out.getvalue()
    assert "aiozcrx/uvloop" in text and "aiozcrx/asyncio" in text
    assert "pokes a private attribute" in text and t + "test_new" in text
    ok = [v for v in vs if v.category != "DEVIATION"]
    assert suite.summarize(ok, LISTING, io.StringIO()) is True


@pytest.mark.parametrize("base", ["uvloop", "asyncio"])
def test_the_plugin_makes_the_dropin_loop_on_each_base(base):
    plugin = _load("uvloop_plugin")
    loop = plugin.zcrx_loop(base)
    try:
        assert type(loop).__module__ == "aiozcrx.loop"
        assert isinstance(loop, asyncio.BaseEventLoop) == (base == "asyncio")
    finally:
        loop.close()


def test_no_sdist_to_be_had_is_a_skip_not_a_failure(tmp_path, monkeypatch, capsys):
    """Where pip cannot fetch uvloop's sdist (no network, no index), the target says
    SKIPPED with pip's reason and exits 0."""
    monkeypatch.setenv("AIOZCRX_PEER_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")   # pip looks nowhere
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    assert suite.main([]) == 0
    out = capsys.readouterr().out
    assert "SKIPPED: cannot fetch uvloop" in out and "pip download" in out, out
