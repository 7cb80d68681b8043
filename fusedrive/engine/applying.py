"""Applying journal operations to the replica's tables: the only code that changes the
tree. Deterministic, so replaying the journal on a fresh device rebuilds exactly the
same tree. A mixin of `Replica` (it works on the replica's connection).

History follows the path (entries of format 3 on): a regular file renamed over another
continues that file's history (`lineage`), which then leaves without a trash entry, since
nobody deleted it; a regular file created where another left its name (renamed away or
deleted) within SUCCESSION_NS continues that one's history too (vim's save: the original
renamed to a backup, a new file written, the backup deleted — and a later delete of a file
whose history goes on elsewhere is no trash entry either)."""

from __future__ import annotations

import base64
import json
import sqlite3
import stat
from typing import Iterable

from ..errors import UnknownOperation
from .membership import MEMBERSHIP_OPS, STATE_KEY as ROSTER_KEY, Roster
from .tree import ROOT_FID, ROOT_INO, Inode, name_from_json

SUCCESSION_NS = 60 * 10**9


def _saved_by(op: dict) -> str | None:
    """Who a version is shown as saved by: the device, and in a volume shared with people the
    person (`by`, checked against the entry's signature before it is applied: membership.py)."""
    device, person = op.get("device"), op.get("by")
    return f"{person} on {device}" if person and device else person or device


class Applying:
    """The tree's operations, one `_op_<kind>` per journal op kind (docs/format.md)."""

    db: sqlite3.Connection
    path_history = True  # the rules of format 3 (Replica sets it per entry applied)

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

    def _succeed_departed(self, op: dict) -> None:
        """A new file where a file left this name a moment ago continues its history."""
        row = self.db.execute("SELECT fid, t FROM departed WHERE parent=? AND name=?",
                              (op["parent"], name_from_json(op["name"]))).fetchone()
        if row is not None and op["t"] - row[1] <= SUCCESSION_NS:
            self._succeed(op["fid"], row[0])

    def _succeed(self, fid: str, predecessor: str) -> None:
        """`fid` continues the history of `predecessor` (never in a cycle). A file has one
        predecessor, the first one found, and never loses it: a file deleted without a trash
        entry because its history went on in `fid` is found only through `fid`'s chain. A
        replaced file that cannot join a chain goes to the trash instead. Only a file
        something already continues can be in the predecessor's chain, so a new file (every
        save's case) costs no walk of it."""
        if fid == predecessor or (self.successor_of(fid) is not None and fid in self.history_chain(predecessor)):
            return
        # the path's version numbers go on after the predecessor's last one (kept here, so that
        # gc pruning it does not move them; a save of it still on its way moves them up)
        last = self.db.execute("SELECT coalesce(max(version), 0) FROM versions WHERE fid=?", (predecessor,)).fetchone()
        self.db.execute("INSERT OR IGNORE INTO lineage(fid, predecessor, predecessor_last) VALUES(?, ?, ?)",
                        (fid, predecessor, last[0]))

    def _depart(self, parent: int, name: bytes, node: Inode, t: int) -> None:
        """A regular file left this name: a new file there soon after continues its history."""
        if self.path_history and node.is_reg:
            parent_fid = self.db.execute("SELECT fid FROM inodes WHERE ino=?", (parent,)).fetchone()[0]
            self.db.execute("DELETE FROM departed WHERE parent=? AND name=?", (parent_fid, name))  # (undo-logged)
            self.db.execute("INSERT INTO departed(parent, name, fid, t) VALUES(?, ?, ?, ?)",
                            (parent_fid, name, node.fid, t))

    def successor_of(self, fid: str) -> str | None:
        row = self.db.execute("SELECT fid FROM lineage WHERE predecessor=?", (fid,)).fetchone()
        return row[0] if row else None

    def history_head(self, fid: str) -> str:
        """The file whose history `fid`'s goes on in (itself, if none does)."""
        seen = [fid]
        while (successor := self.successor_of(seen[-1])) is not None and successor not in seen:
            seen.append(successor)
        return seen[-1]

    def history_chain(self, fid: str) -> list[str]:
        """`fid` and the files whose history it continues, newest first."""
        return [member for member, _base in reversed(self.history_bases(fid))]

    def history_bases(self, fid: str) -> list[tuple[str, int]]:
        """`fid` and the files whose history it continues, oldest first, each with what the
        path's version numbers of it start after (the predecessors' last versions, summed).
        One walk of the chain (a loop, which fsck reports, ends it)."""
        walked, seen = [(fid, 0)], {fid}
        while (row := self.db.execute("SELECT predecessor, predecessor_last FROM lineage WHERE fid=?",
                                      (walked[-1][0],)).fetchone()) and row[0] not in seen:
            walked[-1] = (walked[-1][0], row[1])
            walked.append((row[0], 0))
            seen.add(row[0])
        bases, base = [], 0
        for member, last in reversed(walked):  # oldest first: each starts after the ones before
            bases.append((member, base + last if bases else 0))
            base = bases[-1][1]
        return bases

    def _drop_dentry(self, parent: int, name: bytes, t: int, replaced_by: Inode | None = None,
                     scratch: bool = False) -> None:
        """A name goes. `replaced_by`: the file a rename puts there instead. `scratch`: a
        lock, swap or temporary file (engine/scratch.py) leaves no trace: no trash entry, no
        versions, no history for a file made there next."""
        ino = self.lookup(parent, name)
        node = self.inode(ino) if ino is not None else None
        self.db.execute("DELETE FROM dentries WHERE parent=? AND name=?", (parent, name))
        if node is None:
            return
        if replaced_by is None and not scratch:
            self._depart(parent, name, node, t)
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (t, ino))
        # A directory's own "." link goes with its last name.
        drop = 2 if node.is_dir else 1
        self.db.execute("UPDATE inodes SET nlink = max(nlink - ?, 0) WHERE ino=?", (drop, ino))
        if node.is_dir:
            self.db.execute("UPDATE inodes SET nlink = nlink - 1 WHERE ino=?", (parent,))
        if node.nlink - drop <= 0:
            if self.path_history and replaced_by is not None and node.is_reg and replaced_by.is_reg and not scratch:
                self._succeed(replaced_by.fid, node.fid)  # a save by rename: history, not trash
            if scratch:
                self.db.execute("DELETE FROM versions WHERE fid=?", (node.fid,))
            elif not (self.path_history and node.is_reg and self.successor_of(node.fid)):
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
        # and is no longer in the trash. It comes back as the op makes it, as on a device that
        # had forgotten the row: without the old row's extended attributes.
        self.db.execute("DELETE FROM inodes WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM xattrs WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM trash WHERE fid=?", (op["fid"],))
        if self.path_history and stat.S_ISREG(mode) and not op.get("scratch"):
            self._succeed_departed(op)
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
        self._drop_dentry(parent, name_from_json(op["name"]), op["t"], scratch=op.get("scratch", False))
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
            moving = self.inode(ino)
            self._depart(old_parent, old_name, moving, t)
            if target is not None:
                self._drop_dentry(new_parent, new_name, t, replaced_by=moving, scratch=op.get("scratch", False))
            is_dir = moving.is_dir
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
            (op["fid"], op["fid"], manifest, op["size"], op["mtime_ns"], op["t"], _saved_by(op)))
        # a save of a file whose history already goes on in another (it arrived after the rename)
        self.db.execute("UPDATE lineage SET predecessor_last = max(predecessor_last, "
                        "(SELECT max(version) FROM versions WHERE fid=?)) WHERE predecessor=?",
                        (op["fid"], op["fid"]))

    def _op_prune(self, op: dict) -> None:
        """gc: old versions the retention policy lets go (never a file's newest; a file whose
        history goes on in another has no newest of its own: the path's newest is there)."""
        newest = self.db.execute("SELECT max(version) FROM versions WHERE fid=?", (op["fid"],)).fetchone()[0]
        if self.path_history and self.successor_of(op["fid"]) is not None:
            newest = (newest or 0) + 1
        self.db.executemany("DELETE FROM versions WHERE fid=? AND version=? AND version < ?",
                            [(op["fid"], v, newest) for v in op["versions"]])

    def _op_archive(self, op: dict) -> None:
        """Blocks `fusedrive archive` moved to a cold storage class (only gc-style commands
        make this op, never a mount, so it is not undo-logged)."""
        self.db.executemany("INSERT OR REPLACE INTO archived(block, storage_class) VALUES(?, ?)",
                            [(block, op["storage_class"]) for block in op["blocks"]])

    def _op_thaw(self, op: dict) -> None:
        self.db.executemany("DELETE FROM archived WHERE block=?", [(block,) for block in op["blocks"]])

    def _op_member(self, op: dict) -> None:
        """The membership log (membership.py): only `members` commands make these ops, never a
        mount's queue, so the roster (in `state`) is not undo-logged."""
        roster = Roster.of(self)
        roster.apply(op)
        self.set_state(ROSTER_KEY, roster.to_json())

    _op_revoke = _op_epoch = _op_member

    def note_membership_entry(self, seq: int, ops: Iterable[dict]) -> None:
        """The roster's log names entry `seq` if it changed the roster (a checkpoint's reader
        checks the roster by reading those entries: membership.distrust)."""
        if any(op["op"] in MEMBERSHIP_OPS for op in ops):
            roster = Roster.of(self)
            roster.log.append(seq)
            self.set_state(ROSTER_KEY, roster.to_json())

    def archived_class(self, block_id: str) -> str | None:
        row = self.db.execute("SELECT storage_class FROM archived WHERE block=?", (block_id,)).fetchone()
        return row[0] if row else None

    def in_trash(self, fid: str) -> bool:
        return self.db.execute("SELECT 1 FROM trash WHERE fid=?", (fid,)).fetchone() is not None

    def last_content(self, fid: str) -> dict | None:
        """A file gone from the tree: its last content, as the fields of an update op — from
        its trash entry, or, replaced by a save by rename, from its newest version."""
        row = self.db.execute("SELECT manifest, size, mtime_ns FROM trash WHERE fid=?", (fid,)).fetchone()
        if row is None and self.successor_of(fid) is not None:
            row = self.db.execute("SELECT manifest, size, mtime_ns FROM versions WHERE fid=? ORDER BY version DESC "
                                  "LIMIT 1", (fid,)).fetchone()
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
        # a DELETE of its own, not INSERT OR REPLACE: SQLite's REPLACE removes the old row
        # without firing the trigger that logs it for undo (a rebase would lose the old value)
        self.db.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, name_from_json(op["name"])))
        self.db.execute("INSERT INTO xattrs(ino, name, value) VALUES(?, ?, ?)",
                        (ino, name_from_json(op["name"]), base64.b64decode(op["value"])))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (op["t"], ino))

    def _op_rmxattr(self, op: dict) -> None:
        ino = self._ino(op["fid"])
        self.db.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, name_from_json(op["name"])))
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE ino=?", (op["t"], ino))

    # --- a comparable picture of the tree (fsck) --------------------------------------
