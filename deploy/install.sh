#!/bin/sh
# Install or update Domovoy as a systemd service on Debian/Ubuntu. Run as root from a checkout:
#
#   sudo sh deploy/install.sh            # install, or update after `git pull`
#   sh deploy/install.sh --dry-run       # print every action, change nothing
#
# Idempotent: an existing user, venv, environment file (never overwritten) or identical unit
# is kept. Paths can be moved with environment variables (used by the tests):
#   DOMOVOY_PREFIX (/opt/domovoy)  DOMOVOY_ETC (/etc/domovoy)  DOMOVOY_USER (domovoy)
#   DOMOVOY_SRC (this checkout); for tests only: DOMOVOY_STATE (/var/lib/domovoy, which the
#   unit's StateDirectory= keeps using) and DOMOVOY_UNIT_DIR (/etc/systemd/system)
#   PYTHON (python3, 3.11 or newer)  SYSTEMCTL (systemctl)
#   CMAKE_ARGS: extra llama.cpp build flags (e.g. -DGGML_CUDA=on), added after the CPU flags
#   of deploy/cmake-args.sh, so they can add a GPU backend or override one of those flags.
set -eu

usage() {
    cat <<'EOF'
Usage: install.sh [--dry-run] [--no-venv]
  --dry-run  print each action instead of doing it
  --no-venv  leave the virtual environment alone (you manage it yourself)
EOF
}

DRY_RUN=0
WITH_VENV=1
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --no-venv) WITH_VENV=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    esac
done

SRC=${DOMOVOY_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
PREFIX=${DOMOVOY_PREFIX:-/opt/domovoy}
ETC_DIR=${DOMOVOY_ETC:-/etc/domovoy}
STATE_DIR=${DOMOVOY_STATE:-/var/lib/domovoy}
UNIT_DIR=${DOMOVOY_UNIT_DIR:-/etc/systemd/system}
SVC_USER=${DOMOVOY_USER:-domovoy}
PYTHON=${PYTHON:-python3}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
VENV=$PREFIX/venv
ENV_FILE=$ETC_DIR/domovoy.env
UNIT=$UNIT_DIR/domovoy.service

# One argument as the shell would need it typed, so a printed command can be pasted.
quote() {
    case $1 in
        *[!A-Za-z0-9_./:=@+,-]* | '') printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
        *) printf '%s' "$1" ;;
    esac
}

run() {
    line=""
    for arg in "$@"; do
        line="$line $(quote "$arg")"
    done
    if [ "$DRY_RUN" = 1 ]; then
        printf 'would run:%s\n' "$line"
    else
        printf '+%s\n' "$line"
        "$@"
    fi
}

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

[ -f "$SRC/pyproject.toml" ] || fail "$SRC is not a Domovoy checkout (no pyproject.toml); set DOMOVOY_SRC."
[ -f "$SRC/deploy/domovoy.service" ] || fail "$SRC/deploy/domovoy.service is missing."
[ -f "$SRC/.env.example" ] || fail "$SRC/.env.example is missing: it is the template for $ENV_FILE."
if [ "$DRY_RUN" = 0 ]; then
    [ "$(id -u)" = 0 ] || fail "run as root (sudo sh deploy/install.sh), or add --dry-run."
    command -v "$SYSTEMCTL" >/dev/null 2>&1 || fail "$SYSTEMCTL not found: this needs a systemd system."
fi
# Checked before anything is created: Ubuntu 22.04's python3 is 3.10, too old for Domovoy.
if [ "$WITH_VENV" = 1 ] && [ ! -x "$VENV/bin/python" ] &&
    ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    msg="$PYTHON is missing or older than 3.11: install a newer one (Ubuntu 22.04: apt-get install python3.11 python3.11-venv python3.11-dev) and run again with PYTHON=python3.11."
    if [ "$DRY_RUN" = 1 ]; then
        echo "warning: $msg" >&2
    else
        fail "$msg"
    fi
fi

# 1. The service user: a system account without a login shell or a home of its own.
if id -u "$SVC_USER" >/dev/null 2>&1; then
    echo "user $SVC_USER exists"
else
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin "$SVC_USER"
fi

# 2. Folders: code under the prefix, secrets root-only, state owned by the service user.
run install -d -m 0755 "$PREFIX"
run install -d -m 0700 "$ETC_DIR"
run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$STATE_DIR" "$STATE_DIR/models"

# 3. The virtual environment. llama-cpp-python compiles (several minutes); cmake-args.sh
#    picks flags that avoid the AMX crash of -march=native. Set CMAKE_ARGS for CUDA etc.
if [ "$WITH_VENV" = 1 ]; then
    if [ -x "$VENV/bin/python" ]; then
        echo "virtual environment $VENV exists"
    else
        run "$PYTHON" -m venv "$VENV"
        run "$VENV/bin/python" -m pip install --quiet --upgrade pip
    fi
    # The CPU flags always come first: a CUDA build without them would fall back to
    # -march=native and its AMX crash. cmake keeps the last of two -D for one option.
    CMAKE_ARGS="$(sh "$SRC/deploy/cmake-args.sh")${CMAKE_ARGS:+ $CMAKE_ARGS}"
    # pip rebuilds llama-cpp-python only when its version changes (it never does for the
    # same version, whatever CMAKE_ARGS say): see deploy/README.md to rebuild for a GPU.
    run env "CMAKE_ARGS=$CMAKE_ARGS" "$VENV/bin/python" -m pip install --upgrade "$SRC"
fi

# 4. The environment file with the bot token: written once from the template, never replaced.
if [ -e "$ENV_FILE" ]; then
    echo "keeping existing $ENV_FILE"
else
    run install -m 0600 -o root -g root "$SRC/.env.example" "$ENV_FILE"
fi

# 5. The unit, with the paths above substituted; reloaded only when it changed.
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
sed -e "s|/opt/domovoy/venv|$VENV|g" \
    -e "s|/etc/domovoy/domovoy.env|$ENV_FILE|g" \
    -e "s|^WorkingDirectory=/var/lib/domovoy|WorkingDirectory=$STATE_DIR|" \
    -e "s|^User=domovoy|User=$SVC_USER|" -e "s|^Group=domovoy|Group=$SVC_USER|" \
    "$SRC/deploy/domovoy.service" >"$rendered"
if [ -f "$UNIT" ] && cmp -s "$rendered" "$UNIT"; then
    echo "unit $UNIT is up to date"
else
    run install -d -m 0755 "$UNIT_DIR"
    run install -m 0644 "$rendered" "$UNIT"
    run "$SYSTEMCTL" daemon-reload
fi
run "$SYSTEMCTL" enable domovoy.service
# After an update, restart a running bot; a stopped one stays stopped.
run "$SYSTEMCTL" try-restart domovoy.service

cat <<EOF

Next steps:
  1. Download a model:  runuser -u $SVC_USER -- env DATA_DIR=$STATE_DIR $VENV/bin/domovoy models download rugpt35-13b-lora
  2. Put BOT_TOKEN, MODEL_PATH (and LORA_PATH, TEMPLATE) into $ENV_FILE
  3. Start it:          systemctl start domovoy && journalctl -u domovoy -f
EOF
