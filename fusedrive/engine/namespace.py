"""Changing the tree the way a program does — create, link, remove, rename, set attributes and
extended attributes —
with the POSIX checks every front end needs, raised as OSError with the errno (EEXIST,
ENOENT, ENOTDIR, EISDIR, ENOTEMPTY, EINVAL, ENAMETOOLONG). Each change is recorded as the
journal op that carries it, built by `ops.make` from the op table (engine/ops.py). Front ends add their own rules on top (the
FUSE mount's read-only history tree and control directory)."""

from __future__ import annotations

import errno
import os
import stat
import time
import uuid

from . import ops
from .replica import Replica
from .scratch import is_scratch
from .tree import Inode, b64, name_to_json

NAME_MAX = 255


def refuse(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise refuse(errno.ENAMETOOLONG)


class Namespace:
    """The tree as programs change it; the replica holds it (and queues every change)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def node(self, ino: int) -> Inode:
        node = self.replica.inode(ino)
        if node is None:
            raise refuse(errno.ENOENT)
        return node

    def directory(self, ino: int) -> Inode:
        node = self.node(ino)
        if not node.is_dir:
            raise refuse(errno.ENOTDIR)
        return node

    def vacant(self, parent: int, name: bytes) -> Inode:
        """The directory `parent`, where `name` is free."""
        check_name(name)
        parent_node = self.directory(parent)
        if self.replica.lookup(parent, name) is not None:
            raise refuse(errno.EEXIST)
        return parent_node

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
               target: bytes | None = None) -> int:
        """A new file, directory, device node or (with `target`) symlink; its inode."""
        parent_node = self.vacant(parent, name)
        if parent_node.mode & stat.S_ISGID:  # BSD group semantics where the directory asks for them
            gid = parent_node.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        fid = str(uuid.uuid4())
        made = dict(fid=fid, parent=parent_node.fid, name=name_to_json(name), uid=uid, gid=gid, t=time.time_ns())
        if target is not None:
            op = ops.make("symlink", **made, target=name_to_json(target))
        else:
            # a lock made again continues no earlier lock's history
            scratch = stat.S_ISREG(mode) and is_scratch(self.replica, parent, name)
            op = ops.make("mknod", **made, mode=mode, rdev=rdev, scratch=scratch or None)
        self.replica.record(op)
        return self.replica.ino_of(fid)

    def link(self, ino: int, parent: int, name: bytes) -> None:
        node = self.node(ino)
        if node.is_dir:
            raise refuse(errno.EPERM)
        parent_node = self.vacant(parent, name)
        self.replica.record(ops.make("link", fid=node.fid, parent=parent_node.fid, name=name_to_json(name),
                                     t=time.time_ns()))

    def remove(self, parent: int, name: bytes, want_dir: bool) -> None:
        """unlink (or rmdir with `want_dir`): the name goes; a file's last name sends it to the
        trash, unless it is a scratch file (engine/scratch.py)."""
        check_name(name)
        parent_node = self.directory(parent)
        ino = self.replica.lookup(parent, name)
        if ino is None:
            raise refuse(errno.ENOENT)
        node = self.node(ino)
        if want_dir and not node.is_dir:
            raise refuse(errno.ENOTDIR)
        if not want_dir and node.is_dir:
            raise refuse(errno.EISDIR)
        if want_dir and self.replica.has_children(ino):
            raise refuse(errno.ENOTEMPTY)
        # a lock, a swap file, a temporary: no trash entry, no history kept
        scratch = is_scratch(self.replica, parent, name) or None
        self.replica.record(ops.make("unlink", parent=parent_node.fid, name=name_to_json(name), fid=node.fid,
                                     version=node.version, t=time.time_ns(), scratch=scratch))

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               noreplace: bool = False, exchange: bool = False) -> None:
        """rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE; a file it replaces becomes a
        version of the path (or, for a scratch file, goes without a trace)."""
        check_name(old_name)
        check_name(new_name)
        old_dir, new_dir = self.directory(old_parent), self.directory(new_parent)
        ino = self.replica.lookup(old_parent, old_name)
        if ino is None:
            raise refuse(errno.ENOENT)
        node = self.node(ino)
        target = self.replica.lookup(new_parent, new_name)
        if noreplace and target is not None:
            raise refuse(errno.EEXIST)
        if exchange and target is None:
            raise refuse(errno.ENOENT)
        if node.is_dir and self.replica.is_ancestor(ino, new_parent):
            raise refuse(errno.EINVAL)
        if target is not None and target != ino:
            target_node = self.node(target)
            if exchange:
                if target_node.is_dir and self.replica.is_ancestor(target, old_parent):
                    raise refuse(errno.EINVAL)
            elif node.is_dir and not target_node.is_dir:
                raise refuse(errno.ENOTDIR)
            elif not node.is_dir and target_node.is_dir:
                raise refuse(errno.EISDIR)
            elif target_node.is_dir and self.replica.has_children(target):
                raise refuse(errno.ENOTEMPTY)
        replaces = scratch = None
        if not exchange and target is not None and target != ino:
            replaced = self.node(target)
            replaces = [replaced.fid, replaced.version]
            # git's index.lock renamed over its index: no history of the old one
            scratch = is_scratch(self.replica, new_parent, new_name) or None
        self.replica.record(ops.make("rename", parent=old_dir.fid, name=name_to_json(old_name), newparent=new_dir.fid,
                                     newname=name_to_json(new_name), fid=node.fid, t=time.time_ns(),
                                     exchange=exchange or None, replaces=replaces, scratch=scratch))

    def set_attributes(self, node: Inode, **changes: int) -> None:
        """Any of mode (permission bits), uid, gid, atime_ns, mtime_ns."""
        if "mode" in changes:
            changes["mode"] = stat.S_IFMT(node.mode) | stat.S_IMODE(changes["mode"])
        self.replica.record(ops.make("setattr", fid=node.fid, t=time.time_ns(), **changes))

    def set_xattr(self, node: Inode, name: bytes, value: bytes) -> None:
        self.replica.record(ops.make("setxattr", fid=node.fid, name=name_to_json(name), value=b64(value),
                                     t=time.time_ns()))

    def remove_xattr(self, node: Inode, name: bytes) -> None:
        if self.replica.xattr(node.ino, name) is None:
            raise refuse(errno.ENODATA)
        self.replica.record(ops.make("rmxattr", fid=node.fid, name=name_to_json(name), t=time.time_ns()))
