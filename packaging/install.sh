#!/usr/bin/env bash
# Shepherd offline installer. Shipped inside the artifact that packaging/build_installer.py builds;
# run it from the unpacked artifact, as root:
#
#     tar xzf shepherd-<version>-linux_x86_64-offline.tar.gz
#     sudo shepherd-<version>-offline/install.sh
#
# What it does (every step is idempotent: running it again changes nothing):
#   1. checks the artifact against SHA256SUMS and the Python against the wheels carried;
#   2. creates the system user and group `shepherd` (no login shell, no home of its own);
#   3. builds a venv /opt/shepherd/venvs/<version>-<build> with `pip --no-index` from the wheelhouse
#      (nothing is fetched) and points /opt/shepherd/venv at it; the venv it replaces stays, as
#      /opt/shepherd/venv.previous, so `install.sh --rollback` returns to it;
#   4. installs /etc/shepherd/shepherd.toml and policies/*.toml only where absent (an existing
#      config is never overwritten; the new defaults go beside it as shepherd.toml.dist);
#   5. installs the systemd unit (and, in a gpu artifact, the gpu.conf drop-in) and reloads systemd;
#   6. creates /var/lib/shepherd, /var/log/shepherd and /var/cache/shepherd, mode 0750, owned by shepherd;
#   7. compiles the Numba drift kernels into /var/cache/shepherd/numba for this CPU.
# Data and config survive upgrades; an upgrade never touches /var/lib/shepherd.
set -euo pipefail

usage() {
    cat <<EOF
usage: install.sh [options]
  --root DIR     install under DIR instead of / (a staging root; no user is created, systemd untouched)
  --prefix DIR   where the venvs go (default /opt/shepherd)
  --python EXE   interpreter for the venv (default python3; must match a Python the artifact carries)
  --user NAME    service user and group (default shepherd)
  --no-user      do not create the user or change ownership
  --no-systemd   do not install the unit or run systemctl
  --rollback     point the venv back at the previous one (undo the last upgrade) and stop
  -h, --help     this text
EOF
}

ROOT=/ PREFIX=/opt/shepherd PYTHON=python3 SVC_USER=shepherd CREATE_USER=1 SYSTEMD=1 ROLLBACK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --user) SVC_USER=${2:?--user needs a name}; shift 2 ;;
        --no-user) CREATE_USER=0; shift ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --rollback) ROLLBACK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
case "$PREFIX" in /*) ;; *) echo "install.sh: --prefix must be an absolute path, got '$PREFIX'" >&2; exit 2 ;; esac
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}                      # "" for the real root
STAGING=0; [ -n "$R" ] && STAGING=1
if [ "$(id -u)" != 0 ] || [ "$STAGING" = 1 ]; then CREATE_USER=0; fi
if [ "$STAGING" = 1 ]; then SYSTEMD_RELOAD=0; else SYSTEMD_RELOAD=$SYSTEMD; fi
say() { echo "shepherd-install: $*"; }
die() { echo "shepherd-install: error: $*" >&2; exit 1; }

BASE="$R$PREFIX"
LINK="$BASE/venv"
PREV="$BASE/venv.previous"

# Point a symlink at a target atomically (a new link renamed over the old one).
relink() { ln -sfn "$2" "$1.new.$$" && mv -Tf "$1.new.$$" "$1"; }

if [ "$ROLLBACK" = 1 ]; then
    [ -L "$PREV" ] || die "no previous venv at $PREV: nothing to roll back to"
    cur=$(readlink "$LINK" || true); old=$(readlink "$PREV")
    [ -d "$BASE/$old" ] || die "the previous venv $BASE/$old is gone"
    relink "$LINK" "$old"
    if [ -n "$cur" ]; then relink "$PREV" "$cur"; fi
    say "rolled back: $LINK -> $old (was $cur)"
    say "restart the service to use it: systemctl restart shepherd"
    exit 0
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE"
[ -f SHA256SUMS ] && [ -f BUILD.json ] || die "run install.sh from the unpacked artifact (SHA256SUMS and BUILD.json not found in $HERE)"
sha256sum --check --quiet --strict SHA256SUMS >/dev/null 2>&1 \
    || die "the artifact is damaged: $(sha256sum --check --quiet SHA256SUMS 2>&1 | head -3 | tr '\n' ' ')"

command -v "$PYTHON" >/dev/null || die "python '$PYTHON' not found (choose one with --python)"
TAG=$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
VERSION=$("$PYTHON" -c 'import json; print(json.load(open("BUILD.json"))["version"])')
GPU=$("$PYTHON" -c 'import json; print(int(json.load(open("BUILD.json"))["gpu"]))')
[ -f "constraints/$TAG.txt" ] \
    || die "this artifact carries wheels for $(cd constraints && ls | sed 's/\.txt$//' | tr '\n' ' ')but '$PYTHON' is $TAG (choose another with --python)"
case "$VERSION" in ""|*/*|.*) die "BUILD.json: bad version '$VERSION'" ;; esac
BUILD_ID=$(sha256sum SHA256SUMS | cut -d' ' -f1)
say "installing shepherd $VERSION ($TAG$([ "$GPU" = 1 ] && echo ', gpu')) into ${R:-/}"

# 2. user
if [ "$CREATE_USER" = 1 ]; then
    if ! getent group "$SVC_USER" >/dev/null; then groupadd --system "$SVC_USER"; fi
    if ! getent passwd "$SVC_USER" >/dev/null; then
        useradd --system --gid "$SVC_USER" --home-dir /var/lib/shepherd --no-create-home \
            --shell /usr/sbin/nologin --comment "Shepherd MLOps appliance" "$SVC_USER"
        say "created system user $SVC_USER"
    fi
fi
own() { if [ "$CREATE_USER" = 1 ]; then chown "$@"; fi; }

# 3. venv. Named after the version and the build, so a new build never touches a venv in use; it
# is built in its final place (venvs cannot move) and only a finished one (marker written last)
# is linked. A half-built one, from a failed or interrupted run, is removed and rebuilt.
NAME="$VERSION-${BUILD_ID:0:12}"
VENV="$BASE/venvs/$NAME"
mkdir -p "$BASE/venvs"
if [ -f "$VENV/.shepherd-build" ] && [ "$(cat "$VENV/.shepherd-build")" = "$BUILD_ID" ]; then
    say "venv $VENV already holds this build"
else
    rm -rf "$VENV"
    trap 'rm -rf "$VENV"' EXIT
    "$PYTHON" -m venv "$VENV"
    extra=""; [ "$GPU" = 1 ] && extra="[gpu]"
    WHEEL=$(ls "$HERE"/wheelhouse/shepherd-*.whl)
    # PIP_CONFIG_FILE=/dev/null and --isolated: no pip.conf or PIP_* variable can add an index.
    if ! PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip --isolated --disable-pip-version-check \
        install --no-index --no-cache-dir --find-links "$HERE/wheelhouse" \
        --constraint "constraints/$TAG.txt" "$WHEEL$extra" > "$VENV/pip.log" 2>&1; then
        grep -v '^\(Processing\|Looking in links\) ' "$VENV/pip.log" | tail -n 15 >&2
        die "pip could not install from the wheelhouse (nothing was changed)"
    fi
    "$VENV/bin/shepherd" --help >/dev/null || die "the new venv's shepherd does not start (nothing was changed)"
    echo "$BUILD_ID" > "$VENV/.shepherd-build"
    trap - EXIT
    say "built venv $VENV"
fi
if [ -d "$LINK" ] && [ ! -L "$LINK" ]; then  # a venv installed by hand before the versioned layout
    mv -T "$LINK" "$BASE/venvs/unversioned-$(date +%Y%m%dT%H%M%S)"
    relink "$LINK" "venvs/$(basename "$(ls -d "$BASE"/venvs/unversioned-* | tail -1)")"
fi
current=$(readlink "$LINK" 2>/dev/null || true)
if [ "$current" != "venvs/$NAME" ]; then
    if [ -n "$current" ]; then relink "$PREV" "$current"; fi
    relink "$LINK" "venvs/$NAME"
    say "$LINK -> venvs/$NAME${current:+ (previous: $current, kept for --rollback)}"
fi
mkdir -p "$R/usr/local/bin"
relink "$R/usr/local/bin/shepherd" "$PREFIX/venv/bin/shepherd"

# 4. config: never overwrite what the operator has.
ETC="$R/etc/shepherd"
install -d -m 0755 "$ETC" "$ETC/policies" "$ETC/trusted_keys"
if [ -e "$ETC/shepherd.toml" ]; then
    install -m 0640 config/shepherd.toml "$ETC/shepherd.toml.dist"
    say "kept $ETC/shepherd.toml (this version's defaults: shepherd.toml.dist)"
else
    install -m 0640 config/shepherd.toml "$ETC/shepherd.toml"
    say "installed $ETC/shepherd.toml"
fi
for f in config/policies/*.toml; do
    [ -e "$ETC/policies/$(basename "$f")" ] || install -m 0640 "$f" "$ETC/policies/$(basename "$f")"
done
own -R "root:$SVC_USER" "$ETC"
"$LINK/bin/shepherd" check-config "$ETC/shepherd.toml" >/dev/null \
    || say "warning: $ETC/shepherd.toml does not validate with this version (see: shepherd check-config $ETC/shepherd.toml)"

# 5. systemd
if [ "$SYSTEMD" = 1 ]; then
    UNIT_DIR="$R/etc/systemd/system"
    install -d -m 0755 "$UNIT_DIR"
    sed "s#/opt/shepherd#$PREFIX#g" systemd/shepherd.service > "$UNIT_DIR/shepherd.service.new.$$"
    chmod 0644 "$UNIT_DIR/shepherd.service.new.$$" && mv -f "$UNIT_DIR/shepherd.service.new.$$" "$UNIT_DIR/shepherd.service"
    if [ "$GPU" = 1 ]; then
        install -d -m 0755 "$UNIT_DIR/shepherd.service.d"
        install -m 0644 systemd/shepherd.service.d/gpu.conf "$UNIT_DIR/shepherd.service.d/gpu.conf"
    fi
    if [ "$SYSTEMD_RELOAD" = 1 ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        say "systemd unit installed; start with: systemctl enable --now shepherd (after an upgrade: systemctl restart shepherd)"
    fi
fi

# 6. state, logs and cache
for d in "$R/var/lib/shepherd" "$R/var/log/shepherd" "$R/var/cache/shepherd"; do
    install -d -m 0750 "$d"
    chmod 0750 "$d"
    own "$SVC_USER:$SVC_USER" "$d"
done

# 7. compile the drift kernels into the cache the unit points Numba at (NUMBA_CACHE_DIR), on this
# machine's CPU, so the service's first start loads them instead of compiling for tens of seconds.
NUMBA_CACHE_DIR="$R/var/cache/shepherd/numba" "$LINK/bin/python" -c \
    'from shepherd.monitoring import kernels; print("drift kernels compiled in %.1f s" % kernels.warm_up())' \
    | sed 's/^/shepherd-install: /' || say "warning: could not pre-compile the drift kernels; the service compiles them at start"
own -R "$SVC_USER:$SVC_USER" "$R/var/cache/shepherd"
say "done: shepherd $VERSION"
