"""Staging: the local, durable home of file content that is being written.

A file being written lives whole in `staging/<fid>` (sparse: holes stay holes).
Reads of a staged file come from here, so a write is visible at once. A staged
file stays until its content has been uploaded and recorded, so a crash loses
nothing that was closed; the `dirty` table in the replica says which ones still
need uploading. Each write gives the file a new generation from one counter that
never repeats (not even after the staged file is dropped and made again), which
lets an upload tell whether what it chunked is still the current content.

A staged file made from committed content also remembers that content's manifest and
which byte ranges were written since (`Patchable`), so its upload can send just those
bytes. Anything else that changes it (a truncate, a replacement) forgets that.
"""

from __future__ import annotations

import errno
import itertools
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .manifest import Fetch, pieces

HOLE_MIN = 64 * 1024
MAX_WRITTEN_RANGES = 4096  # past this many separate writes, the upload re-chunks the whole file


@dataclass
class Patchable:
    """A staged file was `base` (a manifest of `base_size` bytes), then the ranges
    `written` ([start, end)) were written; nothing else changed it."""

    base: list[list]
    base_size: int
    written: list[tuple[int, int]] = field(default_factory=list)


class Staging:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._fds: dict[str, int] = {}
        self.generation: dict[str, int] = {}
        self._generations = itertools.count(1)
        self._patchable: dict[str, Patchable] = {}

    def path(self, fid: str) -> Path:
        return self.directory / fid

    def has(self, fid: str) -> bool:
        return fid in self._fds or self.path(fid).exists()

    def fd(self, fid: str) -> int:
        """An open read-write descriptor of the staged file (created empty if missing)."""
        fd = self._fds.get(fid)
        if fd is None:
            fd = os.open(self.path(fid), os.O_RDWR | os.O_CREAT, 0o600)
            self._fds[fid] = fd
        return fd

    def bump(self, fid: str) -> None:
        self.generation[fid] = next(self._generations)

    def close(self, fid: str) -> None:
        fd = self._fds.pop(fid, None)
        if fd is not None:
            os.close(fd)

    def remove(self, fid: str) -> None:
        self.close(fid)
        self.generation.pop(fid, None)
        self._patchable.pop(fid, None)
        try:
            os.unlink(self.path(fid))
        except FileNotFoundError:
            pass

    def close_all(self) -> None:
        for fid in list(self._fds):
            self.close(fid)

    def materialize(self, fid: str, extents: list[list], size: int, fetch: Fetch) -> Path:
        """Write a committed file's content into a file beside staging (blocking: fetches
        blocks); `adopt` makes it the staged file."""
        tmp = self.directory / f"{fid}.materializing"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            offset = 0
            for piece in pieces(extents):
                if piece.block is not None:
                    os.pwrite(fd, piece.of(fetch(piece.block, piece.location)), offset)
                offset += piece.length
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def adopt(self, fid: str, materialized: Path, extents: list[list], size: int) -> None:
        """Make a materialized file (of `extents`, `size` bytes) the staged file."""
        self.close(fid)  # a descriptor of the file it replaces would write into the void
        os.replace(materialized, self.path(fid))
        self.bump(fid)
        self._patchable[fid] = Patchable(extents, size)

    def replace(self, fid: str, prepared: Path) -> None:
        """A whole new content, prepared in a file beside staging, becomes the staged file."""
        self.close(fid)
        os.replace(prepared, self.path(fid))
        self.bump(fid)
        self._patchable.pop(fid, None)

    def prepared_path(self) -> Path:
        """A new name beside staging for content being prepared (the dot keeps it from being
        taken for a staged file; `drop_prepared` clears those a kill left)."""
        return self.directory / f"{uuid.uuid4().hex}.prepared"

    def drop_prepared(self) -> None:
        for leftover in self.directory.glob("*.prepared"):
            leftover.unlink(missing_ok=True)

    def patchable(self, fid: str) -> Patchable | None:
        """A copy of what is known of the staged file's changes, None if not known."""
        known = self._patchable.get(fid)
        return None if known is None else Patchable(known.base, known.base_size, list(known.written))

    def uploaded(self, fid: str, manifest: list[list], size: int) -> None:
        """The staged file, as it stands, is now stored as `manifest`."""
        self._patchable[fid] = Patchable(manifest, size)

    def write(self, fid: str, offset: int, data: bytes) -> None:
        fd = self.fd(fid)
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        self.bump(fid)
        known = self._patchable.get(fid)
        if known is not None:
            ranges, end = known.written, offset
            start = end - len(data)
            if ranges and ranges[-1][1] == start:  # a sequential writer: one range
                ranges[-1] = (ranges[-1][0], end)
            elif len(ranges) < MAX_WRITTEN_RANGES:
                ranges.append((start, end))
            else:
                del self._patchable[fid]

    def read(self, fid: str, offset: int, size: int) -> bytes:
        return os.pread(self.fd(fid), size, offset)

    def truncate(self, fid: str, size: int) -> None:
        os.ftruncate(self.fd(fid), size)
        self.bump(fid)
        self._patchable.pop(fid, None)

    def sync(self, fid: str) -> None:
        os.fsync(self.fd(fid))


def data_spans(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """Split [0, size) into (offset, length, is_data) runs using SEEK_DATA/SEEK_HOLE.

    Holes shorter than HOLE_MIN are folded into the data around them, so chunk
    boundaries do not shift for tiny holes.
    """
    spans: list[list] = []
    offset = 0
    while offset < size:
        try:
            data_start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data_start = size
        data_start = min(data_start, size)
        if data_start > offset:
            spans.append([offset, data_start - offset, False])
        if data_start >= size:
            break
        try:
            hole_start = min(os.lseek(fd, data_start, os.SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            hole_start = size  # truncated meanwhile: reading it finds out (StagingChanged)
        spans.append([data_start, hole_start - data_start, True])
        offset = hole_start
    merged: list[list] = []
    for span in spans:
        if not span[2] and span[1] < HOLE_MIN:
            span[2] = True
        if merged and merged[-1][2] == span[2]:
            merged[-1][1] += span[1]
        else:
            merged.append(span)
    return (tuple(s) for s in merged)
