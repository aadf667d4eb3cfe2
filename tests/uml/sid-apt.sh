# sid-apt.sh -- sourced by run-in-guest.sh and build-kernel.sh: download packages from
# Debian sid with a private apt configuration, never installing them and never touching
# the host's apt sources, lists, locks or dpkg database.
#
#   . tests/uml/sid-apt.sh
#   sid_apt_download WORKDIR LOG PKG...   # the .deb files land in WORKDIR
#
# The mirror is the host's own: the repository its apt knows as Debian's main archive
# (Origin "Debian", Label "Debian"), so a machine behind a local mirror or proxy uses it,
# and no host name is written here. AIOZCRX_UML_MIRROR overrides it.
# Returns non-zero with the reason in SID_APT_ERROR.

# The URI of the host's Debian archive, or nothing.
sid_mirror() {
    if [ -n "${AIOZCRX_UML_MIRROR:-}" ]; then echo "$AIOZCRX_UML_MIRROR"; return 0; fi
    local uri
    # What apt itself resolved from the host's sources (needs the host's Release files,
    # i.e. an `apt-get update` at some point): the main archive, not security/backports.
    uri=$(apt-get indextargets --format '$(ORIGIN)|$(LABEL)|$(REPO_URI)' 2>/dev/null \
          | awk -F'|' '$1 == "Debian" && $2 == "Debian" {print $3; exit}')
    if [ -z "$uri" ]; then
        # No Release information: the first deb822 or one-line source that is signed by
        # the Debian archive keyring or whose path ends in /debian.
        uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
              | awk 'tolower($1) == "uris:" && $2 ~ /\/debian\/?$/ {print $2; exit}')
        [ -n "$uri" ] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
              | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) {
                                      if ($i ~ /\/debian\/?$/) {print $i; exit} break}}')
    fi
    echo "${uri%/}"
}

# sid_apt_download WORKDIR LOG PKG...: apt-get update + download under WORKDIR/apt.
sid_apt_download() {
    local work=$1 log=$2; shift 2
    local apt=$work/apt mirror
    SID_APT_ERROR=''
    mirror=$(sid_mirror)
    if [ -z "$mirror" ]; then
        SID_APT_ERROR="no Debian archive in the host's apt sources (set AIOZCRX_UML_MIRROR)"
        return 1
    fi
    if [ ! -r /usr/share/keyrings/debian-archive-keyring.gpg ]; then
        SID_APT_ERROR="no /usr/share/keyrings/debian-archive-keyring.gpg (package debian-archive-keyring)"
        return 1
    fi
    # Our own sources list, empty parts/preferences dirs, lists and downloads inside the
    # work dir, no locking of the host's apt state.
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/sources.list.d" "$apt/preferences.d"
    cat >"$apt/sid.sources" <<EOF
Types: deb
URIs: $mirror
Suites: sid
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    local -a opt=(
        -o Dir::Etc::SourceList="$apt/sid.sources" -o Dir::Etc::SourceParts="$apt/sources.list.d"
        -o Dir::Etc::Preferences="$apt/preferences" -o Dir::Etc::PreferencesParts="$apt/preferences.d"
        -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt" -o Dir::Cache::Archives="$apt/archives"
        -o Debug::NoLocking=1 -o Acquire::Languages=none -q
        -o Acquire::http::Timeout=30 -o Acquire::Retries=2)  # fail in minutes, not hours
    # apt drops to the _apt user for downloads, which cannot write into root's home
    [ "$(id -u)" = 0 ] && opt+=(-o APT::Sandbox::User=root)
    if ! apt-get "${opt[@]}" update >>"$log" 2>&1; then
        SID_APT_ERROR="apt-get update for Debian sid ($mirror) failed$(_sid_apt_why "$log")"
        return 1
    fi
    if ! (cd "$work" && apt-get "${opt[@]}" download "$@") >>"$log" 2>&1; then
        SID_APT_ERROR="apt-get download $* failed$(_sid_apt_why "$log")"
        return 1
    fi
}

# the most telling line of an apt log: the reason under its first "Err:", else its last error
_sid_apt_why() {
    local why
    why=$(grep -A1 '^Err:' "$1" | sed -n '2{s/^ *//;p}')
    [ -n "$why" ] || why=$(grep -E '^(E:|W:)' "$1" | tail -1)
    [ -z "$why" ] || echo ": $why"
}
