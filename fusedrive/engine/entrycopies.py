"""A device's copies of the journal entries it applied or wrote lately, in its cache dir: what
it puts back, byte for byte, on a store that went back in time (journal.py), and what each
pull compares the store's newest entries with to see a fork."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

KEEP_ENTRIES = 5000  # the newest entries a device keeps a copy of, to put back on a store that lost them


class KeptEntries:
    """The sealed bytes of the newest journal entries, one file each (written whole, then
    renamed: a crash leaves the old copy or none). Written from the fetch threads."""

    def __init__(self, directory: Path, keep: int = KEEP_ENTRIES) -> None:
        self.directory = directory
        self.keep = keep
        directory.mkdir(mode=0o700, exist_ok=True)

    def put(self, seq: int, blob: bytes, replace: bool = False) -> None:
        """Keep a copy of entry `seq`; `replace`: also over another copy, for an entry this
        device had not applied (a copy there is stale: an append of its own whose outcome a
        crash hid, committed again since as another entry)."""
        path = self.directory / str(seq)
        if path.exists() and (not replace or self.get(seq) == blob):
            return
        temporary = self.directory / f".{seq}.{uuid.uuid4().hex}"
        temporary.write_bytes(blob)
        now = time.time()  # (the engine's clock: a simulation's is virtual)
        os.utime(temporary, (now, now))
        os.replace(temporary, path)
        (self.directory / str(seq - self.keep)).unlink(missing_ok=True)

    def get(self, seq: int) -> bytes | None:
        try:
            return (self.directory / str(seq)).read_bytes()
        except FileNotFoundError:
            return None

    def size(self, seq: int) -> int | None:
        try:
            return (self.directory / str(seq)).stat().st_size
        except FileNotFoundError:
            return None

    def kept_at(self, seq: int) -> float:
        """When the copy of entry `seq` was kept (Unix seconds): after the entry was stored."""
        try:
            return (self.directory / str(seq)).stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def drop(self, seqs: range) -> None:
        """Forget the copies of entries the store's history does not hold (after a fork)."""
        for seq in seqs:
            (self.directory / str(seq)).unlink(missing_ok=True)
