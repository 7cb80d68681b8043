"""Manifests: a file's content as a list of extents, in file order.

- `[block_id, length]`: a whole block;
- `[None, length]`: a hole (zeros, never uploaded);
- `[block_id, length, offset]`: `length` bytes of a block, from `offset` in it. An
  in-place edit leaves these: it uploads the bytes it wrote as a new block and keeps
  the parts of the old blocks around them (`patch_plan`), instead of re-uploading every
  block it touched. Once they are too many, the cut-up places are chunked again
  (`compacted`, see uploader.py).
- `[block_id, length, offset or None, [pack, start, size]]`: a block stored inside a
  pack object (small files, see blocks.py) rather than as its own object: its sealed
  bytes are `size` bytes from `start` in `packs/<pack>`. `None`: the whole block.
- `[block_id, length, offset or None, []]`: a block carried by a journal entry (format
  4): its sealed bytes are in the `blocks` of the entry that first committed it, which
  the replica's `carried` table names (see blocks.py: an fsync of a small edit is one
  PUT, the entry, instead of the block's PUT and then the entry's).

Everything that reads extents goes through `pieces`, so the forms are handled in one
place. Where a block is stored travels with every extent that names it, so any manifest
(a checkpoint's, an old version's, another device's) is enough to read its blocks.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable, Iterator, NamedTuple

from ..errors import IntegrityError


class Location(NamedTuple):
    """Where a packed block's sealed bytes are: `size` bytes from `start` in `packs/<pack>`."""
    pack: str
    start: int
    size: int


class Carried(NamedTuple):
    """Where a carried block is: in a journal entry (which one: the replica's `carried` table)."""


CARRIED = Carried()
Where = Location | Carried | None  # None: the block is its own object, `blocks/<id>`


class Piece(NamedTuple):
    block: str | None  # None: a hole
    length: int
    offset: int  # where in the block the piece starts
    whole: bool  # the piece is the whole block
    location: Where = None

    def cut(self, start: int, length: int) -> list:
        """The extent of `length` bytes of this piece from `start` in it."""
        if self.block is None:
            return [None, length]
        return extent(self.block, length, self.offset + start, self.location)

    def of(self, block_data: bytes, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the piece, out of its (verified) block's. A block too short
        for the piece is an error, never a short read."""
        end = self.length if end is None else end
        if self.whole and start == 0 and end == len(block_data):
            return block_data
        if len(block_data) < self.offset + self.length:
            raise IntegrityError(f"block {self.block} has {len(block_data)} bytes, the file needs "
                                 f"{self.offset + self.length}")
        return block_data[self.offset + start:self.offset + end]


def extent(block: str, length: int, offset: int | None = None, location: Where = None) -> list:
    """The manifest entry for `length` bytes of a block from `offset` (None: the whole block)."""
    if location is not None:
        return [block, length, offset, list(location)]
    return [block, length] if offset is None else [block, length, offset]


def pieces(manifest: Iterable[list]) -> list[Piece]:
    return [_piece(e) for e in manifest]


def _piece(e: list) -> Piece:
    if len(e) == 2:
        return Piece(e[0], e[1], 0, True)
    location = (Location(*e[3]) if e[3] else CARRIED) if len(e) > 3 else None
    return Piece(e[0], e[1], e[2] or 0, e[2] is None, location)


def starts(file_pieces: list[Piece]) -> list[int]:
    """Where in the file each piece starts, for bisecting."""
    offsets, pos = [], 0
    for piece in file_pieces:
        offsets.append(pos)
        pos += piece.length
    return offsets


def block_ids(manifest: Iterable[list]) -> Iterable[str]:
    return (extent[0] for extent in manifest if extent[0] is not None)


BlockRef = tuple[str, Where]


def data_ranges(manifest: Iterable[list], size: int) -> list[tuple[int, int]]:
    """(offset, length) of the file's data within `size`, holes left out (adjacent data joined)."""
    ranges: list[list[int]] = []
    offset = 0
    for piece in pieces(manifest):
        length = min(piece.length, size - offset)
        if length <= 0:
            break
        if piece.block is not None:
            if ranges and ranges[-1][0] + ranges[-1][1] == offset:
                ranges[-1][1] += length
            else:
                ranges.append([offset, length])
        offset += piece.length
    return [(start, length) for start, length in ranges]  # past the manifest's end: zeros, a hole


def block_refs(manifest: Iterable[list]) -> Iterable[BlockRef]:
    """(block id, where it is stored) for each block a manifest names."""
    return ((piece.block, piece.location) for piece in pieces(manifest) if piece.block is not None)


Fetch = Callable[[str, Where], bytes]


def contents(manifest: Iterable[list], fetch: Fetch) -> Iterator[bytes]:
    """A file's bytes, piece by piece (holes as zeros), its blocks fetched with `fetch`."""
    for piece in pieces(manifest):
        yield bytes(piece.length) if piece.block is None else piece.of(fetch(piece.block, piece.location))


def known_lengths(manifests: Iterable[list[list]]) -> dict[str, int]:
    """Block id → how much of the block the manifests show exists (its whole length,
    unless they keep only the front of it)."""
    lengths: dict[str, int] = {}
    for manifest in manifests:
        for piece in pieces(manifest):
            if piece.block is not None:
                lengths[piece.block] = max(lengths.get(piece.block, 0), piece.offset + piece.length)
    return lengths


def window(manifest: list[list], file_pieces: list[Piece], offsets: list[int], lo: int, hi: int) -> list[list]:
    """Extents for bytes [lo, hi) of a file (`file_pieces` and their `offsets` are the
    manifest's, computed once by the caller)."""
    out: list[list] = []
    index = bisect.bisect_right(offsets, lo) - 1
    while lo < hi:
        piece, start = file_pieces[index], offsets[index]
        end = min(hi, start + piece.length)
        if lo == start and end == start + piece.length:
            out.append(manifest[index])
        else:
            out.append(piece.cut(lo - start, end - lo))
        lo, index = end, index + 1
    return out


def prefix(manifest: list[list], size: int) -> list[list]:
    """The extents of a file's first `size` bytes (no more than the manifest covers)."""
    file_pieces = pieces(manifest)
    return window(manifest, file_pieces, starts(file_pieces), 0, size)


def patch_plan(base: list[list], base_size: int, written: list[tuple[int, int]],
               size: int) -> list[list | tuple[int, int]] | None:
    """The extents of a file that was `base` (`base_size` bytes) before the byte ranges
    `written` ([start, end)) were written, and is `size` bytes now (a truncate in between
    cut `base` and the ranges already, see staging.py): `base` cut around the writes, with `(start, length)` tuples where the bytes
    must be read from the staged file and uploaded. Past `base_size`, what was not
    written is a hole. None if `base` does not describe `base_size` bytes."""
    if sum(extent[1] for extent in base) != base_size or size < base_size:
        return None
    base_pieces = pieces(base)
    base_starts = starts(base_pieces)

    def old(lo: int, hi: int) -> list[list]:
        return window(base, base_pieces, base_starts, lo, hi)

    plan: list[list | tuple[int, int]] = []
    pos = 0
    for start, end in [*_merged(written, size), (size, size)]:
        if pos < start:
            plan.extend(old(pos, min(start, base_size)))
            gap_from = max(pos, base_size)
            if gap_from < start:
                plan.append([None, start - gap_from])
        if start < end:
            plan.append((start, end - start))
        pos = end
    return plan


def compacted(plan: list[list | tuple[int, int]], min_block: int) -> list[list | tuple[int, int]]:
    """`plan` with each run of items that are not whole blocks of at least `min_block`
    bytes (pieces of cut blocks, the small blocks earlier edits made, ranges to upload)
    merged into one range to chunk again: a file cut up by many in-place edits gets
    content-defined blocks back where it was cut, and keeps the whole blocks between
    (holes too). Chunking such a run from a block boundary finds the old boundaries
    again, so the blocks no edit touched are the stored ones: only the edited ones go."""
    out: list[list | tuple[int, int]] = []
    pos, run_from = 0, None
    for item in plan:
        whole = isinstance(item, list) and (item[0] is None or (len(item) == 2 or item[2] is None)
                                            and item[1] >= min_block)
        if whole:
            if run_from is not None:
                out.append((run_from, pos - run_from))
                run_from = None
            out.append(item)
        elif run_from is None:
            run_from = pos
        pos += item[1]
    if run_from is not None:
        out.append((run_from, pos - run_from))
    return out


def _merged(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Sorted, non-overlapping ranges clipped to [0, size)."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        start, end = max(start, 0), min(end, size)
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]
