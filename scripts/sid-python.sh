#!/bin/bash
# sid-python.sh -- run a command with a CPython this machine does not have, taken from
# Debian sid (which ships newer CPythons than any pyenv or stable release here).
#
#   scripts/sid-python.sh --check 3.14          # exit 0, or 1 with the reason on stdout
#   scripts/sid-python.sh 3.14 -- COMMAND...    # COMMAND run by bash -c, in this directory
#
# Why a root of its own: sid's python3.X is built against sid's glibc, newer than the
# host's, so it cannot simply be unpacked beside the host's programs. debootstrap makes a
# minimal sid root with python3.X, its venv/dev packages and a C compiler (the package
# compiles its C layer), once, under the cache (AIOZCRX_SID_CACHE, default
# ~/.cache/aiozcrx-sid); every run then chroots into it. The kernel is the host's own,
# so io_uring, loopback sockets and /proc are exactly what the host suite sees.
#
# Nothing on the host changes: the run is in a mount namespace of its own (unshare), in
# which /proc, /sys, /dev are bound into the root and the checkout is seen at the same
# path through an overlay that keeps the command's writes (see below); all of it goes
# when the command ends. The mirror is the host's own Debian archive
# (tests/uml/sid-apt.sh), the CA bundle is the host's (for a proxy that re-signs TLS,
# pip's downloads must trust what the host trusts). Needs root (chroot, mounts).
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT_DIR=$(cd "$HERE/.." && pwd -P)
. "$ROOT_DIR/tests/uml/sid-apt.sh"   # sid_mirror

unavailable() { echo "$*"; exit 1; }

check=0
[ "${1:-}" = --check ] && { check=1; shift; }
minor=${1:-}
case $minor in 3.[0-9]*) ;; *) echo "usage: $0 [--check] 3.X [-- COMMAND...]" >&2; exit 2 ;; esac
shift
[ $check = 1 ] || [ "${1:-}" = -- ] || { echo "usage: $0 3.X -- COMMAND..." >&2; exit 2; }
[ $check = 1 ] || shift

CACHE=${AIOZCRX_SID_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/aiozcrx-sid}
SYSROOT=$CACHE/python$minor
PY=/usr/bin/python$minor
# what the host suite needs inside the root, beside the interpreter: a C compiler for
# the package (and the benchmarks' C programs), the commands the tests drive
PACKAGES="python$minor,python$minor-venv,python$minor-dev,gcc,libc6-dev,libffi-dev,iproute2,procps,ca-certificates,util-linux,curl,openssl"

# made, and with this package list (a changed list makes it again)
ready() { [ -x "$SYSROOT$PY" ] && [ "$(cat "$SYSROOT/.complete" 2>/dev/null)" = "$PACKAGES" ]; }

prepare() {
    [ "$(id -u)" = 0 ] || unavailable "needs root (debootstrap, chroot and mounts)"
    command -v unshare >/dev/null && command -v chroot >/dev/null \
        || unavailable "no unshare/chroot (package util-linux, coreutils)"
    ready && return 0
    if ! command -v debootstrap >/dev/null && ! [ -x /usr/sbin/debootstrap ]; then
        "$HERE/ensure-apt.sh" debootstrap:debootstrap
        [ -x /usr/sbin/debootstrap ] || unavailable "no debootstrap and it could not be installed"
    fi
    local mirror; mirror=$(sid_mirror)
    [ -n "$mirror" ] || unavailable "no Debian archive in the host's apt sources (set AIOZCRX_UML_MIRROR)"
    mkdir -p "$CACHE" || unavailable "cannot create $CACHE (set AIOZCRX_SID_CACHE)"
    exec 9>"$CACHE/.lock"
    flock 9   # one builder at a time; the others find it ready
    ready && return 0
    local tmp="$SYSROOT.tmp.$$" log="$CACHE/debootstrap-$minor.log"
    rm -rf --one-file-system "$SYSROOT" "$SYSROOT".tmp.*   # never into a mount
    echo "sid-python: making a Debian sid root with python$minor in $SYSROOT (about a minute)" >&2
    if ! /usr/sbin/debootstrap --variant=minbase --include="$PACKAGES" sid "$tmp" "$mirror" >"$log" 2>&1; then
        rm -rf --one-file-system "$tmp"
        unavailable "debootstrap of Debian sid with python$minor failed: $(grep -E '^(E|W):' "$log" | tail -1) (log: $log)"
    fi
    [ -x "$tmp$PY" ] || { rm -rf --one-file-system "$tmp"; unavailable "Debian sid has no python$minor"; }
    echo "$PACKAGES" >"$tmp/.complete" && mv "$tmp" "$SYSROOT" || unavailable "cannot move the root into $SYSROOT"
}

# Entering the root needs a private mount namespace, bind mounts and chroot, which a
# container may refuse even to root: tried first, so that --check says so.
can_enter() {
    local why
    why=$(SYSROOT=$SYSROOT PY=$PY unshare --mount --propagation private -- sh -c \
          'mount --bind "$SYSROOT" "$SYSROOT" && chroot "$SYSROOT" "$PY" -c pass' 2>&1) \
        || unavailable "cannot enter the sid root (unshare --mount, mount --bind, chroot): $(echo "$why" | tail -1)"
}

prepare   # --check makes the root too: cheap once it exists
can_enter
[ $check = 0 ] || exit 0

# The command runs as root in the checkout, with the host's environment (PIP_* etc.),
# less a pip find-links directory the root does not have.
case ${PIP_FIND_LINKS:-} in /*) [ -e "$SYSROOT$PIP_FIND_LINKS" ] || unset PIP_FIND_LINKS ;; esac
# The checkout is seen through an overlay whose upper layer is this run's own and
# removed after it: what the command writes there (.venv-3.X, the compiled modules)
# never reaches the host's tree. That matters: the cffi module is built as one abi3
# file for every Python, and sid's compiler and glibc must not replace the one the
# host's Pythons (and the guest, running beside) load.
for d in "$CACHE"/run.*; do   # of runs that died
    [ -d "$d" ] && ! kill -0 "${d##*.}" 2>/dev/null && rm -rf --one-file-system "$d"
done
RUN=$CACHE/run.$$
mkdir -p "$RUN/upper" "$RUN/work"
export SYSROOT ROOT_DIR RUN
unshare --mount --propagation private -- bash -c '
    set -e
    # the root a mount point of its own, as / is on any system (ip netns exec remounts it)
    mount --bind "$SYSROOT" "$SYSROOT"
    for d in proc sys dev; do mount --rbind "/$d" "$SYSROOT/$d"; done
    mkdir -p "$SYSROOT$ROOT_DIR"
    if ! mount -t overlay overlay -o "lowerdir=$ROOT_DIR,upperdir=$RUN/upper,workdir=$RUN/work" \
            "$SYSROOT$ROOT_DIR" 2>/dev/null; then
        echo "sid-python: no overlay mount here: the checkout is bound as it is" >&2
        mount --bind "$ROOT_DIR" "$SYSROOT$ROOT_DIR"
    fi
    cp /etc/ssl/certs/ca-certificates.crt "$SYSROOT/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true
    cp /etc/resolv.conf "$SYSROOT/etc/resolv.conf" 2>/dev/null || true
    cwd=$(pwd -P)
    exec chroot "$SYSROOT" /bin/bash -c "cd \"\$0\" && exec bash -c \"\$1\"" "$cwd" "$*"
' bash "$@"
status=$?
rm -rf --one-file-system "$RUN"
exit $status
