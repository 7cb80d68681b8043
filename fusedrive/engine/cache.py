"""The local block cache: plaintext blocks on disk (diskcache, size-bounded, LRU).

A block read whole from the disk is re-hashed against its id, so a corrupted or
truncated cache file is dropped and fetched again instead of being returned. A few
recently used blocks are also kept in memory, because one 4 MiB block serves dozens of
128 KiB kernel reads. Files just uploaded are kept whole beside it (`kept.py`) rather
than copied block by block; both count against one size limit, and kept files give
way first.

A small read at a random place (a database page, an index lookup) must not read and
hash a whole block: every cached block has a CRC-32 per 8 KiB segment (stored with it:
diskcache's tag, the kept index), and `read_range` reads only the segments a range
touches, checks them, and returns the range. Where each block lies on disk is
remembered in memory (`_Span`) once looked up, and the files recently read so stay open
(OPEN_FILES, least recently used closed first), so such a read is one pread, no open
(whose path lookup, once the kernel dropped its caches, cost as much as the read) and
no SQLite. A segment that fails its check is a miss (the block is fetched and verified
whole), never data. A file the cache deleted while open is closed at its next read (its
link count is 0), so it does not hold disk space.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable, NamedTuple

import diskcache

from .kept import KeptFiles
from .manifest import block_ids

log = logging.getLogger(__name__)

MEMORY_BLOCKS = 24
DISK_RESERVE = 64 << 20  # kept free on the cache disk (at most a tenth of it)
# The unit a range read reads and checks: a 4 KiB page read costs one 8 KiB disk read (was
# 32 KiB, whose read and CRC were most of a random read once the page cache was cold).
SEGMENT = 8 * 1024
MAX_SPANS = 20_000  # blocks whose place on disk is remembered (~800 bytes each for 1 MiB blocks)
TOUCH_SECONDS = 60  # range reads refresh a block's place in the LRU at most this often
OPEN_FILES = 64  # cache files kept open for range reads
FRESH_CHECKSUMS = 16_384  # blocks of files being uploaded whose checksums wait for `keep`


def checksums(data: bytes) -> bytes:
    """CRC-32 of each SEGMENT of `data` (from a segment boundary), 4 bytes each."""
    view = memoryview(data)
    return b"".join(zlib.crc32(view[i:i + SEGMENT]).to_bytes(4, "big") for i in range(0, len(view), SEGMENT))


def fitting(crcs: bytes | None, length: int) -> bytes | None:
    """Checksums kept for a block of `length` bytes, if they are per SEGMENT (a cache
    written when segments were another size has others: those are made again)."""
    return crcs if crcs is not None and len(crcs) == 4 * -(-length // SEGMENT) else None


class _Span(NamedTuple):
    """Where a cached block's bytes are: a file, from `start`, and its segments' checksums."""
    path: str
    start: int
    length: int
    crcs: bytes
    lru_key: bool  # an entry of the LRU tier, refreshed by reads now and then
    touched: float


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


def _store_block(tier: diskcache.Cache, block_id: str, data: bytes) -> bytes | None:
    """Put a block into a diskcache tier (the caller holds the disk lock); a block large
    enough to get a file of its own gets its segments' checksums as the entry's tag (for
    range reads), which are returned."""
    # diskcache writes a large bytes value line by line (thousands of write calls per MiB
    # of random data); as a file-like value it writes it whole.
    large = len(data) >= tier.disk_min_file_size
    crcs = checksums(data) if large else None
    tier.set(block_id, io.BytesIO(data) if large else data, read=large, tag=crcs)
    return crcs


class _DiskTellingWhere(diskcache.Disk):
    """diskcache's storage of values, noting where it wrote each value's file, so that a
    block just cached is read by range at once (no lookup). Callers hold the cache's lock."""

    def __init__(self, directory: str, **settings) -> None:
        super().__init__(directory, **settings)
        self.written: dict[str, str] = {}

    def filename(self, key=diskcache.core.UNKNOWN, value=diskcache.core.UNKNOWN) -> tuple[str, str]:
        filename, full_path = super().filename(key, value)
        if isinstance(key, str):
            self.written[key] = full_path
        return filename, full_path


class BlockCache:
    def __init__(self, directory: Path, size_limit: int, is_id_of: Callable[[str, bytes], bool]) -> None:
        self._disk = diskcache.Cache(
            str(directory), size_limit=size_limit, eviction_policy="least-recently-used", cull_limit=16,
            disk=_DiskTellingWhere)
        self._directory = directory
        self._size_limit = size_limit
        self.kept = KeptFiles(directory / "kept")
        # Blocks of pinned files (pins.py): never evicted, outside the LRU limit's reach. Opened
        # once something is pinned: most devices pin nothing, and opening it was a third of
        # what a device's start costs here.
        self._pinned_directory = directory / "pinned"
        self._pinned_tier: diskcache.Cache | None = None
        self._pinned_opening = threading.Lock()
        if self._pinned_directory.is_dir():  # (only this device pins into its cache dir)
            self._pinned(create=True)
        self._is_id_of = is_id_of
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._spans: OrderedDict[str, _Span] = OrderedDict()
        self._open: OrderedDict[str, int] = OrderedDict()  # cache file path → descriptor (range reads)
        self._fresh_checksums: OrderedDict[str, bytes] = OrderedDict()  # made while uploading, for `keep`
        self._lock = threading.Lock()
        # One thread in diskcache at a time: its SQLite transactions (one per set, and per
        # get for the LRU time) would otherwise collide and SQLite's busy handler sleeps
        # for milliseconds. Block files are read outside the lock.
        self._disk_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _remember(self, block_id: str, data: bytes) -> None:
        self._put_newest(self._memory, block_id, data, MEMORY_BLOCKS)

    def _put_newest(self, table: OrderedDict, key: str, value, limit: int) -> None:
        """Insert as the most recently used entry of a bounded LRU table, dropping the oldest."""
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > limit:
                table.popitem(last=False)

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
        data = self._read_tier(self._disk, block_id, lru=True)
        if data is None:
            data = self._read_kept(block_id)
        if data is None and (pinned := self._pinned()) is not None:
            data = self._read_tier(pinned, block_id, lru=False)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember(block_id, data)
        return data

    def _read_tier(self, tier: diskcache.Cache, block_id: str, lru: bool) -> bytes | None:
        """A block of a diskcache tier, verified whole (and its place remembered)."""
        with self._disk_lock:
            # large blocks: an open file, small: bytes
            found, crcs = tier.get(block_id, read=True, tag=True)
        if found is None or isinstance(found, bytes):
            data, path = found, None
        else:
            with found:
                data, path = found.read(), found.name
        if data is not None and not self._is_id_of(block_id, data):
            with self._disk_lock:
                tier.delete(block_id)
            return None
        if path is not None:
            self._add_span(block_id, _Span(path, 0, len(data), fitting(crcs, len(data)) or checksums(data), lru,
                                           time.monotonic()))
        return data

    def _read_kept(self, block_id: str) -> bytes | None:
        found = self.kept.locate(block_id)
        if found is None:
            return None
        path, start, length, crcs = found
        data = self.kept.read(path, start, length)
        if data is None or not self._is_id_of(block_id, data):
            self.kept.forget(block_id)
            return None
        if fitting(crcs, length) is None:
            crcs = checksums(data)
            self.kept.set_checksums(block_id, crcs)
        self._add_span(block_id, _Span(str(path), start, length, crcs, False, time.monotonic()))
        return data

    # --- range reads ---------------------------------------------------------------------

    def read_range(self, block_id: str, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of a cached block, reading and checking only the segments
        they are in; None if the block is not cached here (or fails a check: the caller
        then reads it whole, which verifies it or fetches it again). Blocks only on a
        disk read, never on the store: callable from the trio loop."""
        data = self.memory_get(block_id)
        if data is not None:
            return data[start:end] if end <= len(data) else None
        span = self._span(block_id)
        if span is None or end > span.length:
            return None
        first = start // SEGMENT * SEGMENT
        last = min(span.length, -(-end // SEGMENT) * SEGMENT)
        try:
            raw = os.pread(self._descriptor(span.path), last - first, span.start + first)
        except OSError:  # evicted, trimmed, or the disk failed: read it whole
            self._close_file(span.path)
            self._forget_span(block_id)
            return None
        if len(raw) != last - first or checksums(raw) != span.crcs[first // SEGMENT * 4:-(-last // SEGMENT) * 4]:
            log.warning("cached block %s fails its checksum: reading it again", block_id)
            self._forget_span(block_id)
            return None
        if span.lru_key and time.monotonic() - span.touched > TOUCH_SECONDS:
            self._touch(block_id, span)
        self.hits += 1
        return raw[start - first:end - first]

    def _descriptor(self, path: str) -> int:
        """An open descriptor of a cache file (raises OSError if it is gone)."""
        with self._lock:
            fd = self._open.get(path)
            if fd is not None:
                self._open.move_to_end(path)
        if fd is not None and os.fstat(fd).st_nlink == 0:  # evicted or trimmed meanwhile
            self._close_file(path)
            fd = None
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            with self._lock:
                if path in self._open:  # another thread opened it meanwhile: keep one
                    fd, extra = self._open[path], [fd]
                else:
                    self._open[path] = fd
                    extra = [self._open.popitem(last=False)[1] for _ in range(len(self._open) - OPEN_FILES)]
            for old in extra:
                os.close(old)
        return fd

    def _close_file(self, path: str) -> None:
        with self._lock:
            fd = self._open.pop(path, None)
        if fd is not None:
            os.close(fd)

    def _span(self, block_id: str) -> _Span | None:
        """Where a cached block is, from memory or looked up once (no block read)."""
        with self._lock:
            span = self._spans.get(block_id)
            if span is not None:
                self._spans.move_to_end(block_id)
                return span
        for tier, lru in ((self._disk, True), (self._pinned(), False)):
            if tier is None:
                continue
            with self._disk_lock:
                found, crcs = tier.get(block_id, read=True, tag=True)
            if found is not None and not isinstance(found, bytes):
                with found:
                    length = os.fstat(found.fileno()).st_size
                    path = found.name
                if fitting(crcs, length) is not None:
                    return self._add_span(block_id, _Span(path, 0, length, crcs, lru, time.monotonic()))
                return None  # cached before checksums (of this segment size) were kept: a whole read adds them
        found = self.kept.locate(block_id)
        if found is not None and fitting(found[3], found[2]) is not None:
            path, start, length, crcs = found
            return self._add_span(block_id, _Span(str(path), start, length, crcs, False, time.monotonic()))
        return None

    def _add_span(self, block_id: str, span: _Span) -> _Span:
        self._put_newest(self._spans, block_id, span, MAX_SPANS)
        return span

    def _forget_span(self, block_id: str) -> None:
        with self._lock:
            self._spans.pop(block_id, None)

    def _touch(self, block_id: str, span: _Span) -> None:
        """Tell the LRU the block is in use (a whole get does; range reads skip SQLite)."""
        with self._disk_lock:
            found = self._disk.get(block_id, read=True)
        if found is not None and not isinstance(found, bytes):
            found.close()
        self._add_span(block_id, span._replace(touched=time.monotonic()))

    def put(self, block_id: str, data: bytes) -> None:
        """Best effort: a cache that cannot grow (disk full) must not fail an upload or a read."""
        self.put_many([(block_id, data)])

    def put_many(self, blocks: list[tuple[str, bytes]]) -> None:
        """`put` for several blocks, in one diskcache transaction (the blocks of a pack:
        a transaction per 4 KiB block cost as much CPU as its share of the pack's PUT)."""
        spans = []
        try:
            if leaves_reserve(self._directory, sum(len(data) for _, data in blocks)):
                with self._disk_lock, self._disk.transact():
                    written = self._disk.disk.written
                    for block_id, data in blocks:
                        crcs = _store_block(self._disk, block_id, data)
                        if block_id in written:
                            spans.append((block_id, _Span(written.pop(block_id), 0, len(data), crcs, True,
                                                          time.monotonic())))
        except (OSError, sqlite3.Error) as exc:
            log.warning("cannot cache %d block(s) on disk: %s", len(blocks), exc)
        for block_id, span in spans:
            self._add_span(block_id, span)
        for block_id, data in blocks[-MEMORY_BLOCKS:]:
            self._remember(block_id, data)
        if self.kept.total:
            self._make_room()

    def note_checksums(self, block_id: str, data: bytes) -> None:
        """A block of a file that will be kept whole is in hand (being uploaded): its
        segments' checksums go with it into the kept index, so its first range read reads
        its segments, not the whole block (from any thread)."""
        self._put_newest(self._fresh_checksums, block_id, checksums(data), FRESH_CHECKSUMS)

    def keep(self, path: Path, extents: list[list]) -> None:
        """Keep a just-uploaded staged file as the cached copy of its blocks (see kept.py);
        if it cannot be moved it stays where it was, for the caller to remove."""
        with self._lock:
            crcs = {block: self._fresh_checksums.pop(block) for block in block_ids(extents)
                    if block in self._fresh_checksums}
        try:
            if self.kept.keep(path, extents, crcs):
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
        pinned = self._pinned()
        with self._disk_lock:
            return block_id in self._disk or (pinned is not None and block_id in pinned)

    # --- pinned blocks ---------------------------------------------------------------------

    def pin(self, block_id: str, data: bytes) -> None:
        """Keep this block whatever the LRU limit does (raises OSError when the disk is full)."""
        pinned = self._pinned(create=True)
        with self._disk_lock:
            _store_block(pinned, block_id, data)

    def unpin(self, block_ids: set[str]) -> None:
        pinned = self._pinned()
        if pinned is None:
            return
        with self._disk_lock, pinned.transact():
            for block_id in block_ids:
                pinned.delete(block_id)

    def pinned_ids(self) -> set[str]:
        pinned = self._pinned()
        if pinned is None:
            return set()
        with self._disk_lock:
            return set(pinned.iterkeys())

    def _pinned(self, create: bool = False) -> diskcache.Cache | None:
        """The tier of pinned blocks; None while nothing was ever pinned here."""
        if self._pinned_tier is None and create:
            with self._pinned_opening:
                if self._pinned_tier is None:
                    self._pinned_tier = diskcache.Cache(str(self._pinned_directory), size_limit=1 << 62,
                                                        eviction_policy="none")
        return self._pinned_tier

    def volume_bytes(self) -> int:
        pinned = self._pinned()
        return self._disk.volume() + self.kept.total + (pinned.volume() if pinned is not None else 0)

    def close(self) -> None:
        with self._lock:
            descriptors, self._open = list(self._open.values()), OrderedDict()
        for fd in descriptors:
            os.close(fd)
        with self._disk_lock:  # a read a cancelled caller left in a thread may still be in a tier:
            self._disk.close()  # closing SQLite under it crashed the process (a full run, once)
            if self._pinned_tier is not None:
                self._pinned_tier.close()
        self.kept.close()
