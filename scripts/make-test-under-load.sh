#!/bin/bash
# make-test-under-load.sh [RUNS] [COMMIT]: the proof that the suite does not flake.
# RUNS times in a row (default 5): a fresh clone of COMMIT (default HEAD), then
# `CI=true bash .ci/run` (= make test) with a busy loop per core beside it. Stops at
# the first failure. One line per run in /tmp/make-test-under-load.log; each run's
# output in /tmp/make-test-under-load-N.log. About 17 minutes a run on 2 cores.
set -u
runs=${1:-5}
repo=$(git rev-parse --show-toplevel)
sha=$(git -C "$repo" rev-parse "${2:-HEAD}")
log=/tmp/make-test-under-load.log
echo "$runs runs of $sha with $(nproc) busy loops beside, started $(date)" > "$log"
for i in $(seq 1 "$runs"); do
    dir=$(mktemp -d /tmp/aiozcrx-clean.XXXXXX)
    chmod 755 "$dir"  # as a checkout usually is (mktemp makes it 0700)
    git clone -q "$repo" "$dir" && git -C "$dir" checkout -q "$sha" || exit 1
    hogs=()
    for _ in $(seq 1 "$(nproc)"); do python3 -c 'while 1: pass' & hogs+=($!); done
    start=$(date +%s)
    (cd "$dir" && CI=true bash .ci/run) > "/tmp/make-test-under-load-$i.log" 2>&1
    rc=$?
    kill "${hogs[@]}"
    echo "run $i: rc=$rc, $(( $(date +%s) - start )) s, $(grep -E '(passed|failed).* in ' \
        "/tmp/make-test-under-load-$i.log" | tr '\n' ' ')" >> "$log"
    rm -rf "$dir"
    [ "$rc" -eq 0 ] || break
done
echo "done $(date)" >> "$log"
cat "$log"
