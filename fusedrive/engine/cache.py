"""The local block cache: plaintext blocks on disk (diskcache, size-bounded, LRU).

Cached blocks are re-hashed on every disk hit, so a corrupted or truncated cache
file is dropped and fetched again instead of being returned. A few recently used
blocks are also kept decoded in memory, because one 4 MiB block serves dozens of
128 KiB kernel reads. Files just uploaded are kept whole beside it (`kept.py`) rather
than copied block by block; both count against one size limit, and kept files give
way first.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import diskcache

from .kept import KeptFiles

log = logging.getLogger(__name__)

MEMORY_BLOCKS = 16
DISK_RESERVE = 64 << 20  # kept free on the cache disk (at most a tenth of it)


def free_and_reserve(directory: Path) -> tuple[int, int]:
    """Bytes free on the cache disk, and the part of them fusedrive keeps free: the
    replica, the log and the commit queue need a little room, or even deleting a file
    would fail."""
    disk = os.statvfs(directory)
    free, total = disk.f_bavail * disk.f_frsize, disk.f_blocks * disk.f_frsize
    return free, min(DISK_RESERVE, total // 10)


def leaves_reserve(directory: Path, nbytes: int) -> bool:
    """Whether `nbytes` more still leave the cache disk its reserve."""
    free, reserve = free_and_reserve(directory)
    return free - nbytes >= reserve


class BlockCache:
    def __init__(self, directory: Path, size_limit: int, id_of: Callable[[bytes], str]) -> None:
        self._disk = diskcache.Cache(
            str(directory), size_limit=size_limit, eviction_policy="least-recently-used", cull_limit=16
        )
        self._directory = directory
        self._size_limit = size_limit
        self.kept = KeptFiles(directory / "kept")
        # Blocks of pinned files (pins.py): never evicted, outside the LRU limit's reach.
        self._pinned = diskcache.Cache(str(directory / "pinned"), size_limit=1 << 62, eviction_policy="none")
        self._id_of = id_of
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        # One thread in diskcache at a time: its SQLite transactions (one per set, and per
        # get for the LRU time) would otherwise collide and SQLite's busy handler sleeps
        # for milliseconds. Block files are read outside the lock.
        self._disk_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _remember(self, block_id: str, data: bytes) -> None:
        with self._lock:
            self._memory[block_id] = data
            self._memory.move_to_end(block_id)
            while len(self._memory) > MEMORY_BLOCKS:
                self._memory.popitem(last=False)

    def memory_get(self, block_id: str) -> bytes | None:
        """A block held decoded in memory (never blocks: safe in the trio loop)."""
        with self._lock:
            data = self._memory.get(block_id)
            if data is not None:
                self._memory.move_to_end(block_id)
                self.hits += 1
            return data

    def in_memory(self, block_id: str) -> bool:
        with self._lock:
            return block_id in self._memory

    def get(self, block_id: str) -> bytes | None:
        """The verified plaintext of a block, or None if it is not (or no longer validly) cached."""
        data = self.memory_get(block_id)
        if data is not None:
            return data
        data = self._read_disk(block_id)
        if data is not None and self._id_of(data) != block_id:
            with self._disk_lock:
                self._disk.delete(block_id)
            data = None
        if data is None:
            data = self.kept.read(block_id)
            if data is not None and self._id_of(data) != block_id:
                self.kept.forget(block_id)
                data = None
        if data is None:
            data = self._read_pinned(block_id)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember(block_id, data)
        return data

    def _read_disk(self, block_id: str) -> bytes | None:
        with self._disk_lock:
            found = self._disk.get(block_id, read=True)  # large blocks: an open file, small: bytes
        if found is None or isinstance(found, bytes):
            return found
        with found:
            return found.read()

    def put(self, block_id: str, data: bytes) -> None:
        """Best effort: a cache that cannot grow (disk full) must not fail an upload or a read."""
        self.put_many([(block_id, data)])

    def put_many(self, blocks: list[tuple[str, bytes]]) -> None:
        """`put` for several blocks, in one diskcache transaction (the blocks of a pack:
        a transaction per 4 KiB block cost as much CPU as its share of the pack's PUT)."""
        try:
            if leaves_reserve(self._directory, sum(len(data) for _, data in blocks)):
                with self._disk_lock, self._disk.transact():
                    for block_id, data in blocks:
                        # diskcache writes a large bytes value line by line (thousands of write
                        # calls per MiB of random data); as a file-like value it writes it whole.
                        large = len(data) >= self._disk.disk_min_file_size
                        self._disk.set(block_id, io.BytesIO(data) if large else data, read=large)
        except (OSError, sqlite3.Error) as exc:
            log.warning("cannot cache %d block(s) on disk: %s", len(blocks), exc)
        for block_id, data in blocks[-MEMORY_BLOCKS:]:
            self._remember(block_id, data)
        if self.kept.total:
            self._make_room()

    def keep(self, path: Path, extents: list[list]) -> None:
        """Keep a just-uploaded staged file as the cached copy of its blocks (see kept.py);
        if it cannot be moved it stays where it was, for the caller to remove."""
        try:
            if self.kept.keep(path, extents):
                self._make_room()
        except (OSError, sqlite3.Error) as exc:
            log.warning("cannot keep %s in the cache: %s", path, exc)

    def _make_room(self) -> None:
        """Kept files get what the block cache leaves of the limit, oldest out first."""
        with self._disk_lock:
            used = self._disk.volume()
        self.kept.trim(self._size_limit - used)

    def contains(self, block_id: str) -> bool:
        """Whether the block is on this device now (not verified: reading it will be)."""
        if self.in_memory(block_id) or self.kept.has(block_id):
            return True
        with self._disk_lock:
            return block_id in self._disk or block_id in self._pinned

    # --- pinned blocks ---------------------------------------------------------------------

    def _read_pinned(self, block_id: str) -> bytes | None:
        with self._disk_lock:
            found = self._pinned.get(block_id, read=True)
        if found is not None and not isinstance(found, bytes):
            with found:
                found = found.read()
        if found is not None and self._id_of(found) != block_id:
            with self._disk_lock:
                self._pinned.delete(block_id)
            return None
        return found

    def pin(self, block_id: str, data: bytes) -> None:
        """Keep this block whatever the LRU limit does (raises OSError when the disk is full)."""
        with self._disk_lock:
            large = len(data) >= self._pinned.disk_min_file_size
            self._pinned.set(block_id, io.BytesIO(data) if large else data, read=large)

    def unpin(self, block_ids: set[str]) -> None:
        with self._disk_lock, self._pinned.transact():
            for block_id in block_ids:
                self._pinned.delete(block_id)

    def pinned_ids(self) -> set[str]:
        with self._disk_lock:
            return set(self._pinned.iterkeys())

    def volume_bytes(self) -> int:
        return self._disk.volume() + self.kept.total + self._pinned.volume()

    def close(self) -> None:
        self._disk.close()
        self._pinned.close()
        self.kept.close()
