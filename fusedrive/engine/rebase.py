"""Conflict rules: re-validate this device's queued operations after remote commits.

Called by `Replica.rebase` for each pending operation, against the state that
now includes what other devices committed first. Each operation is kept,
adjusted, or replaced by safe ones, so that nothing written and closed is lost:

- the first commit wins a name; a later create, link or rename onto a name that
  another device took first gets "NAME (conflicted copy from DEVICE DATE).EXT";
- an update based on a version another device replaced becomes a conflicted copy
  beside the file;
- an update (or a create) whose file or directory another device deleted brings it
  back where it was; the last save of a file deleted here before it uploaded goes
  into its trash entry (dropped if the trash was emptied meanwhile), or into a
  conflicted copy if another device's save brought the file back (Drive does that one);
- a scratch file (a lock, a swap file: engine/scratch.py) never gets a conflicted copy: a
  later create of its name takes the name from the other device's, a later save wins;
- a rename follows the file (ids, not paths) and is dropped if it would make a cycle;
  a rename of a file another device deleted brings it back under its new name (as the
  other way round a delete of a file moved elsewhere is dropped: the result does not
  depend on which device commits first);
- a delete applies only to the name the user deleted: if another device changed the
  file meanwhile or moved it elsewhere, the delete is dropped (their work stays);
  removing a directory that gained entries elsewhere is dropped.
"""

from __future__ import annotations

import logging
import os
import stat
import time
import uuid

from .replica import Replica
from .scratch import is_scratch_name
from .tree import ROOT_FID, name_from_json, name_to_json

log = logging.getLogger(__name__)

NAME_MAX = 255


def conflict_name(replica: Replica, parent_fid: str, name: str, device: str) -> str:
    """A free name "stem (conflicted copy from DEVICE YYYY-MM-DD HH.MM.SS).ext" in the parent
    (from PERSON on DEVICE in a volume shared with people)."""
    raw = name_from_json(name)
    stem, ext = os.path.splitext(raw)
    if not stem:  # ".hidden" has no extension
        stem, ext = ext, b""
    stamp = time.strftime("%Y-%m-%d %H.%M.%S", time.localtime())
    person = replica.get_state("person")  # (a volume shared with people: membership.Roster.person)
    device = f"{person} on {device}" if person else device
    parent_ino = replica.ino_of(parent_fid)
    for n in range(1, 1000):
        suffix = f" (conflicted copy from {device} {stamp}{'' if n == 1 else f' {n}'})".encode()
        candidate = stem[:NAME_MAX - len(suffix) - len(ext)] + suffix + ext
        if replica.lookup(parent_ino, candidate) is None:
            return name_to_json(candidate)
    raise RuntimeError("no free conflicted-copy name")


def conflict_of(op: dict) -> dict:
    """For an op that made a conflicted copy: {"parent", "name" it lost, "copy": its new name}."""
    parent_key, name_key = ("newparent", "newname") if op["op"] == "rename" else ("parent", "name")
    return {"parent": op[parent_key], "name": op["conflict_of"], "copy": op[name_key]}


class Revalidator:
    """One rebase's worth of conflict resolution (remembers copies it made)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.copies: dict[str, str] = {}  # file id → id of its conflicted copy made in this rebase
        self.conflicts: list[dict] = []  # {"parent", "name", "copy"} for each conflicted copy made
        self.revived: set[str] = set()  # files this rebase brought back (their versions start again)

    def __call__(self, replica: Replica, op: dict) -> list[dict]:
        op = dict(op)
        handler = getattr(self, "_" + op["op"], None)
        return handler(replica, op) if handler else [op]

    # --- helpers ----------------------------------------------------------------------

    def _exists(self, r: Replica, fid: str) -> bool:
        """Has a name. A file another device deleted may linger nameless while open here."""
        ino = r.ino_of(fid)
        return ino is not None and (fid == ROOT_FID or r.inode(ino).nlink > 0)

    def _bring_back(self, r: Replica, fid: str, locations: dict[str, dict], t: int) -> list[dict]:
        """Operations that recreate a deleted directory (and its parents) where it was."""
        where = locations.get(fid)
        if where is not None and not stat.S_ISDIR(where["mode"]):
            return []
        return self.revive_file(r, fid, locations, t)

    def _free_name(self, r: Replica, op: dict, parent_key: str = "parent", name_key: str = "name") -> dict:
        ino = r.ino_of(op[parent_key])
        taken = r.lookup(ino, name_from_json(op[name_key])) if ino is not None else None
        if taken is not None and r.inode(taken).fid != op.get("fid"):
            self._rename_to_conflicted_copy(r, op, parent_key, name_key)
        return op

    def _rename_to_conflicted_copy(self, r: Replica, op: dict, parent_key: str, name_key: str) -> None:
        """Give the op's new name a conflicted-copy name; the op carries the name it lost
        (`conflict_of`) so that every device can tell its user."""
        wanted = op[name_key]
        op[name_key] = conflict_name(r, op[parent_key], wanted, self.device)
        op["conflict_of"] = wanted
        self.conflicts.append(conflict_of(op))

    def _with_parent(self, r: Replica, op: dict, parent_key: str = "parent") -> list[dict] | None:
        """Recreate the op's directory if it was deleted; None if it cannot be brought back."""
        if self._exists(r, op[parent_key]):
            return []
        back = self._bring_back(r, op[parent_key], r.base_locations, op["t"])
        return back if back else None

    # --- rules per operation ----------------------------------------------------------

    def _create(self, r: Replica, op: dict) -> list[dict]:
        if op["op"] != "link" and self._exists(r, op["fid"]):
            return []  # another device already brought this very file back
        prefix = self._with_parent(r, op)
        if prefix is None:
            op["parent"] = ROOT_FID
            prefix = []
        if prefix:
            return prefix + [op]  # names are checked again when the caller applies them in order
        return self.claim_name(r, op)

    _mknod = _symlink = _create

    def _link(self, r: Replica, op: dict) -> list[dict]:
        if not self._exists(r, op["fid"]):
            return []
        parent_ino = r.ino_of(op["parent"])
        if parent_ino is not None and r.lookup(parent_ino, name_from_json(op["name"])) == r.ino_of(op["fid"]):
            return []  # another device made the very same link
        return self._create(r, op)

    def claim_name(self, r: Replica, op: dict) -> list[dict]:
        """Just before a rebased create is applied: if its name was taken by an operation
        applied after it was checked, it gets a conflicted-copy name too — or, for a scratch
        file (a lock another device made at the same moment), takes the name from it: both
        programs remove their lock by name, and a copy would stay for good. Whatever order
        operations come back in, a rebase never fails on a name both devices used."""
        if op["op"] not in ("mknod", "symlink", "link"):
            return [op]
        taking = self._take_scratch_name(r, op)
        return taking + [op] if taking else [self._free_name(r, op)]  # the caller claims it again after

    def _take_scratch_name(self, r: Replica, op: dict) -> list[dict]:
        """The unlink of another device's regular scratch file holding a new regular file's name."""
        parent_ino = r.ino_of(op["parent"])
        name = name_from_json(op["name"])
        taken = r.lookup(parent_ino, name) if parent_ino is not None else None
        if taken is None or op["op"] != "mknod" or not stat.S_ISREG(op["mode"]) or not is_scratch_name(name):
            return []
        holder = r.inode(taken)
        if holder.fid == op["fid"] or not holder.is_reg:
            return []
        return [{"op": "unlink", "parent": op["parent"], "name": op["name"], "fid": holder.fid,
                 "version": holder.version, "scratch": True, "t": op["t"]}]

    def _unlink(self, r: Replica, op: dict) -> list[dict]:
        fid = op.get("fid")
        if fid is None or not self._exists(r, fid):
            return []
        node = r.inode(r.ino_of(fid))
        if "version" in op and node.version != op["version"]:
            return []  # changed on another device meanwhile: their version stays
        if node.is_dir and r.has_children(node.ino):
            return []  # gained entries on another device
        parent_ino = r.ino_of(op["parent"])
        if parent_ino is None or r.lookup(parent_ino, name_from_json(op["name"])) != node.ino:
            return []  # moved elsewhere by another device: deleting it there could lose their work
        return [op]

    def _rename(self, r: Replica, op: dict) -> list[dict]:
        fid = op.get("fid")
        if op.get("exchange"):
            return [op] if self._still_valid_exchange(r, op) else []
        if fid is None:
            return []
        if self._exists(r, fid):
            ino = r.ino_of(fid)
            is_dir = r.inode(ino).is_dir
            parent_ino = r.ino_of(op["parent"])
            if parent_ino is None or r.lookup(parent_ino, name_from_json(op["name"])) != ino:
                where = r.location_of(fid)
                if where is None:
                    return []
                op["parent"], op["name"] = where[0], name_to_json(where[1])
            revival = []
        else:
            ino, is_dir = None, False
            revival = self._revive_to_rename(r, op)
            if not revival:
                return []
        if any(back["fid"] == op["newparent"] for back in revival):
            prefix = []  # the revival brings the folder back already (renamed within a folder deleted elsewhere)
        else:
            prefix = self._with_parent(r, op, "newparent")
        if prefix is None:
            return []
        if prefix:
            return revival + prefix + [op]
        new_parent_ino = r.ino_of(op["newparent"])
        if is_dir and r.is_ancestor(ino, new_parent_ino):
            return []  # would make a cycle after another device's rename
        target = r.lookup(new_parent_ino, name_from_json(op["newname"]))
        if target is not None and target != ino:
            target_node = r.inode(target)
            replaces = op.get("replaces")
            same_target = replaces is not None and replaces[0] == target_node.fid and replaces[1] == target_node.version
            if not same_target or (target_node.is_dir and r.has_children(target)) or target_node.is_dir != is_dir:
                self._rename_to_conflicted_copy(r, op, "newparent", "newname")
        return revival + [op]

    def _revive_to_rename(self, r: Replica, op: dict) -> list[dict]:
        """Bring back a regular file another device deleted (or saved over), where it was and
        with the content it had (its trash entry, or its last version), for the rename to move
        it: the rename's source becomes that place. A conflicted-copy name it may get there is
        not told to the user: it does not stay under it."""
        locations = r.known_locations(op["fid"])
        where = locations.get(op["fid"])
        content = r.last_content(op["fid"])
        if where is None or not stat.S_ISREG(where["mode"]) or content is None:
            return []
        revival = self.revive_file(r, op["fid"], locations, op["t"])
        if not revival:
            return []
        create = revival[-1]
        if create.pop("conflict_of", None) is not None:
            self.conflicts.pop()  # the file's own name comes last
        op["parent"], op["name"] = create["parent"], create["name"]
        restore = {"op": "update", "fid": op["fid"], "base": 0, **content, "t": op["t"], "device": self.device}
        return [*revival, restore]

    def _still_valid_exchange(self, r: Replica, op: dict) -> bool:
        a, b = r.ino_of(op["parent"]), r.ino_of(op["newparent"])
        return (a is not None and b is not None and r.lookup(a, name_from_json(op["name"])) is not None
                and r.lookup(b, name_from_json(op["newname"])) is not None)

    def _setattr(self, r: Replica, op: dict) -> list[dict]:
        return [op] if self._exists(r, op["fid"]) else []

    _setxattr = _rmxattr = _setattr

    def _update(self, r: Replica, op: dict) -> list[dict]:
        fid = op["fid"]
        if fid in self.copies:  # a later save of a file that already became a conflicted copy
            copy = self.copies[fid]
            op["fid"], op["base"] = copy, r.inode(r.ino_of(copy)).version
            return [op]
        if fid in self.revived and self._exists(r, fid):  # our own saves of a file we brought back
            op["base"] = r.inode(r.ino_of(fid)).version
            return [op]
        if not self._exists(r, fid):
            if op.get("trash"):  # deleted here before it uploaded: into its trash entry (or path history)
                return self._into_its_trash_entry(r, op)
            return self._revive(r, op)
        op.pop("trash", None)  # brought back from the trash meanwhile: an ordinary save
        node = r.inode(r.ino_of(fid))
        if op.get("base", node.version) == node.version:
            return [op]
        where = r.location_of(fid)
        if where is not None and is_scratch_name(where[1]):
            op["base"] = node.version  # a lock or swap file: the later save takes it, no copy
            return [op]
        # Another device saved this file first: ours becomes a conflicted copy beside it.
        create = self.conflicted_copy(r, fid, op["t"])
        if create is None:
            log.warning("a save of %s that lost to another device's is dropped: the file has no name for a "
                        "conflicted copy", fid)
            return []
        self.copies[fid] = create["fid"]
        return [create, dict(op, fid=create["fid"], base=0)]

    def conflicted_copy(self, r: Replica, fid: str, t: int) -> dict | None:
        """The create op of a new, empty file beside `fid` under a conflicted-copy name, for a
        save of `fid` that lost; None if `fid` has no name to put it beside."""
        where = r.location_of(fid)
        if where is None:
            return None
        node = r.inode(r.ino_of(fid))
        create = {"op": "mknod", "fid": str(uuid.uuid4()), "parent": where[0], "name": name_to_json(where[1]),
                  "mode": node.mode, "uid": node.uid, "gid": node.gid, "rdev": 0, "t": t}
        self._rename_to_conflicted_copy(r, create, "parent", "name")
        return create

    def _revive(self, r: Replica, op: dict) -> list[dict]:
        """An update to a file another device deleted: the file comes back where it was — or,
        where that is not known here (a rebase after the store went back in time rebuilt the
        tree), the save goes into its trash entry (or the path's history it went on in), never
        nowhere."""
        ops = self.revive_file(r, op["fid"], r.known_locations(op["fid"]), op["t"])
        return ops + [dict(op, base=0)] if ops else self._into_its_trash_entry(r, op)

    @staticmethod
    def _into_its_trash_entry(r: Replica, op: dict) -> list[dict]:
        """A save of a deleted file, marked for its trash entry (or the path history it went
        on in); dropped, said in the log, if it has neither."""
        if r.in_trash(op["fid"]) or r.successor_of(op["fid"]) is not None:
            return [dict(op, trash=True)]
        log.warning("a save of deleted file %s is dropped: it has no trash entry", op["fid"])
        return []

    def revive_file(self, r: Replica, fid: str, locations: dict[str, dict], t: int | None = None) -> list[dict]:
        """Operations that recreate a deleted file or directory (same id) where `locations`
        says it was, with the directories above it."""
        if fid == ROOT_FID or self._exists(r, fid):
            return []
        where = locations.get(fid)
        if where is None:
            return []
        t = time.time_ns() if t is None else t
        ops = self._bring_back(r, where["parent"], locations, t)
        parent = where["parent"] if self._exists(r, where["parent"]) or ops else ROOT_FID
        create = {"op": "mknod", "fid": fid, "parent": parent, "name": where["name"], "mode": where["mode"],
                  "uid": where["uid"], "gid": where["gid"], "rdev": 0, "t": t}
        self.revived.add(fid)
        return ops + [self._free_name(r, create)]
