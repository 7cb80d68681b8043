"""Saved files kept whole: the block cache's copy of a file that was just uploaded.

Once a staged file's blocks are in the store, the staged file holds exactly their
bytes. Copying each block into the block cache doubled the local writes of every save
(on a 2-core machine it cost as much CPU as chunking, hashing and sealing together);
instead the staged file moves here and an index maps each block id to its range.
Reads are verified against the block id like any cache hit, so a range that no longer
holds its block (a file kept from content that was not uploaded as it stands, a
damaged disk) is a miss, never data. A block's segment checksums (for range reads, see
cache.py) are added to its row the first time it is read whole. The oldest kept files
go first when the cache is over its limit.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from .manifest import pieces

log = logging.getLogger(__name__)


class KeptFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(directory / "index.sqlite3"), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY, size INTEGER, kept REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS spans (block_id TEXT PRIMARY KEY, name TEXT, "
                         "offset INTEGER, length INTEGER)")
        self._db.execute("CREATE INDEX IF NOT EXISTS spans_by_name ON spans (name)")
        if "crcs" not in {row[1] for row in self._db.execute("PRAGMA table_info(spans)")}:
            self._db.execute("ALTER TABLE spans ADD COLUMN crcs BLOB")  # a cache dir from before range reads
        self._lock = threading.Lock()
        self._forget_strays()
        self.total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM files").fetchone()[0]

    def _forget_strays(self) -> None:
        """After a crash: files with no row (moved in, not indexed) and rows with no file."""
        indexed = {name for (name,) in self._db.execute("SELECT name FROM files")}
        on_disk = {p.name for p in self.directory.iterdir() if not p.name.startswith("index.sqlite3")}
        for name in on_disk - indexed:
            (self.directory / name).unlink(missing_ok=True)
        for name in indexed - on_disk:
            self._drop_rows(name)

    def _drop_rows(self, name: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM spans WHERE name = ?", (name,))
            self._db.execute("DELETE FROM files WHERE name = ?", (name,))

    def keep(self, path: Path, extents: list[list], crcs: dict[str, bytes] | None = None) -> bool:
        """Move a staged file here as the copy of the blocks of `extents` (in order, holes
        as [None, length]), with the segment checksums known of them (`crcs`); False if
        it cannot be moved (it is left where it was)."""
        name = uuid.uuid4().hex
        spans, offset = [], 0
        crcs = crcs or {}
        for piece in pieces(extents):
            if piece.block is not None and piece.whole:  # a piece's range holds only part of its block
                spans.append((piece.block, name, offset, piece.length, crcs.get(piece.block)))
            offset += piece.length
        size = path.stat().st_blocks * 512  # what it takes on disk: a sparse file's holes take nothing
        with self._lock:
            try:
                os.rename(path, self.directory / name)
            except OSError as exc:  # another file system (EXDEV): the caller removes it
                log.info("cannot keep %s in the cache: %s", path, exc)
                return False
            with self._db:
                self._db.execute("INSERT INTO files VALUES (?, ?, ?)", (name, size, time.time()))
                self._db.executemany("INSERT OR REPLACE INTO spans (block_id, name, offset, length, crcs) "
                                     "VALUES (?, ?, ?, ?, ?)", spans)
            self.total += size
        return True

    def locate(self, block_id: str) -> tuple[Path, int, int, bytes | None] | None:
        """Where a block is kept: file, offset, length, and its segment checksums if known."""
        with self._lock:
            row = self._db.execute("SELECT name, offset, length, crcs FROM spans WHERE block_id = ?",
                                   (block_id,)).fetchone()
        if row is None:
            return None
        name, offset, length, crcs = row
        return self.directory / name, offset, length, crcs

    @staticmethod
    def read(path: Path, offset: int, length: int) -> bytes | None:
        """The bytes kept at a place (unverified), or None."""
        try:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), length, offset)
        except FileNotFoundError:
            return None
        return data if len(data) == length else None

    def set_checksums(self, block_id: str, crcs: bytes) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE spans SET crcs = ? WHERE block_id = ?", (crcs, block_id))

    def has(self, block_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM spans WHERE block_id = ?", (block_id,)).fetchone() is not None

    def forget(self, block_id: str) -> None:
        """A kept range failed verification: never serve it again."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM spans WHERE block_id = ?", (block_id,))

    def trim(self, budget: int) -> None:
        """Delete the oldest kept files until they take at most `budget` bytes."""
        with self._lock:
            while self.total > max(budget, 0):
                row = self._db.execute("SELECT name, size FROM files ORDER BY kept LIMIT 1").fetchone()
                if row is None:
                    self.total = 0
                    return
                name, size = row
                self._drop_rows(name)
                (self.directory / name).unlink(missing_ok=True)
                self.total -= size

    def close(self) -> None:
        with self._lock:  # not under a query of another thread (a read its caller gave up on)
            self._db.close()
