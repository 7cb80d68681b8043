"""Reads: from staging while a file is written here (a partial one's unwritten bytes from
the blocks it was staged over), else from its blocks (cache first),
fetching ahead of sequential readers. A block that fails verification is an error (EIO
above), never wrong bytes (blocks.py verifies).

A read away from where the file's last read ended (a database page, an index lookup)
takes only its bytes from the cache (`BlockCache.read_range`: the 8 KiB segments it
touches, checked) in the trio thread, as staged reads are; one whose block is not here
fetches it, then the other blocks of its 8 MiB window, side by side. A sequential read
loads whole blocks, in worker threads, and fetches ahead."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..errors import FusedriveError, IntegrityError, StoreUnreachable
from .blocks import BlockStore
from .cache import BlockCache
from .events import Problems, StoreHealth
from .history import check_not_archived
from .localfiles import LocalFiles
from .manifest import Piece, Where, pieces, starts
from .replica import Replica
from .tree import Inode
from .staging import BASE, ZERO, Patchable, Staging, segments

DOWNLOAD_THREADS = 24
PREFETCH_BLOCKS = 16
SEQUENTIAL_WINDOW = 1024 * 1024
# Bytes read in a row (each read near where the last ended) before a reader counts as
# sequential: the kernel's readahead follows a 4 KiB random read with a read of the next
# pages, and taking that for a sequential reader loaded and prefetched whole blocks for
# every few random reads (a database's or an index's page reads ran at half speed).
SEQUENTIAL_STREAK = 512 * 1024
# A random read that has to go to the store brings the other blocks of the file's
# READ_AROUND-aligned window after its own, side by side (Reader._read_around). 4 KiB
# random reads of a 512 MiB file from a store 20 ms away: 163/s with none, 516 with
# 4 MiB, 790 with 8.
READ_AROUND = 8 * 1024 * 1024


MAX_BASE_LAYOUTS = 64


@dataclass
class Layout:
    """A committed file's extents with their start offsets, for bisecting reads."""

    version: int
    starts: list[int]
    pieces: list[Piece]
    length: int  # the bytes the pieces cover


def layout_of(extents: list[list], version: int) -> Layout:
    layout_pieces = pieces(extents)
    return Layout(version, starts(layout_pieces), layout_pieces, sum(piece.length for piece in layout_pieces))


class Reader:
    """Owns the read path's state: layouts by inode, where each inode's last read ended
    and how much it read in a row, and the block downloads in flight (shared by every
    reader of a block)."""

    def __init__(self, replica: Replica, files: LocalFiles, staging: Staging, cache: BlockCache,
                 blocks: BlockStore, health: StoreHealth, problems: Problems, volume_url: str,
                 io_timeout: float) -> None:
        self.replica = replica
        self.files = files
        self.staging = staging
        self.cache = cache
        self.blocks = blocks
        self.health = health
        self.problems = problems
        self.volume_url = volume_url
        self.io_timeout = io_timeout
        self.download_limiter = trio.CapacityLimiter(DOWNLOAD_THREADS)
        self.nursery: trio.Nursery | None = None  # for prefetches, once started
        self._layouts: dict[int, Layout] = {}
        self._in_flight: dict[str, trio.Event] = {}
        self._runs: dict[int, tuple[int, int]] = {}
        self._base_layouts: dict[str, tuple[list[list], Layout]] = {}  # fid → a partial file's base, its layout  # inode → (where its last read ended, bytes read in a row)

    def forget(self, ino: int) -> None:
        """The file changed or went: its layout is rebuilt at the next read."""
        self._layouts.pop(ino, None)
        self._runs.pop(ino, None)

    async def read(self, node: Inode, offset: int, size: int) -> bytes:
        if node.fid in self.files.staged:
            partial = self.staging.partial(node.fid)
            if partial is None:
                return self.staging.read(node.fid, offset, size)
            return await self._read_partial(node, partial, offset, size)
        file_size = node.size
        if offset >= file_size:
            return b""
        size = min(size, file_size - offset)
        layout = self._layout(node)
        if offset + size > layout.length:
            # an entry whose size its manifest does not cover (fsck says so too): EIO, not a crash
            path = self.replica.path_of(node.fid) or node.fid
            exc = IntegrityError(f"{path} is {file_size} bytes, but its saved content covers only {layout.length}.")
            self.problems.report(f"Cannot read {path!r}: {exc}", exc)
            raise exc
        return await self._read_layout(node, layout, offset, size)

    async def _read_partial(self, node: Inode, partial: Patchable, offset: int, size: int) -> bytes:
        """A file written here over committed content it never read: each byte from the
        staged file where it was written, else from the base's blocks, else zeros. The
        staged parts are read after every await, so a write that lands meanwhile is seen."""
        end = min(offset + size, self.staging.size(node.fid))
        runs = list(segments(partial, offset, end))
        parts: list[bytes | None] = []
        for start, stop, where in runs:
            if where == BASE:
                parts.append(await self._read_layout(node, self._base_layout(node.fid, partial.base), start, stop - start))
            else:
                parts.append(bytes(stop - start) if where == ZERO else None)
        if self.staging.partial(node.fid) is not partial:  # uploaded, truncated away or dropped meanwhile
            return await self.read(self.replica.inode(node.ino) or node, offset, size)
        return b"".join(self.staging.read(node.fid, start, stop - start) if part is None else part
                        for (start, stop, _), part in zip(runs, parts))

    async def _read_layout(self, node: Inode, layout: Layout, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of committed content (within `layout.length`)."""
        index = bisect.bisect_right(layout.starts, offset) - 1
        # Kernel readahead sends several reads at once and they are served concurrently,
        # so "sequential" means near where the last read ended, not exactly there.
        last_end, streak = self._runs.get(node.ino, (None, 0))
        near = last_end is not None and abs(offset - last_end) <= SEQUENTIAL_WINDOW
        run = self._runs[node.ino] = (max(offset + size, last_end), streak + size) if near else (offset + size, size)
        sequential = near and run[1] >= SEQUENTIAL_STREAK
        if sequential or offset == 0:
            self._prefetch(layout, index + 1)
        parts = []
        end = offset + size
        while offset < end:
            start = layout.starts[index]
            piece = layout.pieces[index]
            take_from, take_to = offset - start, min(piece.length, end - start)
            if piece.block is None:
                parts.append(bytes(take_to - take_from))
            else:
                part = None if sequential else self.cache.read_range(
                    piece.block, piece.offset + take_from, piece.offset + take_to)
                if part is None:
                    from_store = not sequential and not self.cache.contains(piece.block)
                    part = piece.of(await self.fetch_block(piece, node), take_from, take_to)
                    if from_store:
                        self._read_around(layout, index)
                parts.append(part)
            offset = start + take_to
            index += 1
        return b"".join(parts)

    def _layout(self, node: Inode) -> Layout:
        layout = self._layouts.get(node.ino)
        if layout is None or layout.version != node.version:
            layout = self._layouts[node.ino] = layout_of(node.extents(), node.version)
        return layout

    def _base_layout(self, fid: str, base: list[list]) -> Layout:
        """The layout of a partial file's base, kept while the base is the same list."""
        known = self._base_layouts.get(fid)
        if known is None or known[0] is not base:
            if len(self._base_layouts) >= MAX_BASE_LAYOUTS:
                del self._base_layouts[next(iter(self._base_layouts))]
            known = self._base_layouts[fid] = (base, layout_of(base, 0))
        return known[1]

    def _prefetch(self, layout: Layout, index: int) -> None:
        """Start fetching the next blocks a sequential reader will want. Called for every
        kernel read, so blocks already in memory or on their way cost no task."""
        self._fetch_soon(layout.pieces[index:index + PREFETCH_BLOCKS], self.cache.in_memory)

    def _read_around(self, layout: Layout, index: int) -> None:
        """A random read whose block came from the store: fetch the other blocks of the
        file's READ_AROUND-aligned window too, side by side. A GET costs its round trip
        whatever its size, so a database or an index reading pages all over a file pays
        a round trip per window instead of one per block. They start once the read's own
        block is in, so they never slow the read that needed it; the bet costs bandwidth
        where the reads stay sparse."""
        window = layout.starts[index] // READ_AROUND * READ_AROUND
        first = max(bisect.bisect_right(layout.starts, window) - 1, 0)
        last = bisect.bisect_left(layout.starts, window + READ_AROUND)
        self._fetch_soon(layout.pieces[first:last], self.cache.contains)

    def _fetch_soon(self, candidates: list[Piece], here: Callable[[str], bool]) -> None:
        """A background fetch of each block of `candidates` that is neither on its way nor
        `here` (a check of the cache) yet."""
        if self.nursery is None:
            return
        for piece in candidates:
            if piece.block is not None and piece.block not in self._in_flight and not here(piece.block):
                self.nursery.start_soon(self._prefetch_one, piece)

    async def _prefetch_one(self, piece: Piece) -> None:
        try:
            await self.fetch_block(piece, None)
        except FusedriveError:
            pass  # the reader that needs it will fetch again and report the error

    async def fetch_block(self, piece: Piece, node: Inode | None) -> bytes:
        """The verified block of a piece; concurrent requests for one block share one download."""
        block_id = piece.block
        data = self.cache.memory_get(block_id)
        if data is not None:
            return data
        check_not_archived(self.replica, block_id, self.volume_url)
        while block_id in self._in_flight:
            await self._in_flight[block_id].wait()
            data = self.cache.memory_get(block_id)
            if data is not None:
                return data
        done = self._in_flight[block_id] = trio.Event()
        try:
            return await self._fetch_within_timeout(block_id, piece.location)
        except FusedriveError as exc:
            if node is not None:
                self.problems.report(f"Cannot read {self.replica.path_of(node.fid) or '(deleted file)'!r} "
                                     f"(block {block_id}): {exc}")
            raise
        finally:
            del self._in_flight[block_id]
            done.set()

    async def _fetch_within_timeout(self, block_id: str, location: Where) -> bytes:
        """A store that does not answer makes the read fail (EIO) after --io-timeout instead
        of holding the program (and the kernel request) forever; the thread is abandoned."""
        try:
            with trio.fail_after(self.io_timeout), self.health.request():
                return await trio.to_thread.run_sync(self.blocks.fetch, block_id, location,
                                                     limiter=self.download_limiter,
                                                     abandon_on_cancel=True)
        except trio.TooSlowError:
            exc = StoreUnreachable(f"The store did not answer within {self.io_timeout:g} s (--io-timeout).")
            self.health.failed(exc)
            raise exc from None
