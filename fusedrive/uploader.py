"""Upload: a staged file → content-defined chunks → blocks in the store → a manifest.

Runs in a worker thread. The staged file is read in windows with pread (not
mmap: a concurrent truncate would turn an mmap read into SIGBUS); the last chunk
of each window is carried into the next so boundaries depend only on content.
Holes become `[None, length]` extents and are never uploaded.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from .blocks import BlockStore
from .chunker import chunk_spans
from .staging import data_spans

WINDOW = 16 * 1024 * 1024
MAX_IN_FLIGHT = 8


class StagingChanged(Exception):
    """The staged file shrank while it was being chunked; the upload must start over."""


def _chunks_of_span(fd: int, start: int, length: int, chunking: dict):
    """Yield the bytes of each content-defined chunk of [start, start + length)."""
    pending = b""
    pos, end = start, start + length
    while True:
        piece = os.pread(fd, min(WINDOW, end - pos), pos) if pos < end else b""
        if pos < end and not piece:
            raise StagingChanged()
        pos += len(piece)
        pending += piece
        last = pos >= end
        spans = list(chunk_spans(pending, chunking))
        if not last:
            spans = spans[:-1]
        consumed = 0
        for offset, size in spans:
            yield pending[offset:offset + size]
            consumed = offset + size
        pending = pending[consumed:]
        if last:
            return


def build_manifest(fd: int, size: int, chunking: dict, blocks: BlockStore, pool: ThreadPoolExecutor,
                   cache_blocks: bool = True) -> list[list]:
    """Chunk and upload the first `size` bytes of a staged file; return its extents.
    `cache_blocks`: copy each uploaded block into the block cache too."""
    if os.fstat(fd).st_size < size:  # the part past its end would otherwise pass for a hole
        raise StagingChanged()
    extents: list[list] = []
    in_flight: deque[Future] = deque()
    ids = blocks.volume.keys
    submitted: set[str] = set()
    for start, length, is_data in data_spans(fd, size):
        if not is_data:
            extents.append([None, length])
            continue
        for chunk in _chunks_of_span(fd, start, length, chunking):
            block_id = ids.id_of(chunk)
            extents.append([block_id, len(chunk)])
            if block_id not in submitted and not blocks.is_known(block_id):
                submitted.add(block_id)
                in_flight.append(pool.submit(blocks.upload, block_id, chunk, cache_blocks))
                while len(in_flight) >= MAX_IN_FLIGHT:
                    in_flight.popleft().result()
    while in_flight:
        in_flight.popleft().result()
    return extents
