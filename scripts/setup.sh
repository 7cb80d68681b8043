#!/usr/bin/env bash
# Install everything fusedrive needs on a fresh Debian/Ubuntu machine: the FUSE 3
# system packages and a virtualenv at .venv with fusedrive and (with --test) the
# test tools, including the SeaweedFS S3 server the tests start on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

need_apt=""
command -v fusermount3 >/dev/null 2>&1 || need_apt=1
pkg-config --exists fuse3 2>/dev/null || need_apt=1
command -v getfattr >/dev/null 2>&1 || need_apt=1  # the README shows getfattr (attr)
packages="fuse3 libfuse3-dev pkg-config python3-venv gcc attr"
if [ -n "$extras" ]; then
    # the real programs tests/test_programs.py runs in the mount
    packages="$packages git rsync sqlite3 vim make tar"
    for tool in git rsync sqlite3 vim make tar; do command -v "$tool" >/dev/null 2>&1 || need_apt=1; done
fi
if [ -n "$need_apt" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $packages >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# Installed already from this checkout, with these extras (or more), and setup.cfg unchanged:
# nothing to do. A reinstall would replace the package under programs using it (the suite
# runs this script from its README test while other tests run).
stamp=".venv/.fusedrive-installed"
state="$(pwd) $(sha256sum setup.cfg | cut -d' ' -f1)"
if ! grep -qxF "$state $extras" "$stamp" 2>/dev/null && ! { [ -z "$extras" ] && grep -qxF "$state [test]" "$stamp" 2>/dev/null; }; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".$extras"
    echo "$state $extras" > "$stamp"
fi
echo "fusedrive is installed: $(pwd)/.venv/bin/fusedrive"
