"""The journal: the single source of truth for metadata.

`journal/<seq, 20 digits>` objects, each one sealed commit (a batch of operations
by one device), created only with put-if-absent so seq N is taken by exactly one
device. The associated data binds each entry to its seq and volume, so a forged,
moved or reordered entry fails its tag. Every entry carries a commit id: a PUT
whose answer was lost and that is retried meets 412, and the id tells whether
the existing entry is ours after all.

From format 4 an entry may also carry blocks (`blocks`: id → sealed bytes, as
`blocks/<id>` would hold them): the few KiB an fsync of a small edit wrote travel in
the entry that commits the edit, so it costs one PUT instead of two (see blocks.py).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import zstandard

from ..errors import IntegrityError
from ..store import NotFound
from ..store.volume import FORMAT_VERSION, Volume
from .ops import check_entry

PREFIX = "journal/"
FETCH_THREADS = 8


def entry_key(seq: int) -> str:
    return f"{PREFIX}{seq:020d}"


@dataclass
class Entry:
    seq: int
    device: str
    ops: list[dict]
    commit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)
    format: int = FORMAT_VERSION  # of the build that wrote it (its rules apply to it)
    blocks: dict[str, bytes] = field(default_factory=dict)  # carried blocks: id → sealed bytes


class Journal:
    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.store = volume.store

    def _seal(self, entry: Entry) -> bytes:
        fields = {"format": FORMAT_VERSION, "commit_id": entry.commit_id, "device": entry.device,
                  "time": entry.time, "ops": entry.ops}
        if entry.blocks:
            fields["blocks"] = {block_id: base64.b64encode(blob).decode() for block_id, blob in entry.blocks.items()}
        body = json.dumps(fields, separators=(",", ":")).encode()
        return self.volume.seal(entry_key(entry.seq), zstandard.compress(body))

    def _unseal(self, seq: int, blob: bytes) -> Entry:
        body = self.volume.unseal(entry_key(seq), blob, f"Journal entry {seq}")
        try:
            data = json.loads(zstandard.decompress(body))
            entry_format = int(data.get("format", 1))  # entries before format 2 do not say
            blocks = {str(block_id): base64.b64decode(blob, validate=True)
                      for block_id, blob in data.get("blocks", {}).items()}
            entry = Entry(seq, data["device"], data["ops"], data["commit_id"], data["time"], entry_format, blocks)
        except (ValueError, KeyError, TypeError, AttributeError, zstandard.ZstdError) as exc:
            raise IntegrityError(f"Journal entry {seq} is malformed.") from exc
        check_entry(seq, entry.ops, entry_format)
        return entry

    def seqs_after(self, seq: int) -> list[int]:
        """Seqs of the entries after `seq` (one list call per 1000 entries)."""
        found = []
        for key, *_ in self.store.list(PREFIX, start_after=entry_key(seq)):
            suffix = key[len(PREFIX):]
            if suffix.isdigit():
                found.append(int(suffix))
        return found

    def read(self, seq: int) -> Entry:
        return self._unseal(seq, self.store.get(entry_key(seq)))

    def entries_after(self, seq: int) -> Iterator[Entry]:
        """Every entry after `seq`, in order (fetched 8 at a time, for catching up after
        a long time offline); a gap in the seqs is an integrity error."""
        seqs = self.seqs_after(seq)
        for expected, found in enumerate(seqs, start=seq + 1):
            if found != expected:
                raise IntegrityError(f"Journal entry {expected} is missing (found {found} after it).")
        if len(seqs) <= 1:
            yield from (self.read(s) for s in seqs)
            return
        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            yield from pool.map(self.read, seqs)

    def append(self, entry: Entry) -> bool:
        """Try to take `entry.seq`; False if another commit already holds it."""
        if self.store.put_if_absent(entry_key(entry.seq), self._seal(entry)):
            return True
        try:
            existing = self.read(entry.seq)
        except NotFound:
            return False
        return existing.commit_id == entry.commit_id


def start_journal(volume: Volume) -> None:
    """Entry 1 of every volume: the root directory, owned by whoever created the volume."""
    import os
    import stat

    root = {"op": "mkroot", "mode": stat.S_IFDIR | 0o755, "uid": os.getuid(), "gid": os.getgid(),
            "t": time.time_ns()}
    if not Journal(volume).append(Entry(seq=1, device="init", ops=[root])):
        raise IntegrityError(f"The volume at {volume.url} already has a journal.")
