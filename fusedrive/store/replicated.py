"""The volume's store as devices and commands see it: the primary, where commits are
ordered, a replica in another region or provider that reads fall back to when the primary
fails (issue 38), and the move to that replica when it is promoted.

`VolumeStore` stands where the primary did, for everything above it. Reads go to the
primary; one that fails, or does not answer within FAILOVER_SECONDS (the call is left to
finish on its own), is answered by the replica, and for RETRY_PRIMARY_SECONDS after that
reads go to the replica; then a probe in the background asks the primary again. Writes go
to the primary only — put-if-absent on one store is what orders devices — and each is
noted in this device's `Backlog` first, so that the replication task
(engine/replication.py) copies it to the replica once the primary has it; a kill between
the note and the write loses nothing (the note of a write that never landed is dropped
when the primary turns out not to have it). Without a backlog (a command run outside a
mount) a write is copied at once, and what fails to copy is left for `fusedrive replica
sync`. A promotion records the move on the replica (`promoted`) and fences the old store
(`journal/moved`): every VolumeStore that meets either moves to the replica in place.

All calls are blocking, as the stores' are: callers in the trio loop run them in worker
threads, so the state here is guarded by a lock.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ..errors import StoreUnreachable, UsageError
from . import Listed, NotFound, ObjectStore, open_store
from .volume import HEADER_KEY, Volume, keep_json, kept_in_cache_dir

log = logging.getLogger(__name__)

FAILOVER_SECONDS = 10.0  # a primary read unanswered this long (plus its bytes' time) is answered by the replica
SLOWEST_RATE = 128 * 1024  # bytes/s a primary read may take before it counts as hanging (a slow uplink is not down)
LARGE_OBJECT_BYTES = 4 * 1024 * 1024  # what a whole-object read of a block, pack or checkpoint is allowed for
RETRY_PRIMARY_SECONDS = 15.0  # after the primary failed, reads go to the replica first this long
RECORD_KEY = "replica"  # the sealed replica record in the volume (docs/format.md)
PROMOTED_KEY = "promoted"  # on a promoted replica: the move record (put-if-absent)
FENCE_KEY = "journal/moved"  # on the old primary: the same record (put-if-absent), seen in every journal listing
KEPT_RECORD = "replica.json"  # a device's copy of it in its cache dir, for mounting while the primary is down
SYNC_THREADS = 8

T = TypeVar("T")


@dataclass(frozen=True)
class Noted:
    """A write to copy: `deleted` for a delete (the replica deletes it too)."""

    row: int
    key: str
    size: int
    deleted: bool


class Backlog:
    """What this device wrote to the primary and has not yet copied to the replica
    (`replication.sqlite3` in its cache dir). A row is made before the primary write and
    settled when it is over, whatever came of it (an answer lost, a failure): the copy
    looks at what the primary holds. A row not settled by an earlier run (killed between
    the two) is ready too; one of this run is not (the write may land after a look)."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS backlog (row INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "key TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, deleted INTEGER NOT NULL, "
                         "run TEXT NOT NULL, settled INTEGER NOT NULL)")
        self._run = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._closed = False

    def note(self, key: str, size: int, deleted: bool) -> None:
        """About to write `key` to the primary (a rewrite goes to the end of the line)."""
        with self._lock:
            if self._closed:
                raise StoreUnreachable("The device is stopping: nothing more is written.")
            self._db.execute("DELETE FROM backlog WHERE key = ?", (key,))
            self._db.execute("INSERT INTO backlog (key, size, deleted, run, settled) VALUES (?, ?, ?, ?, 0)",
                             (key, size, int(deleted), self._run))

    def settled(self, key: str) -> None:
        """The primary write of `key` is over (whatever its outcome)."""
        with self._lock:
            self._db.execute("UPDATE backlog SET settled = 1 WHERE key = ?", (key,))

    def ready(self, limit: int) -> list[Noted]:
        """The oldest rows whose primary write is over (or was cut short by a kill), in the order written."""
        with self._lock:
            rows = self._db.execute("SELECT row, key, size, deleted FROM backlog WHERE settled = 1 OR run != ? "
                                    "ORDER BY row LIMIT ?", (self._run, limit)).fetchall()
        return [Noted(row, key, size, bool(deleted)) for row, key, size, deleted in rows]

    def copied(self, noted: Noted) -> None:
        """`noted` is on the replica (or needs no copy); a rewrite since stays in line."""
        with self._lock:
            self._db.execute("DELETE FROM backlog WHERE row = ?", (noted.row,))

    def lag(self) -> tuple[int, int]:
        """(objects, bytes) not on the replica yet."""
        with self._lock:
            count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM backlog").fetchone()
        return count, size

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()


class VolumeStore:
    """The volume's store as a device or a command sees it: the primary, the replica behind
    it if the volume has one, and where it moved when the replica was promoted (see the
    module docstring). One owner of "which store is the volume's": everything above calls
    this, and it changes in place (`attach`, `detach`, `move_to_replica`)."""

    def __init__(self, primary: ObjectStore, record: dict | None = None, replica: ObjectStore | None = None) -> None:
        """`record`: the replica record (`url`, `endpoint_url`, `provider_replicated`), if it
        has one; `replica`: the store it names, if the caller has it open already."""
        self.primary, self.url = primary, primary.url
        self.record: dict | None = None
        self.replica: ObjectStore | None = None
        self.copies = False  # devices copy their writes to the replica (not when the provider does)
        self.copy_from: ObjectStore | None = None  # where the backlog's objects are copied from, and to
        self.copy_to: ObjectStore | None = None
        self.backlog: Backlog | None = None  # a device's (Replication attaches it); None in a command
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="primary-read")
        self._lock = threading.Lock()
        self._replica_first_until = 0.0  # time.monotonic(): reads go to the replica first until then (0: never)
        self._probing = False  # one read is trying the primary again
        self.reading_replica_since: float | None = None  # Unix seconds: the last read was the replica's
        self.primary_error = ""
        if record is not None:
            self.attach(record, replica)

    def attach(self, record: dict, replica: ObjectStore | None = None) -> None:
        """The volume names this replica (now, or from now on)."""
        opened = replica or open_store(record["url"], record.get("endpoint_url"))
        with self._lock:
            self.record, self.replica = record, opened
            self.copies = not record.get("provider_replicated")
            self.copy_from, self.copy_to = self.primary, opened

    def detach(self) -> None:
        """The volume names no replica any more."""
        with self._lock:
            self.record, self.replica, self.copies = None, None, False
            self._replica_first_until, self.reading_replica_since = 0.0, None

    def __getattr__(self, name: str):
        """What only some stores do (share links, storage classes, a directory's root): the primary's."""
        return getattr(self.primary, name)

    # --- reads -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        large = key.startswith(("blocks/", "packs/", "checkpoints/"))
        return self._read(key, lambda store: store.get(key), LARGE_OBJECT_BYTES if large else 0)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._read(key, lambda store: store.get_range(key, start, length),
                          LARGE_OBJECT_BYTES if length < 0 else length)

    def list(self, prefix: str, start_after: str = "") -> Iterator[Listed]:
        if self.replica is None:
            return self.primary.list(prefix, start_after)
        return iter(self._read(prefix, lambda store: list(store.list(prefix, start_after)), 0))

    def _read(self, key: str, call: Callable[[ObjectStore], T], size: int) -> T:
        """`size`: about how many bytes come back (the time they take is not a hang)."""
        replica = self.replica
        if replica is None:
            return call(self.primary)
        if self._try_primary():
            future = self._pool.submit(call, self.primary)
            try:
                result = future.result(timeout=FAILOVER_SECONDS + size / SLOWEST_RATE)
            except NotFound as exc:
                if key != HEADER_KEY:
                    self._primary_answered()
                    raise  # the primary's word on what exists is final
                self._primary_failed(exc)  # no volume there (an emptied bucket, a directory gone): the replica's
            except (StoreUnreachable, concurrent.futures.TimeoutError) as exc:
                self._primary_failed(exc)
            else:
                self._primary_answered()
                return result
        try:
            result = call(replica)
        except NotFound:
            raise StoreUnreachable(f"The store at {self.url} does not answer ({self.primary_error}) and its replica "
                                   f"does not have {key} yet.") from None
        except StoreUnreachable as exc:
            raise StoreUnreachable(f"Neither the store at {self.url} ({self.primary_error}) nor its replica at "
                                   f"{replica.url} answers ({exc}).") from None
        with self._lock:
            if self.reading_replica_since is None:
                self.reading_replica_since = time.time()
                log.warning("reading from the replica %s: the store at %s does not answer (%s)", replica.url,
                            self.url, self.primary_error)
        return result

    def _try_primary(self) -> bool:
        """Whether this read asks the primary: while it answers. After it failed, reads go
        to the replica, and once RETRY_PRIMARY_SECONDS are over a probe in the background
        (never a reader's wait) asks it whether it answers again."""
        with self._lock:
            if not self._replica_first_until:
                return True
            if time.monotonic() >= self._replica_first_until and not self._probing:
                self._probing = True
                self._pool.submit(self._probe)
            return False

    def _probe(self) -> None:
        try:
            self.primary.get_range(HEADER_KEY, 0, 1)
        except (NotFound, StoreUnreachable) as exc:
            self._primary_failed(exc)
        else:
            self._primary_answered()

    def _primary_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._probing = False
            self._replica_first_until = time.monotonic() + RETRY_PRIMARY_SECONDS
            self.primary_error = "it holds no volume" if isinstance(exc, NotFound) else \
                str(exc) or f"no answer in {FAILOVER_SECONDS:g} s"

    def _primary_answered(self) -> None:
        with self._lock:
            self._probing = False
            self._replica_first_until = 0.0
            if self.reading_replica_since is not None:
                log.warning("the store at %s answers again: reading from it", self.url)
            self.reading_replica_since = None

    def move_to_replica(self) -> None:
        """The replica was promoted: it is the store from now on (reads, writes, commits).
        What the backlog still holds is copied from the old primary to it, if it answers."""
        with self._lock:
            old, new = self.primary, self.replica
            self.copy_from, self.copy_to = old, new
            self.primary, self.url, self.record, self.replica, self.copies = new, new.url, None, None, False
            self._replica_first_until, self.reading_replica_since = 0.0, None

    # --- writes: the primary only, noted for the replica ------------------------------------

    def put(self, key: str, data: bytes) -> None:
        self._write(key, len(data), False, lambda: self.primary.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._write(key, len(data), False, lambda: self.primary.put_if_absent(key, data))

    def put_file(self, key: str, path: str) -> None:
        self._write(key, os.path.getsize(path), False, lambda: self.primary.put_file(key, path))

    def delete(self, key: str) -> None:
        self._write(key, 0, True, lambda: self.primary.delete(key))

    def _write(self, key: str, size: int, deleted: bool, write: Callable[[], T]) -> T:
        if not self.copies:
            return self._primary_wrote(write)
        if self.backlog is None:
            result = self._primary_wrote(write)
            try:
                copy_to_replica(self, Noted(0, key, size, deleted))
            except StoreUnreachable as exc:
                log.warning("%s is not on the replica yet (fusedrive replica sync copies it): %s", key, exc)
            return result
        self.backlog.note(key, size, deleted)
        try:
            return self._primary_wrote(write)
        finally:  # landed, failed, or its answer lost: the copy looks at what the primary holds
            self.backlog.settled(key)

    def _primary_wrote(self, write: Callable[[], T]) -> T:
        """A write the primary took says it is back: reads go to it again."""
        result = write()
        if self._replica_first_until:
            self._primary_answered()
        return result


def copy_to_replica(store: VolumeStore, noted: Noted) -> None:
    """Copy one written object from the primary to the replica (blocking). Nothing to copy
    if the primary does not have it: a write that never landed, or deleted since. What
    orders devices (the header, journal entries, checkpoints) is never replaced: once the
    replica is promoted, what its own devices committed there is the volume's."""
    source, destination = store.copy_from, store.copy_to
    if noted.deleted:
        destination.delete(noted.key)
        return
    try:
        data = source.get(noted.key)
    except NotFound:
        return
    if copy_order(noted.key)[0] == 1:
        destination.put(noted.key, data)
    else:
        destination.put_if_absent(noted.key, data)


# --- the record in the volume, and a device's copy of it ---------------------------------------


def store_of(volume: Volume) -> VolumeStore:
    """The volume's store as a VolumeStore (put in place the first time)."""
    if not isinstance(volume.store, VolumeStore):
        volume.store = VolumeStore(volume.store)
    return volume.store


def read_record(volume: Volume) -> dict | None:
    """The volume's replica record; None if it has none."""
    try:
        blob = volume.store.get(RECORD_KEY)
    except NotFound:
        return None
    return json.loads(volume.unseal(RECORD_KEY, blob, "the replica record"))


def write_record(volume: Volume, record: dict | None) -> None:
    """Name the volume's replica (None: it has none any more); running devices learn it
    within RECORD_CHECK_SECONDS."""
    if record is None:
        volume.store.delete(RECORD_KEY)
    else:
        volume.store.put(RECORD_KEY, volume.seal(RECORD_KEY, json.dumps(record).encode()))


def attach_replica(volume: Volume, cache_dir: Path | None = None) -> None:
    """Put the volume's replica behind its store, if it has one: the record in the volume,
    or while the primary does not answer the copy a device's cache dir kept."""
    store = store_of(volume)
    if store.replica is not None:
        return
    try:
        record = read_record(volume)
    except StoreUnreachable:
        kept = kept_in_cache_dir(KEPT_RECORD, volume.url, cache_dir)
        record = kept["record"] if kept is not None else None
    if record is not None:
        store.attach(record)


def keep_record(cache_dir: Path, volume: Volume) -> None:
    """Remember the volume's replica in a device's cache dir (or that it has none)."""
    record = getattr(volume.store, "record", None)
    keep_json(cache_dir / KEPT_RECORD, {"url": volume.url, "record": record} if record is not None else None)


def check_replica(replica: ObjectStore, volume: Volume) -> None:
    """UsageError unless `replica` can be this volume's replica: it answers, and holds no
    other volume (nor this one promoted: a store of its own)."""
    try:
        header = replica.get(HEADER_KEY)
    except NotFound:
        return
    if header != volume.header:
        raise UsageError(f"{replica.url} holds another volume: a replica must be empty or this volume's copy.")
    try:
        replica.get_range(PROMOTED_KEY, 0, 1)
    except NotFound:
        return
    raise UsageError(f"{replica.url} was promoted: it is a store of its own now, not a replica.")


# --- copying what is missing ---------------------------------------------------------------------


def copy_order(key: str) -> tuple[int, str]:
    """The header first (a directory store takes nothing before it), the journal last and in
    order: a reader of the replica never meets an entry or checkpoint whose blocks are not
    there yet."""
    group = 0 if key == HEADER_KEY else 3 if key.startswith("journal/") else 2 if key.startswith("checkpoints/") else 1
    return group, key


def missing_on_replica(store: VolumeStore) -> list[Listed]:
    """What the primary holds that the replica does not (or holds at another size), in copy order."""
    return _missing(*_listed_on_both(store))


def _listed_on_both(store: VolumeStore) -> tuple[list[Listed], dict[str, int]]:
    """Everything the primary lists, and key → size of what the replica holds."""
    try:
        store.replica.get_range(HEADER_KEY, 0, 1)
    except NotFound:
        there = {}  # a new replica (a directory store lists nothing before its header is there)
    else:
        there = {listed.key: listed.size for listed in store.replica.list("")}
    return list(store.primary.list("")), there


def _missing(here: list[Listed], there: dict[str, int]) -> list[Listed]:
    return sorted((listed for listed in here if there.get(listed.key) != listed.size),
                  key=lambda listed: copy_order(listed.key))


def sync_replica(store: VolumeStore, missing: list[Listed], copied: Callable[[int], None]) -> None:
    """Copy `missing` (in copy order) to the replica, `copied(size)` after each: the content
    side by side, the header and the journal one at a time."""
    for group, in_group in itertools.groupby(missing, key=lambda listed: copy_order(listed.key)[0]):
        if group == 1:
            with concurrent.futures.ThreadPoolExecutor(SYNC_THREADS) as pool:
                for done in pool.map(lambda one: _copy_listed(store, one), in_group):
                    copied(done.size)
        else:
            for listed in in_group:
                copied(_copy_listed(store, listed).size)


def _copy_listed(store: VolumeStore, listed: Listed) -> Listed:
    copy_to_replica(store, Noted(0, listed.key, listed.size, False))
    return listed


def compare_with_replica(store: VolumeStore) -> list[str]:
    """What fsck --replica reports: objects the replica is missing (copies not made yet: the
    devices' backlogs, or `replica sync`), and journal entries the two stores hold
    differently (never right: a replica must be a copy)."""
    here, there = _listed_on_both(store)
    missing = _missing(here, there)
    problems = []
    if missing:
        shown = ", ".join(listed.key for listed in missing[:3]) + ("…" if len(missing) > 3 else "")
        problems.append(f"the replica {store.replica.url} is missing {len(missing):,} objects the store holds "
                        f"({shown}): devices copy what they wrote when they can; fusedrive replica sync copies the rest")
    missing_keys = {listed.key for listed in missing}
    for listed in here:
        if listed.key.startswith("journal/") and listed.key[len("journal/"):].isdigit() and \
                listed.key not in missing_keys and store.primary.get(listed.key) != store.replica.get(listed.key):
            problems.append(f"the replica's {listed.key} differs from the store's")
    return problems


# --- promotion: the replica becomes the store, the old one is fenced --------------------------------


def move_record(volume: Volume) -> dict:
    """What a promotion of the volume's replica writes (`promoted` on it, the fence on the old store)."""
    store = store_of(volume)
    return {"from": store.primary.url, "to": store.replica.url, "endpoint_url": store.record.get("endpoint_url"),
            "time": time.time()}


def _sealed(volume: Volume, key: str, record: dict) -> bytes:
    return volume.seal(key, json.dumps(record).encode())


def _unsealed(volume: Volume, store: ObjectStore, key: str) -> dict | None:
    try:
        return json.loads(volume.unseal(key, store.get(key), "the record of the volume's move"))
    except NotFound:
        return None


def promote(volume: Volume) -> tuple[dict, bool]:
    """Make the volume's replica its store (blocking): the move record put-if-absent on the
    replica first (two promotions at once: one record wins, the other finds it and agrees or
    is refused), then the fence on the old store where it answers, then the volume uses the
    replica. Returns the record in force and whether the old store is fenced."""
    store = store_of(volume)
    move, old, new = move_record(volume), store.primary, store.replica
    if not new.put_if_absent(PROMOTED_KEY, _sealed(volume, PROMOTED_KEY, move)):
        there = _unsealed(volume, new, PROMOTED_KEY)
        if there is None or there["from"] != move["from"]:
            raise UsageError(f"{move['to']} was promoted already, from {there and there['from']}: it is "
                             "another volume's store now.")
        move = there
    new.delete(RECORD_KEY)  # the copied record named the new store as its own replica
    store.move_to_replica()
    return move, fence(volume, move, old)


def fence(volume: Volume, move: dict, old: ObjectStore) -> bool:
    """Put the move record on the old store, where every device listing its journal sees it
    (and a device that opens it follows it); False if the old store does not answer."""
    try:
        old.put_if_absent(FENCE_KEY, _sealed(volume, FENCE_KEY, move))
    except StoreUnreachable:
        return False
    return True


def moved(volume: Volume) -> dict | None:
    """The move record in force for this volume: the fence on its store, or where the store
    does not answer the record on its replica. None if it has not moved."""
    store = store_of(volume)
    try:
        return _unsealed(volume, store, FENCE_KEY)  # (the replica answers it while the primary does not: never there)
    except StoreUnreachable:
        if store.replica is None:
            raise
    found = _unsealed(volume, store.replica, PROMOTED_KEY)
    return found if found is not None and found["from"] == store.primary.url else None


def follow_move(volume: Volume) -> dict | None:
    """If the volume moved to its promoted replica, use that store from now on; the move
    record (None if it did not move, or neither store answers)."""
    try:
        move = moved(volume)
    except StoreUnreachable:
        return None
    if move is None:
        return None
    store = store_of(volume)
    if store.replica is None or store.replica.url != move["to"]:
        store.attach({"url": move["to"], "endpoint_url": move.get("endpoint_url")})
    store.move_to_replica()
    log.warning("the volume moved to %s (its replica was promoted): using it", move["to"])
    return move
