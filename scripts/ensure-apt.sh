#!/bin/sh
# ensure-apt.sh CMD:PKG ... -- install the Debian package PKG when command CMD is missing.
# Used by the Makefile so a fresh machine gets the host tools the suite drives
# (ethtool, patchelf, ...). Never fails the build: a tool that cannot be installed
# makes the tests that need it skip with the reason.
missing=""
for pair in "$@"; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || missing="$missing $pkg"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-apt: cannot install$missing (not root or no apt-get); tests needing them will skip" >&2
    exit 0
fi
echo "ensure-apt: installing$missing" >&2
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } >/dev/null 2>&1 \
    || echo "ensure-apt: apt-get install$missing failed; tests needing them will skip" >&2
exit 0
