"""Telling the front end and the user what changed.

The engine never speaks FUSE: after operations are applied (another device's commit, a
rebase, a conflicted copy, a restore) it names the inodes and directory entries whose
cached view is stale, and each front end told of changes (the FUSE mount, a mirror: each
for as long as it serves, `Drive.changes_told_to`) drops what it cached of them. Remote
changes and conflicts become events for the user.
"""

from __future__ import annotations

from typing import Callable, Protocol

from .events import EventBus
from .journal import Entry
from .membership import Roster
from .rebase import conflict_of
from .replica import Replica
from .tree import name_from_json

CHANGE_WORDS = {"mknod": "created", "symlink": "created", "link": "linked", "unlink": "deleted",
                "rename": "moved", "update": "changed"}  # the rest (attributes, xattrs) is "changed"


class FrontEnd(Protocol):
    def invalidate(self, inodes: set[int], names: set[tuple[int, bytes]]) -> None:
        """Drop what is cached of these inodes and of these (parent inode, name) entries.
        Called in the trio thread, between awaits: it must not block."""
        ...


class Changes:
    """Owns the front ends told of changes (`Drive.changes_told_to`) and the count of conflicts seen."""

    def __init__(self, replica: Replica, events: EventBus, device: str,
                 forget: Callable[[int], None], fire: Callable[[], None]) -> None:
        """`forget(ino)`: the engine's own caches of a changed inode; `fire()`: wake
        whoever waits for local state to change."""
        self.replica = replica
        self.events = events
        self.device = device
        self.front_ends: list[FrontEnd] = []
        self.conflicts_seen = 0
        self._forget = forget
        self._fire = fire

    def applied(self, ops: list[dict]) -> None:
        """These operations changed the tree: invalidate every view of what they touched."""
        inodes, names = set(), set()
        for op in ops:
            for key in ("fid", "parent", "newparent"):
                ino = self.replica.ino_of(op[key]) if key in op else None
                if ino is not None:
                    inodes.add(ino)
                    self._forget(ino)
            for parent_key, name_key in (("parent", "name"), ("newparent", "newname")):
                ino = self.replica.ino_of(op[parent_key]) if parent_key in op else None
                if ino is not None and name_key in op:
                    names.add((ino, name_from_json(op[name_key])))
        if inodes or names:
            for front_end in self.front_ends:
                front_end.invalidate(inodes, names)
        self._fire()

    def content_changed(self, fid: str) -> None:
        """A file's content is not what the front end may have cached."""
        self.applied([{"op": "update", "fid": fid}])

    def publish_remote(self, entries: list[Entry], conflicts: list[dict]) -> None:
        """One event per file per remote entry (a new file's create and content are one
        change), and one per conflicted copy, wherever it was made."""
        for entry in entries:
            seen = set()
            by = _by(self.replica, entry)
            for op in entry.ops:
                fid = op.get("fid")
                if fid is None or fid in seen or op["op"] == "mkroot":
                    continue
                seen.add(fid)
                if "conflict_of" in op:
                    self.publish_conflict(conflict_of(op), entry.device)
                    continue
                if op["op"] == "unlink":
                    path = self.replica.path_of(op["parent"], name_from_json(op["name"]))
                else:
                    path = self.replica.path_of(fid)
                self.events.publish("remote-change", path=path, change=CHANGE_WORDS.get(op["op"], "changed"),
                                    device=entry.device, **by)
        for conflict in conflicts:
            self.publish_conflict(conflict, self.device)

    def publish_conflict(self, conflict: dict, device: str) -> None:
        """`device`: whose version went into the copy."""
        self.conflicts_seen += 1
        self.events.publish("conflict", device=device,
                            path=self.replica.path_of(conflict["parent"], name_from_json(conflict["name"])),
                            copy=self.replica.path_of(conflict["parent"], name_from_json(conflict["copy"])))


def _by(replica: Replica, entry: Entry) -> dict:
    """`by`: the person who wrote the entry, in a volume shared with people (its signature was
    checked before it was applied)."""
    if entry.signer is None:
        return {}
    return {"by": Roster.of(replica).name_of(entry.signer.get("member"))}
