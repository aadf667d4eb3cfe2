#!/bin/sh
# Prints one interpreter per CPython minor version >= 3.10 found on this machine
# (pyenv's versions, then python3.X on PATH), except the default one ($1, the
# interpreter `make test` runs the full suite with). `make test-pythons` runs the
# host suite on each: requires-python = ">=3.10" is a promise.
default_minor=$("${1:-python3}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
seen=" $default_minor "
candidates=""
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    candidates=$(ls -d "$root"/versions/3.* 2>/dev/null | sed 's|$|/bin/python3|')
fi
for minor in 10 11 12 13 14 15; do
    p=$(command -v "python3.$minor" 2>/dev/null) && candidates="$candidates $p"
done
for py in $candidates; do
    [ -x "$py" ] || continue
    v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 10) and sys.implementation.name == "cpython" else None' 2>/dev/null) || continue
    [ -n "$v" ] && [ "$v" != None ] || continue
    case "$seen" in *" $v "*) continue ;; esac
    seen="$seen$v "
    echo "$py"
done
