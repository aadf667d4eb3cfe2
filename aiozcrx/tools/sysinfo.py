"""Facts of the running system, read from /proc, /sys and /boot: the kernel's
release, sysctls, the process's status, the kernel's build options.

Below both ``doctor`` (which reports them) and ``probe`` (which reads what the
compiled core's answers depend on): standard library only, no compiled code.
"""
from __future__ import annotations

import gzip
import re


def parse_release(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def read_proc_status(path: str = "/proc/self/status") -> dict[str, str]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, val = line.partition(":")
                out[key.strip()] = val.strip()
    except OSError:
        pass
    return out


def read_int(path: str) -> int | None:
    """An integer file such as a sysctl; None if unreadable."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def kernel_config_option(option: str, release: str) -> str | None:
    """``"y"``, ``"m"``, ``"n"`` (``# ... is not set``) or None when no config
    is readable (/proc/config.gz, /boot/config-RELEASE)."""
    texts = []
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            texts.append(f.read())
    except OSError:
        pass
    try:
        with open(f"/boot/config-{release}") as f:
            texts.append(f.read())
    except OSError:
        pass
    for text in texts:
        m = re.search(rf"^{option}=(\w+)$", text, re.M)
        if m:
            return m.group(1)
        if re.search(rf"^# {option} is not set$", text, re.M):
            return "n"
    return None
