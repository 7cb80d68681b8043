"""The read-only `.fusedrive/history` tree inside the mount, so any app can open an old version.

    /.fusedrive/history/<path of a file>/<"v3 2026-11-24 10.42.01 laptop.ext">

Directories mirror the drive; each file appears as a directory of its kept versions.
Nodes are made up on demand with inode numbers from VIRTUAL_BASE up (never a real
inode number), as `Inode` rows that exist only here; a version's row carries the kept
manifest, so the drive reads it like any committed file. Nothing here can be changed:
fs.py answers EROFS for every write under it.
"""

from __future__ import annotations

import json
import os
import stat
from itertools import count
from typing import Callable

from ..engine.history import Version
from ..engine.tree import ROOT_FID, ROOT_INO, Inode, TreeView

VIRTUAL_BASE = 1 << 48
CONTROL_DIR = b".fusedrive"


def folder_mode(real: Inode) -> int:
    """A folder of the view is no more open than what it shows: a live folder's permission
    bits without write; for a file's folder of versions, whoever may read the file may list
    and enter it. So a 0600 file's versions are its owner's alone, and a 0700 folder's whole
    history too: the kernel checks these (default_permissions) as in the live tree."""
    bits = stat.S_IMODE(real.mode)
    if real.is_dir:
        return stat.S_IFDIR | (bits & 0o555)
    readable = bits & 0o444
    return stat.S_IFDIR | readable | (readable >> 2)


def version_mode(real: Inode) -> int:
    """A kept version reads as the live file does, never writable, never setuid."""
    return stat.S_IFREG | (stat.S_IMODE(real.mode) & 0o555)


class HistoryView:
    def __init__(self, tree: TreeView, versions: Callable[[str], list[Version]]) -> None:
        """`tree`, `versions`: the drive's (Drive.tree, Drive.versions)."""
        self.tree, self.versions = tree, versions
        self._ino_of: dict[tuple, int] = {}
        self._key_of: dict[int, tuple] = {}
        self._numbers = count(VIRTUAL_BASE)
        self.control_ino = self._ino(("control",))

    def owns(self, ino: int) -> bool:
        return ino >= VIRTUAL_BASE

    def _ino(self, key: tuple) -> int:
        if key not in self._ino_of:
            ino = next(self._numbers)
            self._ino_of[key], self._key_of[ino] = ino, key
        return self._ino_of[key]

    def _real(self, fid: str) -> Inode | None:
        ino = self.tree.ino_of(fid)
        node = self.tree.inode(ino) if ino is not None else None
        return node if node is not None and (node.nlink > 0 or fid == ROOT_FID) else None

    def node(self, ino: int) -> Inode | None:
        """The made-up inode row of a virtual node (None once what it mirrors is gone)."""
        key = self._key_of.get(ino)
        if key is None:
            return None
        if key[0] in ("control", "history"):
            real = self.tree.inode(ROOT_INO)
            return _row(ino, key, folder_mode(real), real, nlink=2)
        real = self._real(key[1])
        if real is None:
            return None
        if key[0] in ("dir", "file"):
            return _row(ino, key, folder_mode(real), real, nlink=2)
        kept = next((v for v in self.versions(key[1]) if v.number == key[2]), None)
        if kept is None:
            return None
        return Inode(ino=ino, fid=f"history:{key[1]}:{key[2]}", mode=version_mode(real), uid=real.uid, gid=real.gid,
                     size=kept.size, atime_ns=kept.saved_ns, mtime_ns=kept.saved_ns, ctime_ns=kept.saved_ns,
                     nlink=1, rdev=0, target=None, manifest=json.dumps(kept.manifest), version=kept.number)

    def children(self, ino: int) -> list[tuple[bytes, int]]:
        key = self._key_of.get(ino)
        if key is None:
            return []
        if key[0] == "control":
            return [(b"history", self._ino(("history",)))]
        if key[0] == "history":
            return self._mirror(ROOT_INO)
        real = self._real(key[1])
        if real is None:
            return []
        if key[0] == "dir":
            return self._mirror(real.ino)
        if key[0] == "file":
            where = self.tree.location_of(key[1])
            ext = os.path.splitext(where[1])[1] if where else b""
            return [(os.fsencode(v.label()) + ext, self._ino(("version", key[1], v.number)))
                    for v in self.versions(key[1])]
        return []

    def _mirror(self, real_dir: int) -> list[tuple[bytes, int]]:
        entries = []
        for name, child in self.tree.children(real_dir):
            node = self.tree.inode(child)
            if node is not None and (node.is_dir or node.is_reg):
                entries.append((name, self._ino(("dir" if node.is_dir else "file", node.fid))))
        return entries

    def lookup(self, parent: int, name: bytes) -> int | None:
        return next((ino for child, ino in self.children(parent) if child == name), None)


def _row(ino: int, key: tuple, mode: int, real: Inode, nlink: int) -> Inode:
    return Inode(ino=ino, fid=f"history:{':'.join(map(str, key))}", mode=mode, uid=real.uid, gid=real.gid, size=0,
                 atime_ns=real.atime_ns, mtime_ns=real.mtime_ns, ctime_ns=real.ctime_ns, nlink=nlink, rdev=0,
                 target=None, manifest="[]", version=0)
