"""What the folder and the volume last agreed on, path by path: the mirror's memory.

A row says that at PATH both sides held the same thing — its kind, the volume's file id,
the content as size and mtime (the quick check rsync uses), the permission bits, a
symlink's target — and which local inode held it. A side that differs from the row has
changed since; the rules (rules.py) decide from that. Rows live in SQLite in the cache
dir and are written as each path is reconciled, so a kill loses nothing: the next start
compares again.

Paths are bytes relative to the folder ("docs/a.txt"); the folder itself is b"".
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .folder import LocalEntry

SCHEMA = """
CREATE TABLE IF NOT EXISTS synced(path BLOB PRIMARY KEY, parent BLOB NOT NULL, kind TEXT NOT NULL,
    fid TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL, mode INTEGER NOT NULL, target BLOB);
CREATE INDEX IF NOT EXISTS synced_by_parent ON synced(parent);
CREATE INDEX IF NOT EXISTS synced_by_fid ON synced(fid);
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value);
"""


@dataclass(frozen=True)
class Synced(LocalEntry):
    """What the folder held when both sides agreed, and the volume's file id for it."""

    fid: str = ""

    @classmethod
    def of(cls, local: LocalEntry, fid: str) -> "Synced":
        return cls(local.kind, local.size, local.mtime_ns, local.ino, local.mode, local.target, fid)


def parent_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def name_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[2]


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


class SyncedState:
    """Owns the table; every call runs in the trio thread."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # a killed process loses nothing; power loss the last rows
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def folder(self) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key='folder'").fetchone()
        return row[0] if row else None

    def start_over_for(self, folder: str) -> None:
        """Forget every row when the cache dir served another folder: both sides are then
        merged as on a first sync (nothing is deleted for lack of a row)."""
        if self.folder() != folder:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute("DELETE FROM synced")
                self.db.execute("INSERT OR REPLACE INTO settings VALUES('folder', ?)", (folder,))

    def get(self, path: bytes) -> Synced | None:
        row = self.db.execute("SELECT kind, fid, size, mtime_ns, ino, mode, target FROM synced "
                              "WHERE path=?", (path,)).fetchone()
        if row is None:
            return None
        kind, fid, *local = row
        return Synced(kind, *local, fid=fid)

    def put(self, path: bytes, synced: Synced) -> None:
        self.db.execute("INSERT OR REPLACE INTO synced VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (path, parent_of(path), synced.kind, synced.fid, synced.size,
                         synced.mtime_ns, synced.ino, synced.mode, synced.target))

    def forget(self, path: bytes) -> None:
        """The row of `path` and of everything under it."""
        self.db.execute("DELETE FROM synced WHERE path=? OR (path > ? AND path < ?)",
                        (path, path + b"/", path + b"0"))

    def children(self, path: bytes) -> list[bytes]:
        return [name_of(p) for (p,) in self.db.execute("SELECT path FROM synced WHERE parent=?", (path,))]

    def paths_of(self, fid: str) -> list[bytes]:
        return [p for (p,) in self.db.execute("SELECT path FROM synced WHERE fid=?", (fid,))]

    def move(self, old: bytes, new: bytes) -> None:
        """Rows of `old` and everything under it now say `new` (a rename on either side)."""
        rows = self.db.execute("SELECT path, kind, fid, size, mtime_ns, ino, mode, target FROM synced "
                               "WHERE path=? OR (path > ? AND path < ?)", (old, old + b"/", old + b"0")).fetchall()
        with self.db:
            self.db.execute("BEGIN")
            self.forget(new)
            self.forget(old)
            for path, kind, fid, *local in rows:
                self.put(new + path[len(old):], Synced(kind, *local, fid=fid))

    def by_inode(self) -> dict[int, tuple[bytes, Synced]]:
        """Local inode → the one path agreed with it (inodes of several paths, hard links,
        left out: they say nothing about where one of them went)."""
        found: dict[int, tuple[bytes, Synced]] = {}
        shared: set[int] = set()
        for path, kind, fid, size, mtime_ns, ino, mode, target in self.db.execute(
                "SELECT path, kind, fid, size, mtime_ns, ino, mode, target FROM synced"):
            if ino in found:
                shared.add(ino)
            found[ino] = (path, Synced(kind, size, mtime_ns, ino, mode, target, fid))
        for ino in shared:
            del found[ino]
        return found

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM synced").fetchone()[0]
