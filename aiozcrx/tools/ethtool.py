"""Talk to the kernel about a NIC: ethtool netlink, the netdev netlink family,
the SIOCETHTOOL ioctl where netlink has no equivalent, and sysfs.

Everything here is standard library only (``socket``, ``struct``, ``fcntl``,
``ctypes``). Why not pyroute2 or the ``ethtool`` program (docs/nic-guide.md,
"How aiozcrx talks to the NIC", has the long version):

* Debian 12's ``ethtool`` (6.1) accepts ``--json`` for a few subcommands
  (``-k``, ``-a``, ``--show-fec``, ``--module-info``) but not for ``-l``
  (channels), ``-g`` (rings), ``-x`` (RSS) or ``-n`` (ntuple rules), so using it would mean parsing
  human-formatted output; it also does not know ``tcp-data-split`` or
  ``hds-thresh`` for ``-G`` at all.
* pyroute2 (0.9.7) defines ethtool netlink messages only for link info/modes,
  WoL, strings, rings (without HDS_THRESH) and module EEPROM; channels go
  through its ioctl layer, and there is nothing for RSS, RSS contexts, ntuple
  rules or the ``netdev`` family. Every message we need would be declared by
  hand anyway, and its synchronous API starts its own event loop, so it raises
  "This event loop is already running" when called from asyncio code, which
  is exactly where ``engine="auto"`` runs.

So aiozcrx carries a small generic-netlink client (family lookup, attribute
encode/decode, dump handling, extended-ack error messages), which lives below
the engines in aiozcrx/_netlink.py (the zcrx engine asks the netdev family about
queues too) and is re-exported here, and this module declares the few ethtool
attributes it uses, with numbers from the kernel UAPI headers
(``ethtool_netlink_generated.h``, ``netdev.h``).

Where netlink has no interface at all we use the structured ioctl, never text:
ntuple (RX NFC) rules exist only as ``SIOCETHTOOL`` commands (ETHTOOL_GRXCLSRL*,
ETHTOOL_SRXCLSRL*); the driver name comes from sysfs
(/sys/class/net/IF/device/driver) or, for virtual devices without a parent
device (veth), from ETHTOOL_GDRVINFO; the RSS table is set with netlink
RSS_SET (kernel 6.17+) and falls back to ETHTOOL_SRSSH on older kernels.

Errors are raised as :class:`EthtoolError` (an ``OSError``) carrying errno and
the driver's/kernel's extended-ack message when it gave one.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# the generic netlink client and the netdev family live below the engines
# (aiozcrx/_netlink.py); re-exported here under the names the tools have always used
from .._netlink import (
    _as_list as _as_list,
    AttrValue as AttrValue,
    BIN as BIN,
    decode_attrs as decode_attrs,
    encode_attrs as encode_attrs,
    errname as errname,
    EthtoolError as EthtoolError,
    _extack_message as _extack_message,
    FLAG as FLAG,
    _genl as _genl,
    GenlSocket as GenlSocket,
    ifindex as ifindex,
    iter_attrs as iter_attrs,
    kernel_has_op as kernel_has_op,
    netdev_page_pools as netdev_page_pools,
    netdev_queues as netdev_queues,
    NetdevQueue as NetdevQueue,
    NLA_F_NESTED as NLA_F_NESTED,
    NLM_F_ACK_TLVS as NLM_F_ACK_TLVS,
    NLM_F_CAPPED as NLM_F_CAPPED,
    NLMSGERR_ATTR_MSG as NLMSGERR_ATTR_MSG,
    Reply as Reply,
    Schema as Schema,
    STR as STR,
    U32 as U32,
    U8 as U8,
)

__all__ = [
    "EthtoolError", "NtupleRule", "ifindex", "driver_name", "sysfs_rx_queues",
    "get_channels", "set_channels", "get_rings", "set_rings", "get_features",
    "set_features", "get_rss", "dump_rss", "set_rss_indir", "create_rss_context",
    "delete_rss_context", "get_ntuple_rules", "insert_ntuple_rule",
    "delete_ntuple_rule", "get_rx_ring_count", "netdev_queues", "netdev_page_pools",
    "TCP_DATA_SPLIT_UNKNOWN", "TCP_DATA_SPLIT_DISABLED", "TCP_DATA_SPLIT_ENABLED",
    "NTUPLE_FEATURE",
]



# --------------------------------------------------------------------------
# ethtool netlink: schema (numbers from include/uapi/linux/ethtool_netlink_generated.h)
# --------------------------------------------------------------------------
MSG_FEATURES_GET, MSG_FEATURES_SET = 11, 12
MSG_RINGS_GET, MSG_RINGS_SET = 15, 16
MSG_CHANNELS_GET, MSG_CHANNELS_SET = 17, 18
MSG_RSS_GET = 38
MSG_RSS_SET, MSG_RSS_CREATE_ACT, MSG_RSS_DELETE_ACT = 48, 49, 50  # 6.17+

TCP_DATA_SPLIT_UNKNOWN, TCP_DATA_SPLIT_DISABLED, TCP_DATA_SPLIT_ENABLED = 0, 1, 2
NTUPLE_FEATURE = "rx-ntuple-filter"  # NETIF_F_NTUPLE, `ethtool -K IF ntuple on`

_HEADER: Schema = {"dev_index": (1, U32), "dev_name": (2, STR), "flags": (3, U32)}
_BIT: Schema = {"index": (1, U32), "name": (2, STR), "value": (3, FLAG)}
_BITS: Schema = {"bit": (1, _BIT)}
_BITSET: Schema = {"nomask": (1, FLAG), "size": (2, U32), "bits": (3, _BITS),
           "value": (4, BIN), "mask": (5, BIN)}
_FEATURES: Schema = {"header": (1, _HEADER), "hw": (2, _BITSET), "wanted": (3, _BITSET),
             "active": (4, _BITSET), "nochange": (5, _BITSET)}
_RINGS: Schema = {
    "header": (1, _HEADER), "rx_max": (2, U32), "rx_mini_max": (3, U32),
    "rx_jumbo_max": (4, U32), "tx_max": (5, U32), "rx": (6, U32), "rx_mini": (7, U32),
    "rx_jumbo": (8, U32), "tx": (9, U32), "rx_buf_len": (10, U32),
    "tcp_data_split": (11, U8), "cqe_size": (12, U32), "tx_push": (13, U8),
    "rx_push": (14, U8), "tx_push_buf_len": (15, U32), "tx_push_buf_len_max": (16, U32),
    "hds_thresh": (17, U32), "hds_thresh_max": (18, U32),
}
_CHANNELS: Schema = {
    "header": (1, _HEADER), "rx_max": (2, U32), "tx_max": (3, U32), "other_max": (4, U32),
    "combined_max": (5, U32), "rx_count": (6, U32), "tx_count": (7, U32),
    "other_count": (8, U32), "combined_count": (9, U32),
}
_RSS: Schema = {"header": (1, _HEADER), "context": (2, U32), "hfunc": (3, U32), "indir": (4, BIN),
        "hkey": (5, BIN), "input_xfrm": (6, U32), "start_context": (7, U32)}


def _hdr(ifname: str, flags: int = 0) -> list[tuple[str, AttrValue]]:
    h: list[tuple[str, AttrValue]] = [("dev_name", ifname)]
    if flags:
        h.append(("flags", flags))
    return h


def _strip(reply: Reply) -> Reply:
    return {k: v for k, v in reply.items() if k != "header" and not k.startswith("_")}


def get_channels(ifname: str) -> Reply:
    """CHANNELS_GET: ``{rx_max, tx_max, other_max, combined_max, rx_count, ...}``
    (absent keys: the driver does not report that kind of channel)."""
    r = _genl("ethtool", MSG_CHANNELS_GET, _CHANNELS, [("header", _hdr(ifname))],
              op="CHANNELS_GET")
    return _strip(r[0]) if r else {}


def set_channels(ifname: str, **counts: int | None) -> None:
    """CHANNELS_SET, e.g. ``set_channels("eth0", combined_count=4)`` (a count
    of None is left out)."""
    attrs: list[tuple[str, AttrValue]] = [("header", _hdr(ifname))]
    attrs += [(k, v) for k, v in counts.items() if v is not None]
    _genl("ethtool", MSG_CHANNELS_SET, _CHANNELS, attrs, op="CHANNELS_SET")


def get_rings(ifname: str) -> Reply:
    """RINGS_GET. ``tcp_data_split`` is absent when the driver does not report
    it; ``hds_thresh``/``hds_thresh_max`` are absent before kernel 6.13 or when
    the driver has no header-split threshold."""
    r = _genl("ethtool", MSG_RINGS_GET, _RINGS, [("header", _hdr(ifname))], op="RINGS_GET")
    return _strip(r[0]) if r else {}


def set_rings(ifname: str, *, tcp_data_split: int | None = None,
              hds_thresh: int | None = None) -> None:
    attrs: list[tuple[str, AttrValue]] = [("header", _hdr(ifname))]
    if tcp_data_split is not None:
        attrs.append(("tcp_data_split", tcp_data_split))
    if hds_thresh is not None:
        attrs.append(("hds_thresh", hds_thresh))
    _genl("ethtool", MSG_RINGS_SET, _RINGS, attrs, op="RINGS_SET")


def _bitset_names(bitset: Reply | None) -> set[str]:
    if not bitset:
        return set()
    bits = bitset.get("bits") or {}
    names: set[str] = set()
    for bit in _as_list(bits.get("bit")):
        if bitset.get("nomask") or bit.get("value"):
            if "name" in bit:
                names.add(bit["name"])
    return names


def get_features(ifname: str) -> dict[str, set[str]]:
    """FEATURES_GET (verbose bitsets): sets of feature names for ``hw``
    (changeable), ``wanted``, ``active`` and ``nochange``."""
    r = _genl("ethtool", MSG_FEATURES_GET, _FEATURES, [("header", _hdr(ifname))],
              op="FEATURES_GET")
    reply = r[0] if r else {}
    return {k: _bitset_names(reply.get(k)) for k in ("hw", "wanted", "active", "nochange")}


def set_features(ifname: str, wanted: dict[str, bool]) -> None:
    bits: list[tuple[str, AttrValue]] = [("bit", [("name", name), ("value", bool(on))])
                                         for name, on in wanted.items()]
    attrs: list[tuple[str, AttrValue]] = [("header", _hdr(ifname, flags=2)),  # OMIT_REPLY
             ("wanted", [("bits", bits)])]
    _genl("ethtool", MSG_FEATURES_SET, _FEATURES, attrs, op="FEATURES_SET")


def _indir(raw: bytes | None) -> list[int]:
    raw = raw or b""
    return list(struct.unpack(f"={len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def get_rss(ifname: str, context: int = 0) -> Reply:
    """RSS_GET for one context: ``{context, hfunc, indir: [queue, ...], ...}``."""
    attrs: list[tuple[str, AttrValue]] = [("header", _hdr(ifname))]
    if context:
        attrs.append(("context", context))
    r = _genl("ethtool", MSG_RSS_GET, _RSS, attrs, op="RSS_GET")
    out = _strip(r[0]) if r else {}
    out["indir"] = _indir(out.get("indir"))
    out.setdefault("context", context)
    out.pop("hkey", None)
    return out


def dump_rss(ifname: str) -> dict[int, Reply]:
    """All RSS contexts of the device (RSS_GET dump, kernel 6.11+):
    ``{context_id: {indir, ...}}``; context 0 is the main table."""
    idx = ifindex(ifname)
    out: dict[int, Reply] = {}
    for reply in _genl("ethtool", MSG_RSS_GET, _RSS, [("header", _hdr(ifname))],
                       dump=True, op="RSS_GET dump"):
        hdr = reply.get("header") or {}
        if hdr.get("dev_index") not in (None, idx):
            continue
        ctx = reply.get("context", 0)
        entry = _strip(reply)
        entry["indir"] = _indir(entry.get("indir"))
        entry.pop("hkey", None)
        out[ctx] = entry
    return out


def _indir_bytes(indir: list[int]) -> bytes:
    return struct.pack(f"={len(indir)}I", *indir)


def set_rss_indir(ifname: str, indir: list[int] | None, context: int = 0) -> None:
    """Set an RSS indirection table; ``None`` resets context 0 to the driver's
    default spread. Netlink RSS_SET where the kernel has it (6.17+), else the
    ETHTOOL_SRSSH ioctl."""
    attrs: list[tuple[str, AttrValue]] = [("header", _hdr(ifname))]
    if context:
        attrs.append(("context", context))
    attrs.append(("indir", _indir_bytes(indir or [])))
    if kernel_has_op("ethtool", MSG_RSS_SET):
        _genl("ethtool", MSG_RSS_SET, _RSS, attrs, op="RSS_SET")
    else:
        _ioctl_srssh(ifname, context, indir or [])


def create_rss_context(ifname: str, indir: list[int]) -> int:
    """Create an additional RSS context with this table; returns its id."""
    attrs: list[tuple[str, AttrValue]] = [("header", _hdr(ifname)), ("indir", _indir_bytes(indir))]
    if not kernel_has_op("ethtool", MSG_RSS_CREATE_ACT):
        return _ioctl_srssh(ifname, ETH_RXFH_CONTEXT_ALLOC, indir)
    r = _genl("ethtool", MSG_RSS_CREATE_ACT, _RSS, attrs, op="RSS_CREATE_ACT")
    if r and "context" in r[0]:
        context: int = r[0]["context"]
        return context
    raise EthtoolError(_errno.EPROTO, "RSS_CREATE_ACT reply carried no context id",
                       "RSS_CREATE_ACT")


def delete_rss_context(ifname: str, context: int) -> None:
    attrs: list[tuple[str, AttrValue]] = [("header", _hdr(ifname)), ("context", context)]
    if kernel_has_op("ethtool", MSG_RSS_DELETE_ACT):
        _genl("ethtool", MSG_RSS_DELETE_ACT, _RSS, attrs, op="RSS_DELETE_ACT")
    else:
        _ioctl_srssh(ifname, context, [])  # indir_size 0 on a context deletes it


# --------------------------------------------------------------------------
# netdev netlink family: the client and the dumps are in aiozcrx/_netlink.py
# --------------------------------------------------------------------------
def queue_napi_ids(ifname: str, queues: Iterable[int]) -> dict[int, int]:
    """The NAPI id of each of these RX queues of ``ifname`` (netdev QUEUE_GET):
    what ``SO_INCOMING_NAPI_ID`` reads on an accepted socket whose packets arrive on
    that queue. EthtoolError (ENOENT, naming the queue and the fix) where a queue
    does not exist or has no NAPI instance (the interface is down)."""
    have = {q["id"]: q.get("napi_id") for q in netdev_queues(ifname) if q["type"] == "rx"}
    out: dict[int, int] = {}
    for queue in queues:
        if queue not in have:
            raise EthtoolError(_errno.ENOENT, f"{ifname} has no RX queue {queue} (it has "
                               f"{len(have)}: `ethtool -L {ifname} combined N` adds more)",
                               "netdev QUEUE_GET")
        napi = have[queue]
        if not napi:
            raise EthtoolError(_errno.ENOENT, f"RX queue {queue} of {ifname} has no NAPI "
                               f"instance (is it up? `ip link set {ifname} up`)",
                               "netdev QUEUE_GET")
        out[queue] = napi
    return out


# --------------------------------------------------------------------------
# SIOCETHTOOL ioctls (include/uapi/linux/ethtool.h)
# --------------------------------------------------------------------------
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x03
ETHTOOL_GRXRINGS = 0x2D
ETHTOOL_GRXCLSRLCNT = 0x2E
ETHTOOL_GRXCLSRULE = 0x2F
ETHTOOL_GRXCLSRLALL = 0x30
ETHTOOL_SRXCLSRLDEL = 0x31
ETHTOOL_SRXCLSRLINS = 0x32
ETHTOOL_SRSSH = 0x47
ETH_RXFH_CONTEXT_ALLOC = 0xFFFFFFFF
RXH_XFRM_NO_CHANGE = 0xFF
RX_CLS_LOC_ANY = 0xFFFFFFFF
RX_CLS_LOC_SPECIAL = 0x80000000
RX_CLS_FLOW_DISC = 0xFFFFFFFFFFFFFFFF
RX_CLS_FLOW_WAKE = 0xFFFFFFFFFFFFFFFE
ETHTOOL_RX_FLOW_SPEC_RING = 0xFFFFFFFF
FLOW_EXT, FLOW_MAC_EXT, FLOW_RSS = 0x80000000, 0x40000000, 0x20000000
FLOW_TYPES = {"tcp4": 0x01, "udp4": 0x02, "sctp4": 0x03, "tcp6": 0x05, "udp6": 0x06,
              "sctp6": 0x07, "ip4": 0x0D, "ip6": 0x0E, "ether": 0x12}
_FLOW_NAMES = {v: k for k, v in FLOW_TYPES.items()}
# where the ports sit inside union ethtool_flow_union for the L4 flow types
_PORT_OFFSETS = {"tcp4": (8, 10), "udp4": (8, 10), "sctp4": (8, 10),
                 "tcp6": (32, 34), "udp6": (32, 34), "sctp6": (32, 34)}

# struct ethtool_rx_flow_spec: flow_type u32 @0, h_u[52] @4, h_ext[20] @56,
# m_u[52] @76, m_ext[20] @128, ring_cookie u64 @152, location u32 @160 (168 bytes)
# struct ethtool_rxnfc: cmd @0, flow_type @4, data u64 @8, fs @16, rule_cnt/rss_context
# @184, rule_locs[] @188 (sizeof 192)
_FS = 16
_RXNFC_SIZE = 192
_RULE_CNT = 184
_RULE_LOCS = 188


def _ioctl(ifname: str, cmd_buf: ctypes.Array[ctypes.c_char], op: str) -> None:
    name = ifname.encode()
    if len(name) >= 16:
        raise EthtoolError(_errno.EINVAL, f"interface name too long: {ifname}", op)
    ifr = struct.pack("16sP", name, ctypes.addressof(cmd_buf)) + b"\0" * 16
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
        except OSError as exc:
            raise EthtoolError(exc.errno or _errno.EIO, "", op) from None


def driver_info_ioctl(ifname: str) -> dict[str, str]:
    buf = ctypes.create_string_buffer(196)
    struct.pack_into("=I", buf, 0, ETHTOOL_GDRVINFO)
    _ioctl(ifname, buf, "ETHTOOL_GDRVINFO")
    raw = buf.raw

    def s(off: int) -> str:
        return raw[off: off + 32].split(b"\0", 1)[0].decode(errors="replace")
    return {"driver": s(4), "version": s(36), "firmware": s(68), "bus_info": s(100)}


def get_rx_ring_count(ifname: str) -> int:
    """ETHTOOL_GRXRINGS: the RX rings flow steering can target."""
    buf = ctypes.create_string_buffer(_RXNFC_SIZE)
    struct.pack_into("=I", buf, 0, ETHTOOL_GRXRINGS)
    _ioctl(ifname, buf, "ETHTOOL_GRXRINGS")
    rings: int = struct.unpack_from("=Q", buf, 8)[0]
    return rings


@dataclass
class NtupleRule:
    """One RX flow-steering (ntuple) rule, reduced to what zcrx cares about."""
    location: int | None
    flow_type: str                  # "tcp6", "tcp4", ... or "0x.." for others
    dst_port: int | None = None     # exact-match destination port, if matched
    src_port: int | None = None
    other_match: bool = False       # matches on anything besides the ports
    action: str = "queue"           # "queue", "drop", "wake"
    queue: int | None = None        # target queue (offset within context when rss_context)
    rss_context: int | None = None

    def to_dict(self) -> dict[str, int | str | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NtupleRule:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _parse_fs(raw: bytes, rss_ctx: int) -> NtupleRule:
    ft_raw = struct.unpack_from("=I", raw, _FS)[0]
    base = ft_raw & ~(FLOW_EXT | FLOW_MAC_EXT | FLOW_RSS)
    ftype = _FLOW_NAMES.get(base, hex(base))
    h_u = raw[_FS + 4: _FS + 56]
    m_u = raw[_FS + 76: _FS + 128]
    m_ext = raw[_FS + 128: _FS + 148]
    cookie, loc = struct.unpack_from("=QI", raw, _FS + 152)
    rule = NtupleRule(location=loc, flow_type=ftype)
    mask = bytearray(m_u)
    if ftype in _PORT_OFFSETS:
        s_off, d_off = _PORT_OFFSETS[ftype]
        if m_u[d_off: d_off + 2] == b"\xff\xff":
            rule.dst_port = struct.unpack_from("!H", h_u, d_off)[0]
            mask[d_off: d_off + 2] = b"\0\0"
        if m_u[s_off: s_off + 2] == b"\xff\xff":
            rule.src_port = struct.unpack_from("!H", h_u, s_off)[0]
            mask[s_off: s_off + 2] = b"\0\0"
    rule.other_match = any(mask) or (bool(ft_raw & (FLOW_EXT | FLOW_MAC_EXT)) and any(m_ext))
    if cookie == RX_CLS_FLOW_DISC:
        rule.action = "drop"
    elif cookie == RX_CLS_FLOW_WAKE:
        rule.action = "wake"
    else:
        rule.queue = cookie & ETHTOOL_RX_FLOW_SPEC_RING
    if ft_raw & FLOW_RSS:
        rule.rss_context = rss_ctx
    return rule


def get_ntuple_rules(ifname: str) -> tuple[list[NtupleRule], int, bool]:
    """All ntuple rules: ``(rules, table_size, driver_picks_location)``."""
    buf = ctypes.create_string_buffer(_RXNFC_SIZE)
    struct.pack_into("=I", buf, 0, ETHTOOL_GRXCLSRLCNT)
    _ioctl(ifname, buf, "ETHTOOL_GRXCLSRLCNT")
    data = struct.unpack_from("=Q", buf, 8)[0]
    count = struct.unpack_from("=I", buf, _RULE_CNT)[0]
    special = bool(data & RX_CLS_LOC_SPECIAL)
    table = data & ~RX_CLS_LOC_SPECIAL
    if count == 0:
        return [], table, special
    buf = ctypes.create_string_buffer(_RXNFC_SIZE + 4 * count)
    struct.pack_into("=I", buf, 0, ETHTOOL_GRXCLSRLALL)
    struct.pack_into("=I", buf, _RULE_CNT, count)
    _ioctl(ifname, buf, "ETHTOOL_GRXCLSRLALL")
    count = struct.unpack_from("=I", buf, _RULE_CNT)[0]
    locs = struct.unpack_from(f"={count}I", buf, _RULE_LOCS)
    rules: list[NtupleRule] = []
    for loc in locs:
        one = ctypes.create_string_buffer(_RXNFC_SIZE)
        struct.pack_into("=I", one, 0, ETHTOOL_GRXCLSRULE)
        struct.pack_into("=I", one, _FS + 160, loc)
        _ioctl(ifname, one, "ETHTOOL_GRXCLSRULE")
        rss_ctx = struct.unpack_from("=I", one, _RULE_CNT)[0]
        rules.append(_parse_fs(one.raw, rss_ctx))
    return rules, table, special


def insert_ntuple_rule(ifname: str, flow_type: str, dst_port: int, queue: int,
                       rss_context: int | None = None, location: int | None = None) -> int:
    """ETHTOOL_SRXCLSRLINS: steer ``flow_type`` to ``dst_port`` into ``queue``
    (or into RSS context ``rss_context`` at queue offset ``queue``). Returns the
    rule's location."""
    if flow_type not in _PORT_OFFSETS:
        raise EthtoolError(_errno.EINVAL, f"unsupported flow type {flow_type}", "ETHTOOL_SRXCLSRLINS")
    if location is None:
        rules, table, special = get_ntuple_rules(ifname)
        if special:
            location = RX_CLS_LOC_ANY
        else:
            used = {r.location for r in rules}
            free = [i for i in range(table - 1, -1, -1) if i not in used]
            if not free:
                raise EthtoolError(_errno.ENOSPC, "ntuple rule table is full",
                                   "ETHTOOL_SRXCLSRLINS")
            location = free[0]
    buf = build_rule(flow_type, dst_port, queue, rss_context, location)
    struct.pack_into("=I", buf, 0, ETHTOOL_SRXCLSRLINS)
    _ioctl(ifname, buf, "ETHTOOL_SRXCLSRLINS")
    placed: int = struct.unpack_from("=I", buf, _FS + 160)[0]
    return placed


def build_rule(flow_type: str, dst_port: int, queue: int, rss_context: int | None,
               location: int) -> ctypes.Array[ctypes.c_char]:
    """A ``struct ethtool_rxnfc`` holding one rule (cmd left 0)."""
    buf = ctypes.create_string_buffer(_RXNFC_SIZE)
    ft = FLOW_TYPES[flow_type] | (FLOW_RSS if rss_context is not None else 0)
    struct.pack_into("=I", buf, 4, ft)
    struct.pack_into("=I", buf, _FS, ft)
    _s_off, d_off = _PORT_OFFSETS[flow_type]
    struct.pack_into("!H", buf, _FS + 4 + d_off, dst_port)
    struct.pack_into("!H", buf, _FS + 76 + d_off, 0xFFFF)
    struct.pack_into("=QI", buf, _FS + 152, queue, location)
    if rss_context is not None:
        struct.pack_into("=I", buf, _RULE_CNT, rss_context)
    return buf


def parse_rule(raw: bytes) -> NtupleRule:
    """Inverse of :func:`build_rule` (and what ETHTOOL_GRXCLSRULE returns)."""
    return _parse_fs(raw, struct.unpack_from("=I", raw, _RULE_CNT)[0])


def delete_ntuple_rule(ifname: str, location: int) -> None:
    buf = ctypes.create_string_buffer(_RXNFC_SIZE)
    struct.pack_into("=I", buf, 0, ETHTOOL_SRXCLSRLDEL)
    struct.pack_into("=I", buf, _FS + 160, location)
    _ioctl(ifname, buf, "ETHTOOL_SRXCLSRLDEL")


def _ioctl_srssh(ifname: str, context: int, indir: list[int]) -> int:
    """ETHTOOL_SRSSH: set context's table (empty: reset context 0 to default,
    delete any other context; ETH_RXFH_CONTEXT_ALLOC: create). Returns the context."""
    buf = ctypes.create_string_buffer(24 + 4 * len(indir))
    struct.pack_into("=IIIIBB", buf, 0, ETHTOOL_SRSSH, context, len(indir), 0, 0,
                     RXH_XFRM_NO_CHANGE)
    if indir:
        struct.pack_into(f"={len(indir)}I", buf, 24, *indir)
    _ioctl(ifname, buf, "ETHTOOL_SRSSH")
    got: int = struct.unpack_from("=I", buf, 4)[0]
    return got


# --------------------------------------------------------------------------
# sysfs / names
# --------------------------------------------------------------------------
SYS_CLASS_NET = "/sys/class/net"


def driver_name(ifname: str) -> tuple[str | None, str]:
    """The driver and where the answer came from: sysfs
    (``/sys/class/net/IF/device/driver``, the module bound to the parent
    device) or, for virtual devices without a parent (veth, ifb), the
    ETHTOOL_GDRVINFO ioctl."""
    link = os.path.join(SYS_CLASS_NET, ifname, "device", "driver")
    try:
        return os.path.basename(os.readlink(link)), "sysfs"
    except OSError:
        pass
    try:
        return driver_info_ioctl(ifname)["driver"] or None, "ETHTOOL_GDRVINFO"
    except EthtoolError:
        return None, "unknown"


def sysfs_rx_queues(ifname: str) -> int | None:
    """Number of RX queues the stack sees (``/sys/class/net/IF/queues/rx-*``)."""
    try:
        return sum(1 for n in os.listdir(os.path.join(SYS_CLASS_NET, ifname, "queues"))
                   if n.startswith("rx-"))
    except OSError:
        return None
