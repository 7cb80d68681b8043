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
from .manifest import pieces
from .reads import Reader
from .replica import Replica
from .tree import Inode
from .staging import Staging


class Writer:
    """Owns the per-file locks that serialize bringing a file into staging."""

    def __init__(self, replica: Replica, files: LocalFiles, staging: Staging, blocks: BlockStore,
                 reader: Reader, cache_dir: Path) -> None:
        self.replica = replica
        self.reader = reader
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
                await self._fetch_missing(node, extents)
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

    async def _fetch_missing(self, node: Inode, extents: list[list]) -> None:
        """Bring the blocks the file needs into the cache first, each within --io-timeout
        (EIO after it, as a read): the write of a file not on this device must not wait on
        a store that hangs for as long as the S3 client's own timeouts and retries (minutes).
        The materializing thread then finds them there."""
        for piece in pieces(extents):
            if piece.block is not None and not self.blocks.cache.contains(piece.block):
                await self.reader.fetch_block(piece, node)

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
            node = await self.ensure_staged(node)
            self.staging.truncate(node.fid, size)
        self.files.written(node, size)
