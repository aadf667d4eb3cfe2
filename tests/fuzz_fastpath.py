"""Hypothesis fuzzing of aiozcrx._fastpath' entry points (run by
tests/test_security.py::test_fuzz_the_c_types, in a subprocess: a crash is a
failure, not the end of the test run).

- ``DispatchMachine``: a fake kernel (tests/fakering.py) posts completions of
  every sort (data for live, gone, stale or never-bound connections, ends,
  errors, kinds we never issue) and takes refills, while connections come and
  go and views are kept, released and re-released in any order. After every
  step: no page is in two places (a view, the kernel's free pages, the CQ), the
  area's count of views out is the live views'; at the end, with every view
  released, every page is back and every end of a request was reported once.
- ``test_area_calls``: Area's per-user, per-slot calls with any numbers, users
  added and closed in any order: only Python exceptions, never a crash.

``python tests/fuzz_fastpath.py [examples]``; exit status 0 when all held.
"""

from __future__ import annotations

import gc
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fakering import F_MORE, PAGE, FakeZcrx, user_data

from aiozcrx import _kernel

NPAGES = 16
SLOTS = 4
UD_RECV, UD_CANCEL, UD_NOP = _kernel.UD_RECV, _kernel.UD_CANCEL, _kernel.UD_NOP


class DispatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.z = FakeZcrx(nbufs=NPAGES, cq_entries=64)
        self.z.area.set_share(4, -1)
        self.free = set(range(NPAGES))      # the fake kernel's: it may fill these
        self.in_cq: set[int] = set()        # posted, not drained yet
        self.views: list[memoryview] = []
        self.gens = [0] * SLOTS
        self.ends_posted = 0
        self.ends_seen = 0
        self.unknown_posted = 0

    @rule(slot=st.integers(0, SLOTS - 1))
    def connect(self, slot):
        self.gens[slot] += 1
        self.z.connect(lambda view: self.views.append(view), slot=slot, gen=self.gens[slot])

    @rule(slot=st.integers(0, SLOTS - 1))
    def disconnect(self, slot):
        if slot < len(self.z.slots):
            self.z.slots[slot] = None

    @precondition(lambda self: self.free and self.z.queued_cqes() < 60)
    @rule(slot=st.integers(0, SLOTS - 1), gen_delta=st.integers(-1, 1), length=st.integers(1, PAGE),
          more=st.booleans(), kind=st.sampled_from([UD_RECV, UD_RECV, UD_RECV, 0, 0x42, 0xff]))
    def data(self, slot, gen_delta, length, more, kind):
        page = min(self.free)
        self.free.remove(page)
        self.in_cq.add(page)
        gen = max(0, self.gens[slot] + gen_delta) & 0xFFFFFF
        self.z.post(user_data(slot, gen, kind), length, F_MORE if more else 0, page * PAGE)
        if kind == UD_RECV and not more:
            self.ends_posted += 1
        if kind not in (UD_RECV, UD_CANCEL, _kernel.UD_NOTIF, UD_NOP):
            self.unknown_posted += 1

    @precondition(lambda self: self.z.queued_cqes() < 60)
    @rule(slot=st.integers(0, SLOTS - 1), res=st.sampled_from([0, -104, -125, -105, -11]),
          kind=st.sampled_from([UD_RECV, UD_CANCEL, UD_NOP, 0x42]))
    def end(self, slot, res, kind):
        self.z.post(user_data(slot, self.gens[slot], kind), res, 0)
        if kind == UD_RECV:
            self.ends_posted += 1
        if kind == 0x42:
            self.unknown_posted += 1

    @rule()
    def run(self):
        _n, control = self.z.run()
        self.in_cq.clear()
        for ud, _res, flags, _exc in control or []:
            if (ud >> 32) & 0xFF == UD_RECV and not flags & F_MORE:
                self.ends_seen += 1

    @precondition(lambda self: self.views)
    @rule(i=st.integers(0, 1000), twice=st.booleans())
    def release(self, i, twice):
        view = self.views.pop(i % len(self.views))
        view.release()
        if twice:
            view.release()

    @rule()
    def refill(self):
        self.z.area.publish(True)
        for off, _len in self.z.consume_refills():
            page = off // PAGE
            assert page not in self.free, f"page {page} refilled twice"
            assert page not in self.in_cq, f"page {page} refilled before its completion was drained"
            self.free.add(page)

    @rule(slot=st.integers(0, 2**32 - 1), gen=st.integers(0, 2**32 - 1))
    def area_queries(self, slot, gen):
        for call in (lambda: self.z.area.held(slot, gen), lambda: self.z.area.over_share(slot, gen),
                     self.z.area.take_back, self.z.area.stats, lambda: self.z.d.slot_stats(slot)):
            try:
                call()
            except (ValueError, OverflowError):
                pass

    @invariant()
    def views_are_counted(self):
        assert self.z.area.outstanding == len(self.views), (self.z.area.outstanding, len(self.views))
        for v in self.views:
            v.tobytes()  # every live view still reads

    def teardown(self):
        self.run()  # what is still in the CQ: delivered (or back) now
        self.views.clear()
        gc.collect()
        self.refill()
        assert self.free == set(range(NPAGES)), f"pages never came back: {set(range(NPAGES)) - self.free}"
        assert self.ends_seen == self.ends_posted, (self.ends_seen, self.ends_posted)
        assert self.z.d.stats()["unknown_completions"] == self.unknown_posted


AREA_CALLS = st.lists(st.tuples(
    st.sampled_from(["add_user", "close", "bind_slot", "set_share", "set_wake", "over_share", "held",
                     "take_back", "publish", "stats"]),
    st.lists(st.one_of(st.integers(-2, 8), st.integers(0, 2**32 + 1), st.just(2**31 - 1)), max_size=3)),
    max_size=40)


@given(AREA_CALLS)
def test_area_calls(calls):
    area = _kernel.new_area(_kernel.map_area(4 * PAGE), PAGE)
    area.setup_pool()
    for name, args in calls:
        # no real fd: a wake-up would write it
        if name == "set_wake":
            args = [-1] + args[1:]
        elif name == "set_share":
            args = args[:1] + [-1] + args[2:]
        try:
            getattr(area, name)(*args)
        except (TypeError, ValueError, OverflowError, RuntimeError):
            pass


if __name__ == "__main__":
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    quick = settings(max_examples=examples, deadline=None, stateful_step_count=40,
                     suppress_health_check=list(HealthCheck), database=None)
    DispatchMachine.TestCase.settings = quick
    import unittest

    result = unittest.TextTestRunner(verbosity=0).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(DispatchMachine.TestCase))
    settings(quick)(test_area_calls)()
    sys.exit(0 if result.wasSuccessful() else 1)
