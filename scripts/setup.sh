#!/usr/bin/env bash
# One-command set-up on a fresh Debian 12 / Ubuntu machine: system packages for headless
# rendering, a virtual environment in .venv with pinned dependencies, and vlit_ros itself.
# Idempotent: a second run checks what is there and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLIT_VENV:-.venv}
PYTHON=${PYTHON:-python3}

apt_packages=(libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    SUDO=''
    [ "$(id -u)" -ne 0 ] && SUDO='sudo'
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade 'pip>=24'
fi
stamp="$VENV/.vlit_requirements.sha256"
want=$(cat requirements.txt constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing Python dependencies (torch CPU, ROS 2 Kilted wheels, mujoco, ...)"
    "$VENV/bin/python" -m pip install -q -r requirements.txt -c constraints.txt
    echo "$want" > "$stamp"
fi
# Checked from / so that the current directory on sys.path does not pass for an install; the
# editable install must point at this checkout and provide the vlit-ros command.
here=$(pwd -P)
venv_python="$(cd "$VENV" && pwd -P)/bin/python"
if ! (cd / && "$venv_python" -c \
        'import sys, vlit_ros; sys.exit(vlit_ros.__file__ != sys.argv[1])' \
        "$here/vlit_ros/__init__.py") 2>/dev/null || [ ! -x "$VENV/bin/vlit-ros" ]; then
    echo "setup: installing vlit_ros (editable) from $here"
    "$VENV/bin/python" -m pip install -q --no-deps -e .
fi
echo "setup: done. Activate with: . $VENV/bin/activate"
