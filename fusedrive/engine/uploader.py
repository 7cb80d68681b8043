"""Upload: a staged file → content-defined chunks → blocks in the store → a manifest.

Runs in a worker thread. The staged file is read in windows with pread (not
mmap: a concurrent truncate would turn an mmap read into SIGBUS); the last chunk
of each window is carried into the next so boundaries depend only on content.
Holes become `[None, length]` extents and are never uploaded. A file smaller than the
minimum chunk uploads its block from the calling thread into a pack with the blocks of
other small files uploading at the same time (blocks.Packer): the caller waits out the
pack's short linger, so small files must upload from many threads at once to share one.

A file staged from committed content and then written in place (`Patchable`) uploads
only the ranges written: the rest of its manifest is the old one, cut around them (see
manifest.py). Once that leaves more than MAX_PATCH_EXTENTS extents beyond what whole
blocks would need, the cut-up places are chunked again (`manifest.compacted`: the
pieces between two whole blocks become content-defined blocks again; the blocks no edit
touched are found again, already stored, and not sent). Only they are read: a database
of a GiB written in place at random pages chunked all of itself every few dozen fsyncs.

When someone waits for the upload (fsync), the store answers and the volume allows it, up to
CARRY_MAX_BYTES of new blocks are carried by the journal entry instead of stored
(blocks.py): the upload then sends nothing, and the commit is the fsync's one PUT.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, NamedTuple

from .blocks import CARRY_MAX_BYTES, BlockStore
from .chunker import chunk_spans
from .manifest import Fetch, Where, block_ids, compacted, contents, extent, patch_plan, pieces, starts, window
from .staging import BASE, STAGED, ZERO, Patchable, data_spans, folded, segments

WINDOW = 16 * 1024 * 1024
MAX_IN_FLIGHT = 16
MAX_PATCH_EXTENTS = 64


class StagingChanged(Exception):
    """The staged file shrank while it was being chunked; the upload must start over."""


class NeedsStore(Exception):
    """An upload tried without the store (to carry its few new bytes, in the trio thread)
    would have to send a block: it must run in a worker thread."""


def fits_in_entry(size: int, patchable: Patchable | None) -> bool:
    """Whether what an upload has to send is small enough to be carried whole: a small
    file, or an edit in place of a few KiB (see `build_manifest`'s `store_allowed`)."""
    new_bytes = size if patchable is None else sum(end - start for start, end in patchable.written)
    return new_bytes <= CARRY_MAX_BYTES


class StagedBytes:
    """A staged file's bytes as an upload reads them: from the staged file, and where a
    partial one does not hold them, from the blocks it was staged over (`fetch`)."""

    def __init__(self, fd: int, patchable: Patchable | None, fetch: Fetch) -> None:
        self.fd = fd
        self.partial = patchable if patchable is not None and patchable.present is not None else None
        self.fetch = fetch
        if self.partial is not None:
            self._pieces = pieces(self.partial.base)
            self._starts = starts(self._pieces)

    def _base(self, start: int, stop: int) -> list[list]:
        return window(self.partial.base, self._pieces, self._starts, start, stop)

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset` (fewer only where the staged file ends)."""
        if self.partial is None:
            return os.pread(self.fd, length, offset)
        end = min(offset + length, os.fstat(self.fd).st_size)
        parts = []
        for start, stop, where in segments(self.partial, offset, end):
            if where == STAGED:
                parts.append(os.pread(self.fd, stop - start, start))
                if len(parts[-1]) < stop - start:
                    raise StagingChanged()  # truncated meanwhile
            elif where == ZERO:
                parts.append(bytes(stop - start))
            else:
                parts.append(b"".join(contents(self._base(start, stop), self.fetch)))
        return b"".join(parts)

    def spans(self, size: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, is_data) runs of [0, size), as `data_spans`: a partial file's
        data is what it holds and its base's data."""
        if self.partial is None:
            return data_spans(self.fd, size)
        runs: list[tuple[int, int, bool]] = []
        for start, stop, where in segments(self.partial, 0, size):
            if where == BASE:
                pos = start
                for piece in pieces(self._base(start, stop)):
                    runs.append((pos, piece.length, piece.block is not None))
                    pos += piece.length
            else:
                runs.append((start, stop - start, where == STAGED))
        return folded(runs)


def _chunks_of_span(content: StagedBytes, start: int, length: int, chunking: dict):
    """Yield the bytes of each content-defined chunk of [start, start + length). Each window
    starts where the last one's chunks ended (its unfinished last chunk is read again
    rather than joined to the next window: a copy under the GIL of every byte, where the
    read copies outside it)."""
    pos, end = start, start + length
    while pos < end:
        window = content.read(pos, min(WINDOW, end - pos))
        last = pos + len(window) >= end
        spans = list(chunk_spans(window, chunking))
        if not last:
            spans = spans[:-1]
        if not spans:
            raise StagingChanged()  # nothing read where the file should go on: truncated meanwhile
        for offset, size in spans:
            yield window if size == len(window) else window[offset:offset + size]
        pos += spans[-1][0] + spans[-1][1]


class Built(NamedTuple):
    extents: list[list]
    carried: dict[str, bytes]  # sealed bytes of the carried blocks it names not committed yet


class _BlockUploads:
    """Chunks to the store from the pool, each block once, at most MAX_IN_FLIGHT at a time;
    a small file's chunks go into a pack from the calling thread instead (see blocks.py);
    up to `carry_budget` bytes of new blocks are carried by the journal entry."""

    def __init__(self, blocks: BlockStore, pool: ThreadPoolExecutor, cache_blocks: bool, small: bool,
                 urgent: bool, carry_budget: int, store_allowed: bool) -> None:
        self.blocks, self.pool, self.cache_blocks, self.small, self.urgent = blocks, pool, cache_blocks, small, urgent
        self.carry_budget, self.store_allowed = carry_budget, store_allowed
        self.carried: dict[str, bytes] = {}
        self.in_flight: deque[Future] = deque()
        self.submitted: set[str] = set()

    def extent(self, chunk: bytes) -> list:
        """The chunk's extent; its upload starts unless the block is stored already."""
        block_id = self.blocks.volume.keys.id_of(chunk)
        known = self.blocks.is_known(block_id)
        uncommitted = self.blocks.uncommitted(block_id)
        if uncommitted is not None:  # carried by an edit still queued: this update queues it too
            self.carried[block_id] = uncommitted
        elif len(chunk) <= self.carry_budget and block_id not in self.submitted and not known:
            blob = self.blocks.carry(block_id, chunk)
            if blob is not None:
                self.carry_budget -= len(chunk)
                self.carried[block_id] = blob
                known = True
        if not self.store_allowed and not known:
            raise NeedsStore()
        if self.small:
            return extent(block_id, len(chunk), location=self.blocks.upload_packed(block_id, chunk, self.urgent))
        if not self.cache_blocks:  # the staged file will be kept whole as these blocks' cached copy
            self.blocks.cache.note_checksums(block_id, chunk)
        if block_id not in self.submitted and not known:
            self.submitted.add(block_id)
            self.in_flight.append(self.pool.submit(self.blocks.upload, block_id, chunk, self.cache_blocks))
            while len(self.in_flight) >= MAX_IN_FLIGHT:
                self.in_flight.popleft().result()
            return extent(block_id, len(chunk))
        return extent(block_id, len(chunk), location=self.blocks.location_of(block_id))

    def wait(self) -> None:
        while self.in_flight:
            self.in_flight.popleft().result()


def is_small(size: int, chunking: dict) -> bool:
    """A file below the minimum chunk is one block (per run of data): packed with others."""
    return size < chunking["min"]


def build_manifest(fd: int, size: int, chunking: dict, blocks: BlockStore, pool: ThreadPoolExecutor,
                   cache_blocks: bool = True, patchable: Patchable | None = None, urgent: bool = False,
                   store_allowed: bool = True, carry: bool = False) -> Built:
    """Chunk and upload the first `size` bytes of a staged file; return its extents and
    the blocks they carry. `cache_blocks`: copy each uploaded block into the block cache
    too. `patchable`: what the staged file is known to be, to upload only what was
    written (and, for a partial file, where to read what it does not hold). `urgent`:
    someone waits for this file alone (fsync): a small file's pack does not wait for
    company. `carry`: a few new blocks are carried by the entry (the volume allowing). Not
    `store_allowed`: raise NeedsStore rather than send or fetch anything or chunk much (so
    that the fsync of a small edit can be prepared without a hop to a worker thread)."""
    if os.fstat(fd).st_size < size:  # the part past its end would otherwise pass for a hole
        raise StagingChanged()
    if not store_allowed and not fits_in_entry(size, patchable):
        raise NeedsStore()
    carry_budget = CARRY_MAX_BYTES if carry and blocks.volume.carries_blocks else 0
    uploads = _BlockUploads(blocks, pool, cache_blocks, small=is_small(size, chunking), urgent=urgent,
                            carry_budget=carry_budget, store_allowed=store_allowed)
    content = StagedBytes(fd, patchable, blocks.fetch if store_allowed else _cached(blocks))
    extents = _patched(content, size, chunking, patchable, uploads) if patchable is not None else None
    if extents is None and not store_allowed:
        raise NeedsStore()  # the whole file would be chunked again
    if extents is None:
        extents = []
        for start, length, is_data in content.spans(size):
            if is_data:
                extents.extend(uploads.extent(chunk) for chunk in _chunks_of_span(content, start, length, chunking))
            else:
                extents.append([None, length])
    uploads.wait()
    return Built(extents, uploads.carried)


def _cached(blocks: BlockStore) -> Fetch:
    """A fetch from the cache only (NeedsStore for a block not in it)."""
    def fetch(block_id: str, location: Where) -> bytes:
        data = blocks.cache.get(block_id)
        if data is None:
            raise NeedsStore()
        return data
    return fetch


def _patched(content: StagedBytes, size: int, chunking: dict, patchable: Patchable,
             uploads: _BlockUploads) -> list[list] | None:
    """The manifest from the old one and the written ranges (its cut-up places chunked
    again once they are too many); None if it would keep a block not known to be stored
    (gc may have taken a block only pruned versions held: chunking the whole file
    uploads such blocks again)."""
    plan = patch_plan(patchable.base, patchable.base_size, patchable.written, size)
    if plan is None:
        return None
    if len(plan) > size // chunking["avg"] + MAX_PATCH_EXTENTS:
        plan = compacted(plan, chunking["min"])
    if not all(uploads.blocks.is_known(block) for block in block_ids(e for e in plan if isinstance(e, list))):
        return None
    extents: list[list] = []
    for item in plan:
        if isinstance(item, tuple):
            start, length = item
            extents.extend(uploads.extent(chunk) for chunk in _chunks_of_span(content, start, length, chunking))
        else:
            extents.append(item)
    return extents
