"""The no-loss oracle: every save whose close() returned 0 is kept somewhere a user can find
it — a live file, a conflicted copy, a version in history, or the trash."""

from __future__ import annotations

import hashlib
import json
import os


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def restore_whole_trash(mount) -> None:
    """Bring back every trashed item (a taken name gets a conflicted-copy name)."""
    for _ in range(100):
        items = json.loads(mount.volume.cli.run("trash", "list", str(mount.path), "--json").stdout)
        if not items:
            return
        for item in items:
            mount.volume.cli.run("trash", "restore", str(mount.path) + item["path"], "--id", item["id"])
    raise AssertionError("the trash does not empty by restoring it")


def kept_contents(mount) -> set[str]:
    """Digests of every content the volume keeps, seen through `mount` (the whole trash is
    restored first, so the history tree covers trashed files too)."""
    restore_whole_trash(mount)
    mount.sync()
    found = set()
    for root in (mount.path, mount.p(".fusedrive", "history")):
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        found.add(digest(f.read()))
    return found


def assert_nothing_lost(mount, saves: dict[str, bytes]) -> None:
    """`saves`: a label for each save whose close() returned 0 → its content."""
    kept = kept_contents(mount)
    lost = sorted(label for label, data in saves.items() if digest(data) not in kept)
    print(f"oracle: {len(saves)} closed saves checked, {len(lost)} lost")  # a sweep's counts (pytest -rP)
    assert not lost, f"saves lost (not live, not a conflicted copy, not in history or the trash): {lost}"
