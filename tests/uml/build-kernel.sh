#!/bin/bash
# build-kernel.sh -- build the project's User-Mode Linux guest kernel: Debian sid's
# linux-source-7.2 with the project's netdevsim extension (netdevsim-zcrx.patch) and
# config fragment (guest.config), cached by a hash of all three.
#
#   tests/uml/build-kernel.sh            # build if not cached; print the kernel's directory
#   tests/uml/build-kernel.sh --dir      # print where the kernel is (or would be) cached
#   tests/uml/build-kernel.sh --force    # build again even if cached
#
# The kernel lands in CACHE/custom/KEY/ (CACHE as in run-in-guest.sh: AIOZCRX_UML_CACHE,
# default ${XDG_CACHE_HOME:-$HOME/.cache}/aiozcrx-uml):
#   linux    the UML kernel binary (built against the host's glibc: no patchelf)
#   config   its .config
#   info     kernel=RELEASE, linux-source-7.2=DEB VERSION, build seconds, key inputs
# KEY hashes the patch, the fragment and the source package's name (linux-source-7.2):
# a change to either file builds a new kernel. Like the Debian kernel of the runner, the
# source is whatever sid has on the day of the first build; the cache then keeps it.
#
# Needs: network access to Debian's archive (through the host's own mirror, see
# sid-apt.sh), gcc, make, flex, bison, bc, xz (installed with scripts/ensure-apt.sh if
# missing and root), about 1.5 GB of disk while building, and ~5-10 minutes on 2 cores
# (AIOZCRX_UML_JOBS, default 2 parallel jobs).
# Exit status: 0 built or cached (directory on stdout); 1 failed (reason on stderr,
# the build log kept in CACHE/logs/); 2 usage.
set -u -o pipefail

ME='build-kernel'
HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SOURCE_PKG=linux-source-7.2
PATCH=$HERE/netdevsim-zcrx.patch
FRAGMENT=$HERE/guest.config
JOBS=${AIOZCRX_UML_JOBS:-2}

# shellcheck source=tests/uml/sid-apt.sh
. "$HERE/sid-apt.sh"

say() { echo "$ME: $*" >&2; }
die() { say "$*"; exit 1; }

MODE=build
case ${1:-} in
    '') ;;
    --dir) MODE=dir ;;
    --force) MODE=force ;;
    -h|--help) sed -n '2,24s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) say "unknown argument: $1"; exit 2 ;;
esac

home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${AIOZCRX_UML_CACHE:-${XDG_CACHE_HOME:-$home/.cache}/aiozcrx-uml}
KEY=$(cat "$PATCH" "$FRAGMENT" <(echo "$SOURCE_PKG") | sha256sum | cut -c1-16)
OUT=$CACHE/custom/$KEY
if [ "$MODE" = dir ]; then echo "$OUT"; exit 0; fi

ready() { [ -x "$OUT/linux" ] && [ -s "$OUT/info" ]; }
if [ "$MODE" = build ] && ready; then echo "$OUT"; exit 0; fi

mkdir -p "$CACHE/custom" "$CACHE/logs" || die "cannot write to $CACHE"
# One builder at a time; the others wait and then find the kernel built.
exec 9>"$CACHE/custom/.lock"
if ! flock -n 9; then
    say "another build of the guest kernel is running; waiting"
    flock -w 3600 9 || die "timed out waiting for $CACHE/custom/.lock"
fi
if [ "$MODE" = build ] && ready; then echo "$OUT"; exit 0; fi

t0=$SECONDS
rm -rf "$CACHE"/custom/.build.*     # left by aborted builds (we hold the lock)
BUILD=$(mktemp -d "$CACHE/custom/.build.XXXXXX") || die "cannot write to $CACHE/custom"
LOG=$BUILD/build.log
fail() {
    local kept
    kept=$CACHE/logs/kernel-build-$(date +%Y%m%d-%H%M%S)-$$.log
    cp "$LOG" "$kept" 2>/dev/null || kept=''
    rm -rf "$BUILD"
    die "$1${kept:+ (build log: $kept)}"
}
# the log's last lines, for a failure that the log explains
tail_log() { tail -n "${1:-15}" "$LOG" | sed 's/^/  | /' >&2; }

say "building the guest kernel ($SOURCE_PKG + netdevsim-zcrx.patch + guest.config, key $KEY) into $OUT"
"$ROOT/scripts/ensure-apt.sh" gcc:gcc make:make flex:flex bison:bison bc:bc xz:xz-utils \
    perl:perl patch:patch
for tool in gcc make flex bison bc xz perl patch; do
    command -v "$tool" >/dev/null || fail "missing build tool: $tool"
done

say "fetching $SOURCE_PKG from Debian sid"
sid_apt_download "$BUILD" "$LOG" "$SOURCE_PKG" || fail "$SID_APT_ERROR"
deb=$(ls "$BUILD"/"$SOURCE_PKG"_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "apt-get download left no $SOURCE_PKG package"
version=$(dpkg-deb -f "$deb" Version)
t_fetch=$((SECONDS - t0))

say "unpacking $SOURCE_PKG $version"
# the package holds one tarball, /usr/src/linux-source-7.2.tar.xz
dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' \
    | tar -xJ -C "$BUILD" >>"$LOG" 2>&1 || fail "cannot unpack $deb"
rm -f "$deb"
SRC=$(ls -d "$BUILD"/linux-source-* 2>/dev/null | head -1)
[ -n "$SRC" ] && [ -f "$SRC/Makefile" ] || fail "unexpected layout of $SOURCE_PKG"

patch -d "$SRC" -p1 --forward --batch <"$PATCH" >>"$LOG" 2>&1 \
    || { tail_log; fail "netdevsim-zcrx.patch does not apply to $SOURCE_PKG $version"; }

say "configuring (ARCH=um defconfig + guest.config)"
{
    make -C "$SRC" ARCH=um defconfig &&
    "$SRC/scripts/kconfig/merge_config.sh" -m -O "$SRC" "$SRC/.config" "$FRAGMENT" &&
    make -C "$SRC" ARCH=um olddefconfig
} >>"$LOG" 2>&1 || { tail_log; fail "configuring the kernel failed"; }
# Every option of the fragment must have survived (a missing dependency drops an
# option silently).
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=' "$FRAGMENT" | while IFS= read -r line; do
              grep -qxF "$line" "$SRC/.config" || echo "${line%%=*}"
          done)
[ -z "$missing" ] || fail "the kernel configuration lost: $(echo "$missing" | tr '\n' ' ')"

say "compiling with $JOBS jobs (several minutes)"
t_make=$SECONDS
make -C "$SRC" ARCH=um -j"$JOBS" linux >>"$LOG" 2>&1 \
    || { tail_log 25; fail "compiling the kernel failed"; }
t_make=$((SECONDS - t_make))
release=$(make -s -C "$SRC" ARCH=um kernelrelease 2>>"$LOG") || fail "no kernel release"

mkdir -p "$BUILD/out"
mv "$SRC/linux" "$BUILD/out/linux" && cp "$SRC/.config" "$BUILD/out/config" \
    || fail "cannot move the kernel out of the build tree"
{
    echo "kernel=$release"
    echo "$SOURCE_PKG=$version"
    echo "patch=$(sha256sum <"$PATCH" | cut -c1-16)"
    echo "config=$(sha256sum <"$FRAGMENT" | cut -c1-16)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "seconds=$((SECONDS - t0)) (fetch $t_fetch, compile $t_make, jobs $JOBS)"
} >"$BUILD/out/info"
rm -rf "$OUT"
mv -T "$BUILD/out" "$OUT" || fail "cannot rename the kernel into $OUT"
rm -rf "$BUILD"
say "guest kernel $release ready in $((SECONDS - t0)) s (fetch $t_fetch s, compile $t_make s with $JOBS jobs; $(du -sh "$OUT/linux" | cut -f1))"
echo "$OUT"
