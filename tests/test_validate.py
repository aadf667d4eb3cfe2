"""Receiver argument validation as a property: ValueError exactly when an argument is
out of its documented range, and never a kernel call on the way (pure check)."""

from __future__ import annotations

import mmap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiozcrx.receiver import MAX_RQ_ENTRIES, validate

PAGE = mmap.PAGESIZE


def _ok(area_size, rq_entries, buf_size, cq_entries) -> bool:
    pow2 = lambda n: n > 0 and n & (n - 1) == 0  # noqa: E731
    return (area_size > 0 and area_size % PAGE == 0
            and pow2(rq_entries) and rq_entries <= MAX_RQ_ENTRIES
            and pow2(buf_size) and PAGE <= buf_size <= area_size
            and area_size // buf_size <= 32768
            and pow2(cq_entries) and cq_entries <= 65536)


sizes = st.one_of(st.integers(-PAGE, 1 << 34), st.integers(0, 1 << 14).map(lambda k: k * PAGE))
pow2ish = st.one_of(st.integers(-4, 1 << 17), st.integers(0, 17).map(lambda k: 1 << k))


@settings(max_examples=300, deadline=None)
@given(area_size=sizes, rq_entries=pow2ish, buf_size=pow2ish, cq_entries=pow2ish)
def test_validate_accepts_exactly_the_documented_ranges(area_size, rq_entries, buf_size, cq_entries):
    kw = dict(engine="auto", interface=None, queue=None, area_size=area_size,
              rq_entries=rq_entries, buf_size=buf_size, cq_entries=cq_entries)
    if _ok(area_size, rq_entries, buf_size, cq_entries):
        validate(**kw)
    else:
        with pytest.raises(ValueError):
            validate(**kw)
