"""The metadata replica: this device's SQLite copy of the tree, built from the journal.

Operations name files by stable ids (`fid`, UUIDs); inode numbers are local rows.
`apply(op)` is the only code that changes the tree, and it is deterministic, so
replaying the journal on a fresh device rebuilds exactly the same tree. Local
changes are applied at once and queued in `pending` in the same transaction: the
commit queue survives crashes because it is this table.

Not thread-safe: only the trio loop thread touches it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..crashpoints import crash_point
from ..errors import IntegrityError
from .applying import Applying
from .manifest import BlockRef, Carried, block_refs, pieces
from .ops import check_recorded
from .tree import (OLD_UNDO_TRIGGERS, ROOT_FID, ROOT_INO, SCHEMA, SCHEMA_STAMP, UNDO_TABLE, UNDO_TRIGGERS, Inode,
                   fids_of, name_to_json)

PATH_HISTORY_FORMAT = 3  # entries from this format on: history follows the path (applying.py)


@dataclass
class Rebased:
    """What a rebase did: every operation applied, remote and local (to invalidate what
    front ends cached), the conflicted copies the rules made ({"parent", "name", "copy"}),
    and files deleted here, with a save not uploaded, that another device's commit brought
    back (that save is not the revived file's content)."""

    applied: list[dict]
    conflicts: list[dict]
    deleted_saves_brought_back: set[str]


class Replica(Applying):
    def __init__(self, path: str, in_use: Callable[[int], bool] = lambda ino: False,
                 on_record: Callable[[], None] = lambda: None,
                 on_carried: Callable[[dict[str, int]], None] = lambda where: None) -> None:
        """`in_use(ino)` says whether the kernel still holds an inode whose last name is gone;
        `on_record()`: a mount commits what was queued (Committer.kick); `on_carried(where)`:
        which entry each carried block is read from (BlockStore.carried_in)."""
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._depth = 0  # nesting of `with self:` (one SQLite transaction)
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        # ~15 pages a transaction: a checkpoint every 10,000 instead of 1,000 took a tenth off deletes, creates
        self.db.execute("PRAGMA wal_autocheckpoint=10000")
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_STAMP:
            self.db.executescript(SCHEMA + OLD_UNDO_TRIGGERS)
            self._renumber_undo_log()
            self.db.execute(f"PRAGMA user_version = {SCHEMA_STAMP}")
        self._undo_pending_id = 0  # the queued row whose changes the undo triggers log (0: none)
        self.db.create_function("undo_pending_id", 0, lambda: self._undo_pending_id)
        self.db.executescript(UNDO_TRIGGERS)
        self.in_use, self.on_record, self.on_carried = in_use, on_record, on_carried
        self.base_locations: dict[str, dict] = {}  # set by rebase, see _locations

    def _renumber_undo_log(self) -> None:
        """Replicas written before numbered undo rows AUTOINCREMENT, which updates
        `sqlite_sequence` for every row logged; only their order matters, which a plain
        rowid (one past the largest) keeps. Rebuilds such a table once, rows kept."""
        (sql,) = self.db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='undo'").fetchone()
        if "AUTOINCREMENT" not in sql.upper():
            return
        with self:
            self.db.execute("ALTER TABLE undo RENAME TO undo_numbered")
            self.db.execute(UNDO_TABLE)
            self.db.execute("INSERT INTO undo(id, pending_id, sql) SELECT id, pending_id, sql FROM undo_numbered")
            self.db.execute("DROP TABLE undo_numbered")

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

    def inodes(self, inos: list[int]) -> dict[int, Inode]:
        """The rows of these inodes (those that exist), in one query: a directory listing's."""
        marks = ",".join("?" * len(inos))
        return {row[0]: Inode(*row) for row in self.db.execute(f"SELECT * FROM inodes WHERE ino IN ({marks})", inos)}

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

    def place_of(self, ino: int) -> tuple[int, bytes] | None:
        """(parent inode, name) of one of the inode's names, None if it has none."""
        row = self.db.execute("SELECT parent, name FROM dentries WHERE ino=? LIMIT 1", (ino,)).fetchone()
        return (row[0], row[1]) if row else None

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
        for op in ops:
            check_recorded(op)
        with self:
            cur = self.db.execute("INSERT INTO pending(op) VALUES(?)", (json.dumps(list(ops)),))
            for op in ops:
                self._apply_logged(cur.lastrowid, op)
        self.on_record()

    def queue_again(self, pending_id: int, ops: list[dict], commit_id: str | None = None,
                    revalidate=None) -> None:
        """Queue `ops` as row `pending_id` and apply them (undo-logged): as they are (applied to
        this very tree before, forks.py), else as `revalidate` rewrites them. `commit_id`: the
        lost entry they commit again."""
        if revalidate is None:
            for op in ops:
                self._apply_logged(pending_id, op)
        else:
            ops = self._apply_rewritten(pending_id, ops, revalidate)
        self.db.execute("INSERT INTO pending(id, op) VALUES(?, ?)", (pending_id, json.dumps(ops)))
        if commit_id is not None:
            self.db.execute("INSERT INTO requeued(pending_id, commit_id) VALUES(?, ?)", (pending_id, commit_id))

    def _apply_rewritten(self, pending_id: int, ops: list[dict], revalidate) -> list[dict]:
        """Apply queued ops as `revalidate(replica, op)` rewrites them (the conflict rules), each
        name claimed just before it is applied; the ops applied."""
        kept = []
        for op in ops:
            for new_op in revalidate(self, op):
                for claimed in revalidate.claim_name(self, new_op):
                    check_recorded(claimed)  # queued anew, as record() checks what it queues
                    self._apply_logged(pending_id, claimed)
                    kept.append(claimed)
        return kept

    def _apply_logged(self, pending_id: int, op: dict) -> None:
        self._undo_pending_id = pending_id
        try:
            self.apply(op)
        finally:
            self._undo_pending_id = 0

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

    def first_pending_id(self) -> int | None:
        return self.db.execute("SELECT min(id) FROM pending").fetchone()[0]

    def last_pending_id(self) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM pending").fetchone()[0]

    def requeued_commits(self, first_id: int, last_id: int) -> list[str]:
        """Commit ids of the lost entries rows `first_id`..`last_id` commit again (not of a row the
        conflict rules emptied: its writer may fit it better, and drops its own row for one named)."""
        return [row[0] for row in self.db.execute(
            "SELECT r.commit_id FROM requeued r JOIN pending p ON p.id = r.pending_id WHERE r.pending_id BETWEEN ? "
            "AND ? AND p.op != '[]' ORDER BY r.pending_id", (first_id, last_id))]

    def mark_committed(self, last_id: int, seq: int, commit_id: str | None = None) -> None:
        """Queued rows up to `last_id` are in the journal, as entry `seq` (`commit_id`: its id,
        when this device's own entry took the seq)."""
        with self:
            self.db.execute("DELETE FROM pending WHERE id <= ?", (last_id,))
            self.db.execute("DELETE FROM undo WHERE pending_id <= ?", (last_id,))
            self.db.execute("DELETE FROM requeued WHERE pending_id <= ?", (last_id,))
            self.set_state("applied_seq", seq)
            if commit_id is not None:
                self.set_state("applied_commit", commit_id)

    # --- carried blocks (format 4: small blocks inside journal entries, see blocks.py) -----

    def carry(self, blobs: dict[str, bytes]) -> None:
        """Keep the sealed bytes of blocks a queued update carries until an entry commits
        them (call in the transaction that queues the update: they survive a crash with it)."""
        self.db.executemany("INSERT OR REPLACE INTO carrying(block, blob) VALUES(?, ?)", blobs.items())

    def blocks_to_carry(self, ops: Iterable[dict]) -> dict[str, bytes]:
        """The sealed bytes an entry of `ops` must carry: the carried blocks they name that
        no committed entry carries yet."""
        wanted = {piece.block for op in ops if op["op"] == "update" for piece in pieces(op["manifest"])
                  if isinstance(piece.location, Carried)}
        blobs = {}
        for block_id in sorted(wanted):
            if self.db.execute("SELECT 1 FROM carried WHERE block=?", (block_id,)).fetchone():
                continue
            row = self.db.execute("SELECT blob FROM carrying WHERE block=?", (block_id,)).fetchone()
            if row is None:
                raise IntegrityError(f"Block {block_id} is to travel in a journal entry, but this device does not "
                                     "have its bytes.")
            blobs[block_id] = row[0]
        return blobs

    def carried_by(self, seq: int, block_ids: Iterable[str]) -> None:
        """Entry `seq` carries these blocks: a block is read from the first entry that
        carried it; this device's queued copies go."""
        self.carried_by_many([(block_id, seq) for block_id in block_ids])

    def carried_by_many(self, rows: list[tuple[str, int]]) -> None:
        """`carried_by` for (block, seq) pairs (a checkpoint's)."""
        if not rows:
            return
        self.db.executemany("INSERT OR IGNORE INTO carried(block, seq) VALUES(?, ?)", rows)
        self.db.executemany("DELETE FROM carrying WHERE block=?", [(block_id,) for block_id, _ in rows])
        where = {}
        for block_id, _ in rows:
            where[block_id] = self.db.execute("SELECT seq FROM carried WHERE block=?", (block_id,)).fetchone()[0]
        self.on_carried(where)

    def carried_blocks(self) -> dict[str, int]:
        """Every carried block and the entry it is read from."""
        return dict(self.db.execute("SELECT block, seq FROM carried"))

    def carrying_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT block FROM carrying")}

    def carrying_blocks(self) -> dict[str, bytes]:
        """The sealed bytes of carried blocks not committed yet (this device's)."""
        return dict(self.db.execute("SELECT block, blob FROM carrying"))

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
        entries = list(entries)
        watched = set(watched) | set(keep_alive)
        with self:
            named_here = {fid for fid in watched if self.location_of(fid) is not None}
            rows = self.db.execute("SELECT id, op FROM pending ORDER BY id").fetchall()
            referenced = {fid for _, ops in rows for op in json.loads(ops) for fid in fids_of(op)} | watched
            # rows queued again after a fork may be dropped below (their entry is back): where a
            # file one made was here is where a later row brings it back if the entries deleted it
            here = self.locations(referenced) if self.db.execute("SELECT 1 FROM requeued").fetchone() else {}
            self.take_back_queue()
            self.base_locations = {**here, **self.locations(referenced)}
            for entry in entries:
                self._apply_entry(entry.seq, entry.ops, entry.format, entry.blocks)
                applied.extend(entry.ops)
                if not entry.dead:  # (another history's: the next entry follows the one before it)
                    self.set_state("applied_commit", entry.chain_id)
            for fid in named_here:
                if fid in self.base_locations and self.location_of(fid) is None:
                    self._remember_vanished(fid)
            crash_point("rebase")
            rows = self._without_restored(rows, entries)
            for pending_id, ops in rows:
                kept = self._apply_rewritten(pending_id, ops, revalidate)
                applied.extend(kept)
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

    def _without_restored(self, rows: list, entries: list) -> list[tuple[int, list[dict]]]:
        """Queued rows without what `entries` commit already: a row queued again after a fork
        whose lost entry another device put back or committed again (`restores`), and any op
        of such a row that an entry commits as it is (a lost entry that itself committed
        others' lost changes again, beside changes of its own)."""
        restored = {c for entry in entries for c in [*entry.restores, *([] if entry.dead else [entry.commit_id])]}
        requeued = dict(self.db.execute("SELECT pending_id, commit_id FROM requeued"))
        incoming = {json.dumps(op, sort_keys=True) for entry in entries for op in entry.ops} if requeued else set()
        return [(pending_id, [] if requeued.get(pending_id) in restored else
                 [op for op in json.loads(ops) if pending_id not in requeued
                  or json.dumps(op, sort_keys=True) not in incoming]) for pending_id, ops in rows]

    def take_back_queue(self) -> None:
        """Undo every queued operation (the undo log), leaving the rows queued."""
        for (sql,) in self.db.execute("SELECT sql FROM undo ORDER BY id DESC").fetchall():
            self.db.execute(sql)
        self.db.execute("DELETE FROM undo")

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

    def locations(self, fids: set[str]) -> dict[str, dict]:
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

    def apply_remote(self, seq: int, ops: Iterable[dict], entry_format: int = PATH_HISTORY_FORMAT,
                     carried: Iterable[str] = ()) -> None:
        """Apply one journal entry (by its format's rules); note the blocks it carries."""
        with self:
            self._apply_entry(seq, list(ops), entry_format, carried)

    def _apply_entry(self, seq: int, ops: list[dict], entry_format: int, carried: Iterable[str]) -> None:
        """Journal entry `seq`: its ops, by the rules of the format that wrote it (local ops,
        applied by `record`, follow this build's), the blocks it carries, the roster's log."""
        self.path_history = entry_format >= PATH_HISTORY_FORMAT
        try:
            for op in ops:
                self.apply(op)
        finally:
            self.path_history = True
        self.carried_by(seq, carried)
        self.note_membership_entry(seq, ops)
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
