# shellcheck shell=bash
# Building and entering a throwaway Debian root: shared by scripts/check-fresh (amd64) and
# scripts/check-arm64 (arm64 under QEMU user-mode). Sourced, not run (shellcheck it with
# `shellcheck -x`). The sourcing script runs under `set -euo pipefail`, calls
# `chroot_init NAME` at once, `chroot_private_namespace "${BASH_SOURCE[0]}" "$@"` before
# mounting anything, and `release_roots` in its EXIT trap.
# host_config copies into a root what this machine uses to reach apt and pip (the
# scripts' --help lists it).

CHROOT_PROG=chroot
MOUNTS=()
CHROOT_ENV=()
CHROOT_ROOTS=()  # roots mounted by mount_all: release_roots kills what is left in them

# NAME prefixes the messages; the environment for in_root is made once, here.
chroot_init() {
    CHROOT_PROG="$1"
    chroot_env_init
}

chroot_say() { printf '%s: %s\n' "$CHROOT_PROG" "$*"; }
chroot_warn() { printf '%s: WARNING: %s\n' "$CHROOT_PROG" "$*" >&2; }
chroot_die() { printf '%s: ERROR: %s\n' "$CHROOT_PROG" "$*" >&2; exit 1; }

# Re-run the calling script in a private mount namespace: whatever it mounts disappears
# with it. Call as: chroot_private_namespace "${BASH_SOURCE[0]}" "$@"
chroot_private_namespace() {
    local script="$1"
    shift
    if [ -z "${EDGE_AGENT_CHROOT_NS:-}" ] && command -v unshare >/dev/null \
        && unshare --mount --propagation private true 2>/dev/null; then
        EDGE_AGENT_CHROOT_NS=1 exec unshare --mount --propagation private -- \
            bash "$script" "$@"
    fi
}

# The environment a new root login has, plus what the host needs to reach the registries.
chroot_env_init() {
    local v
    CHROOT_ENV=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
                PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    for v in http_proxy https_proxy ftp_proxy all_proxy no_proxy \
             HTTP_PROXY HTTPS_PROXY FTP_PROXY ALL_PROXY NO_PROXY \
             PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_CERT PIP_DEFAULT_TIMEOUT; do
        if [ -n "${!v:-}" ]; then CHROOT_ENV+=("$v=${!v}"); fi
    done
}

# mount, remembering the target (the last argument) for unmount_all.
mnt() {
    mount "$@" || return
    MOUNTS+=("${!#}")
}

unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null \
            || chroot_warn "could not unmount ${MOUNTS[i]}"
    done
    MOUNTS=()
}

# Processes still running inside a root (a test's leftover daemon): they are this run's.
kill_inside() {
    local root="$1" p
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ]; then
            kill -KILL "${p#/proc/}" 2>/dev/null || true
        fi
    done
}

# Removes a root only once nothing is mounted below it (a bound /dev must never be emptied).
remove_tree() {
    local dir="$1"
    [ -e "$dir" ] || return 0
    if awk -v d="$dir/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' \
        /proc/self/mountinfo; then
        chroot_warn "something is still mounted under $dir: not removing it"
        return 1
    fi
    rm -rf --one-file-system "$dir"
}

mount_all() {
    local r="$1"
    CHROOT_ROOTS+=("$r")
    mnt -t proc proc "$r/proc"
    mnt -t sysfs -o ro sysfs "$r/sys" 2>/dev/null || mnt --bind -o ro /sys "$r/sys"
    mnt --bind /dev "$r/dev"
    mkdir -p "$r/dev/pts" "$r/dev/shm"
    mnt --bind /dev/pts "$r/dev/pts"
    mnt -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm"
    # /tmp stays the root's own folder (on disk, as on a fresh Debian 12).
    mkdir -p "$r/tmp"
    chmod 1777 "$r/tmp"
}

# Kill what is left inside the roots mounted so far, then unmount everything.
release_roots() {
    local r
    for r in "${CHROOT_ROOTS[@]}"; do kill_inside "$r"; done
    CHROOT_ROOTS=()
    unmount_all
}

# How this machine reaches Debian's and Python's package registries, copied into a root.
host_config() {
    local r="$1" f
    rm -f "$r/etc/resolv.conf"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf"
    # apt: proxies, CA, validity checks (an archive snapshot's Release files have expired).
    apt-config dump 2>/dev/null \
        | grep -E '^Acquire::((https?|ftp)::(Proxy|CaInfo|Verify-Peer)|Check-Valid-Until|Check-Date)' \
        >"$r/etc/apt/apt.conf.d/99edge-agent-host" || true
    [ -s "$r/etc/apt/apt.conf.d/99edge-agent-host" ] || rm -f "$r/etc/apt/apt.conf.d/99edge-agent-host"
    # pip: its global configuration files.
    if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$r/etc/pip.conf"; fi
    if [ -d /etc/xdg/pip ]; then mkdir -p "$r/etc/xdg" && cp -a /etc/xdg/pip "$r/etc/xdg/"; fi
    # Local CAs (a TLS-intercepting proxy), kept if ca-certificates is installed later...
    if [ -d /usr/local/share/ca-certificates ]; then
        mkdir -p "$r/usr/local/share/ca-certificates"
        cp -a /usr/local/share/ca-certificates/. "$r/usr/local/share/ca-certificates/"
    fi
    # ...and the bundles pip and Python are pointed at, where the config names one.
    local bundles=("${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}")
    mapfile -t -O 3 bundles < <(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' \
        /etc/pip.conf /etc/xdg/pip/pip.conf 2>/dev/null)
    for f in "${bundles[@]}"; do
        if [ -n "$f" ] && [ -f "$f" ]; then
            mkdir -p "$(dirname "$r$f")"
            cp -L "$f" "$r$f"
        fi
    done
}

in_root() {
    local r="$1"
    shift
    chroot "$r" /usr/bin/env -i "${CHROOT_ENV[@]}" "$@"
}

elapsed() { printf '%d min %02d s' $(($1 / 60)) $(($1 % 60)); }

# The checkout at REPO (what git tracks, as it is on disk now, and untracked files it does
# not ignore; no .git) copied to DEST, owned by root.
copy_checkout() {
    local repo="$1" dest="$2"
    mkdir -p "$dest"
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
        | tar --null -T - -cf -) | tar -C "$dest" -xf -
    chown -R root:root "$dest"
}

# Build BASE (a minbase root with python3) unless it exists or REBUILD is 1; the caller
# holds the cache's lock. Args: BASE SUITE MIRROR LOGDIR REBUILD [debootstrap options...]
build_base_root() {
    local base="$1" suite="$2" mirror="$3" logdir="$4" rebuild="$5" new t0
    shift 5
    if ((rebuild == 0)) && [ -x "$base/usr/bin/python3" ]; then
        chroot_say "reusing the base root $base (--rebuild to make it anew)"
        return 0
    fi
    new="$(dirname "$base")/.base.new"
    remove_tree "$new"
    mkdir -p "$new"
    chroot_say "debootstrap --variant=minbase $* $suite from $mirror"
    t0=$SECONDS
    if ! debootstrap --variant=minbase "$@" "$suite" "$new" "$mirror" \
        >"$logdir/debootstrap.log" 2>&1; then
        tail -n 20 "$logdir/debootstrap.log" >&2
        chroot_die "debootstrap failed (log: $logdir/debootstrap.log)"
    fi
    chroot_say "debootstrap: done in $(elapsed $((SECONDS - t0)))"
    t0=$SECONDS
    host_config "$new"
    mount_all "$new"
    if ! { in_root "$new" apt-get update -qq &&
           in_root "$new" env DEBIAN_FRONTEND=noninteractive \
               apt-get install -y -qq --no-install-recommends python3 &&
           in_root "$new" apt-get clean; } >"$logdir/python3.log" 2>&1; then
        tail -n 20 "$logdir/python3.log" >&2
        chroot_die "installing python3 in the base root failed"
    fi
    release_roots
    chroot_say "apt-get install python3: done in $(elapsed $((SECONDS - t0)))"
    remove_tree "$base"
    mv "$new" "$base"
}
