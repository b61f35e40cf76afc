#!/usr/bin/env bash
# Install edge-agent as a systemd service on a Raspberry Pi (Pi OS Bookworm, Python 3.11),
# from the checkout this script lives in.
#
#   sudo GEMINI_API_KEY=... scripts/install.sh     install (or upgrade) and start
#   scripts/install.sh --dry-run                   print the plan, change nothing
#
# What it does, each step skipped when already done (safe to run again, e.g. after a
# `git pull` to upgrade):
#   1. apt packages to build PyAudio and systemd-python, systemd and procps (/bin/kill,
#      for `systemctl reload`); espeak-ng too, best effort: the offline demo speaks with it;
#   2. the `edge-agent` system user, in the audio and gpio groups; the user who ran sudo
#      ($SUDO_USER) joins the edge-agent group, so that `edge-agent status` and
#      `edge-agent button` reach the daemon's control socket without sudo (after a re-login);
#   3. a virtual environment in /opt/edge-agent/venv with this checkout installed into it
#      (and lgpio on ARM, the pin library gpiozero uses on Bookworm), and the command
#      /usr/local/bin/edge-agent, a symlink to the one in the venv;
#   4. /etc/edge-agent/config.toml from the repo's config.toml, only if there is none:
#      an edited config is never overwritten;
#   5. /etc/edge-agent/api_key (root only, mode 0600) from $GEMINI_API_KEY when set; the
#      unit hands it to the daemon with LoadCredential=;
#   6. the unit in /etc/systemd/system, daemon-reload, enable, (re)start.
#
# Options:
#   --dry-run    print every command that would change the system, run none of them
#   --no-start   install and enable, but do not (re)start the service
#   --no-apt     skip the apt step (packages already installed, or no network)
# Environment (for unusual layouts and tests): EDGE_AGENT_PREFIX (default /opt/edge-agent),
# EDGE_AGENT_ETC (default /etc/edge-agent), EDGE_AGENT_BINDIR (default /usr/local/bin),
# PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${EDGE_AGENT_PREFIX:-/opt/edge-agent}"
ETC="${EDGE_AGENT_ETC:-/etc/edge-agent}"
PY="${PYTHON:-python3}"
VENV="$PREFIX/venv"
BINDIR="${EDGE_AGENT_BINDIR:-/usr/local/bin}"
COMMAND_LINK="$BINDIR/edge-agent"
COMMAND_TARGET="$VENV/bin/edge-agent"
SERVICE=edge-agent
SERVICE_USER=edge-agent
STATE_DIR=/var/lib/edge-agent
UNIT_SRC="$ROOT/systemd/edge-agent.service"
UNIT_DST="/etc/systemd/system/$SERVICE.service"
# procps: /bin/kill, which the unit's ExecReload runs; systemd: systemctl. Both are on every
# Pi OS, and absent from a minimal image being built in a chroot or a container.
APT_PACKAGES=(python3-venv python3-dev portaudio19-dev libsystemd-dev pkg-config gcc procps
              systemd)
APT_OPTIONAL=(espeak-ng)

DRY_RUN=0
START=1
APT=1
RELOGIN=""

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --no-start) START=0 ;;
        --no-apt) APT=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install: unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'install: %s\n' "$*"; }
warn() { printf 'install: WARNING: %s\n' "$*" >&2; }
die() { printf 'install: ERROR: %s\n' "$*" >&2; exit 1; }

# Every change to the system goes through run: printed in a dry run, executed otherwise.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# ---------------------------------------------------------------------------- checks
for f in "$ROOT/pyproject.toml" "$ROOT/config.toml" "$UNIT_SRC"; do
    [ -f "$f" ] || die "$f is missing: run this script from an edge-agent checkout"
done
if ((!DRY_RUN)) && [ "$(id -u)" -ne 0 ]; then
    die "run as root: sudo $0 $*  (or --dry-run to see the plan)"
fi
((DRY_RUN)) && say "dry run: nothing below is executed"

# ------------------------------------------------------------------- 1. apt packages
if ((APT)); then
    missing=()
    for p in "${APT_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
    optional=()
    for p in "${APT_OPTIONAL[@]}"; do installed "$p" || optional+=("$p"); done
    if ((${#missing[@]} + ${#optional[@]})); then
        run apt-get update -qq
    fi
    apt_install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends)
    if ((${#missing[@]})); then
        say "installing apt packages: ${missing[*]}"
        run "${apt_install[@]}" "${missing[@]}"
    else
        say "apt packages present: ${APT_PACKAGES[*]}"
    fi
    if ((${#optional[@]})); then
        say "installing optional apt packages: ${optional[*]}"
        run "${apt_install[@]}" "${optional[@]}" \
            || warn "could not install ${optional[*]}: only the offline demo needs it"
    fi
fi

# ---------------------------------------------------------------- 2. user and groups
for group in audio gpio; do
    if ! getent group "$group" >/dev/null; then
        # Pi OS has both (udev gives /dev/gpiochip* to gpio); the unit needs them to exist.
        say "creating missing group $group"
        run groupadd --system "$group"
    fi
done
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    say "user $SERVICE_USER exists"
else
    say "creating system user $SERVICE_USER"
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "edge-agent voice appliance" "$SERVICE_USER"
fi
run usermod --append --groups audio,gpio "$SERVICE_USER"

# The control socket (<state dir>/control.sock, mode 0660, group edge-agent) is for root
# and the edge-agent group: let the person installing use `edge-agent status` unprivileged.
in_group() { id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"; }
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    if ! id -u "$SUDO_USER" >/dev/null 2>&1; then
        warn "\$SUDO_USER is $SUDO_USER, which is not a user here: not adding it to group $SERVICE_USER"
    elif in_group "$SUDO_USER" "$SERVICE_USER"; then
        say "user $SUDO_USER is in group $SERVICE_USER (edge-agent status / button work without sudo)"
    else
        say "adding user $SUDO_USER to group $SERVICE_USER, for edge-agent status / button without sudo"
        run usermod --append --groups "$SERVICE_USER" "$SUDO_USER"
        RELOGIN="$SUDO_USER"
    fi
else
    say "edge-agent status / button need root or group $SERVICE_USER: sudo usermod -aG $SERVICE_USER USER"
fi

# -------------------------------------------------------------------- 3. virtualenv
if [ -x "$VENV/bin/python" ]; then
    say "virtual environment $VENV exists"
else
    say "creating virtual environment $VENV"
    run install -d -m 0755 "$PREFIX"
    run "$PY" -m venv "$VENV"
fi
say "installing edge-agent from $ROOT into $VENV"
run "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
# A local directory is rebuilt and reinstalled every time, so this also upgrades.
run "$VENV/bin/python" -m pip install --quiet "$ROOT"
case "$(uname -m)" in
    aarch64 | armv7l | armv6l)
        run "$VENV/bin/python" -m pip install --quiet lgpio \
            || warn "could not install lgpio: button and LEDs fall back to gpiozero's native driver or stay off"
        ;;
esac
# The command on PATH (the venv is not): edge-agent check-config, status, button, ...
if [ -L "$COMMAND_LINK" ] && [ "$(readlink "$COMMAND_LINK")" = "$COMMAND_TARGET" ]; then
    say "command $COMMAND_LINK -> $COMMAND_TARGET exists"
elif [ -e "$COMMAND_LINK" ] && [ ! -L "$COMMAND_LINK" ]; then
    # Not ours (a pip install outside the venv, say): left alone.
    warn "$COMMAND_LINK exists and is not a symlink: not replacing it; run $COMMAND_TARGET"
else
    say "linking $COMMAND_LINK -> $COMMAND_TARGET"
    [ -d "$BINDIR" ] || run install -d -m 0755 "$BINDIR"
    run ln -sfn "$COMMAND_TARGET" "$COMMAND_LINK"
fi

# ------------------------------------------------------------------------ 4. config
run install -d -m 0755 "$ETC"
if [ -e "$ETC/config.toml" ]; then
    say "keeping existing $ETC/config.toml"
else
    say "installing default config $ETC/config.toml"
    run install -m 0644 "$ROOT/config.toml" "$ETC/config.toml"
fi

# ----------------------------------------------------------------------- 5. API key
KEY_FILE="$ETC/api_key"
if [ -n "${GEMINI_API_KEY:-}" ]; then
    if [ -f "$KEY_FILE" ] && [ "$(cat "$KEY_FILE" 2>/dev/null)" = "$GEMINI_API_KEY" ]; then
        say "API key in $KEY_FILE is already this one"
    elif ((DRY_RUN)); then
        # The key itself is never printed.
        say "would write \$GEMINI_API_KEY (${#GEMINI_API_KEY} characters) to $KEY_FILE, mode 0600, owner root"
    else
        say "writing \$GEMINI_API_KEY to $KEY_FILE (mode 0600, owner root)"
        tmp="$(umask 077 && mktemp "$ETC/.api_key.XXXXXX")"
        printf '%s\n' "$GEMINI_API_KEY" >"$tmp"
        chown root:root "$tmp"
        chmod 0600 "$tmp"
        mv -f "$tmp" "$KEY_FILE"
    fi
elif [ -f "$KEY_FILE" ]; then
    say "using existing API key file $KEY_FILE"
    run chmod 0600 "$KEY_FILE"
    run chown root:root "$KEY_FILE"
else
    warn "no API key: the service cannot start without $KEY_FILE (LoadCredential)."
    warn "  put the key there (one line, mode 0600) or re-run with GEMINI_API_KEY=... set"
    START=0
fi

# ----------------------------------------------------------------- 6. systemd unit
say "installing $UNIT_DST"
if [ "$PREFIX" = /opt/edge-agent ] && [ "$ETC" = /etc/edge-agent ]; then
    run install -m 0644 "$UNIT_SRC" "$UNIT_DST"
elif ((DRY_RUN)); then
    say "would write $UNIT_DST from $UNIT_SRC with /opt/edge-agent -> $PREFIX, /etc/edge-agent -> $ETC"
else
    sed -e "s#/opt/edge-agent#$PREFIX#g" -e "s#/etc/edge-agent#$ETC#g" "$UNIT_SRC" >"$UNIT_DST"
    chmod 0644 "$UNIT_DST"
fi

say "checking $ETC/config.toml"
if ((DRY_RUN)); then
    run "$VENV/bin/edge-agent" check-config "$ETC/config.toml"
elif ! "$VENV/bin/edge-agent" check-config "$ETC/config.toml"; then
    warn "fix $ETC/config.toml, then: sudo systemctl restart $SERVICE"
    START=0
fi

if [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    run systemctl enable "$SERVICE"
    if ((START)); then
        if systemctl is-active --quiet "$SERVICE"; then
            say "restarting $SERVICE to run the new version"
            run systemctl restart "$SERVICE"
        else
            say "starting $SERVICE"
            run systemctl start "$SERVICE"
        fi
        say "done: systemctl status $SERVICE; journalctl -u $SERVICE -f"
    else
        say "installed and enabled, not started: sudo systemctl start $SERVICE when ready"
    fi
else
    # An image being built in a chroot, or a container: enable works without a manager.
    say "systemd is not running here: enabling only; it starts at the next boot"
    run systemctl enable "$SERVICE"
fi
if [ -n "$RELOGIN" ]; then
    say "$RELOGIN was added to group $SERVICE_USER: log out and back in (new SSH session) before running edge-agent status / button without sudo"
fi
