"""The fs layer: translates FUSE requests into replica operations and drive content calls.

Holds no storage logic. Every handler runs in the trio loop; the checks and the
replica change of one request happen between two awaits, so requests never see
each other half done. Errors: FUSEError(errno) for refused calls, EIO for
anything the store or integrity checks fail.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import stat
import time
from itertools import count

import pyfuse3
import trio

from ..engine.drive import Drive
from ..engine.namespace import NAME_MAX, check_name
from ..errors import FusedriveError
from .historytree import CONTROL_DIR, HistoryView
from .kernel import invalidate_inode
from .options import Presentation
from ..engine.tree import ROOT_INO, Inode

log = logging.getLogger(__name__)

# How long the kernel may keep a name and its attributes without asking. Every change not
# made through this kernel (another device's commit, a conflicted copy, a restore) is
# invalidated when it is applied (kernel.KernelCache), so this bounds no staleness a user
# could see; past it, every name walked costs a LOOKUP again (a `stat` or an `rm` of each
# of 2,000 files a few seconds after they were made).
CACHE_TIMEOUT = 60.0
# The history tree is not invalidated when gc prunes a version: it keeps the old second.
HISTORY_CACHE_TIMEOUT = 1.0
XATTR_NAMESPACE = b"user."
LOCAL_XATTR = b"user.fusedrive.local"  # read-only, computed: is the file's content on this device
DOT_ENTRIES = 2  # "." and ".." open every directory listing
READDIR_ROWS_AT_ONCE = 32  # about what one READDIRPLUS reply (a page) holds


def fuse_errors(handler):
    """Map our failures to errnos: store and integrity errors are EIO, OS errors keep theirs."""

    @functools.wraps(handler)
    async def wrapped(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FusedriveError as exc:
            log.error("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except sqlite3.OperationalError as exc:
            # the replica could not write: a full cache disk is ENOSPC, anything else EIO
            log.error("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.ENOSPC if "full" in str(exc) else errno.EIO) from None

    return wrapped


class DriveOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, drive: Drive, presentation: Presentation = Presentation()) -> None:
        super().__init__()
        self.drive = drive
        self.presentation = presentation
        self.tree = drive.tree
        self.namespace = drive.namespace
        self._handles: dict[int, Inode] = {}
        self._handle_now: dict[int, tuple[int, Inode]] = {}  # fh -> (replica change stamp, node then)
        self._writing_handles: set[int] = set()
        self._dir_handles: dict[int, list[tuple[bytes, int]]] = {}
        self._opened_version: dict[int, int] = {}
        self._next_fh = count(1)
        self.view = HistoryView(drive.tree, drive.versions)  # the read-only .fusedrive/history tree

    # --- helpers ----------------------------------------------------------------------

    def _node(self, ino: int) -> Inode:
        node = self.view.node(ino) if self.view.owns(ino) else self.tree.inode(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attrs(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        size, mtime_ns, ctime_ns, blocks = self.drive.attributes(node)
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = a.attr_timeout = HISTORY_CACHE_TIMEOUT if self.view.owns(node.ino) else CACHE_TIMEOUT
        a.st_mode = self.presentation.mode(node.mode)
        a.st_nlink = node.nlink
        a.st_uid = node.uid if self.presentation.uid is None else self.presentation.uid
        a.st_gid = node.gid if self.presentation.gid is None else self.presentation.gid
        a.st_rdev = node.rdev
        a.st_size = size
        a.st_blksize = 128 * 1024
        a.st_blocks = blocks
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = mtime_ns
        a.st_ctime_ns = ctime_ns
        return a

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        self.drive.looked_up(ino)
        return self._attrs(self._node(ino))

    def _dir(self, ino: int) -> Inode:
        node = self._node(ino)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def _writable(self, *inos: int) -> None:
        """Old versions cannot be changed."""
        if any(self.view.owns(ino) for ino in inos):
            raise pyfuse3.FUSEError(errno.EROFS)

    def _may_create(self, parent: int, name: bytes) -> None:
        """The mount's own rules for new names; the namespace checks the rest."""
        self._writable(parent)
        if parent == ROOT_INO and name == CONTROL_DIR:
            raise pyfuse3.FUSEError(errno.EEXIST)

    def _create_node(self, parent: int, name: bytes, mode: int, ctx, rdev: int = 0, target: bytes | None = None) -> int:
        self._may_create(parent, name)
        return self.namespace.create(parent, name, mode, ctx.uid, ctx.gid, rdev, target)

    # --- names ------------------------------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx):
        check_name(name)
        if name == b".":
            ino = parent_inode
        elif self.view.owns(parent_inode) or (parent_inode == ROOT_INO and name == CONTROL_DIR):
            ino = self.view.lookup(parent_inode, name) if self.view.owns(parent_inode) else self.view.control_ino
        elif name == b"..":
            ino = self.tree.parent_of(parent_inode) or ROOT_INO
        else:
            ino = self.tree.lookup(parent_inode, name)
            if ino is None:
                # close-to-open for new names: another device may have just created it
                await self.drive.ensure_fresh()
                ino = self.tree.lookup(parent_inode, name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(ino)

    async def forget(self, inode_list):
        for ino, nlookup in inode_list:
            if self.drive.forgotten(ino, nlookup):
                self._opened_version.pop(ino, None)  # the kernel dropped its pages with the inode

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        return self._attrs(self._node(inode))

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable(inode)
        node = self._node(inode)
        if fields.update_size:
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if not node.is_reg:
                raise pyfuse3.FUSEError(errno.EINVAL)
            await self.drive.truncate(node, attr.st_size)
        changes = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
            self.drive.set_mtime(node, attr.st_mtime_ns)
        if changes or not fields.update_size:
            self.namespace.set_attributes(node, **changes)
        return self._attrs(self._node(inode))

    @fuse_errors
    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(self._create_node(parent_inode, name, mode, ctx, rdev=rdev))

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(self._create_node(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(self._create_node(parent_inode, name, 0, ctx, target=target))

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable(inode)
        self._may_create(new_parent_inode, new_name)
        self.namespace.link(inode, new_parent_inode, new_name)
        return self._entry(inode)

    def _remove(self, parent_inode: int, name: bytes, want_dir: bool) -> None:
        self._writable(parent_inode)
        if parent_inode == ROOT_INO and name == CONTROL_DIR:
            raise pyfuse3.FUSEError(errno.EROFS)
        self.namespace.remove(parent_inode, name, want_dir)

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, want_dir=False)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, want_dir=True)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable(parent_inode_old, parent_inode_new)
        if ROOT_INO in (parent_inode_old, parent_inode_new) and CONTROL_DIR in (name_old, name_new):
            raise pyfuse3.FUSEError(errno.EROFS)
        self.namespace.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                              noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                              exchange=bool(flags & pyfuse3.RENAME_EXCHANGE))

    # --- files ------------------------------------------------------------------------

    def _open_handle(self, node: Inode, writing: bool) -> int:
        fh = next(self._next_fh)
        self._handles[fh] = node
        if writing:
            self._writing_handles.add(fh)
        self.drive.opened(node.fid, writing)
        self._opened_version[node.ino] = node.version
        return fh

    def _close_handle(self, fh: int) -> Inode:
        node = self._handles.pop(fh)
        self._handle_now.pop(fh, None)
        writing = fh in self._writing_handles
        self._writing_handles.discard(fh)
        self.drive.released(node.fid, writing)
        return node

    def _handle_node(self, fh: int) -> Inode:
        """The open file as it is now. Re-read only when the replica changed: a query per
        128 KiB read releases the GIL and costs the read path more than the read."""
        stamp = self.tree.change_stamp
        seen = self._handle_now.get(fh)
        if seen is not None and seen[0] == stamp:
            return seen[1]
        node = self.tree.inode(self._handles[fh].ino) or self._handles[fh]
        self._handle_now[fh] = (stamp, node)
        return node

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        ino = self._create_node(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        attrs = self._entry(ino)
        return pyfuse3.FileInfo(fh=self._open_handle(self._node(ino), writing=True)), attrs

    @fuse_errors
    async def open(self, inode, flags, ctx):
        await self.drive.ensure_fresh()
        node = self._node(inode)
        if node.nlink <= 0 and not self.drive.is_open(node.fid):
            # Another device deleted it and the kernel still had the name: ESTALE makes the
            # kernel look the name up again, so open(O_CREAT) creates a new file.
            raise pyfuse3.FUSEError(errno.ESTALE)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if self.view.owns(inode) and writing:
            raise pyfuse3.FUSEError(errno.EROFS)
        seen = self._opened_version.get(inode)
        unchanged = seen is not None and self.drive.same_content(node.fid, seen, node.version)
        # The writer counts before the truncate: no upload may catch the file emptied with
        # the write still to come (see Drive._upload).
        fh = self._open_handle(node, writing)
        try:
            if flags & os.O_TRUNC and node.is_reg:
                # libfuse negotiates atomic O_TRUNC: the kernel sends no setattr, we truncate here.
                await self.drive.truncate(node, 0)
            if not unchanged:
                # close-to-open: the content changed since the kernel cached it (another device saved)
                await invalidate_inode(inode)
        except BaseException:
            self._close_handle(fh)
            raise
        return pyfuse3.FileInfo(fh=fh, keep_cache=unchanged)

    @fuse_errors
    async def read(self, fh, off, size):
        return await self.drive.read(self._handle_node(fh), off, size)

    @fuse_errors
    async def write(self, fh, off, buf):
        return await self.drive.write(self._handle_node(fh), off, buf)

    @fuse_errors
    async def flush(self, fh):
        self.drive.flushed(self._handles[fh].fid)

    @fuse_errors
    async def release(self, fh):
        node = self._close_handle(fh)
        current = self.tree.inode(node.ino)
        if current is not None and current.nlink <= 0:
            self.drive.forget_unlinked(current)

    @fuse_errors
    async def fsync(self, fh, datasync):
        await self.drive.fsync(self._handles[fh].fid)

    # --- directories ------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode, ctx):
        self._dir(inode)
        fh = next(self._next_fh)
        children = self.view.children(inode) if self.view.owns(inode) else self.tree.children(inode)
        parent = inode if self.view.owns(inode) else self.tree.parent_of(inode) or inode
        self._dir_handles[fh] = [(b".", inode), (b"..", parent), *children]  # `ls -a` shows them
        return fh

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        entries = self._dir_handles[fh]
        # Rows read a few at a time, as the request goes (the kernel trusts what a request
        # answers as of when it began): one query each, not one per name.
        for first in range(start_id, len(entries), READDIR_ROWS_AT_ONCE):
            batch = entries[first:first + READDIR_ROWS_AT_ONCE]
            nodes = self.tree.inodes([ino for _name, ino in batch if not self.view.owns(ino)])
            for index, (name, ino) in enumerate(batch, first):
                node = self.view.node(ino) if self.view.owns(ino) else nodes.get(ino)
                if node is None:
                    continue
                if not pyfuse3.readdir_reply(token, name, self._attrs(node), index + 1):
                    return
                if index >= DOT_ENTRIES:  # the kernel takes no reference for "." and ".."
                    self.drive.looked_up(ino)

    async def releasedir(self, fh):
        self._dir_handles.pop(fh, None)

    @fuse_errors
    async def fsyncdir(self, fh, datasync):
        await self.drive.wait_committed()

    @fuse_errors
    async def statfs(self, ctx):
        disk = os.statvfs(self.drive.cache_dir)
        used = self.tree.stats()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_bavail = s.f_bfree = disk.f_bavail * disk.f_frsize // 4096
        s.f_blocks = s.f_bfree + (used["logical_bytes"] + 4095) // 4096
        s.f_files = used["inodes"] + 1_000_000_000
        s.f_ffree = s.f_favail = 1_000_000_000
        s.f_namemax = NAME_MAX
        return s

    # --- extended attributes ----------------------------------------------------------

    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        self._writable(inode)
        node = self._node(inode)
        if not name.startswith(XATTR_NAMESPACE) or len(name) == len(XATTR_NAMESPACE):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ERANGE)
        if name == LOCAL_XATTR:
            raise pyfuse3.FUSEError(errno.EPERM)
        self.namespace.set_xattr(node, name, value)

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if not name.startswith(XATTR_NAMESPACE):
            # only user.* names can be set (setxattr), so no other one has a value: the
            # kernel asks for security.capability before every write, and this answer
            # costs no lookup
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        node = self._node(inode)
        if name == LOCAL_XATTR and node.is_reg and not self.view.owns(inode):
            # "1": every byte of it is on this device (readable offline), "0": some must come from the store
            local = self.drive.is_staged(node.fid) or await trio.to_thread.run_sync(self.drive.pins.is_local, node)
            return b"1" if local else b"0"
        value = self.tree.xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @fuse_errors
    async def listxattr(self, inode, ctx):
        self._node(inode)
        return self.tree.xattr_names(inode)

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        self._writable(inode)
        node = self._node(inode)
        self.namespace.remove_xattr(node, name)
