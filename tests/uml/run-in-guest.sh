#!/bin/bash
# run-in-guest.sh -- run a command inside a Linux 7.x guest kernel that supports
# io_uring zero-copy receive (zcrx, ZCRX_REG_NODEV), on a host whose kernel does not.
#
#   tests/uml/run-in-guest.sh [--nic] --check
#   tests/uml/run-in-guest.sh [--nic [--nic-queues N]]
#                             [--timeout S] [--mem SIZE] [--rw DIR]... [--log FILE] -- COMMAND...
#
# Exit status: the guest command's; 124 time limit hit; 125 the guest produced no exit
# status; 77 the runner cannot work on this machine; 2 usage error.
# See tests/uml/README.md and docs/guest-tier.md for the details.
#
# How it works, and why:
# * The guest kernel is User-Mode Linux (UML): Linux built as an ordinary host program,
#   so no hypervisor is needed (this host's /dev/kvm cannot run stock kernels, and its
#   own 6.18 kernel cannot register a zcrx instance).
# * The kernel is the project's own build (build-kernel.sh beside this file): Debian
#   sid's linux-source-7.2 with a netdevsim extension that can host zcrx on a simulated
#   NIC queue (netdevsim-zcrx.patch), with everything the guest needs built in (no
#   modules). Built once (minutes) against the host's own glibc, then cached.
# * Its source comes from Debian's archive with `apt-get download` under a private apt
#   configuration that only knows Debian sid (sid-apt.sh; the mirror is the host's own):
#   nothing from sid is installed on the host, and the host's apt sources and state are
#   never touched.
# * --nic: the guest gets a linked pair of netdevsim NICs, the peer in a network
#   namespace of its own; see guest_setup_nic.
# * The guest's root is the host's / (hostfs, read-only) under a tmpfs overlay: the
#   checkout, its .venv and the host's Pythons work unchanged, and every write made in
#   the guest lands in guest RAM and is gone when the guest stops (except --rw DIRs).
# * This very script is also the guest's init (PID 1): see guest_main at the bottom.
set -u -o pipefail

ME='run-in-guest'
SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
# The simulated NIC (--nic): interface names, addresses, the peer's network namespace
NIC_IF=nsim0 NIC_PEER_IF=nsim1 NIC_PEER_NS=aiozcrx-peer
NIC_ADDR=192.0.2.1 NIC_PEER_ADDR=192.0.2.2 NIC_ADDR6=2001:db8::1 NIC_PEER_ADDR6=2001:db8::2
GRACE=20            # seconds the host waits past the time limit before killing UML
TAIL_LINES=60       # console lines shown when a run fails

# ---------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------

say() { echo "$ME: $*" >&2; }

# usage [STATUS]: the help text, on stdout for --help, else on stderr
usage() {
    local status=${1:-2}
    [ "$status" = 0 ] || exec >&2
    cat <<EOF
usage: $0 [--nic] --check
       $0 [--nic [--nic-queues N]] [--timeout SECONDS]
          [--mem SIZE] [--rw DIR]... [--log FILE] -- COMMAND...

Runs COMMAND (joined with spaces, run by bash -c) as root in the current directory
inside a User-Mode Linux 7.x guest, streams its output (stdout and stderr merged) to
stdout and exits with its exit status.

  --check        exit 0 if the guest can run here (builds the project's kernel if
                 needed: build-kernel.sh, once, minutes); else print one line saying
                 why on stdout and exit 77
  --nic          a linked pair of netdevsim NICs: $NIC_IF ($NIC_ADDR, $NIC_ADDR6) here,
                 $NIC_PEER_IF ($NIC_PEER_ADDR, $NIC_PEER_ADDR6) in network namespace
                 $NIC_PEER_NS; COMMAND gets AIOZCRX_NIC, AIOZCRX_NIC_ADDR(6),
                 AIOZCRX_NIC_PEER_ADDR(6), AIOZCRX_NIC_PEER_NS
  --nic-queues N RX/TX queues of each NIC (default 4; 2 to 64)
  --timeout S    kill the command S seconds after the guest starts booting (default
                 900); then print the console tail and exit 124
  --mem SIZE     guest RAM, e.g. 512M, 2G (default 2G)
  --rw DIR       make host directory DIR writable through to the host in the guest
                 (repeatable); everything else the guest writes is discarded
  --log FILE     keep the guest console (kernel log) in FILE

Exit status: the command's; 124 time limit; 125 no exit status from the guest (the
reason and the console tail are printed on stderr); 77 cannot work here; 2 usage.

Environment: AIOZCRX_UML_CACHE (cache dir, default \${XDG_CACHE_HOME:-\$HOME/.cache}/aiozcrx-uml),
AIOZCRX_UML_LINUX (boot this UML binary instead, e.g. a kernel tree's ./linux),
AIOZCRX_UML_MIRROR (Debian mirror for the kernel's source; default: the host's own
Debian archive), AIOZCRX_UML_JOBS (parallel jobs of the kernel build),
AIOZCRX_UML_DEBUG=1 (trace the guest init and print the whole console log),
AIOZCRX_UML_MODULES (the module tree of an AIOZCRX_UML_LINUX kernel that has overlayfs
as a module, e.g. Debian bookworm's user-mode-linux 6.1: its /usr/lib/uml/modules/6.1.*),
AIOZCRX_UML_KEEP=1 (keep the run directory),
AIOZCRX_GUEST_ENV (names of extra variables to carry into the guest).
See docs/guest-tier.md.
EOF
    exit "$status"
}

# The runner cannot work on this machine. For --check this is the contract: one line on
# stdout (a test harness turns it into a skip reason) and status 77. A normal run says it
# on stderr, keeping stdout for the guest's output, and also exits 77.
unavailable() {
    if [ "$MODE" = check ]; then echo "$ME: unavailable: $*"; else say "unavailable: $*"; fi
    exit 77
}

parse_args() {
    MODE=run TIMEOUT=900 MEM=2G LOGFILE='' RW_DIRS=() COMMAND=''
    NIC='' NIC_QUEUES=4
    while [ $# -gt 0 ]; do
        case $1 in
            --check) MODE=check ;;
            --nic) NIC=1 ;;
            --nic-queues) [ $# -ge 2 ] || usage; NIC_QUEUES=$2; shift ;;
            --nic-queues=*) NIC_QUEUES=${1#*=} ;;
            --timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift ;;
            --timeout=*) TIMEOUT=${1#*=} ;;
            --mem) [ $# -ge 2 ] || usage; MEM=$2; shift ;;
            --mem=*) MEM=${1#*=} ;;
            --rw) [ $# -ge 2 ] || usage; RW_DIRS+=("$2"); shift ;;
            --rw=*) RW_DIRS+=("${1#*=}") ;;
            --log) [ $# -ge 2 ] || usage; LOGFILE=$2; shift ;;
            --log=*) LOGFILE=${1#*=} ;;
            -h|--help) usage 0 ;;
            --) shift; COMMAND="$*"; break ;;
            *) say "unknown argument: $1"; usage ;;
        esac
        shift
    done
    [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || { say "--timeout wants a whole number of seconds"; usage; }
    [[ $MEM =~ ^[1-9][0-9]*[KkMmGg]?$ ]] || { say "--mem wants a size like 512M or 2G"; usage; }
    [[ $NIC_QUEUES =~ ^[0-9]+$ ]] && [ "$NIC_QUEUES" -ge 2 ] && [ "$NIC_QUEUES" -le 64 ] \
        || { say "--nic-queues wants a number from 2 to 64"; usage; }
    if [ "$MODE" = run ] && [ -z "$COMMAND" ]; then say "no command given"; usage; fi
    local i d
    for i in "${!RW_DIRS[@]}"; do
        d=$(cd "${RW_DIRS[$i]}" 2>/dev/null && pwd -P) || { say "--rw ${RW_DIRS[$i]}: not a directory"; exit 2; }
        # hostfs takes the host path as its mount data: keep it free of separators
        case $d in *[[:space:],]*) say "--rw $d: path with whitespace or a comma"; exit 2 ;; esac
        RW_DIRS[i]=$d
    done
    if [ -n "$LOGFILE" ]; then
        : >"$LOGFILE" || { say "--log $LOGFILE: cannot write"; exit 2; }
        LOGFILE=$(cd "$(dirname "$LOGFILE")" && pwd -P)/$(basename "$LOGFILE")
    fi
}

# mem size as the kernel reads it (K/M/G suffix, binary units) -> bytes
mem_bytes() {
    local n=${1%[KkMmGg]} unit=${1#"${1%[KkMmGg]}"}
    case $unit in k|K) echo $((n << 10)) ;; m|M) echo $((n << 20)) ;; g|G) echo $((n << 30)) ;; *) echo "$n" ;; esac
}

setup_cache_paths() {
    local home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
    CACHE=${AIOZCRX_UML_CACHE:-${XDG_CACHE_HOME:-$home/.cache}/aiozcrx-uml}
    mkdir -p "$CACHE" 2>/dev/null || unavailable "cannot create the cache directory $CACHE (set AIOZCRX_UML_CACHE)"
    CACHE=$(cd "$CACHE" && pwd -P)
    # The cache path goes on the guest kernel's command line and into hostfs mount data,
    # and the guest must see it through its own root: no separators, no pseudo-fs.
    case $CACHE in
        *[[:space:],]*) unavailable "cache path '$CACHE' contains whitespace or a comma (set AIOZCRX_UML_CACHE)" ;;
        /dev|/dev/*|/proc/*|/sys/*|/run|/run/*) unavailable "cache path $CACHE is hidden in the guest (set AIOZCRX_UML_CACHE)" ;;
    esac
    # the built kernel (build-kernel.sh); appears complete or not at all
    KDIR=$(AIOZCRX_UML_CACHE=$CACHE "$HERE/build-kernel.sh" --dir) \
        || unavailable "tests/uml/build-kernel.sh --dir failed"
    mkdir -p "$CACHE/runs" "$CACHE/logs" || unavailable "cannot write to the cache $CACHE"
}

check_platform() {
    [ "${AIOZCRX_GUEST:-}" != 1 ] || unavailable "already inside the guest (AIOZCRX_GUEST=1)"
    [ "$(uname -s)" = Linux ] || unavailable "not a Linux host"
    if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
        unavailable "no dpkg/apt-get: the guest kernel comes from Debian's archive"
    fi
    [ "$(dpkg --print-architecture)" = amd64 ] \
        || unavailable "the guest kernel is only built and used here on amd64, this is $(dpkg --print-architecture)"
}

# Host programs this script needs, as "command:package". ip also runs *inside* the
# guest, which uses the host's / as its root. They come from the host's own Debian
# sources (plain apt-get install, the host's configuration).
HOST_TOOLS="ip:iproute2 flock:util-linux setsid:util-linux findmnt:util-linux
mkfifo:coreutils"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

ensure_host_tools() {
    local pair missing pkgs=()
    for pair in $HOST_TOOLS; do
        have "${pair%%:*}" || pkgs+=("${pair#*:}")
    done
    [ ${#pkgs[@]} -gt 0 ] || return 0
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    missing="${pkgs[*]}"
    [ "$(id -u)" = 0 ] || unavailable "missing host packages: $missing (not root, cannot apt-get install them)"
    say "installing host packages: $missing"
    local log; log=$(mktemp)
    # Try without refreshing the host's package lists first: faster, and works when only
    # some of the host's sources are reachable. DPkg::Lock::Timeout: concurrent runners.
    local -a install=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
    if ! DEBIAN_FRONTEND=noninteractive "${install[@]}" "${pkgs[@]}" >"$log" 2>&1; then
        apt-get update -q >>"$log" 2>&1   # may partly fail (unreachable third-party sources)
        DEBIAN_FRONTEND=noninteractive "${install[@]}" "${pkgs[@]}" >>"$log" 2>&1 \
            || { local why; why=$(grep -E '^(E|W):' "$log" | tail -1); rm -f "$log"
                 unavailable "apt-get install $missing failed: ${why:-see apt-get output}"; }
    fi
    rm -f "$log"
    for pair in $HOST_TOOLS; do
        have "${pair%%:*}" || unavailable "host package ${pair#*:} installed but ${pair%%:*} still missing"
    done
    hash -r
}

kernel_ready() {
    [ -x "$KDIR/linux" ] && [ -s "$KDIR/info" ]
}

prepare_kernel() {
    if [ -n "${AIOZCRX_UML_LINUX:-}" ]; then
        [ -x "$AIOZCRX_UML_LINUX" ] || unavailable "AIOZCRX_UML_LINUX=$AIOZCRX_UML_LINUX is not an executable"
        return 0
    fi
    kernel_ready && return 0
    # build-kernel.sh takes its own lock and says what it does, with timings (on
    # stderr, passed through); its last line says why when it fails
    local err=$CACHE/logs/build-kernel-$$.err why
    if ! AIOZCRX_UML_CACHE=$CACHE "$HERE/build-kernel.sh" >/dev/null 2> >(tee "$err" >&2); then
        sleep 0.2   # let tee finish
        why=$(grep '^build-kernel:' "$err" | tail -1); rm -f "$err"
        unavailable "building the guest kernel failed: ${why#build-kernel: }"
    fi
    rm -f "$err"
    kernel_ready || unavailable "build-kernel.sh did not produce $KDIR"
}

# Directory for UML's guest-RAM backing file (it honours TMPDIR). It must allow
# PROT_EXEC mappings (not noexec) and should be tmpfs with room for the whole guest RAM;
# /dev/shm usually is, but not in containers (64 MiB, noexec).
ram_dir() {
    local need d avail
    need=$(mem_bytes "$MEM")
    for d in /dev/shm "${TMPDIR:-/tmp}" /tmp "$CACHE"; do
        [ -d "$d" ] && [ -w "$d" ] || continue
        findmnt -no OPTIONS --target "$d" 2>/dev/null | tr ',' '\n' | grep -qx noexec && continue
        avail=$(df -P -B1 "$d" 2>/dev/null | awk 'NR==2 {print $4}')
        [ -n "$avail" ] && [ "$avail" -ge "$need" ] && { echo "$d"; return 0; }
    done
    unavailable "no directory with $MEM free (and exec allowed) for the guest's RAM; try a smaller --mem"
}

# Run directories of runners that died without cleaning up
clean_stale_runs() {
    local d pid
    for d in "$CACHE"/runs/run.*; do
        [ -d "$d" ] || continue
        pid=$(cat "$d/pid" 2>/dev/null) || pid=
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            # a freshly made dir may not have its pid file yet: leave young ones alone
            [ -n "$pid" ] || [ -n "$(find "$d" -maxdepth 0 -mmin +5)" ] || continue
            rm -rf "$d"
        fi
    done
}

# Variables carried from the caller into the guest command's environment. The guest
# starts from a clean environment (HOME=/root, TERM=dumb, ...) plus these.
carried_vars() {
    local v
    for v in PATH VIRTUAL_ENV PYENV_VERSION LANG LC_ALL TZ PYTEST_ADDOPTS ${AIOZCRX_GUEST_ENV:-}; do
        [ -n "${!v+x}" ] && echo "$v"
    done
    # PYTHON* (PYTHONPATH, PYTHONHASHSEED, ...) and the project's own AIOZCRX_* knobs;
    # AIOZCRX_UML_* belong to this runner.
    # (AIOZCRX_NIC*: set by --nic only)
    compgen -e | grep -E '^(PYTHON|AIOZCRX_)' | grep -vE '^AIOZCRX_(UML_|GUEST$|NIC)'
}

# The script the guest runs for the command: environment, directory, command.
write_command_file() {
    local v
    echo "# written by $ME for one guest run"
    for v in $(carried_vars | sort -u); do printf 'export %s=%q\n' "$v" "${!v}"; done
    echo "export AIOZCRX_GUEST=1"
    if [ -n "$NIC" ]; then
        echo "export AIOZCRX_NIC=$NIC_IF AIOZCRX_NIC_ADDR=$NIC_ADDR AIOZCRX_NIC_ADDR6=$NIC_ADDR6"
        echo "export AIOZCRX_NIC_PEER_NS=$NIC_PEER_NS AIOZCRX_NIC_PEER_ADDR=$NIC_PEER_ADDR AIOZCRX_NIC_PEER_ADDR6=$NIC_PEER_ADDR6"
    fi
    printf 'cd -- %q || exit 126\n' "$PWD"
    printf 'exec bash -c %q\n' "$COMMAND"
}

# Kill UML and every process of it. UML makes itself a session leader (setsid) and
# its guest processes ("uml-userspace") share its process group.
kill_guest() {
    kill -KILL -- "-$GUEST_PID" 2>/dev/null
    kill -KILL "$GUEST_PID" 2>/dev/null
}

# The caller's own signal (Ctrl-C, a harness's timeout): take the guest down with us.
# shellcheck disable=SC2329   # a trap handler
on_signal() {
    INTERRUPTED=$1
    [ -n "${GUEST_PID:-}" ] || exit $((128 + $1))
    kill_guest
}

# shellcheck disable=SC2329   # a trap handler
cleanup_run() {
    [ -n "${RUN:-}" ] && [ -z "${AIOZCRX_UML_KEEP:-}" ] && rm -rf "$RUN"
}

# Boot the guest on $COMMAND; exit with the command's status.
run_guest() {
    clean_stale_runs
    local memdir; memdir=$(ram_dir)
    RUN=$(mktemp -d "$CACHE/runs/run.XXXXXX") || unavailable "cannot write to $CACHE/runs"
    trap cleanup_run EXIT
    echo $$ >"$RUN/pid"
    cp "$SELF" "$RUN/init" && chmod +x "$RUN/init"   # a copy: the script may be edited meanwhile
    write_command_file >"$RUN/cmd"
    [ ${#RW_DIRS[@]} -eq 0 ] || printf '%s\n' "${RW_DIRS[@]}" >"$RUN/rw"
    : >"$RUN/no-disk"
    local log=${LOGFILE:-$RUN/console.log}
    : >"$log"

    local linux=${AIOZCRX_UML_LINUX:-$KDIR/linux} kver
    if [ -n "${AIOZCRX_UML_LINUX:-}" ]; then
        kver=custom
    else
        kver=$(sed -n 's/^kernel=//p' "$KDIR/info")
    fi
    # when the guest kills the command: wall-clock microseconds (the guest's clock is
    # the host's)
    local deadline=$(( ${EPOCHREALTIME/./} + TIMEOUT * 1000000 ))
    # shellcheck disable=SC2054   # the commas belong to UML's channel syntax
    local -a kargs=(
        mem="$MEM"
        root=/dev/root rootfstype=hostfs rootflags=/ ro init="$RUN/init"
        # con0 is the kernel console (printk, init's own messages) -> log file (fd 3);
        # con1 carries the command's output -> fd 4 -> our stdout. ssl: serial lines off.
        con=null con0=null,fd:3 con1=null,fd:4 ssl=null
        ubd0="$RUN/no-disk" # an empty file of this run's own: UML would look for
                            # ./root_fs, and a shared /dev/null is locked by the
                            # first guest, which makes a second concurrent guest panic
        uml_dir="$RUN"      # its pid file and mconsole socket; not in ~/.uml
        noreboot            # a guest reboot ends UML instead of booting again
        printk.time=1       # timestamps in the console log
        aiozcrx.run="$RUN" aiozcrx.deadline_us="$deadline")
    [ -z "${AIOZCRX_UML_DEBUG:-}" ] || kargs+=(aiozcrx.debug=1)
    [ -z "${AIOZCRX_UML_MODULES:-}" ] || kargs+=("aiozcrx.modules=$AIOZCRX_UML_MODULES")
    [ -z "$NIC" ] || kargs+=(aiozcrx.nic="$NIC_QUEUES")
    # built-in dummy and ifb drivers would each add devices (dummy0, ifb0, ifb1)
    kargs+=(dummy.numdummies=0 ifb.numifbs=0)

    # fd 4 is a pipe of our own (FIFO + cat) rather than our stdout: UML makes its
    # console fds non-blocking, and on a shared stdout that would leak to the caller.
    mkfifo "$RUN/out"
    cat "$RUN/out" &
    local relay=$!
    INTERRUPTED='' GUEST_PID=''
    trap 'on_signal 2' INT; trap 'on_signal 15' TERM; trap 'on_signal 1' HUP
    # The subshell execs UML, so $! is UML's pid. LD_*: the binary must find sid's libc.
    ( exec env -u LD_LIBRARY_PATH -u LD_PRELOAD TMPDIR="$memdir" "$linux" "${kargs[@]}"
    ) </dev/null 3>>"$log" 4>"$RUN/out" >>"$log" 2>&1 &
    GUEST_PID=$!
    # Hard limit, for a guest that cannot stop itself (the guest kills the command at
    # the deadline and powers off). Its own fds go to /dev/null so that it never holds
    # the caller's pipes open; it outlives us if we are SIGKILLed, and still fires.
    (
        trap 'kill $sleeper 2>/dev/null; exit 0' TERM
        sleep $((TIMEOUT + GRACE)) & sleeper=$!
        wait $sleeper
        : >"$RUN/hardkill"
        kill_guest
    ) </dev/null >/dev/null 2>&1 &
    local timer=$!
    local st=0
    while :; do
        wait "$GUEST_PID" 2>/dev/null; st=$?    # (2>: no "Killed" job notice)
        kill -0 "$GUEST_PID" 2>/dev/null || break   # else wait was cut short by a signal
    done
    kill "$timer" 2>/dev/null; wait "$timer" 2>/dev/null
    # The relay ends when the last writer is gone; give it a moment, then stop it.
    local i
    for i in $(seq 50); do kill -0 "$relay" 2>/dev/null || break; sleep 0.1; done
    kill "$relay" 2>/dev/null; wait "$relay" 2>/dev/null
    trap - INT TERM HUP
    [ -z "$INTERRUPTED" ] || { say "interrupted; guest killed"; exit $((128 + INTERRUPTED)); }

    [ -z "${AIOZCRX_UML_DEBUG:-}" ] || { say "guest console log:"; cat "$log" >&2; }
    local rc; rc=$(cat "$RUN/rc" 2>/dev/null) || rc=
    if [ -z "$rc" ] && [ -e "$RUN/hardkill" ]; then
        fail_with_console 124 "$log" "the guest did not stop by itself within ${GRACE} s of the ${TIMEOUT} s time limit; UML killed"
    elif [ -e "$RUN/timedout" ]; then
        fail_with_console 124 "$log" "the command ran past the ${TIMEOUT} s time limit and was killed (process list and kernel task dump are in the console log)"
    elif [[ $rc =~ ^[0-9]+$ ]]; then
        # A guest kernel that reported a BUG or an Oops has corrupted state: what ran
        # in it proves nothing, whatever its status (seen: uvloop's libuv spawn on
        # 7.2 UML gives "BUG: Bad page map").
        if grep -qE 'BUG:|Oops|Kernel panic|kernel BUG' "$log"; then
            fail_with_console 70 "$log" "the guest kernel reported: $(grep -m1 -E 'BUG:|Oops|Kernel panic|kernel BUG' "$log" | sed 's/^\[[^]]*\] //') (command status $rc)"
        fi
        exit "$rc"
    elif [ -s "$RUN/setup-error" ]; then
        fail_with_console 125 "$log" "guest setup failed: $(cat "$RUN/setup-error")"
    else
        fail_with_console 125 "$log" "the guest produced no exit status (UML exit status $st; kernel $kver)"
    fi
}

# Say why, show the end of the console log, keep the log, exit with $1.
fail_with_console() {
    local code=$1 log=$2 why=$3 kept=$2
    if [ -z "$LOGFILE" ]; then
        kept=$CACHE/logs/console-$(date +%Y%m%d-%H%M%S)-$$.log
        cp "$log" "$kept" 2>/dev/null || kept=$log
        # keep the 20 newest
        find "$CACHE/logs" -name 'console-*.log' -printf '%T@ %p\n' | sort -rn | tail -n +21 \
            | cut -d' ' -f2- | xargs -r -d '\n' rm -f
    fi
    say "$why"
    say "---- last $TAIL_LINES lines of the guest console ($kept) ----"
    tail -n "$TAIL_LINES" "$log" >&2
    say "---- end of guest console ----"
    exit "$code"
}

# --check: prepare everything, then boot once and verify what the runner promises.
self_test() {
    local out err rc
    err=$(mktemp)
    # shellcheck disable=SC2016   # expanded in the guest
    local -a opts=()
    [ -z "$NIC" ] || opts+=(--nic --nic-queues "$NIC_QUEUES")
    out=$(cd / && "$SELF" "${opts[@]}" --timeout 120 --mem "$MEM" -- '
        set -e
        [ "$AIOZCRX_GUEST" = 1 ]
        [ "$(ulimit -l)" = unlimited ]
        ip -o link show lo | grep -q "UP"
        touch /tmp/.aiozcrx-check /dev/shm/.aiozcrx-check
        [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" = 0 ]
        if [ -n "${AIOZCRX_NIC:-}" ]; then
            ip -o link show "$AIOZCRX_NIC" | grep -q "UP"
            ip netns exec "$AIOZCRX_NIC_PEER_NS" ip -o addr show | grep -qF "$AIOZCRX_NIC_PEER_ADDR/"
        fi
        echo "guest-ok $(uname -r)"' 2>"$err")
    rc=$?
    if [ $rc -ne 0 ] || [[ $out != *guest-ok* ]]; then
        local why; why=$(grep -v -e '^----' -e "^$ME: ----" "$err" | grep "^$ME:" | head -1)
        rm -f "$err"
        [ $rc -eq 77 ] && unavailable "${why#"$ME: unavailable: "}"
        unavailable "test boot failed (status $rc): ${why#"$ME: "}"
    fi
    rm -f "$err"
    local kver=${out##*guest-ok }
    # zcrx without a real NIC (ZCRX_REG_NODEV) needs 7.1
    local major=${kver%%.*} minor=${kver#*.}; minor=${minor%%.*}
    if [ "$major" -lt 7 ] || { [ "$major" = 7 ] && [ "$minor" -lt 1 ]; }; then
        unavailable "guest kernel $kver is older than 7.1 (no ZCRX_REG_NODEV)"
    fi
    local what
    if [ -n "${AIOZCRX_UML_LINUX:-}" ]; then
        what="$AIOZCRX_UML_LINUX"
    else
        what="$(grep -E '^linux-source-[0-9.]+=' "$KDIR/info" | tr '\n' ' ')cache $KDIR"
    fi
    echo "$ME: ok: guest kernel $kver${NIC:+ with the simulated NIC} ($what)"
}

host_main() {
    parse_args "$@"
    check_platform
    setup_cache_paths
    ensure_host_tools
    prepare_kernel
    if [ "$MODE" = check ]; then self_test; exit 0; fi
    run_guest
}

# ---------------------------------------------------------------------------------------
# Guest side: this script runs as PID 1 of the UML guest. Root is the host's / through
# hostfs, read-only; only /proc, /sys and /dev (devtmpfs) are set up by the kernel.
# ---------------------------------------------------------------------------------------

# Record why setup failed where the host will look (/run/host once it is mounted) and
# on the console, then stop the guest.
guest_fail() {
    echo "$ME (guest): $*" >&2
    [ -d /run/host ] && echo "$*" >/run/host/setup-error
    [ -d /run/aiozcrx ] && echo "$*" >/run/aiozcrx/setup-error
    guest_poweroff
}

guest_poweroff() {
    sync
    echo o >/proc/sysrq-trigger     # immediate power-off; needs no host program
    sleep 10
    poweroff -f -f                  # not reached in practice
}

# Build the guest's filesystem view: overlay (tmpfs over the host's /) as the new root.
guest_setup_root() {
    local run=$1
    mount -t tmpfs -o mode=755 guest /run || guest_fail "tmpfs on /run failed"
    mkdir -p /run/host /run/ovl/upper /run/ovl/work /run/root
    # The run directory, read-write on the host: command file in, exit status out.
    mount -t hostfs -o "$run" hostfs /run/host || guest_fail "cannot mount the run directory $run"

    # a kernel with overlayfs as a module (Debian's own user-mode-linux packages,
    # booted with AIOZCRX_UML_LINUX / AIOZCRX_UML_MODULES)
    [ -z "${GUEST_MODULES:-}" ] || insmod "$GUEST_MODULES"/kernel/fs/overlayfs/overlay.ko* 2>/dev/null
    mount -t overlay overlay -o lowerdir=/,upperdir=/run/ovl/upper,workdir=/run/ovl/work /run/root \
        || guest_fail "overlay mount over the host root failed"
    local m
    for m in proc sys dev; do mount --move "/$m" "/run/root/$m" || guest_fail "moving /$m failed"; done
    { cd /run/root && mkdir -p mnt && pivot_root . mnt; } || guest_fail "pivot_root into the overlay failed"
    cd /
    # The old root (hostfs /) now sits at /mnt, with the first /run below it: take the
    # run directory out, then drop the rest (the overlay keeps what it uses alive).
    mount -t tmpfs -o mode=755 run /run
    { mkdir -p /run/aiozcrx && mount --move /mnt/run/host /run/aiozcrx; } || guest_fail "moving the run directory failed"
    umount -l /mnt

    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
    mount -t tmpfs -o mode=1777 shm /dev/shm
    # /tmp stays the host's /tmp seen through the overlay: host files there are readable,
    # writes stay in the guest.
    # Let unprivileged users (tests switch to `nobody`) reach Pythons and venvs under
    # /root (mode 700 on Debian): traverse only, and only in the guest's overlay.
    chmod o+x /root 2>/dev/null

    # Host directories the caller wants written through (--rw)
    if [ -s /run/aiozcrx/rw ]; then
        local d
        while IFS= read -r d; do
            mount -t hostfs -o "$d" hostfs "$d" || guest_fail "--rw $d: hostfs mount failed"
        done </run/aiozcrx/rw
    fi
}

guest_setup_system() {
    ip link set lo up || guest_fail "cannot bring loopback up (ip link set lo up)"
    echo aiozcrx-guest >/proc/sys/kernel/hostname
    # io_uring zcrx areas are pinned memory: no memlock limit for the command
    ulimit -l unlimited
    ulimit -n 65536
    ulimit -c 0
}

# --nic: two netdevsim devices of $1 queues each, linked back to back (what one sends,
# the other receives); the second moves into a network namespace of its own. Both get
# IPv4 and IPv6 addresses and come up; nothing is set up for zero copy (that is the
# command's business: `aiozcrx nic setup`).
guest_setup_nic() {
    local queues=$1 bus=/sys/bus/netdevsim id d fd
    local -a dev=()
    [ -w $bus/new_device ] || guest_fail "--nic: this kernel has no netdevsim ($bus/new_device)"
    for id in 1 2; do
        echo "$id 1 $queues" >$bus/new_device || guest_fail "--nic: cannot create netdevsim device $id"
        for d in "$bus/devices/netdevsim$id/net/"*; do dev+=("${d##*/}"); done
    done
    [ ${#dev[@]} = 2 ] || guest_fail "--nic: expected two netdevsim interfaces, found: ${dev[*]}"
    ip link set "${dev[0]}" name $NIC_IF && ip link set "${dev[1]}" name $NIC_PEER_IF \
        || guest_fail "--nic: cannot rename ${dev[*]}"
    # link_device takes "NETNS_FD:IFINDEX NETNS_FD:IFINDEX"
    exec {fd}</proc/self/ns/net
    echo "$fd:$(<"/sys/class/net/$NIC_IF/ifindex") $fd:$(<"/sys/class/net/$NIC_PEER_IF/ifindex")" \
        >$bus/link_device || guest_fail "--nic: linking $NIC_IF and $NIC_PEER_IF failed"
    exec {fd}<&-
    { ip netns add $NIC_PEER_NS && ip link set $NIC_PEER_IF netns $NIC_PEER_NS; } \
        || guest_fail "--nic: cannot move $NIC_PEER_IF into network namespace $NIC_PEER_NS"
    { ip addr add $NIC_ADDR/24 dev $NIC_IF && ip addr add $NIC_ADDR6/64 dev $NIC_IF nodad &&
      ip link set $NIC_IF up &&
      ip -n $NIC_PEER_NS link set lo up &&
      ip -n $NIC_PEER_NS addr add $NIC_PEER_ADDR/24 dev $NIC_PEER_IF &&
      ip -n $NIC_PEER_NS addr add $NIC_PEER_ADDR6/64 dev $NIC_PEER_IF nodad &&
      ip -n $NIC_PEER_NS link set $NIC_PEER_IF up; } || guest_fail "--nic: addressing the NICs failed"
}

# Processes of session $1 (the command's): state, wait channel, command line, and the
# kernel stack of each, for diagnosing a hang.
# (Read from /proc directly: ps may not be installed on the host.)
guest_show_processes() {
    local sid=$1 d stat wchan
    echo "$ME (guest): processes of the command (session $sid):"
    for d in /proc/[0-9]*; do
        read -r stat <"$d/stat" 2>/dev/null || continue     # (builtin: no fork per pid)
        # fields after "pid (comm) ": state ppid pgrp session ...
        # shellcheck disable=SC2086   # split into fields on purpose
        set -- ${stat##*) }
        [ "${4:-}" = "$sid" ] || continue
        read -r wchan <"$d/wchan" 2>/dev/null
        echo "-- pid ${d#/proc/} ppid $2 state $1 wchan ${wchan:-?}:" \
             "$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null | cut -c1-300)"
        cat "$d/stack" 2>/dev/null
    done
}

# Run the command with its output on con1 (-> host stdout), under the deadline.
guest_run_command() {
    local deadline=$1 out=/dev/tty1
    # Raw: no \n -> \r\n translation, no echo, no signals from the line.
    stty -F "$out" raw -echo 2>/dev/null
    env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        setsid bash /run/aiozcrx/cmd </dev/null >"$out" 2>&1 &
    local pid=$!    # also the process group (setsid), so the whole tree can be killed

    local left=$(( deadline - ${EPOCHREALTIME/./} ))
    [ "$left" -gt 0 ] || left=1
    left=$((left / 1000000)).$(printf %06d $((left % 1000000)))
    (
        sleep "$left"
        : >/run/aiozcrx/timedout
        # Full kernel view first (long), then a short summary that ends up in the tail
        # the host prints: the command's processes, where each waits, kernel stacks.
        echo "$ME (guest): time limit reached; kernel task dump (sysrq t):"
        echo t >/proc/sysrq-trigger
        sleep 0.2
        guest_show_processes "$pid"
        kill -KILL -- "-$pid"
        echo "$ME (guest): command killed after the time limit"
    ) >/dev/console 2>&1 &
    local watchdog=$!

    wait "$pid" 2>/dev/null     # (2>: no "Killed" job notice on the console)
    local rc=$?
    kill "$watchdog" 2>/dev/null
    echo "$rc" >/run/aiozcrx/rc
    echo "$ME (guest): command exited with status $rc" >/dev/console
}

guest_main() {
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    # Our parameters, aiozcrx.NAME=VALUE on the kernel command line (bash builtins only
    # here and below where it is easy: every fork+exec costs ~20 ms in UML)
    local w run='' deadline='' nic=''
    local -a words
    read -r -a words </proc/cmdline
    for w in "${words[@]}"; do
        case $w in
            aiozcrx.run=*) run=${w#*=} ;;
            aiozcrx.deadline_us=*) deadline=${w#*=} ;;
            aiozcrx.nic=*) nic=${w#*=} ;;
            aiozcrx.debug=1) PS4='+ $EPOCHREALTIME '; set -x ;;
            aiozcrx.modules=*) GUEST_MODULES=${w#*=} ;;
        esac
    done
    [ -n "$run" ] && [ -n "$deadline" ] \
        || guest_fail "missing aiozcrx.* kernel parameters"
    guest_setup_root "$run"
    guest_setup_system
    [ -z "$nic" ] || guest_setup_nic "$nic"
    guest_run_command "$deadline"
    guest_poweroff
}

# PID 1 means we are the guest's init; otherwise the host-side runner.
if [ $$ -eq 1 ]; then guest_main; exit 1; else host_main "$@"; fi
