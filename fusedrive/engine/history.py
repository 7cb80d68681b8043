"""Revision history and trash, read from the replica, and the operations that restore.

Every `update` in the journal keeps its content as a numbered version (the replica's
`versions` table), and a file whose last name goes is kept in `trash` with its content
and where it was. Restoring never copies a block: it commits an operation that points
at the kept manifest again. Everything here runs in the trio loop (or offline on a
replayed replica) and only reads; callers record what it returns.
"""

from __future__ import annotations

import json
import stat
import time
import uuid
from dataclasses import dataclass

from ..errors import Archived, FusedriveError, UsageError
from .rebase import conflict_name
from .replica import Replica
from .tree import ROOT_FID, ROOT_INO, name_from_json, name_to_json


@dataclass
class Version:
    number: int  # along the path's history, from 1
    saved_ns: int
    device: str | None
    size: int
    manifest: list
    fid: str = ""  # the file that had it (the path's earlier files, when programs saved by rename)

    def label(self) -> str:
        """How the version is named in listings and in .fusedrive/history."""
        stamp = time.strftime("%Y-%m-%d %H.%M.%S", time.localtime(self.saved_ns / 1e9))
        return f"v{self.number} {stamp}" + (f" {self.device}" if self.device else "")


@dataclass
class TrashItem:
    fid: str
    path: str  # where it was, as the user saw it
    parent: str
    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    manifest: list
    target: bytes | None
    deleted_ns: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def resolve(replica: Replica, path: str) -> int:
    """The inode at a path inside the drive ("/docs/a.txt")."""
    ino = ROOT_INO
    for part in [p for p in path.split("/") if p]:
        child = replica.lookup(ino, part.encode("utf-8", "surrogateescape"))
        if child is None:
            raise UsageError(f"{path} does not exist in the drive.")
        ino = child
    return ino


def versions(replica: Replica, fid: str) -> list[Version]:
    """Every kept version of the file's path, oldest first: its own and those of the files
    it continues (a save by rename replaces the file; the history goes on)."""
    found = []
    for member, base in replica.history_bases(fid):
        found += [Version(base + n, t, device, size, json.loads(manifest), member) for n, t, device, size, manifest
                  in replica.db.execute("SELECT version, t, device, size, manifest FROM versions WHERE fid=? "
                                        "ORDER BY version", (member,))]
    return sorted(found, key=lambda v: (v.number, v.saved_ns))


def version(replica: Replica, fid: str, number: int) -> Version:
    for found in versions(replica, fid):
        if found.number == number:
            return found
    raise FusedriveError(f"There is no version {number} of that file (see fusedrive history).")


def trash_items(replica: Replica) -> list[TrashItem]:
    """Everything in the trash, oldest deletion first, each with the path it had."""
    rows = replica.db.execute(
        "SELECT fid, parent, name, mode, uid, gid, size, mtime_ns, manifest, target, deleted_t FROM trash")
    items = {r[0]: TrashItem(r[0], "", r[1], r[2], *r[3:8], json.loads(r[8]), r[9], r[10]) for r in rows}
    for item in items.values():
        item.path = _trashed_path(replica, items, item)
    return sorted(items.values(), key=lambda i: (i.deleted_ns, i.path))


def _trashed_path(replica: Replica, items: dict[str, TrashItem], item: TrashItem) -> str:
    parts = [item.name]
    parent = item.parent
    while parent != ROOT_FID:
        if parent in items:  # its directory was deleted too
            parts.append(items[parent].name)
            parent = items[parent].parent
            continue
        path = replica.path_of(parent)
        return (path.rstrip("/") if path else "/(deleted folder)") + "/" + "/".join(
            name_to_json(p) for p in reversed(parts))
    return "/" + "/".join(name_to_json(p) for p in reversed(parts))


def top_level(items: list[TrashItem]) -> list[TrashItem]:
    """Trash items not inside a trashed directory (what `trash list` shows)."""
    trashed = {i.fid for i in items}
    return [i for i in items if i.parent not in trashed]


def contents(items: list[TrashItem], fid: str) -> list[TrashItem]:
    """A trashed directory's trashed contents, parents before children."""
    found, todo = [], [fid]
    while todo:
        parent = todo.pop(0)
        for item in items:
            if item.parent == parent:
                found.append(item)
                todo.append(item.fid)
    return found


def restore_ops(replica: Replica, item: TrashItem, parent: str, name: bytes, device: str) -> list[dict]:
    """Bring a trashed file or directory (same id) back at parent/name, with its content."""
    t = time.time_ns()
    base = {"fid": item.fid, "parent": parent, "name": name_to_json(name), "t": t}
    if stat.S_ISLNK(item.mode):
        return [dict(base, op="symlink", target=name_to_json(item.target or b""), uid=item.uid, gid=item.gid)]
    ops = [dict(base, op="mknod", mode=item.mode, uid=item.uid, gid=item.gid, rdev=0)]
    if stat.S_ISREG(item.mode) and item.manifest:
        ops.append({"op": "update", "fid": item.fid, "base": 0, "manifest": item.manifest, "size": item.size,
                    "mtime_ns": item.mtime_ns, "t": t, "device": device})
    return ops


def restore_version_ops(replica: Replica, fid: str, kept: Version, to: tuple[str, bytes] | None,
                        device: str) -> list[dict]:
    """Make a kept version current again (a new version with the same blocks), or with
    `to` = (parent fid, name) a new file beside it."""
    node = replica.inode(replica.ino_of(fid))
    t = time.time_ns()
    update = {"op": "update", "fid": fid, "base": node.version, "manifest": kept.manifest, "size": kept.size,
              "mtime_ns": t, "t": t, "device": device}
    if to is None:
        return [update]
    copy = str(uuid.uuid4())
    parent_ino = replica.ino_of(to[0])
    if replica.lookup(parent_ino, to[1]) is not None:
        raise FusedriveError(f"{name_to_json(to[1])} already exists; choose another --to.")
    return [{"op": "mknod", "fid": copy, "parent": to[0], "name": name_to_json(to[1]), "mode": node.mode,
             "uid": node.uid, "gid": node.gid, "rdev": 0, "t": t}, dict(update, fid=copy, base=0)]


def free_name(replica: Replica, parent: str, name: bytes, device: str) -> bytes:
    """`name`, or a conflicted-copy name beside it if it is taken."""
    if replica.lookup(replica.ino_of(parent), name) is None:
        return name
    return name_from_json(conflict_name(replica, parent, name_to_json(name), device))


def _is_live(replica: Replica, fid: str) -> bool:
    ino = replica.ino_of(fid)
    return ino is not None and (fid == ROOT_FID or replica.inode(ino).nlink > 0)


def trash_restore_ops(replica: Replica, path: str, device: str, item_id: str | None = None) -> list[dict]:
    """Operations that bring back what was at `path` (the newest deletion there, or the one
    whose id starts with `item_id`), its trashed directories above it and, for a
    directory, the newest trashed item of each name inside it."""
    items = trash_items(replica)
    matches = [i for i in items if i.path == path and (item_id is None or i.fid.startswith(item_id))]
    if not matches:
        raise FusedriveError(f"{path} is not in the trash (see fusedrive trash list).")
    item = max(matches, key=lambda i: i.deleted_ns)
    by_fid = {i.fid: i for i in items}
    chain = [item]
    while chain[-1].parent in by_fid:  # deleted directories above it come back too
        chain.append(by_fid[chain[-1].parent])
    ops: list[dict] = []
    restored: set[str] = set()
    for one in reversed(chain):  # outermost first
        if one.parent in restored:
            parent, name = one.parent, one.name  # inside a directory restored just now: empty
        else:
            parent = one.parent if _is_live(replica, one.parent) else ROOT_FID
            name = free_name(replica, parent, one.name, device)
        ops += restore_ops(replica, one, parent, name, device)
        restored.add(one.fid)
    if item.is_dir:
        inner_items = contents(items, item.fid)
        newest = {}  # a file replaced by a rename is in the trash beside the one that replaced it
        for inner in inner_items:
            key = (inner.parent, inner.name)
            if key not in newest or inner.deleted_ns > newest[key].deleted_ns:
                newest[key] = inner
        for inner in inner_items:  # parents first; older ones of a name stay in the trash
            if newest[(inner.parent, inner.name)] is inner and inner.parent in restored:
                ops += restore_ops(replica, inner, inner.parent, inner.name, device)
                restored.add(inner.fid)
    return ops


def check_not_archived(replica: Replica, block_id: str, volume_url: str) -> None:
    """Reading an archived block would fail or hang on a cold tier: say so instead."""
    storage_class = replica.archived_class(block_id)
    if storage_class is not None:
        raise Archived(f"This version is archived in the {storage_class} storage class; run "
                       f"`fusedrive thaw {volume_url}` to bring it back, then read it again.")
