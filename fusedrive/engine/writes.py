"""Writes: a committed file's content is brought into staging before its first change
(`ensure_staged`), then writes and truncates land there and make it unsaved; closing it
hands it to the uploads."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import trio

from .blocks import BlockStore
from .cache import leaves_reserve
from .localfiles import LocalFiles
from .replica import Replica
from .tree import Inode
from .staging import Staging


class Writer:
    """Owns the per-file locks that serialize bringing a file into staging."""

    def __init__(self, replica: Replica, files: LocalFiles, staging: Staging, blocks: BlockStore,
                 cache_dir: Path) -> None:
        self.replica = replica
        self.files = files
        self.staging = staging
        self.blocks = blocks
        self.cache_dir = cache_dir
        self._stage_locks: dict[str, trio.Lock] = {}

    async def ensure_staged(self, node: Inode) -> Inode:
        """Bring a committed file's content into staging before its first change; returns
        the file as it is now. The download awaits: another device's save may arrive
        meanwhile (then the newer content is staged instead, or the edit would silently
        undo that save), and a truncate to zero may stage the file first (it wins)."""
        if node.fid in self.files.staged:
            return node  # the common case, once per kernel write: no query
        lock = self._stage_locks.setdefault(node.fid, trio.Lock())
        async with lock:
            while node.fid not in self.files.staged:
                node = self.replica.inode(node.ino) or node
                extents = node.extents()
                if not extents:
                    self.staging.truncate(node.fid, node.size)
                    self.files.staged_now(node.fid)
                    break
                version = node.version
                materialized = await trio.to_thread.run_sync(
                    self.staging.materialize, node.fid, extents, node.size, self.blocks.fetch
                )
                latest = self.replica.inode(node.ino)
                if node.fid in self.files.staged or (latest is not None and latest.version != version):
                    os.unlink(materialized)
                    continue
                self.staging.adopt(node.fid, materialized, extents, node.size)
                self.files.staged_now(node.fid)
        self._stage_locks.pop(node.fid, None)
        return self.replica.inode(node.ino) or node

    def _check_room(self, nbytes: int) -> None:
        """ENOSPC before the cache disk is completely full (see leaves_reserve)."""
        if not leaves_reserve(self.cache_dir, nbytes):
            raise OSError(errno.ENOSPC, "the cache disk is full")

    async def write(self, node: Inode, offset: int, data: bytes) -> int:
        node = await self.ensure_staged(node)
        self._check_room(len(data))
        self.staging.write(node.fid, offset, data)
        current, _ = self.files.size_and_mtime(node)
        self.files.written(node, max(current, offset + len(data)))
        return len(data)

    async def truncate(self, node: Inode, size: int) -> None:
        if size == 0 and node.fid not in self.files.staged:
            self.files.staged_now(node.fid)
            self.staging.truncate(node.fid, 0)
        else:
            node = await self.ensure_staged(node)
            self.staging.truncate(node.fid, size)
        self.files.written(node, size)
