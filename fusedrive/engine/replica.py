"""The metadata replica: this device's SQLite copy of the tree, built from the journal.

Operations name files by stable ids (`fid`, UUIDs); inode numbers are local rows.
`apply(op)` is the only code that changes the tree, and it is deterministic, so
replaying the journal on a fresh device rebuilds exactly the same tree. Local
changes are applied at once and queued in `pending` in the same transaction: the
commit queue survives crashes because it is this table.

Not thread-safe: only the trio loop thread touches it.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import stat
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..crashpoints import crash_point
from ..errors import UnknownOperation
from .manifest import BlockRef, block_refs

ROOT_INO = 1
ROOT_FID = "root"

SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes(
    ino INTEGER PRIMARY KEY, fid TEXT UNIQUE NOT NULL, mode INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL, rdev INTEGER NOT NULL DEFAULT 0, target BLOB,
    manifest TEXT NOT NULL DEFAULT '[]', version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS dentries(
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL, PRIMARY KEY(parent, name));
CREATE INDEX IF NOT EXISTS dentries_by_ino ON dentries(ino);
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
CREATE TABLE IF NOT EXISTS archived(block TEXT PRIMARY KEY, storage_class TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vanished(fid TEXT PRIMARY KEY, locations TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fid_inos(ino INTEGER PRIMARY KEY AUTOINCREMENT, fid TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS undo(id INTEGER PRIMARY KEY AUTOINCREMENT, pending_id INTEGER NOT NULL, sql TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS undo_flag(pending_id INTEGER NOT NULL);
INSERT INTO undo_flag SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM undo_flag);
"""

TREE_TABLES = {
    "inodes": ["fid", "mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns", "nlink", "rdev", "target",
               "manifest", "version"],
    "dentries": ["parent", "name", "ino"],
    "xattrs": ["ino", "name", "value"],
    "versions": ["fid", "version", "manifest", "size", "mtime_ns", "t", "device"],
    "trash": ["fid", "parent", "name", "mode", "uid", "gid", "size", "mtime_ns", "manifest", "target", "deleted_t"],
}


def _undo_triggers() -> str:
    """Triggers that log, while a local operation is applied, the SQL that reverses each row
    change (the classic SQLite undo log). Rebase uses it to take pending operations back."""
    sql = []
    flag = "(SELECT pending_id FROM undo_flag)"
    for table, columns in TREE_TABLES.items():
        assign = " || ',' || ".join(f"'{c}=' || quote(OLD.{c})" for c in columns)
        values = " || ',' || ".join(f"quote(OLD.{c})" for c in columns)
        bodies = {
            "INSERT": f"'DELETE FROM {table} WHERE rowid=' || NEW.rowid",
            "UPDATE": f"'UPDATE {table} SET ' || {assign} || ' WHERE rowid=' || OLD.rowid",
            "DELETE": f"'INSERT INTO {table}(rowid,{','.join(columns)}) VALUES(' || OLD.rowid || ',' || {values} || ')'",
        }
        for event, body in bodies.items():
            sql.append(
                f"CREATE TRIGGER IF NOT EXISTS undo_{table}_{event.lower()} AFTER {event} ON {table} "
                f"WHEN {flag} > 0 BEGIN INSERT INTO undo(pending_id, sql) VALUES({flag}, {body}); END;"
            )
    return "\n".join(sql)


def name_to_json(name: bytes) -> str:
    """File names are arbitrary bytes; surrogateescape carries them through JSON losslessly."""
    return name.decode("utf-8", "surrogateescape")


def name_from_json(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _fids_of(op: dict) -> list[str]:
    return [op[k] for k in ("fid", "parent", "newparent") if k in op]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Rebased:
    """What a rebase did: every operation applied, remote and local (to invalidate what
    front ends cached), the conflicted copies the rules made ({"parent", "name", "copy"}),
    and files deleted here, with a save not uploaded, that another device's commit brought
    back (that save is not the revived file's content)."""

    applied: list[dict]
    conflicts: list[dict]
    deleted_saves_brought_back: set[str]


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


class Replica:
    def __init__(self, path: str, in_use: Callable[[int], bool] = lambda ino: False) -> None:
        """`in_use(ino)` says whether the kernel still holds an inode whose last name is gone."""
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.executescript(_undo_triggers())
        self.in_use = in_use
        self.base_locations: dict[str, dict] = {}  # set by rebase, see _locations
        self.on_record: Callable[[], None] = lambda: None  # a mount commits what was queued (Committer.kick)
        self._depth = 0

    # --- transactions -----------------------------------------------------------------

    def __enter__(self) -> "Replica":
        if self._depth == 0:
            self.db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def close(self) -> None:
        self.db.close()

    # --- state ------------------------------------------------------------------------

    def get_state(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_state(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO state(key, value) VALUES(?, ?)", (key, value))

    @property
    def applied_seq(self) -> int:
        return self.get_state("applied_seq", 0)

    @property
    def change_stamp(self) -> int:
        """Grows with every row this connection writes (a rollback does not shrink it), so
        two equal stamps taken outside a transaction mean nothing changed in between.
        Reading it costs no query."""
        return self.db.total_changes

    # --- queries ----------------------------------------------------------------------

    def inode(self, ino: int) -> Inode | None:
        row = self.db.execute("SELECT * FROM inodes WHERE ino=?", (ino,)).fetchone()
        return Inode(*row) if row else None

    def ino_of(self, fid: str) -> int | None:
        row = self.db.execute("SELECT ino FROM inodes WHERE fid=?", (fid,)).fetchone()
        return row[0] if row else None

    def lookup(self, parent: int, name: bytes) -> int | None:
        row = self.db.execute("SELECT ino FROM dentries WHERE parent=? AND name=?", (parent, name)).fetchone()
        return row[0] if row else None

    def children(self, parent: int) -> list[tuple[bytes, int]]:
        return self.db.execute(
            "SELECT name, ino FROM dentries WHERE parent=? ORDER BY name", (parent,)
        ).fetchall()

    def has_children(self, parent: int) -> bool:
        return self.db.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (parent,)).fetchone() is not None

    def parent_of(self, ino: int) -> int | None:
        row = self.db.execute("SELECT parent FROM dentries WHERE ino=? LIMIT 1", (ino,)).fetchone()
        return row[0] if row else None

    def is_ancestor(self, ancestor: int, ino: int) -> bool:
        """True if `ancestor` is `ino` or one of its parent directories."""
        while ino is not None:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.parent_of(ino)
        return False

    def xattr(self, ino: int, name: bytes) -> bytes | None:
        row = self.db.execute("SELECT value FROM xattrs WHERE ino=? AND name=?", (ino, name)).fetchone()
        return row[0] if row else None

    def xattr_names(self, ino: int) -> list[bytes]:
        return [r[0] for r in self.db.execute("SELECT name FROM xattrs WHERE ino=? ORDER BY name", (ino,))]

    def all_block_refs(self) -> set[BlockRef]:
        """Every block something retained references (live files, kept versions, the
        trash), with where it is stored: a block packed by one device and stored alone
        by another is both."""
        refs = set()
        for table in ("inodes", "versions", "trash"):
            for (manifest,) in self.db.execute(f"SELECT manifest FROM {table} WHERE manifest != '[]'"):
                refs.update(block_refs(json.loads(manifest)))
        return refs

    def stats(self) -> dict:
        files, logical = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM inodes WHERE nlink > 0"
        ).fetchone()
        return {"inodes": files, "logical_bytes": logical}

    def orphans(self) -> list[Inode]:
        """Inodes with no name left (unlinked while open)."""
        return [Inode(*r) for r in self.db.execute("SELECT * FROM inodes WHERE nlink=0")]

    def reap_orphans(self) -> list[Inode]:
        """Delete nameless inodes nobody holds, once no queued operation can need them
        (a rebase takes queued operations back, and their undo log expects the rows)."""
        if self.pending_count():
            return []
        reaped = [node for node in self.orphans() if not self.in_use(node.ino)]
        for node in reaped:
            self.forget_inode(node.ino)
        return reaped

    # --- the commit queue -------------------------------------------------------------

    def record(self, *ops: dict) -> None:
        """Apply local operations and queue them for the journal as one row, atomically (undo-logged)."""
        with self:
            cur = self.db.execute("INSERT INTO pending(op) VALUES(?)", (json.dumps(list(ops)),))
            for op in ops:
                self._apply_logged(cur.lastrowid, op)
        self.on_record()

    def _apply_logged(self, pending_id: int, op: dict) -> None:
        self.db.execute("UPDATE undo_flag SET pending_id=?", (pending_id,))
        try:
            self.apply(op)
        finally:
            self.db.execute("UPDATE undo_flag SET pending_id=0")

    def pending_ops(self, limit: int, through: int | None = None) -> list[tuple[int, list[dict]]]:
        """Queued rows, oldest first (up to id `through`): (id, the operations that row stands for now)."""
        rows = self.db.execute("SELECT id, op FROM pending WHERE id <= ? ORDER BY id LIMIT ?",
                               (2**63 - 1 if through is None else through, limit)).fetchall()
        return [(i, json.loads(ops)) for i, ops in rows]

    def pending_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM pending").fetchone()[0]

    def oldest_pending_time(self) -> float | None:
        """When the oldest queued operation was made (Unix seconds), None if none is queued."""
        for _id, ops in self.pending_ops(1):
            times = [op["t"] for op in ops if "t" in op]
            return min(times) / 1e9 if times else None
        return None

    def last_pending_id(self) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM pending").fetchone()[0]

    def mark_committed(self, last_id: int, seq: int) -> None:
        with self:
            self.db.execute("DELETE FROM pending WHERE id <= ?", (last_id,))
            self.db.execute("DELETE FROM undo WHERE pending_id <= ?", (last_id,))
            self.set_state("applied_seq", seq)

    def rebase(self, entries: Iterable, revalidate, keep_alive: set[str] = frozenset(),
               watched: set[str] = frozenset()) -> Rebased:
        """Apply remote journal entries under this device's queued operations.

        Takes every pending operation back (undo log), applies the entries, then
        re-applies each pending operation as `revalidate(replica, op)` rewrites it
        (the conflict rules). Files in `keep_alive` (content written here and not
        uploaded yet) that the entries deleted are brought back where they were, unless
        this device had deleted them too (then that save lands in their trash entry); the
        ones deleted here that the entries brought back are noted in the result's
        `deleted_saves_brought_back` (that save is not the revived file's content).
        Files in `watched` (open here) that the entries deleted are remembered as
        vanished, with where they were: a write through a handle still open brings
        them back when it is uploaded. One transaction. The result has every operation
        applied, remote and local, so the caller can invalidate what the front end cached.
        """
        applied: list[dict] = []
        watched = set(watched) | set(keep_alive)
        with self:
            named_here = {fid for fid in watched if self.location_of(fid) is not None}
            rows = self.db.execute("SELECT id, op FROM pending ORDER BY id").fetchall()
            for (sql,) in self.db.execute("SELECT sql FROM undo ORDER BY id DESC").fetchall():
                self.db.execute(sql)
            self.db.execute("DELETE FROM undo")
            referenced = {fid for _, ops in rows for op in json.loads(ops) for fid in _fids_of(op)} | watched
            self.base_locations = self._locations(referenced)
            for entry in entries:
                for op in entry.ops:
                    self.apply(op)
                    applied.append(op)
                self.set_state("applied_seq", entry.seq)
            for fid in named_here:
                if fid in self.base_locations and self.location_of(fid) is None:
                    self._remember_vanished(fid)
            crash_point("rebase")
            for pending_id, ops in rows:
                kept = []
                for op in json.loads(ops):
                    for new_op in revalidate(self, op):
                        new_op = revalidate.claim_name(self, new_op)
                        self._apply_logged(pending_id, new_op)
                        kept.append(new_op)
                        applied.append(new_op)
                self.db.execute("UPDATE pending SET op=? WHERE id=?", (json.dumps(kept), pending_id))
            for fid in keep_alive & named_here:  # one deleted here stays deleted: its save goes to the trash
                ino = self.ino_of(fid)
                if ino is not None and self.inode(ino).nlink > 0:
                    continue
                revival = revalidate.revive_file(self, fid, self.known_locations(fid))
                if revival:
                    self.record(*revival)
                    applied.extend(revival)
                    self.forget_vanished(fid)
            for fid in revalidate.revived:  # unsaved content here continues the file brought back
                self.db.execute("UPDATE dirty SET base=(SELECT version FROM inodes WHERE fid=?) WHERE fid=?",
                                (fid, fid))
            brought_back = {fid for fid in keep_alive - named_here
                            if self.vanished_locations(fid) is None and self.location_of(fid) is not None}
            for fid in watched:  # named again: where it was before it vanished no longer matters
                if self.location_of(fid) is not None:
                    self.forget_vanished(fid)
        return Rebased(applied, list(revalidate.conflicts), brought_back)

    def _remember_vanished(self, fid: str) -> None:
        """Keep where a file (and the directories above it) was before another device deleted it."""
        chain, at = {}, fid
        while at in self.base_locations:
            chain[at] = self.base_locations[at]
            at = chain[at]["parent"]
        self.db.execute("INSERT OR REPLACE INTO vanished(fid, locations) VALUES(?, ?)", (fid, json.dumps(chain)))

    def vanished_locations(self, fid: str) -> dict[str, dict] | None:
        """Where a file open here was before another device deleted it (see rebase)."""
        row = self.db.execute("SELECT locations FROM vanished WHERE fid=?", (fid,)).fetchone()
        return json.loads(row[0]) if row else None

    def known_locations(self, fid: str) -> dict[str, dict]:
        """During a rebase: where files were in the committed state, and where this one was
        before it vanished (it may have been nameless in the committed state already)."""
        return {**(self.vanished_locations(fid) or {}), **self.base_locations}

    def forget_vanished(self, fid: str) -> None:
        self.db.execute("DELETE FROM vanished WHERE fid=?", (fid,))

    def _locations(self, fids: set[str]) -> dict[str, dict]:
        """Where each file and its ancestors are in the committed state, to bring them back."""
        found: dict[str, dict] = {}
        todo = list(fids)
        while todo:
            fid = todo.pop()
            if fid in found or fid == ROOT_FID:
                continue
            row = self.db.execute(
                "SELECT p.fid, d.name, i.mode, i.uid, i.gid FROM inodes i JOIN dentries d ON d.ino = i.ino "
                "JOIN inodes p ON p.ino = d.parent WHERE i.fid=? LIMIT 1", (fid,)).fetchone()
            if row:
                found[fid] = {"parent": row[0], "name": name_to_json(row[1]), "mode": row[2], "uid": row[3],
                              "gid": row[4]}
                todo.append(row[0])
        return found

    def path_of(self, fid: str, name: bytes | None = None) -> str | None:
        """The file's path from the root ("/docs/a.txt"), or, with `name`, the path of that
        name inside directory `fid`. None when it has no name."""
        parts = [] if name is None else [name]
        at = fid
        while at != ROOT_FID:
            where = self.location_of(at)
            if where is None:
                return None
            at = where[0]
            parts.append(where[1])
        return "/" + "/".join(name_to_json(p) for p in reversed(parts))

    def conflicted_copies(self) -> list[str]:
        """Paths of the names made by the conflict rules that are still there (names are
        BLOBs, which LIKE never matches: instr compares the bytes)."""
        rows = self.db.execute(
            "SELECT i.fid FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE instr(d.name, ?) > 0",
            (b" (conflicted copy from ",)).fetchall()
        return sorted(path for (fid,) in rows if (path := self.path_of(fid)) is not None)

    def location_of(self, fid: str) -> tuple[str, bytes] | None:
        """(parent fid, name) of one of the file's names now, or None if it has none."""
        row = self.db.execute(
            "SELECT p.fid, d.name FROM inodes i JOIN dentries d ON d.ino = i.ino JOIN inodes p ON p.ino = d.parent "
            "WHERE i.fid=? LIMIT 1", (fid,)).fetchone()
        return (row[0], row[1]) if row else None

    def apply_remote(self, seq: int, ops: Iterable[dict]) -> None:
        with self:
            for op in ops:
                self.apply(op)
            self.set_state("applied_seq", seq)

    # --- dirty files (staged content not yet uploaded) --------------------------------

    def set_dirty(self, fid: str, dirty: bool, base: int = 0) -> None:
        """`base`: the version the local edit started from, so a concurrent remote update is seen."""
        if dirty:
            self.db.execute("INSERT OR IGNORE INTO dirty(fid, base) VALUES(?, ?)", (fid, base))
        else:
            self.db.execute("DELETE FROM dirty WHERE fid=?", (fid,))

    def dirty_base(self, fid: str) -> int | None:
        row = self.db.execute("SELECT base FROM dirty WHERE fid=?", (fid,)).fetchone()
        return row[0] if row else None

    def dirty_fids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT fid FROM dirty")]

    # --- applying operations ----------------------------------------------------------

    def apply(self, op: dict) -> None:
        handler = getattr(self, f"_op_{op.get('op')}", None)
        if handler is None:  # written by a newer fusedrive: applying part of an entry would fork the tree
            raise UnknownOperation(f"The journal holds an operation this version of fusedrive cannot apply "
                                   f"({op.get('op')!r}); update fusedrive on this device. Changes made here stay "
                                   "queued until then.")
        handler(op)

    def _ino(self, fid: str) -> int:
        ino = self.ino_of(fid)
        if ino is None:
            raise KeyError(f"unknown file id {fid}")
        return ino

    def _touch(self, ino: int, t: int) -> None:
        self.db.execute("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE ino=?", (t, t, ino))

    def _add_dentry(self, parent: int, name: bytes, ino: int, is_dir: bool) -> None:
        self.db.execute("INSERT INTO dentries(parent, name, ino) VALUES(?, ?, ?)", (parent, name, ino))
        self.db.execute("UPDATE inodes SET nlink = nlink + 1 WHERE ino=?", (ino,))
        if is_dir:
            self.db.execute("UPDATE inodes SET nlink = nlink + 1 WHERE ino=?", (parent,))

    def _drop_dentry(self, parent: int, name: bytes, t: int) -> None:
        ino = self.lookup(parent, name)
        node = self.inode(ino) if ino is not None else None
        self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?", (parent, name))
        if node is None:
            return
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (t, ino))
        # A directory's own "." link goes with its last name.
        drop = 2 if node.is_dir else 1
        self.db.execute("UPDATE inodes SET nlink = max(nlink - ?, 0) WHERE ino=?", (drop, ino))
        if node.is_dir:
            self.db.execute("UPDATE inodes SET nlink = nlink - 1 WHERE ino=?", (parent,))
        if node.nlink - drop <= 0:
            self._to_trash(node, parent, name, t)
            if not self.in_use(ino):
                self.forget_inode(ino)

    def _to_trash(self, node: Inode, parent: int, name: bytes, t: int) -> None:
        """A file's last name is gone: it goes to the trash, where it was, with its content."""
        self.db.execute("DELETE FROM trash WHERE fid=?", (node.fid,))
        self.db.execute(
            "INSERT INTO trash(fid, parent, name, mode, uid, gid, size, mtime_ns, manifest, target, deleted_t)"
            " VALUES(?, (SELECT fid FROM inodes WHERE ino=?), ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (node.fid, parent, name, node.mode, node.uid, node.gid, node.size, node.mtime_ns, node.manifest,
             node.target, t))

    def forget_inode(self, ino: int) -> None:
        self.db.execute("DELETE FROM vanished WHERE fid=(SELECT fid FROM inodes WHERE ino=?)", (ino,))
        self.db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino=?", (ino,))

    def _op_mkroot(self, op: dict) -> None:
        t = op["t"]
        self.db.execute("INSERT OR IGNORE INTO fid_inos(ino, fid) VALUES(?, ?)", (ROOT_INO, ROOT_FID))
        self.db.execute(
            "INSERT OR IGNORE INTO inodes(ino, fid, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, 2)",
            (ROOT_INO, ROOT_FID, op["mode"], op["uid"], op["gid"], t, t, t),
        )

    def _new_inode(self, op: dict, mode: int, target: bytes | None = None) -> int:
        t = op["t"]
        # Inode numbers are this device's, stable per file id even when a rebase re-creates the row.
        self.db.execute("INSERT OR IGNORE INTO fid_inos(fid) VALUES(?)", (op["fid"],))
        ino = self.db.execute("SELECT ino FROM fid_inos WHERE fid=?", (op["fid"],)).fetchone()[0]
        # A file that comes back may still have a nameless row here (open when it was deleted),
        # and is no longer in the trash.
        self.db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM trash WHERE fid=?", (op["fid"],))
        self.db.execute(
            "INSERT INTO inodes(ino, fid, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink, rdev, target)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            # A directory starts with its own "." link; its name adds the other.
            (ino, op["fid"], mode, op["uid"], op["gid"], t, t, t, 1 if stat.S_ISDIR(mode) else 0, op.get("rdev", 0),
             target),
        )
        return ino

    def _op_mknod(self, op: dict) -> None:
        parent = self._ino(op["parent"])
        ino = self._new_inode(op, op["mode"])
        self._add_dentry(parent, name_from_json(op["name"]), ino, stat.S_ISDIR(op["mode"]))
        self._touch(parent, op["t"])

    def _op_symlink(self, op: dict) -> None:
        parent = self._ino(op["parent"])
        ino = self._new_inode(op, stat.S_IFLNK | 0o777, name_from_json(op["target"]))
        target_len = len(name_from_json(op["target"]))
        self.db.execute("UPDATE inodes SET size=? WHERE ino=?", (target_len, ino))
        self._add_dentry(parent, name_from_json(op["name"]), ino, False)
        self._touch(parent, op["t"])

    def _op_link(self, op: dict) -> None:
        parent, ino = self._ino(op["parent"]), self._ino(op["fid"])
        self._add_dentry(parent, name_from_json(op["name"]), ino, False)
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (op["t"], ino))
        self._touch(parent, op["t"])

    def _op_unlink(self, op: dict) -> None:
        parent = self._ino(op["parent"])
        self._drop_dentry(parent, name_from_json(op["name"]), op["t"])
        self._touch(parent, op["t"])

    def _op_rename(self, op: dict) -> None:
        old_parent, new_parent = self._ino(op["parent"]), self._ino(op["newparent"])
        old_name, new_name = name_from_json(op["name"]), name_from_json(op["newname"])
        ino = self.lookup(old_parent, old_name)
        target = self.lookup(new_parent, new_name)
        t = op["t"]
        if op.get("exchange"):
            self.db.execute("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (target, old_parent, old_name))
            self.db.execute("UPDATE dentries SET ino=? WHERE parent=? AND name=?", (ino, new_parent, new_name))
            for moved, frm, to in ((ino, old_parent, new_parent), (target, new_parent, old_parent)):
                if self.inode(moved).is_dir and frm != to:
                    self.db.execute("UPDATE inodes SET nlink = nlink - 1 WHERE ino=?", (frm,))
                    self.db.execute("UPDATE inodes SET nlink = nlink + 1 WHERE ino=?", (to,))
        else:
            if target == ino:
                return
            if target is not None:
                self._drop_dentry(new_parent, new_name, t)
            is_dir = self.inode(ino).is_dir
            self.db.execute(
                "UPDATE dentries SET parent=?, name=? WHERE parent=? AND name=?",
                (new_parent, new_name, old_parent, old_name),
            )
            if is_dir and old_parent != new_parent:
                self.db.execute("UPDATE inodes SET nlink = nlink - 1 WHERE ino=?", (old_parent,))
                self.db.execute("UPDATE inodes SET nlink = nlink + 1 WHERE ino=?", (new_parent,))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (t, ino))
        self._touch(old_parent, t)
        self._touch(new_parent, t)

    def _op_setattr(self, op: dict) -> None:
        ino = self._ino(op["fid"])
        for column in ("mode", "uid", "gid", "atime_ns", "mtime_ns"):
            if column in op:
                self.db.execute(f"UPDATE inodes SET {column}=? WHERE ino=?", (op[column], ino))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (op["t"], ino))

    def _op_update(self, op: dict) -> None:
        """New content; every content a file ever had is also a row of `versions` (history),
        numbered per file from 1, until gc prunes it. An update marked `trash` is the last
        save of a file deleted before that save had uploaded: it lands in its trash entry."""
        manifest = json.dumps(op["manifest"], separators=(",", ":"))
        ino = self.ino_of(op["fid"]) if op.get("trash") else self._ino(op["fid"])
        if ino is not None:
            self.db.execute(
                "UPDATE inodes SET manifest=?, size=?, mtime_ns=?, ctime_ns=?, version=version + 1 WHERE ino=?",
                (manifest, op["size"], op["mtime_ns"], op["t"], ino),
            )
        if op.get("trash"):
            self.db.execute("UPDATE trash SET manifest=?, size=?, mtime_ns=? WHERE fid=?",
                            (manifest, op["size"], op["mtime_ns"], op["fid"]))
        self.db.execute(
            "INSERT INTO versions(fid, version, manifest, size, mtime_ns, t, device) VALUES(?, "
            "(SELECT coalesce(max(version), 0) + 1 FROM versions WHERE fid=?), ?, ?, ?, ?, ?)",
            (op["fid"], op["fid"], manifest, op["size"], op["mtime_ns"], op["t"], op.get("device")))

    def _op_prune(self, op: dict) -> None:
        """gc: old versions the retention policy lets go (never a file's newest)."""
        newest = self.db.execute("SELECT max(version) FROM versions WHERE fid=?", (op["fid"],)).fetchone()[0]
        self.db.executemany("DELETE FROM versions WHERE fid=? AND version=? AND version < ?",
                            [(op["fid"], v, newest) for v in op["versions"]])

    def _op_archive(self, op: dict) -> None:
        """Blocks `fusedrive archive` moved to a cold storage class (only gc-style commands
        make this op, never a mount, so it is not undo-logged)."""
        self.db.executemany("INSERT OR REPLACE INTO archived(block, storage_class) VALUES(?, ?)",
                            [(block, op["storage_class"]) for block in op["blocks"]])

    def _op_thaw(self, op: dict) -> None:
        self.db.executemany("DELETE FROM archived WHERE block=?", [(block,) for block in op["blocks"]])

    def archived_class(self, block_id: str) -> str | None:
        row = self.db.execute("SELECT storage_class FROM archived WHERE block=?", (block_id,)).fetchone()
        return row[0] if row else None

    def in_trash(self, fid: str) -> bool:
        return self.db.execute("SELECT 1 FROM trash WHERE fid=?", (fid,)).fetchone() is not None

    def trashed_content(self, fid: str) -> dict | None:
        """A trashed file's last content, as the fields of an update op."""
        row = self.db.execute("SELECT manifest, size, mtime_ns FROM trash WHERE fid=?", (fid,)).fetchone()
        return {"manifest": json.loads(row[0]), "size": row[1], "mtime_ns": row[2]} if row else None

    def _op_purge(self, op: dict) -> None:
        """Trashed files gone for good (trash emptied, or expired in gc), with their versions."""
        for fid in op["fids"]:
            if not self.in_trash(fid):
                continue  # brought back meanwhile
            self.db.execute("DELETE FROM trash WHERE fid=?", (fid,))
            self.db.execute("DELETE FROM versions WHERE fid=?", (fid,))

    def _op_setxattr(self, op: dict) -> None:
        ino = self._ino(op["fid"])
        self.db.execute(
            "INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES(?, ?, ?)",
            (ino, name_from_json(op["name"]), base64.b64decode(op["value"])),
        )
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (op["t"], ino))

    def _op_rmxattr(self, op: dict) -> None:
        ino = self._ino(op["fid"])
        self.db.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, name_from_json(op["name"])))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (op["t"], ino))

    # --- a comparable picture of the tree (fsck) --------------------------------------

    def walk(self) -> Iterator[tuple[bytes, Inode]]:
        """Every (path, inode) reachable from the root, depth first, in name order."""
        stack = [(b"", ROOT_INO)]
        while stack:
            path, ino = stack.pop()
            node = self.inode(ino)
            yield path or b"/", node
            if node.is_dir:
                for name, child in reversed(self.children(ino)):
                    stack.append((path + b"/" + name, child))
