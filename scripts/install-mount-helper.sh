#!/usr/bin/env bash
# As root: make `mount -t fuse.fusedrive` and /etc/fstab lines of type fuse.fusedrive work,
# by linking mount(8)'s helper for that type to this checkout's fusedrive.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mount.fuse.fusedrive ] || scripts/setup.sh
ln -sf "$(pwd)/.venv/bin/mount.fuse.fusedrive" /sbin/mount.fuse.fusedrive
ln -sf "$(pwd)/.venv/bin/fusedrive" /usr/local/bin/fusedrive
echo "mount -t fuse.fusedrive works now (helper: /sbin/mount.fuse.fusedrive)"
