"""Blocks in the store: plaintext → keyed id → zstd (or raw) → AES-256-GCM, and back.

A block's id is a keyed hash of its plaintext, so a block is uploaded once per
volume and can never be stale. Reading verifies both the GCM tag and the id:
bytes that fail either are an IntegrityError (EIO at the mount), never data.
All methods block; the mount calls them from worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import zstandard

from . import crypto
from .cache import BlockCache
from .errors import IntegrityError
from .store import NotFound
from .volume import Volume

log = logging.getLogger(__name__)

RAW, ZSTD = 0, 1
ZSTD_LEVEL = 3
# A block whose samples do not compress is stored raw without trying the whole of it:
# media, archives and encrypted files are most of the bytes a drive holds, and trying
# costs about as much CPU as hashing the block.
SAMPLES, SAMPLE_BYTES, SAMPLE_RATIO = 4, 16 * 1024, 0.97


RATE_WINDOW_SECONDS = 10


class Transfers:
    """Bytes and blocks moved one way (for status and metrics), thread-safe."""

    def __init__(self) -> None:
        self.bytes = 0
        self.blocks = 0
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes
            self.blocks += 1
            self._recent.append((time.monotonic(), nbytes))
            self._forget_old()

    def rate(self) -> float:
        """Bytes per second over the last RATE_WINDOW_SECONDS."""
        with self._lock:
            self._forget_old()
            return sum(n for _, n in self._recent) / RATE_WINDOW_SECONDS

    def _forget_old(self) -> None:
        horizon = time.monotonic() - RATE_WINDOW_SECONDS
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()


def _compressed(plaintext: bytes) -> bytes | None:
    """zstd of the block, or None where it would not be smaller (judged from samples
    spread over a large block first)."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    if len(plaintext) >= 4 * SAMPLES * SAMPLE_BYTES:
        step = len(plaintext) // SAMPLES
        sample = b"".join(plaintext[i * step:i * step + SAMPLE_BYTES] for i in range(SAMPLES))
        if len(compressor.compress(sample)) > SAMPLE_RATIO * len(sample):
            return None
    compressed = compressor.compress(plaintext)
    return compressed if len(compressed) < len(plaintext) else None


def block_key(block_id: str) -> str:
    return f"blocks/{block_id}"


class BlockStore:
    def __init__(self, volume: Volume, cache: BlockCache) -> None:
        self.volume = volume
        self.cache = cache
        self._known: set[str] = set()
        self._known_lock = threading.Lock()
        self.uploaded = Transfers()
        self.downloaded = Transfers()

    def mark_known(self, block_ids) -> None:
        """Blocks the metadata already references exist in the store: never upload them again."""
        with self._known_lock:
            self._known.update(block_ids)

    def reset_known(self, block_ids: set[str]) -> None:
        with self._known_lock:
            self._known = set(block_ids)

    def is_known(self, block_id: str) -> bool:
        with self._known_lock:
            return block_id in self._known

    def _seal(self, block_id: str, plaintext: bytes) -> bytes:
        compressed = _compressed(plaintext)
        body = bytes([RAW]) + plaintext if compressed is None else bytes([ZSTD]) + compressed
        return crypto.seal(self.volume.keys.block_seal, body, block_key(block_id).encode())

    def _unseal(self, block_id: str, blob: bytes) -> bytes:
        body = crypto.unseal(self.volume.keys.block_seal, blob, block_key(block_id).encode(), f"Block {block_id}")
        if body[0] == ZSTD:
            try:
                plaintext = zstandard.ZstdDecompressor().decompress(body[1:])
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"Block {block_id} does not decompress.") from exc
        else:
            plaintext = body[1:]
        if self.volume.keys.id_of(plaintext) != block_id:
            raise IntegrityError(f"Block {block_id} does not match its id.")
        return plaintext

    def upload(self, block_id: str, plaintext: bytes, cache: bool = True) -> int:
        """Store a block unless the volume already has it; returns bytes sent. `cache`:
        also copy it into the block cache (not when its staged file will be kept whole)."""
        if self.is_known(block_id):
            return 0
        blob = self._seal(block_id, plaintext)
        self.volume.store.put(block_key(block_id), blob)
        if cache:
            self.cache.put(block_id, plaintext)
        self.mark_known([block_id])
        self.uploaded.add(len(blob))
        return len(blob)

    def fetch(self, block_id: str) -> bytes:
        """The verified plaintext of a block, from the cache or the store."""
        data = self.cache.get(block_id)
        if data is not None:
            return data
        try:
            blob = self.volume.store.get(block_key(block_id))
        except NotFound:
            raise IntegrityError(f"Block {block_id} is missing from the store.") from None
        data = self._unseal(block_id, blob)
        self.downloaded.add(len(blob))
        self.cache.put(block_id, data)
        return data

    def verify_stored(self, block_id: str) -> None:
        """Download and fully verify one block (for `fsck --verify-blocks`)."""
        self._unseal(block_id, self.volume.store.get(block_key(block_id)))
