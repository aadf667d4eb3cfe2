"""Dropping a worker's privileges for good, and reading what a process holds.

A worker prepares its zcrx queue as root (or with CAP_NET_ADMIN), then calls
``drop_privileges``: after it the process has another uid/gid, no supplementary
groups, no capability in any set (effective, permitted, inheritable, ambient,
bounding), ``no_new_privs`` set (no exec can give any back), and its parent's
death sends it a signal. Each step is checked; a step that fails raises
``PrivilegeDropError`` naming it, and the worker exits without serving.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import grp
import os
import pwd
import signal
from dataclasses import dataclass

from ..errors import AiozcrxError

# <linux/prctl.h>, <linux/capability.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_NET_ADMIN = 12
CAP_IPC_LOCK = 14
CAP_SETPCAP = 8


class PrivilegeDropError(AiozcrxError, PermissionError):
    """A worker could not give up its privileges (a step named in the message):
    it does not serve rather than serve privileged."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "") -> int:
    lib = _lib()
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    lib.prctl.restype = ctypes.c_int
    rc: int = lib.prctl(option, arg2, arg3, 0, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({what or option}): {os.strerror(err)}")
    return rc


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Cap"):
                out[key] = int(value.strip(), 16)
    return out


def has_capability(cap: int) -> bool:
    """Whether this process has ``cap`` in its effective set."""
    return bool(capabilities().get("CapEff", 0) >> cap & 1)


def set_capabilities(effective: int, permitted: int, inheritable: int = 0) -> None:
    """capset(2) for this thread (the low 64 capabilities)."""
    hdr = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    lib = _lib()
    if lib.capset(ctypes.byref(hdr), data) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def drop_capability(cap: int) -> None:
    """Takes ``cap`` out of this process's effective and permitted sets (tests, and
    a launcher asked to run without a capability it holds)."""
    caps = capabilities()
    mask = ~(1 << cap)
    set_capabilities(caps["CapEff"] & mask, caps["CapPrm"] & mask, caps["CapInh"] & mask)


@dataclass(frozen=True)
class Identity:
    """Whom a worker becomes: ``user`` and ``group`` resolved once, in the launcher."""
    uid: int
    gid: int
    user: str
    group: str

    @classmethod
    def resolve(cls, user: str | int, group: str | int | None = None) -> "Identity":
        try:
            pw = pwd.getpwuid(user) if isinstance(user, int) else \
                (pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user))
        except (KeyError, ValueError):
            raise ValueError(f"no user {user!r} on this system (--user): give an existing user "
                             f"name or uid, e.g. nobody") from None
        gid = pw.pw_gid
        if group is not None:
            try:
                gr = grp.getgrgid(group) if isinstance(group, int) else \
                    (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group))
            except (KeyError, ValueError):
                raise ValueError(f"no group {group!r} on this system (--group): give an existing "
                                 f"group name or gid, e.g. nogroup") from None
            gid = gr.gr_gid
        try:
            gname = grp.getgrgid(gid).gr_name
        except KeyError:
            gname = str(gid)
        if pw.pw_uid == 0:
            raise ValueError(f"--user {user!r} is root: workers run unprivileged; give an "
                             f"unprivileged user, e.g. nobody")
        return cls(pw.pw_uid, gid, pw.pw_name, gname)


def drop_privileges(identity: Identity | None, *, parent_pid: int,
                    death_signal: int = signal.SIGKILL) -> None:
    """Becomes ``identity`` for good: see the module's docstring. ``parent_pid``:
    the launcher; if it is already gone the worker exits (the death signal would
    never come). ``identity`` None (a launcher that is not root, run without
    ``--user``): the worker keeps its uid and gid and gives up every capability;
    its bounding set stays where it cannot be changed (no CAP_SETPCAP), which
    no_new_privs makes moot (no exec can raise the capabilities again)."""
    step = ""
    try:
        step = "drop the bounding set (PR_CAPBSET_DROP)"
        for cap in range(last_cap() + 1):
            try:
                _prctl(PR_CAPBSET_DROP, cap, what="PR_CAPBSET_DROP")
            except OSError as e:
                if e.errno == errno.EPERM and identity is None:
                    break
                if e.errno != errno.EINVAL:  # a capability this kernel does not know
                    raise
        step = "clear the ambient set (PR_CAP_AMBIENT_CLEAR_ALL)"
        try:
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT")
        except OSError as e:
            if e.errno != errno.EINVAL:  # kernels before 4.3 have no ambient set
                raise
        if identity is not None:
            step = "set the groups (setgroups)"
            os.setgroups([])
            step = f"set the gid to {identity.gid} (setresgid)"
            os.setresgid(identity.gid, identity.gid, identity.gid)
            step = f"set the uid to {identity.uid} (setresuid)"
            os.setresuid(identity.uid, identity.uid, identity.uid)
        step = "clear every capability (capset)"
        set_capabilities(0, 0, 0)
        step = "set no_new_privs (PR_SET_NO_NEW_PRIVS)"
        _prctl(PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
        # after the uid change: changing credentials clears the death signal
        step = "ask for a signal at the launcher's death (PR_SET_PDEATHSIG)"
        _prctl(PR_SET_PDEATHSIG, int(death_signal), what="PR_SET_PDEATHSIG")
    except OSError as e:
        who = identity.user if identity is not None else "its own user"
        raise PrivilegeDropError(f"aiozcrx worker: cannot {step}: {e.strerror or e} (the launcher "
                                 f"must run as root, or with CAP_SETUID, CAP_SETGID and "
                                 f"CAP_SETPCAP, to start workers as {who})") from None
    if os.getppid() != parent_pid:
        os._exit(1)  # the launcher died before the death signal was set
    check = verify_dropped(identity)
    if check:
        raise PrivilegeDropError(f"aiozcrx worker: privileges still held after dropping them: {check}")


def verify_dropped(identity: Identity | None) -> str:
    """What this process still holds that a dropped worker must not (empty: nothing)."""
    problems = []
    caps = capabilities()
    for key in ("CapEff", "CapPrm", "CapInh", "CapAmb") + (("CapBnd",) if identity else ()):
        if caps.get(key, 0):
            problems.append(f"{key} {caps[key]:#x}")
    if identity is not None:
        if os.getresuid() != (identity.uid,) * 3:
            problems.append(f"uids {os.getresuid()}")
        if os.getresgid() != (identity.gid,) * 3:
            problems.append(f"gids {os.getresgid()}")
        if os.getgroups() not in ([], [identity.gid]):
            problems.append(f"groups {os.getgroups()}")
    if _prctl(PR_GET_NO_NEW_PRIVS, what="PR_GET_NO_NEW_PRIVS") != 1:
        problems.append("no_new_privs not set")
    return ", ".join(problems)
