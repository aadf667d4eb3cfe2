"""Receiver argument validation (aiozcrx.config.Config.validate): TypeError for a
wrong type, ValueError exactly when a value is out of its documented range, and
never a kernel call on the way -- so a rejected argument cannot leak anything."""

from __future__ import annotations

import mmap
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiozcrx
from aiozcrx.config import (DEFAULT_AREA_SIZE, DEFAULT_RQ_ENTRIES, MAX_BUF_SIZE, MAX_CQ_ENTRIES,
                            MAX_RQ_ENTRIES, MIN_CQ_ENTRIES, NIC_AREA_SIZE, NIC_RQ_ENTRIES, Config)
from peers import has_rx_queues, queued_interface

QIF = queued_interface()  # lo, or the guest's simulated NIC
NEEDS_QUEUES = pytest.mark.skipif(not has_rx_queues(QIF), reason="no interface here lists its rx queues in sysfs")

PAGE = mmap.PAGESIZE


def _ok(area_size, rq_entries, buf_size, cq_entries) -> bool:
    pow2 = lambda n: n > 0 and n & (n - 1) == 0  # noqa: E731
    return (area_size > 0 and area_size % PAGE == 0
            and pow2(rq_entries) and rq_entries <= MAX_RQ_ENTRIES
            and pow2(buf_size) and PAGE <= buf_size <= min(area_size, MAX_BUF_SIZE)
            and area_size % buf_size == 0
            and area_size // buf_size <= 32768
            and pow2(cq_entries) and MIN_CQ_ENTRIES <= cq_entries <= MAX_CQ_ENTRIES)


sizes = st.one_of(st.integers(-PAGE, 1 << 34), st.integers(0, 1 << 14).map(lambda k: k * PAGE),
                  st.integers(0, 34).map(lambda k: 1 << k))
pow2ish = st.one_of(st.integers(-4, 1 << 17), st.integers(0, 34).map(lambda k: 1 << k))


@settings(max_examples=400, deadline=None)
@given(area_size=sizes, rq_entries=pow2ish, buf_size=pow2ish, cq_entries=pow2ish)
def test_validate_accepts_exactly_the_documented_ranges(area_size, rq_entries, buf_size, cq_entries):
    cfg = Config(area_size=area_size, rq_entries=rq_entries, buf_size=buf_size, cq_entries=cq_entries)
    if _ok(area_size, rq_entries, buf_size, cq_entries):
        cfg.validate()
    else:
        with pytest.raises(ValueError):
            cfg.validate()


@pytest.mark.parametrize("kw", [
    {"copy": "no"}, {"copy": 1}, {"hugepages": None}, {"kernel_region": "yes"},
    {"notifications": 0}, {"rq_entries": True}, {"cq_entries": 1024.0}, {"area_size": "32M"},
    {"buf_size": None}, {"queue": True}, {"engine": 3}, {"interface": 0},
])
def test_wrong_types_are_type_errors(kw):
    with pytest.raises(TypeError, match=next(iter(kw))):
        Config(**kw).validate()


@pytest.mark.parametrize("kw, match", [
    ({"area_size": 3 * 65536 + 4096, "buf_size": 65536}, "multiple of buf_size"),
    ({"area_size": 1 << 32, "buf_size": 1 << 32}, "buf_size"),
    ({"cq_entries": 4}, "cq_entries"),
    ({"engine": "fast"}, "unknown engine"),
    ({"engine": "zcrx", "interface": "no-such-if0", "queue": 0}, "unknown interface"),
    ({"engine": "uring", "interface": "no-such-if0"}, "unknown interface"),
    pytest.param({"engine": "zcrx", "interface": QIF, "queue": 4096}, "queue 4096 out of range",
                 marks=NEEDS_QUEUES),
    ({"interface": "eth0/x"}, "interface name like"),
    ({"queue": 0}, "needs interface"),
    ({"engine": "zcrx"}, "needs interface= and queue="),
])
def test_out_of_range_values_are_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**kw).validate()


def test_auto_takes_an_interface_this_machine_lacks_and_names_it():
    # "auto" passes over zcrx for it (Receiver.fallback_reason); by name it is an error
    cfg = Config(interface="no-such-if0", queue=3).validate()
    assert cfg.nic_problem() == "unknown interface 'no-such-if0': it is not in `ip link`"
    assert Config(interface="lo").nic_problem() is None
    if has_rx_queues(QIF):
        problem = Config(interface=QIF, queue=4096).validate().nic_problem()
        assert problem is not None and f"queue 4096 out of range: {QIF} has" in problem
        assert Config(interface=QIF, queue=0).nic_problem() is None
    assert Config().nic_problem() is None


def test_receiver_rejects_before_touching_the_kernel(monkeypatch):
    # If validation let any of these through, opening would need the ring layer:
    # make that fail loudly, then check each argument is refused first.
    import aiozcrx._kernel as ring
    monkeypatch.setattr(ring, "Ring", lambda *a, **k: pytest.fail("a ring was made"))
    monkeypatch.setattr(ring, "map_area", lambda *a, **k: pytest.fail("an area was mapped"))
    for kw in ({"area_size": 3 * 65536 + 4096}, {"buf_size": 1 << 32, "area_size": 1 << 32},
               {"copy": "no"}, {"rq_entries": True}):
        with pytest.raises((TypeError, ValueError)):
            aiozcrx.Receiver(engine="uring", **kw)
    with pytest.raises(TypeError, match="share_with"):
        aiozcrx.Receiver(engine="zcrx-copy", share_with=object())
    with pytest.raises(ValueError, match="share_with"):
        aiozcrx.Receiver(engine="uring", share_with=aiozcrx.Receiver(engine="zcrx-copy"))


MiB = 1 << 20


def test_sizes_not_given_take_the_opened_engines_default():
    # a NIC queue (engine "zcrx") gets the larger area and refill ring; every other
    # engine the old defaults; a value given always stays
    assert (NIC_AREA_SIZE, NIC_RQ_ENTRIES, DEFAULT_AREA_SIZE, DEFAULT_RQ_ENTRIES) == \
        (64 * MiB, 16384, 32 * MiB, 4096)
    cfg = Config().validate()
    assert (cfg.area_size, cfg.rq_entries) == (None, None)
    assert cfg.defaulted() == ("area_size", "rq_entries")
    nic = cfg.for_engine("zcrx")
    assert (nic.area_size, nic.rq_entries, nic.held_limit) == (64 * MiB, 16384, 16 * MiB)
    for engine in ("zcrx-copy", "uring", "socket"):
        other = cfg.for_engine(engine)
        assert (other.area_size, other.rq_entries, other.held_limit) == (32 * MiB, 4096, 8 * MiB)
    given = Config(area_size=8 * MiB).validate()
    assert given.defaulted() == ("rq_entries",)
    assert (given.for_engine("zcrx").area_size, given.for_engine("zcrx").rq_entries) == (8 * MiB, 16384)
    given = Config(rq_entries=2048, max_held=MiB).for_engine("zcrx")
    assert (given.area_size, given.rq_entries, given.held_limit) == (64 * MiB, 2048, MiB)


def test_max_held_is_checked_against_the_area_the_engine_gets():
    # not given, the area is the engine's default: up to 64 MiB for engine "zcrx"
    # (a NIC queue), 32 MiB for the others; "auto" may end on either
    with pytest.raises(ValueError, match=r"area_size \(33554432\) bytes \(the default for engine 'uring'"):
        Config(engine="uring", max_held=48 * MiB).validate()
    with pytest.raises(ValueError, match="64 MiB there; pass area_size="):
        Config(max_held=48 * MiB).validate()
    Config(engine="uring", max_held=48 * MiB, area_size=64 * MiB).validate()
    Config(engine="zcrx", max_held=48 * MiB).validate(shared=True)
    with pytest.raises(ValueError, match=r"area_size \(67108864\)"):
        Config(engine="zcrx", max_held=65 * MiB).validate(shared=True)


@NEEDS_QUEUES
def test_share_with_takes_the_queue_of_the_receiver_it_shares(monkeypatch):
    # engine "zcrx" with share_with= needs no interface=/queue= (they are the other
    # Receiver's); different ones are refused naming both; nothing touches the kernel
    import aiozcrx._kernel as ring
    monkeypatch.setattr(ring, "Ring", lambda *a, **k: pytest.fail("a ring was made"))
    monkeypatch.setattr(ring, "map_area", lambda *a, **k: pytest.fail("an area was mapped"))
    src = aiozcrx.Receiver(engine="zcrx", interface=QIF, queue=0)
    aiozcrx.Receiver(engine="zcrx", share_with=src)
    aiozcrx.Receiver(engine="zcrx", interface=QIF, queue=0, share_with=src)  # the same: fine
    aiozcrx.Receiver(engine="zcrx", queue=0, share_with=src)
    with pytest.raises(ValueError) as ei:
        aiozcrx.Receiver(engine="zcrx", queue=3, share_with=src)
    assert f"on {QIF} queue 0, but queue=3 was given" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        aiozcrx.Receiver(engine="zcrx", interface="no-such-if0", share_with=src)
    assert f"on {QIF} queue 0, but interface='no-such-if0' was given" in str(ei.value)
    assert f"leave out interface= or give {QIF!r}" in str(ei.value)
    # without share_with= it still needs both
    with pytest.raises(ValueError, match="needs interface= and queue="):
        aiozcrx.Receiver(engine="zcrx")


@pytest.mark.asyncio
async def test_create_server_refuses_a_connected_socket():
    lst = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(lst.getsockname())
    s, _ = lst.accept()
    try:
        with pytest.raises(ValueError, match="connected"):
            await aiozcrx.create_server(asyncio_protocol, sock=s, engine="socket")
        with pytest.raises(ValueError, match="connected socket"):
            await aiozcrx.create_connection(asyncio_protocol, sock=lst, engine="socket")
    finally:
        for x in (lst, c, s):
            x.close()


def asyncio_protocol():
    import asyncio
    return asyncio.Protocol()
