"""Staging: the local, durable home of file content that is being written.

A file made or replaced whole here lives whole in `staging/<fid>` (sparse: holes stay
holes). A write into a committed file does not copy or fetch that file first: its staged
file is *partial* — as long as the file, sparse, holding only the ranges written here —
over the committed manifest it started from (`Patchable.base`); reads take each byte from
wherever it is (reads.py), and the upload sends only what was written (uploader.py). A
partial file's ranges are logged beside it (`staging/<fid>.ranges`, see `RangeLog`), so a
killed process finds them again with the bytes.

A staged file stays until its content has been uploaded and recorded, so a crash loses
nothing that was closed; the `dirty` table in the replica says which ones still need
uploading. Each write gives the file a new generation from one counter that never
repeats (not even after the staged file is dropped and made again), which lets an
upload tell whether what it chunked is still the current content.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .manifest import prefix

HOLE_MIN = 64 * 1024
MAX_WRITTEN_RANGES = 4096  # past this many separate writes, a whole file's upload re-chunks it all
Ranges = list[tuple[int, int]]  # sorted [start, end) ranges, apart from each other


def add_range(ranges: Ranges, start: int, end: int) -> None:
    """Add [start, end) to sorted, separate ranges, joining those it touches."""
    if start >= end:
        return
    if ranges and ranges[-1][1] == start:  # a sequential writer: one range
        ranges[-1] = (ranges[-1][0], end)
        return
    first = bisect.bisect_left(ranges, start, key=lambda r: r[1])  # the first that ends at or after start
    last = bisect.bisect_right(ranges, end, key=lambda r: r[0])  # past the last that starts at or before end
    if first < last:
        start, end = min(start, ranges[first][0]), max(end, ranges[last - 1][1])
    ranges[first:last] = [(start, end)]


def clip_ranges(ranges: Ranges, size: int) -> Ranges:
    return [(start, min(end, size)) for start, end in ranges if start < size]


@dataclass
class Patchable:
    """A staged file was `base` (a manifest) showing its first `base_size` bytes, then the
    ranges `written` ([start, end)) were written; past `base_size`, what was not written
    is zeros. `present`: the ranges whose bytes the staged file holds (those written since
    it was staged) — None when it holds the whole file."""

    base: list[list]
    base_size: int
    written: Ranges = field(default_factory=list)
    present: Ranges | None = None

    def copy(self) -> Patchable:
        return Patchable(self.base, self.base_size, list(self.written),
                         None if self.present is None else list(self.present))


STAGED, BASE, ZERO = "staged", "base", "zero"


def segments(partial: Patchable, start: int, end: int) -> Iterator[tuple[int, int, str]]:
    """Split [start, end) of a partial file into (start, end, where its bytes are) runs:
    STAGED, its BASE manifest, or ZERO (past the base, never written)."""
    present = partial.present or []
    index = bisect.bisect_right(present, start, key=lambda r: r[1])
    pos = start
    while pos < end:
        if index < len(present) and present[index][0] <= pos:
            run_end = min(end, present[index][1])
            yield pos, run_end, STAGED
            index += 1
        else:
            gap_end = min(end, present[index][0]) if index < len(present) else end
            if pos < partial.base_size:
                run_end = min(gap_end, partial.base_size)
                yield pos, run_end, BASE
            else:
                run_end = gap_end
                yield pos, run_end, ZERO
        pos = run_end


class RangeLog:
    """`staging/<fid>.ranges`: a partial file's base and ranges, one JSON line, then a line
    per change since (`w START END` a write, `t SIZE` a truncate). A write is logged after
    its bytes are in the staged file, so a line never names bytes that are not there; a
    torn last line (a crash mid-append) is ignored. fsync of the file syncs it too."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[str, int] = {}

    def path(self, fid: str) -> Path:
        return self.directory / f"{fid}.ranges"

    def start(self, fid: str, partial: Patchable) -> None:
        """Log `partial` afresh (atomically: a new file renamed over the old one)."""
        self.close(fid)
        head = {"base": partial.base, "size": partial.base_size, "written": partial.written,
                "present": partial.present}
        tmp = self.directory / f"{fid}.ranges-new.prepared"
        tmp.write_text(json.dumps(head, separators=(",", ":")) + "\n")
        os.replace(tmp, self.path(fid))

    def append(self, fid: str, line: str) -> None:
        fd = self._fds.get(fid)
        if fd is None:
            fd = self._fds[fid] = os.open(self.path(fid), os.O_WRONLY | os.O_APPEND)
        os.write(fd, line.encode())

    def sync(self, fid: str) -> None:
        if fid in self._fds:
            os.fsync(self._fds[fid])
        elif self.path(fid).exists():
            fd = os.open(self.path(fid), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self, fid: str) -> None:
        fd = self._fds.pop(fid, None)
        if fd is not None:
            os.close(fd)

    def remove(self, fid: str) -> None:
        self.close(fid)
        self.path(fid).unlink(missing_ok=True)

    def load_all(self) -> dict[str, Patchable]:
        """Every logged partial file, as it was when the last whole line was written."""
        found = {}
        for path in self.directory.glob("*.ranges"):
            lines = path.read_text().split("\n")
            head = json.loads(lines[0])
            partial = Patchable(head["base"], head["size"], [tuple(r) for r in head["written"]],
                                [tuple(r) for r in head["present"]])
            for line in lines[1:-1]:  # the last is empty, or torn
                kind, *numbers = line.split()
                if kind == "w":
                    add_range(partial.written, int(numbers[0]), int(numbers[1]))
                    add_range(partial.present, int(numbers[0]), int(numbers[1]))
                else:
                    truncate_partial(partial, int(numbers[0]))
            found[path.name.removesuffix(".ranges")] = partial
        return found


def truncate_partial(partial: Patchable, size: int) -> None:
    """What a truncate to `size` leaves of a partial file's base and ranges."""
    if size < partial.base_size:
        partial.base, partial.base_size = prefix(partial.base, size), size
    partial.written = clip_ranges(partial.written, size)
    partial.present = clip_ranges(partial.present or [], size)


class Staging:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._fds: dict[str, int] = {}
        self.generation: dict[str, int] = {}
        self._generations = itertools.count(1)
        self._log = RangeLog(directory)
        self._patchable: dict[str, Patchable] = {}
        for fid, partial in self._log.load_all().items():
            if self.path(fid).exists():
                self._patchable[fid] = partial
            else:  # killed between logging and making the staged file: nothing was written
                self._log.remove(fid)

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
        self._log.close(fid)

    def remove(self, fid: str) -> None:
        self.close(fid)
        self.generation.pop(fid, None)
        self._patchable.pop(fid, None)
        self._log.remove(fid)
        try:
            os.unlink(self.path(fid))
        except FileNotFoundError:
            pass

    def close_all(self) -> None:
        for fid in list(self._fds):
            self.close(fid)

    def stage_over(self, fid: str, extents: list[list], size: int) -> None:
        """Stage a committed file (of `extents`, `size` bytes) for its first change without
        reading it: a sparse staged file of its size, holding nothing yet (`partial`)."""
        self.remove(fid)
        covered = sum(extent[1] for extent in extents)
        if covered > size:
            extents, covered = prefix(extents, size), size
        partial = Patchable(extents, covered, [], [])  # (past what a short manifest covers: zeros)
        self._log.start(fid, partial)
        os.ftruncate(self.fd(fid), size)
        self.bump(fid)
        self._patchable[fid] = partial

    def partial(self, fid: str) -> Patchable | None:
        """What the staged file holds and over what, if it does not hold the whole file
        (the original: not to be changed)."""
        known = self._patchable.get(fid)
        return known if known is not None and known.present is not None else None

    def replace(self, fid: str, prepared: Path) -> None:
        """A whole new content, prepared in a file beside staging, becomes the staged file."""
        self.close(fid)
        self._log.remove(fid)
        os.replace(prepared, self.path(fid))
        self.bump(fid)
        self._patchable.pop(fid, None)

    def copy_as(self, fid: str, copy: str) -> None:
        """The staged content of `fid` becomes also that of `copy` (a hard link, and the
        ranges if it is partial). Raises FileNotFoundError if it is gone."""
        partial = self.partial(fid)
        if partial is not None:  # logged first: a staged file without its log would pass for whole
            self._log.start(copy, partial)
        try:
            os.link(self.path(fid), self.path(copy))
        except FileNotFoundError:
            self._log.remove(copy)
            raise
        if partial is not None:
            self._patchable[copy] = partial.copy()
        self.bump(copy)

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
        return None if known is None else known.copy()

    def uploaded(self, fid: str, manifest: list[list], size: int) -> None:
        """The staged file, as it stands, is now stored as `manifest`."""
        known = self._patchable.get(fid)
        present = None if known is None else known.present
        self._patchable[fid] = Patchable(manifest, size, [], present)
        if present is not None:
            self._log.start(fid, self._patchable[fid])

    def write(self, fid: str, offset: int, data: bytes) -> None:
        fd = self.fd(fid)
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        self.bump(fid)
        known = self._patchable.get(fid)
        if known is None:
            return
        start, end = offset - len(data), offset
        if known.present is not None:
            add_range(known.present, start, end)
            self._log.append(fid, f"w {start} {end}\n")
        elif len(known.written) >= MAX_WRITTEN_RANGES:
            del self._patchable[fid]  # a whole file: chunked whole again
            return
        add_range(known.written, start, end)

    def read(self, fid: str, offset: int, size: int) -> bytes:
        return os.pread(self.fd(fid), size, offset)

    def size(self, fid: str) -> int:
        return os.fstat(self.fd(fid)).st_size

    def truncate(self, fid: str, size: int) -> None:
        os.ftruncate(self.fd(fid), size)
        self.bump(fid)
        known = self._patchable.get(fid)
        if known is not None and known.present is not None:
            truncate_partial(known, size)
            self._log.append(fid, f"t {size}\n")
        else:
            self._patchable.pop(fid, None)

    def sync(self, fid: str) -> None:
        os.fsync(self.fd(fid))
        self._log.sync(fid)


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
    return folded(spans)


def folded(spans: Iterable[Sequence]) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) runs with holes shorter than HOLE_MIN taken as data and
    neighbours of one kind joined."""
    merged: list[list] = []
    for offset, length, is_data in spans:
        is_data = is_data or length < HOLE_MIN
        if merged and merged[-1][2] == is_data:
            merged[-1][1] += length
        else:
            merged.append([offset, length, is_data])
    return (tuple(s) for s in merged)
