"""Writes: a committed file is staged for its first change without reading it
(`Staging.stage_over`: the staged file holds only what is written here, over the committed
manifest), then writes and truncates land there and make it unsaved; closing it hands it
to the uploads."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .cache import leaves_reserve
from .localfiles import LocalFiles
from .replica import Replica
from .tree import Inode
from .staging import Staging


class Writer:
    def __init__(self, replica: Replica, files: LocalFiles, staging: Staging, cache_dir: Path) -> None:
        self.replica = replica
        self.files = files
        self.staging = staging
        self.cache_dir = cache_dir

    def ensure_staged(self, node: Inode) -> Inode:
        """Stage a committed file before its first change (no await, nothing read or
        fetched: a 1-byte write into a GiB file not on this device costs a byte); returns
        the file as it is now."""
        if node.fid not in self.files.staged:
            node = self.replica.inode(node.ino) or node
            extents = node.extents()
            if extents:
                self.staging.stage_over(node.fid, extents, node.size)
            else:
                self.staging.truncate(node.fid, node.size)
            self.files.staged_now(node.fid)
        return node

    def _check_room(self, nbytes: int) -> None:
        """ENOSPC before the cache disk is completely full (see leaves_reserve)."""
        if not leaves_reserve(self.cache_dir, nbytes):
            raise OSError(errno.ENOSPC, "the cache disk is full")

    async def write(self, node: Inode, offset: int, data: bytes) -> int:
        node = self.ensure_staged(node)
        self._check_room(len(data))
        self.staging.write(node.fid, offset, data)
        current, _ = self.files.size_and_mtime(node)
        self.files.written(node, max(current, offset + len(data)))
        return len(data)

    def replace(self, node: Inode, prepared: Path, mtime_ns: int) -> None:
        """The whole content at once, from a file prepared beside staging (a mirror's copy of
        a local file): staged, unsaved and based on the version the file has now, with no
        await, so the caller's look at that version still holds."""
        size = os.stat(prepared).st_size
        self.staging.replace(node.fid, prepared)
        self.files.staged_now(node.fid)
        self.files.written(node, size)
        self.files.set_mtime(node, mtime_ns)

    async def truncate(self, node: Inode, size: int) -> None:
        if size == 0 and node.fid not in self.files.staged:
            self.files.staged_now(node.fid)
            self.staging.truncate(node.fid, 0)
        else:
            node = self.ensure_staged(node)
            self.staging.truncate(node.fid, size)
        self.files.written(node, size)
