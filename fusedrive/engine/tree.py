"""The replica's tables and the row types every part of the engine reads them as.

File ids (`fid`) are the names operations use; inode numbers are this device's rows.
Names are bytes; in journal ops they travel as text through surrogateescape.
"""

from __future__ import annotations

import base64
import json
import stat
import zlib
from dataclasses import dataclass
from typing import Protocol

ROOT_INO = 1
ROOT_FID = "root"

# The undo log is read in id order: a plain rowid (one past the largest) keeps it
# (Replica._renumber_undo_log rebuilds the AUTOINCREMENT table of older replicas).
UNDO_TABLE = "CREATE TABLE IF NOT EXISTS undo(id INTEGER PRIMARY KEY, pending_id INTEGER NOT NULL, sql TEXT NOT NULL)"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS inodes(
    ino INTEGER PRIMARY KEY, fid TEXT UNIQUE NOT NULL, mode INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL, rdev INTEGER NOT NULL DEFAULT 0, target BLOB,
    manifest TEXT NOT NULL DEFAULT '[]', version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS dentries(
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL, PRIMARY KEY(parent, name));
CREATE INDEX IF NOT EXISTS dentries_by_ino ON dentries(ino);
-- the nameless inodes (unlinked while open), looked for after every commit: without it,
-- a scan of every inode (6 ms with 100,000 files) on each fsync's path
CREATE INDEX IF NOT EXISTS inodes_nameless ON inodes(ino) WHERE nlink = 0;
CREATE TABLE IF NOT EXISTS xattrs(ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY(ino, name));
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS pending(id INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dirty(fid TEXT PRIMARY KEY, base INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS versions(fid TEXT NOT NULL, version INTEGER NOT NULL, manifest TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, t INTEGER NOT NULL, device TEXT,
    PRIMARY KEY(fid, version));
CREATE TABLE IF NOT EXISTS trash(fid TEXT PRIMARY KEY, parent TEXT NOT NULL, name BLOB NOT NULL,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, manifest TEXT NOT NULL, target BLOB, deleted_t INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lineage(fid TEXT PRIMARY KEY, predecessor TEXT NOT NULL, predecessor_last INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS lineage_by_predecessor ON lineage(predecessor);
CREATE TABLE IF NOT EXISTS departed(parent TEXT NOT NULL, name BLOB NOT NULL, fid TEXT NOT NULL, t INTEGER NOT NULL,
    PRIMARY KEY(parent, name));
CREATE TABLE IF NOT EXISTS archived(block TEXT PRIMARY KEY, storage_class TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS carried(block TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS carrying(block TEXT PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vanished(fid TEXT PRIMARY KEY, locations TEXT NOT NULL);
-- queued rows that commit again a journal entry the store lost (a fork, forks.py): the
-- entry's commit id, named in the entry that commits them (`restores`)
CREATE TABLE IF NOT EXISTS requeued(pending_id INTEGER PRIMARY KEY, commit_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fid_inos(ino INTEGER PRIMARY KEY AUTOINCREMENT, fid TEXT UNIQUE NOT NULL);
{UNDO_TABLE};
"""

TREE_TABLES = {
    "inodes": ["fid", "mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns", "nlink", "rdev", "target",
               "manifest", "version"],
    "dentries": ["parent", "name", "ino"],
    "xattrs": ["ino", "name", "value"],
    "versions": ["fid", "version", "manifest", "size", "mtime_ns", "t", "device"],
    "trash": ["fid", "parent", "name", "mode", "uid", "gid", "size", "mtime_ns", "manifest", "target", "deleted_t"],
    "lineage": ["fid", "predecessor", "predecessor_last"],
    "departed": ["parent", "name", "fid", "t"],
}


def undo_triggers() -> str:
    """Triggers that log, while a local operation is applied, the SQL that reverses each row
    change (the classic SQLite undo log). Rebase uses it to take pending operations back.

    They are TEMP triggers of the replica's own connection and ask the connection's SQL
    function `undo_pending_id()` (0: not logging; rows queued again after a fork may have
    ids below 1, see forks.py) which queued row they log for: a flag in a
    table cost two UPDATEs and a page in the WAL per recorded change. (Replicas written
    before had persistent triggers and an `undo_flag` table: `OLD_UNDO_TRIGGERS` drops them.)"""
    sql = []
    for table, columns in TREE_TABLES.items():
        assign = " || ',' || ".join(f"'{c}=' || quote(OLD.{c})" for c in columns)
        values = " || ',' || ".join(f"quote(OLD.{c})" for c in columns)
        bodies = {
            "INSERT": f"'DELETE FROM {table} WHERE rowid=' || NEW.rowid",
            "UPDATE": f"'UPDATE {table} SET ' || {assign} || ' WHERE rowid=' || OLD.rowid",
            "DELETE": f"'INSERT INTO {table}(rowid,{','.join(columns)}) VALUES(' || OLD.rowid || ',' || {values} || ')'",
        }
        for event, body in bodies.items():
            name = f"undo_{table}_{event.lower()}"
            sql.append(
                f"CREATE TEMP TRIGGER IF NOT EXISTS {name} AFTER {event} ON main.{table} "
                f"WHEN undo_pending_id() != 0 BEGIN INSERT INTO undo(pending_id, sql) "
                f"VALUES(undo_pending_id(), {body}); END;"
            )
    return "\n".join(sql)


OLD_UNDO_TRIGGERS = "DROP TABLE IF EXISTS main.undo_flag;" + "".join(
    f"DROP TRIGGER IF EXISTS main.undo_{table}_{event};" for table in TREE_TABLES for event in ("insert", "update",
                                                                                                  "delete"))
# The schema a replica was last brought to (its `user_version`): the tables and migrations
# run only when it differs, not at each open (which parsed them all, every time). The undo
# triggers are each connection's own (TEMP): made at every open.
SCHEMA_STAMP = zlib.crc32((SCHEMA + OLD_UNDO_TRIGGERS).encode()) & 0x7FFFFFFF
UNDO_TRIGGERS = undo_triggers()


def name_to_json(name: bytes) -> str:
    """File names are arbitrary bytes; surrogateescape carries them through JSON losslessly."""
    return name.decode("utf-8", "surrogateescape")


def name_from_json(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def fids_of(op: dict) -> list[str]:
    return [op[k] for k in ("fid", "parent", "newparent") if k in op]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Inode:
    ino: int
    fid: str
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int
    target: bytes | None
    manifest: str
    version: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def extents(self) -> list[list]:
        """The file's content: [[block id or None for a hole, length], ...]."""
        return json.loads(self.manifest)


class TreeView(Protocol):
    """The tree as front ends read it (`Drive.tree`; the Replica is it): queries only.
    Changes go through `Drive.namespace` and the Drive's content calls."""

    @property
    def change_stamp(self) -> int: ...

    def inode(self, ino: int) -> Inode | None: ...

    def inodes(self, inos: list[int]) -> dict[int, Inode]: ...

    def ino_of(self, fid: str) -> int | None: ...

    def lookup(self, parent: int, name: bytes) -> int | None: ...

    def children(self, parent: int) -> list[tuple[bytes, int]]: ...

    def parent_of(self, ino: int) -> int | None: ...

    def path_of(self, fid: str, name: bytes | None = None) -> str | None: ...

    def location_of(self, fid: str) -> tuple[str, bytes] | None: ...

    def xattr(self, ino: int, name: bytes) -> bytes | None: ...

    def xattr_names(self, ino: int) -> list[bytes]: ...

    def stats(self) -> dict: ...

