"""Blocks in the store: plaintext → keyed id → zstd (or raw) → AES-256-GCM, and back.

A block's id is a keyed hash of its plaintext, so a block is uploaded once per
volume and can never be stale. Reading verifies both the GCM tag and the id:
bytes that fail either are an IntegrityError (EIO at the mount), never data.
All methods block; the mount calls them from worker threads.

Blocks of small files are packed: those sealed within PACK_LINGER_SECONDS of each other
go out as one object, `packs/<random id>`, and each file's manifest says where in it its
block is (manifest.Location; read back with a ranged GET). A PUT costs the same CPU
and round trip whatever its size, so an untar of thousands of small files was as many
PUTs; now it is a few, and the server's CPU goes to the files being written. A block
that has no company within the linger is stored as its own object, as before.

Blocks of an edit someone waits for (fsync) are carried instead, up to CARRY_MAX_BYTES
(format 4): sealed exactly as `blocks/<id>` would be, they travel in the `blocks` of the
journal entry that commits the edit, so the wait is one PUT, not a block PUT and then
the entry's (an entry may only name blocks already in the store). Extents name them
with the `Carried` location; the replica's `carried` table says which entry holds each
(the first to carry it), and this store keeps that map in memory for reads from worker
threads, beside the sealed bytes of this device's carried blocks not committed yet.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import zstandard

from .cache import BlockCache
from ..errors import BlockMissing, FusedriveError, IntegrityError
from .journal import Journal
from .manifest import CARRIED, BlockRef, Carried, Location, Where
from ..store import NotFound, ObjectStore
from ..store.volume import Volume

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


BLOCKS = "blocks/"
PACKS = "packs/"
PACK_LINGER_SECONDS = 0.02
PACK_MAX_BYTES = 8 << 20
PACK_MAX_BLOCKS = 1000


def block_key(block_id: str) -> str:
    return f"{BLOCKS}{block_id}"


def pack_key(pack: str) -> str:
    return f"{PACKS}{pack}"


CARRY_MAX_BYTES = 64 * 1024  # of new block bytes an entry carries for one upload
CARRY_MAX_WAITING = 256  # carried blocks not committed yet, beyond which blocks are PUT again


def object_key(ref: BlockRef) -> str:
    """The store object a block is in (a carried block's is a journal entry: see `stored_objects`)."""
    block_id, location = ref
    if isinstance(location, Carried):
        raise ValueError(f"block {block_id} is carried by a journal entry, not an object of its own")
    return block_key(block_id) if location is None else pack_key(location.pack)


def stored_objects(refs: Iterable[BlockRef]) -> dict[str, set[str]]:
    """The store keys the referenced blocks live in (`blocks/<id>`, `packs/<id>`), each
    with the ids of the referenced blocks in it. Carried blocks are left out: the journal
    entries that hold them are never deleted."""
    objects: dict[str, set[str]] = {}
    for ref in refs:
        if not isinstance(ref[1], Carried):
            objects.setdefault(object_key(ref), set()).add(ref[0])
    return objects


class _Packed(NamedTuple):
    block_id: str
    blob: bytes  # sealed
    plaintext: bytes


@dataclass
class _Pack:
    """Sealed blocks gathering for one PUT; its first caller puts it, the others wait."""
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    blocks: list[_Packed] = field(default_factory=list)
    size: int = 0
    lone_block: bool = False  # stored as its own object: nothing joined it
    urgent: bool = False  # someone waits for one of its blocks (fsync): no more lingering
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def full(self) -> bool:
        return self.size >= PACK_MAX_BYTES or len(self.blocks) >= PACK_MAX_BLOCKS

    def ready(self) -> bool:
        return self.urgent or self.full()


class Packer:
    """Group sealed small blocks into pack objects (thread-safe, blocking). `cache`:
    where the stored blocks' plaintexts go, all of a pack in one transaction."""

    def __init__(self, store: ObjectStore, cache: BlockCache) -> None:
        self.store = store
        self.cache = cache
        self._gathering: _Pack | None = None
        self._changed = threading.Condition()

    def put(self, block_id: str, blob: bytes, plaintext: bytes, urgent: bool = False) -> Location | None:
        """Store a sealed block with the others put within the linger, and cache it; where
        it is (None: alone, as `blocks/<id>`). Raises what the PUT raised, in every caller.
        `urgent`: someone waits for this block; its pack goes now."""
        with self._changed:
            pack = self._gathering
            first = pack is None or pack.full()
            if first:
                pack = self._gathering = _Pack()
            start = pack.size
            pack.blocks.append(_Packed(block_id, blob, plaintext))
            pack.size += len(blob)
            pack.urgent |= urgent
            if pack.ready():
                self._changed.notify_all()
            if first:
                self._changed.wait_for(pack.ready, timeout=PACK_LINGER_SECONDS)
                if self._gathering is pack:
                    self._gathering = None
        if first:
            self._store(pack)
        else:
            pack.done.wait()
        if pack.error is not None:
            raise pack.error
        return None if pack.lone_block else Location(pack.id, start, len(blob))

    def _store(self, pack: _Pack) -> None:
        try:
            if len(pack.blocks) == 1:
                pack.lone_block = True
                self.store.put(block_key(pack.blocks[0].block_id), pack.blocks[0].blob)
            else:
                self.store.put(pack_key(pack.id), b"".join(block.blob for block in pack.blocks))
            self.cache.put_many([(block.block_id, block.plaintext) for block in pack.blocks])
        except BaseException as exc:
            pack.error = exc
        finally:
            pack.done.set()


class BlockStore:
    def __init__(self, volume: Volume, cache: BlockCache) -> None:
        self.volume = volume
        self.cache = cache
        self._known: dict[str, Where] = {}  # block id → where it is stored
        self._known_lock = threading.Lock()
        self._carried_in: dict[str, int] = {}  # carried block → the entry it is read from
        self._carrying: dict[str, bytes] = {}  # this device's carried blocks not committed yet: sealed
        self._journal = Journal(volume)
        self._missing_told: set[str] = set()  # blocks found missing, each told once (see _missing)
        self._caching = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-carried")
        self.packer = Packer(volume.store, cache)
        self.uploaded = Transfers()
        self.downloaded = Transfers()

    def mark_known(self, refs: Iterable[BlockRef]) -> None:
        """Blocks the metadata already references exist in the store: never upload them again."""
        with self._known_lock:
            self._known.update(refs)

    def reset_known(self, refs: Iterable[BlockRef]) -> None:
        with self._known_lock:
            self._known = dict(refs)

    def is_known(self, block_id: str) -> bool:
        with self._known_lock:
            return block_id in self._known

    def location_of(self, block_id: str) -> Where:
        """Where a known block is stored (None: as its own object)."""
        with self._known_lock:
            return self._known.get(block_id)

    def _seal(self, block_id: str, plaintext: bytes) -> bytes:
        compressed = _compressed(plaintext)
        body = bytes([RAW]) + plaintext if compressed is None else bytes([ZSTD]) + compressed
        return self.volume.keys.seal("block_seal", body, block_key(block_id).encode())

    def _unseal(self, block_id: str, blob: bytes) -> bytes:
        body = self.volume.keys.unseal("block_seal", blob, block_key(block_id).encode(), f"Block {block_id}")
        if body[0] == ZSTD:
            try:
                plaintext = zstandard.ZstdDecompressor().decompress(body[1:])
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"Block {block_id} does not decompress.") from exc
        else:
            plaintext = body[1:]
        if not self.volume.keys.is_id_of(block_id, plaintext):
            raise IntegrityError(f"Block {block_id} does not match its id.")
        return plaintext

    def upload(self, block_id: str, plaintext: bytes, cache: bool = True) -> None:
        """Store a block as its own object unless the volume already has it. `cache`:
        also copy it into the block cache (not when its staged file will be kept whole)."""
        if self.is_known(block_id):
            return
        blob = self._seal(block_id, plaintext)
        self.volume.store.put(block_key(block_id), blob)
        if cache:
            self.cache.put(block_id, plaintext)
        self._stored(block_id, len(blob), None)

    def put_back(self, refs: Iterable[BlockRef]) -> list[str]:
        """Objects the store lost (it went back in time) that these blocks live in, stored
        again from this device's cache: a block of its own sealed anew, a pack rebuilt with
        each known block sealed anew at its place (the same body seals to the same length;
        bytes no reference names stay zeros). Blocking; one listing of the blocks and packs.
        The keys that could not be, for want of a block here (no longer known as stored: a
        save of the same content uploads it again)."""
        refs = list(refs)
        objects = stored_objects(refs)
        places: dict[str, list[tuple[str, Location]]] = {}
        for block_id, where in refs:
            if isinstance(where, Location):
                places.setdefault(pack_key(where.pack), []).append((block_id, where))
        present = {listed.key for prefix in (BLOCKS, PACKS) for listed in self.volume.store.list(prefix)}
        lost = []
        for key in sorted(objects.keys() - present):
            plaintexts = {block_id: self.cache.get(block_id) for block_id in objects[key]}
            if any(plaintext is None for plaintext in plaintexts.values()):
                lost.append(key)
                continue
            if key.startswith(BLOCKS):
                [(block_id, plaintext)] = plaintexts.items()
                self.volume.store.put(key, self._seal(block_id, plaintext))
                continue
            body = bytearray(max(where.start + where.size for _, where in places[key]))
            for block_id, where in places[key]:
                blob = self._seal(block_id, plaintexts[block_id])
                if len(blob) != where.size:
                    break  # sealed otherwise than when it was packed: it cannot go back in place
                body[where.start:where.start + where.size] = blob
            else:
                self.volume.store.put(key, bytes(body))
                continue
            lost.append(key)
        with self._known_lock:  # not stored any more: a save of the same content uploads it again
            for key in lost:
                for block_id in objects[key]:
                    self._known.pop(block_id, None)
        return lost

    def carry(self, block_id: str, plaintext: bytes) -> bytes | None:
        """Seal a block to travel in the journal entry that commits its file (and cache it);
        its sealed bytes, for the caller to queue with the update. None when too many
        carried blocks wait for a commit already (the store is away): PUT it instead."""
        with self._known_lock:
            if len(self._carrying) >= CARRY_MAX_WAITING:
                return None
        blob = self._seal(block_id, plaintext)
        with self._known_lock:
            self._carrying[block_id] = blob
            self._known[block_id] = CARRIED
        # Cached by a thread of its own: the fsync waiting for this need not wait for the
        # cache's transaction (reads meanwhile are served from the sealed bytes above).
        self._caching.submit(self.cache.put, block_id, plaintext)
        return blob

    def uncommitted(self, block_id: str) -> bytes | None:
        """The sealed bytes of a carried block no committed entry holds yet, else None: an
        upload naming it must queue them too (the upload that carried it may start over)."""
        with self._known_lock:
            return None if block_id in self._carried_in else self._carrying.get(block_id)

    def forget_carrying(self, block_ids: Iterable[str]) -> None:
        """Carried blocks no queued update names (the upload that carried them started over)."""
        with self._known_lock:
            for block_id in block_ids:
                if self._carrying.pop(block_id, None) is not None and block_id not in self._carried_in:
                    self._known.pop(block_id, None)

    def carried_in(self, where: dict[str, int]) -> None:
        """Which entry each carried block is read from (the replica's `on_carried`, and the
        table at start); the uncommitted copies of those blocks go."""
        with self._known_lock:
            self._carried_in.update(where)
            for block_id in where:
                self._carrying.pop(block_id, None)

    def carried_anew(self, where: dict[str, int], carrying: dict[str, bytes]) -> None:
        """The replica took another history (a fork): which entry each carried block is read
        from now, and the carried blocks queued again (those of entries the store lost)."""
        with self._known_lock:
            self._carried_in = dict(where)
            self._carrying.update(carrying)

    def is_carried(self, block_id: str) -> bool:
        """Whether an entry this device applied carries the block."""
        with self._known_lock:
            return block_id in self._carried_in

    def still_carrying(self, blobs: dict[str, bytes]) -> None:
        """This device's carried blocks still queued (from the replica, at start)."""
        with self._known_lock:
            self._carrying.update(blobs)

    def upload_packed(self, block_id: str, plaintext: bytes, urgent: bool = False) -> Location | None:
        """Store a small file's block with the others sealed about now (see Packer); where
        it went. Blocks the volume already has are not sent again."""
        if self.is_known(block_id):
            return self.location_of(block_id)
        blob = self._seal(block_id, plaintext)
        location = self.packer.put(block_id, blob, plaintext, urgent)
        self._stored(block_id, len(blob), location)
        return location

    def _stored(self, block_id: str, sent: int, location: Where) -> None:
        self.mark_known([(block_id, location)])
        self.uploaded.add(sent)

    def fetch(self, block_id: str, location: Where = None) -> bytes:
        """The verified plaintext of a block, from the cache or the store."""
        data = self.cache.get(block_id)
        if data is not None:
            return data
        blob = self._download(block_id, location)
        data = self._unseal_from(block_id, location, blob)
        self.downloaded.add(len(blob))
        self.cache.put(block_id, data)
        return data

    def _download(self, block_id: str, location: Where) -> bytes:
        if isinstance(location, Carried):
            return self._carried_blob(block_id)
        try:
            if location is None:
                return self.volume.store.get(block_key(block_id))
            return self.volume.store.get_range(pack_key(location.pack), location.start, location.size)
        except NotFound:
            where = "" if location is None else f" (in {pack_key(location.pack)})"
            raise self._missing(block_id, f"Block {block_id} is missing from the store{where}.") from None

    def _carried_blob(self, block_id: str) -> bytes:
        """A carried block's sealed bytes: this device's, not committed yet, or from its entry."""
        with self._known_lock:
            blob, seq = self._carrying.get(block_id), self._carried_in.get(block_id)
        if blob is not None:
            return blob
        if seq is None:
            raise IntegrityError(f"Block {block_id} travels in a journal entry this device has not applied.")
        try:
            return self._journal.read(seq).blocks[block_id]
        except (NotFound, KeyError):
            raise self._missing(block_id, f"Block {block_id} is missing from journal entry {seq}, which should "
                                          "carry it.") from None

    def _missing(self, block_id: str, message: str) -> BlockMissing:
        """A block the journal names that the store does not hold: it went back in time (a
        copy restored) and lost it, though no journal entry was lost — or the entry naming it
        was put back without it. Every device hears of it (a went-back mark at its next
        listing) and the one that has it in its cache puts it back; the read that found it is
        an EIO, never wrong bytes. Said once per block."""
        with self._known_lock:
            first = block_id not in self._missing_told
            self._missing_told.add(block_id)
        if first:
            try:
                self._journal.mark_went_back(0)
            except FusedriveError as exc:
                log.warning("could not tell other devices that block %s is missing: %s", block_id, exc)
        return BlockMissing(message)

    def _unseal_from(self, block_id: str, location: Where, blob: bytes) -> bytes:
        """_unseal, naming the pack or entry a damaged block came from."""
        try:
            return self._unseal(block_id, blob)
        except IntegrityError as exc:
            if isinstance(location, Carried):
                raise IntegrityError(f"{exc} It is carried by journal entry {self._carried_in.get(block_id)}.") \
                    from None
            if location is None:
                raise
            raise IntegrityError(f"{exc} It is bytes {location.start}–{location.start + location.size} of "
                                 f"{pack_key(location.pack)}.") from None

    def verify_stored(self, block_id: str, location: Where = None) -> None:
        """Download and fully verify one block (for `fsck --verify-blocks`)."""
        self._unseal_from(block_id, location, self._download(block_id, location))
