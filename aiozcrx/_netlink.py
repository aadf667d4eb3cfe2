"""Generic netlink, below the engines and the tools: the small client (family
lookup, attribute encode/decode, dump handling, extended-ack error messages),
interface indices, and the netdev family's queue and page-pool dumps.

Standard library only, and no compiled code: the engines ask the netdev family
whether a queue has an io_uring memory provider (engines/zcrx.py), and the tools
(aiozcrx.tools.ethtool, which re-exports everything here under its old names,
and the NIC planner) build their ethtool messages on this client; why a client
of our own rather than pyroute2 or the ethtool program: aiozcrx/tools/ethtool.py.

Errors are raised as :class:`EthtoolError` (an ``OSError``) carrying errno and the
kernel's extended-ack message when it gave one (the name is the tools' own, kept
for the code that catches it).
"""
from __future__ import annotations

import errno as _errno
import os
import socket
import struct
from typing import Any, Iterator, Sequence, TypeAlias, TypedDict


def errname(err: int) -> str:
    """``95`` -> ``"EOPNOTSUPP"`` (the name the kernel and its docs use; Python
    calls it ENOTSUP)."""
    if err == _errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return _errno.errorcode.get(err, f"errno {err}")


class EthtoolError(OSError):
    """An operation the kernel or driver refused: ``errno`` plus the extack text."""

    # OSError's errno may be None; ours is always the number __init__ passes on
    errno: int

    def __init__(self, err: int, message: str = "", op: str = ""):
        self.message = message
        self.op = op
        super().__init__(err, message or os.strerror(err))

    @property
    def errname(self) -> str:
        return errname(self.errno)

    def __str__(self) -> str:
        text = f"{self.errname}"
        if self.message:
            text += f": {self.message}"
        else:
            text += f" ({os.strerror(self.errno)})"
        if self.op:
            text = f"{self.op}: {text}"
        return text


# --------------------------------------------------------------------------
# generic netlink client
# --------------------------------------------------------------------------
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLMSGERR_ATTR_MSG = 1

# attribute kinds for the tiny schema language below
U8, U16, U32, U64, UINT, STR, BIN, FLAG = "u8", "u16", "u32", "u64", "uint", "str", "bin", "flag"
_INT_FORMATS = {U8: "=B", U16: "=H", U32: "=I", U64: "=Q", UINT: "=Q"}

# A schema maps an attribute's name to (its id, its kind): one of the kinds
# above, or a nested schema for a nested attribute set.
Schema: TypeAlias = "dict[str, tuple[int, str | Schema]]"
# What encode_attrs takes for one attribute: an int (u8 ... uint; any value
# for a flag, which is sent when true), a str, bytes (bin), or for a nested set
# its own [(name, value), ...].
AttrValue: TypeAlias = "int | str | bytes | Sequence[tuple[str, AttrValue]]"
Attrs: TypeAlias = "Sequence[tuple[str, AttrValue]]"
# What decode_attrs returns: {name: value}. Each value's type is set by its
# schema entry at run time (int, str, True for a flag, bytes, a nested Reply, or
# a list of these for a repeated attribute), not by anything a checker can see
# from the key, hence Any.
Reply: TypeAlias = "dict[str, Any]"


def _align(n: int) -> int:
    return (n + 3) & ~3


def _nla(kind_id: int, payload: bytes, nested: bool = False) -> bytes:
    typ = kind_id | (NLA_F_NESTED if nested else 0)
    hdr = struct.pack("=HH", 4 + len(payload), typ)
    return hdr + payload + b"\0" * (_align(len(payload)) - len(payload))


def _bad_value(name: str, kind: str, want: str, value: object) -> TypeError:
    return TypeError(f"netlink attribute {name!r} is {kind}: pass {want}, "
                     f"not {type(value).__name__} {value!r}")


def encode_attrs(schema: Schema, values: Attrs) -> bytes:
    """Encode ``[(name, value), ...]`` with ``schema = {name: (id, kind)}``;
    a kind that is a dict is a nested attribute set. A value of the wrong
    type for its kind raises TypeError."""
    out = []
    for name, value in values:
        attr_id, kind = schema[name]
        if isinstance(kind, dict):
            if isinstance(value, (int, str, bytes, bytearray, memoryview)):
                raise _bad_value(name, "a nested set", "a list of (name, value) pairs", value)
            out.append(_nla(attr_id, encode_attrs(kind, value), nested=True))
        elif kind in _INT_FORMATS:
            if not isinstance(value, int):
                raise _bad_value(name, kind, "an int", value)
            out.append(_nla(attr_id, struct.pack(_INT_FORMATS[kind], value)))
        elif kind == STR:
            if not isinstance(value, str):
                raise _bad_value(name, kind, "a str", value)
            out.append(_nla(attr_id, value.encode() + b"\0"))
        elif kind == BIN:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise _bad_value(name, kind, "bytes", value)
            out.append(_nla(attr_id, bytes(value)))
        elif kind == FLAG:
            if value:
                out.append(_nla(attr_id, b""))
        else:  # pragma: no cover - schema typo
            raise ValueError(kind)
    return b"".join(out)


def iter_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(data):
        length, typ = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        yield typ & NLA_TYPE_MASK, data[off + 4: off + length]
        off += _align(length)


def decode_attrs(schema: Schema, data: bytes) -> Reply:
    """Decode into ``{name: value}``; attributes repeated in one set (bitset
    bits, string lists) become lists; unknown ids are kept as ``_<id>`` bytes."""
    by_id = {attr_id: (name, kind) for name, (attr_id, kind) in schema.items()}
    out: Reply = {}
    for typ, payload in iter_attrs(data):
        name, kind = by_id.get(typ, (f"_{typ}", BIN))
        value: int | str | bytes | Reply
        if isinstance(kind, dict):
            value = decode_attrs(kind, payload)
        elif kind == U8:
            value = payload[0]
        elif kind == U16:
            value = struct.unpack_from("=H", payload)[0]
        elif kind == U32:
            value = struct.unpack_from("=I", payload)[0]
        elif kind in (U64, UINT):
            value = int.from_bytes(payload[:8], "little") if len(payload) >= 8 \
                else int.from_bytes(payload[:4], "little")
        elif kind == STR:
            value = payload.split(b"\0", 1)[0].decode(errors="replace")
        elif kind == FLAG:
            value = True
        else:
            value = bytes(payload)
        if name in out:
            if not isinstance(out[name], list) or not getattr(out[name], "_multi", False):
                out[name] = _Multi([out[name]])
            out[name].append(value)
        else:
            out[name] = value
    return out


class _Multi(list[Any]):  # the values of one repeated attribute (see decode_attrs)
    _multi = True


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, _Multi):
        return list(value)
    return [value]


CTRL_ATTR_OPS = 6
CTRL_ATTR_OP_ID = 1
_CTRL: Schema = {"family_id": (CTRL_ATTR_FAMILY_ID, U16),
                 "family_name": (CTRL_ATTR_FAMILY_NAME, STR), "ops": (CTRL_ATTR_OPS, BIN)}
# (netns inode, family name) -> (family id, set of command ids the kernel has)
_family_cache: dict[tuple[int, str], tuple[int, frozenset[int]]] = {}


def _op_ids(raw: bytes | None) -> frozenset[int]:
    ids: set[int] = set()
    for _idx, op in iter_attrs(raw or b""):
        for typ, payload in iter_attrs(op):
            if typ == CTRL_ATTR_OP_ID:
                ids.add(struct.unpack_from("=I", payload)[0])
    return frozenset(ids)


class GenlSocket:
    """One blocking generic-netlink socket. Requests are synchronous and
    short (a few kernel round trips), so this is safe to call from inside a
    running event loop."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        self.sock.bind((0, 0))
        self.seq = 0
        # netns identity: a family id is per kernel, but cache per netns inode anyway
        try:
            self._ns = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            self._ns = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> GenlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def family(self, name: str) -> int:
        return self._family(name)[0]

    def has_op(self, name: str, cmd: int) -> bool:
        """Whether this kernel's ``name`` family has command ``cmd``
        (from the controller's op list, so no trial request is needed)."""
        try:
            return cmd in self._family(name)[1]
        except EthtoolError:
            return False

    def _family(self, name: str) -> tuple[int, frozenset[int]]:
        key = (self._ns, name)
        if key not in _family_cache:
            replies = self._request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 2,
                                    encode_attrs(_CTRL, [("family_name", name)]), _CTRL,
                                    dump=False, op=f"genl family {name}")
            if not replies or "family_id" not in replies[0]:
                raise EthtoolError(_errno.ENOENT, f"generic netlink family {name!r} not found")
            _family_cache[key] = (replies[0]["family_id"], _op_ids(replies[0].get("ops")))
        return _family_cache[key]

    def request(self, family: str, cmd: int, schema: Schema, attrs: Attrs, *,
                dump: bool = False, version: int = 1, op: str = "") -> list[Reply]:
        try:
            fam = self.family(family)
        except EthtoolError as exc:
            if exc.errno == _errno.ENOENT:
                raise EthtoolError(_errno.EOPNOTSUPP,
                                   f"kernel has no {family!r} generic netlink family", op) from None
            raise
        return self._request(fam, cmd, version, encode_attrs(schema, attrs), schema,
                             dump=dump, op=op)

    def _request(self, fam: int, cmd: int, version: int, payload: bytes, schema: Schema, *,
                 dump: bool, op: str) -> list[Reply]:
        self.seq += 1
        seq = self.seq
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_DUMP if dump else 0)
        body = struct.pack("=BBH", cmd, version, 0) + payload
        msg = struct.pack("=IHHII", 16 + len(body), fam, flags, seq, 0) + body
        self.sock.send(msg)
        replies: list[Reply] = []
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, mtype, mflags, mseq, _pid = struct.unpack_from("=IHHII", data, off)
                if length < 16:
                    return replies
                chunk = data[off + 16: off + length]
                off += _align(length)
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", chunk)[0]
                    if err == 0:
                        if not dump:
                            return replies
                        continue
                    raise EthtoolError(err, _extack_message(chunk, mflags), op)
                if mtype == NLMSG_DONE:
                    if len(chunk) >= 4:
                        err = -struct.unpack_from("=i", chunk)[0]
                        if err > 0:
                            raise EthtoolError(err, "", op)
                    return replies
                replies.append(decode_attrs(schema, chunk[4:]))


def _extack_message(chunk: bytes, flags: int) -> str:
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # error (4 bytes) + the original request's header (and body unless capped)
    inner_len = struct.unpack_from("=I", chunk, 4)[0] if len(chunk) >= 8 else 16
    skip = 4 + (16 if flags & NLM_F_CAPPED else _align(inner_len))
    for typ, payload in iter_attrs(chunk[skip:]):
        if typ == NLMSGERR_ATTR_MSG:
            return payload.split(b"\0", 1)[0].decode(errors="replace")
    return ""


def _genl(family: str, cmd: int, schema: Schema, attrs: Attrs, *, dump: bool = False,
          op: str = "") -> list[Reply]:
    with GenlSocket() as s:
        return s.request(family, cmd, schema, attrs, dump=dump, op=op)


def kernel_has_op(family: str, cmd: int) -> bool:
    """e.g. ``kernel_has_op("ethtool", MSG_RSS_SET)``: False before 6.17."""
    try:
        with GenlSocket() as s:
            return s.has_op(family, cmd)
    except OSError:
        return False


def ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise EthtoolError(_errno.ENODEV, f"no interface named {ifname!r}", "if_nametoindex") from None


# --------------------------------------------------------------------------
# netdev netlink family (include/uapi/linux/netdev.h)
# --------------------------------------------------------------------------
NETDEV_CMD_PAGE_POOL_GET = 5
NETDEV_CMD_QUEUE_GET = 10
_QUEUE: Schema = {"id": (1, U32), "ifindex": (2, U32), "type": (3, U32), "napi_id": (4, U32),
          "dmabuf": (5, U32), "io_uring": (6, BIN), "xsk": (7, BIN)}
_PAGE_POOL: Schema = {"id": (1, UINT), "ifindex": (2, U32), "napi_id": (3, UINT),
              "inflight": (4, UINT), "inflight_mem": (5, UINT), "detach_time": (6, UINT),
              "dmabuf": (7, U32), "io_uring": (8, BIN)}


class NetdevQueue(TypedDict):
    """One queue of :func:`netdev_queues`."""
    id: int | None
    type: str                # "rx" or "tx"
    napi_id: int | None
    io_uring: bool           # an io_uring zcrx instance is the queue's memory provider
    dmabuf: int | None
    xsk: bool


def netdev_queues(ifname: str) -> list[NetdevQueue]:
    """netdev QUEUE_GET dump for this device: ``[{id, type: "rx"|"tx", napi_id,
    io_uring: bool, dmabuf, xsk: bool}]``. ``io_uring`` (kernel 6.15+) is set
    when an io_uring zcrx instance is bound to the queue as its memory provider."""
    idx = ifindex(ifname)
    out: list[NetdevQueue] = []
    for q in _genl("netdev", NETDEV_CMD_QUEUE_GET, _QUEUE, [("ifindex", idx)], dump=True,
                   op="netdev QUEUE_GET"):
        if q.get("ifindex") not in (None, idx):
            continue
        out.append({
            "id": q.get("id"), "type": "rx" if q.get("type") == 0 else "tx",
            "napi_id": q.get("napi_id"), "io_uring": "io_uring" in q,
            "dmabuf": q.get("dmabuf"), "xsk": "xsk" in q,
        })
    return out


def netdev_page_pools(ifname: str) -> list[Reply]:
    """netdev PAGE_POOL_GET dump filtered to this device."""
    idx = ifindex(ifname)
    out: list[Reply] = []
    for p in _genl("netdev", NETDEV_CMD_PAGE_POOL_GET, _PAGE_POOL, [], dump=True,
                   op="netdev PAGE_POOL_GET"):
        if p.get("ifindex") != idx:
            continue
        p = dict(p)
        p["io_uring"] = "io_uring" in p
        out.append(p)
    return out
