"""A volume with a replica store (issue 38): the primary, where commits are ordered, and a
copy in another region or provider that reads fall back to when the primary fails.

`ReplicatedStore` stands where the primary did, for everything above it. Reads go to the
primary; one that fails, or does not answer within FAILOVER_SECONDS (the call is left to
finish on its own), is answered by the replica, and for RETRY_PRIMARY_SECONDS after that
reads go to the replica first (one read at a time tries the primary again). Writes go to
the primary only — put-if-absent on one store is what orders devices — and each is noted
in this device's `Backlog` first, so that the replication task (engine/replication.py)
copies it to the replica once the primary has it; a kill between the note and the write
loses nothing (the note of a write that never landed is dropped when the primary turns
out not to have it). Without a backlog (a command run outside a mount) a write is copied
at once, and what fails to copy is left for `fusedrive replica sync`.

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
from .volume import HEADER_KEY, Volume, kept_in_cache_dir

log = logging.getLogger(__name__)

FAILOVER_SECONDS = 10.0  # a primary read unanswered this long is answered by the replica
RETRY_PRIMARY_SECONDS = 15.0  # after the primary failed, reads go to the replica first this long
UNCONFIRMED_CHECK_SECONDS = 600.0  # a noted write not confirmed this long is checked against the primary
RECORD_KEY = "replica"  # the sealed replica record in the volume (docs/format.md)
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
    confirmed after it; a row left unconfirmed by an earlier run (killed between the two),
    or for UNCONFIRMED_CHECK_SECONDS (an answer lost), is copied if the primary has it."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS backlog (row INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "key TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, deleted INTEGER NOT NULL, "
                         "run TEXT NOT NULL, confirmed INTEGER NOT NULL, noted REAL NOT NULL)")
        self._run = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._closed = False

    def note(self, key: str, size: int, deleted: bool) -> None:
        """About to write `key` to the primary (a rewrite goes to the end of the line)."""
        with self._lock:
            if self._closed:
                raise StoreUnreachable("The device is stopping: nothing more is written.")
            self._db.execute("DELETE FROM backlog WHERE key = ?", (key,))
            self._db.execute("INSERT INTO backlog (key, size, deleted, run, confirmed, noted) VALUES (?, ?, ?, ?, 0, ?)",
                             (key, size, int(deleted), self._run, time.time()))

    def confirm(self, key: str) -> None:
        with self._lock:
            self._db.execute("UPDATE backlog SET confirmed = 1 WHERE key = ?", (key,))

    def ready(self, limit: int) -> list[Noted]:
        """The oldest rows the primary has (or may have, for unconfirmed ones), in the order written."""
        with self._lock:
            rows = self._db.execute(
                "SELECT row, key, size, deleted FROM backlog WHERE confirmed = 1 OR run != ? OR noted < ? "
                "ORDER BY row LIMIT ?", (self._run, time.time() - UNCONFIRMED_CHECK_SECONDS, limit)).fetchall()
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


class ReplicatedStore:
    """The primary with a replica behind it (see the module docstring)."""

    def __init__(self, primary: ObjectStore, record: dict, replica: ObjectStore | None = None) -> None:
        """`record`: the replica record (`url`, `endpoint_url`, `provider_replicated`);
        `replica`: the store it names, if the caller has it open already."""
        self.primary, self.record = primary, record
        self.replica = replica or open_store(record["url"], record.get("endpoint_url"))
        self.copies = not record.get("provider_replicated")  # devices copy their writes (else the provider does)
        self.backlog: Backlog | None = None  # a device's (Replication attaches it); None in a command
        self.url = primary.url
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="primary-read")
        self._lock = threading.Lock()
        self._replica_first_until = 0.0  # time.monotonic(): reads go to the replica first until then (0: never)
        self._probing = False  # one read is trying the primary again
        self.reading_replica_since: float | None = None  # Unix seconds: the last read was the replica's
        self.primary_error = ""

    def __getattr__(self, name: str):
        """What only some stores do (share links, storage classes, a directory's root): the primary's."""
        return getattr(self.primary, name)

    # --- reads -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        return self._read(key, lambda store: store.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._read(key, lambda store: store.get_range(key, start, length))

    def list(self, prefix: str, start_after: str = "") -> Iterator[Listed]:
        return iter(self._read(prefix, lambda store: list(store.list(prefix, start_after))))

    def _read(self, key: str, call: Callable[[ObjectStore], T]) -> T:
        if self._try_primary():
            future = self._pool.submit(call, self.primary)
            try:
                result = future.result(timeout=FAILOVER_SECONDS)
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
            result = call(self.replica)
        except NotFound:
            raise StoreUnreachable(f"The store at {self.url} does not answer ({self.primary_error}) and its replica "
                                   f"does not have {key} yet.") from None
        except StoreUnreachable as exc:
            raise StoreUnreachable(f"Neither the store at {self.url} ({self.primary_error}) nor its replica at "
                                   f"{self.replica.url} answers ({exc}).") from None
        with self._lock:
            if self.reading_replica_since is None:
                self.reading_replica_since = time.time()
                log.warning("reading from the replica %s: the store at %s does not answer (%s)", self.replica.url,
                            self.url, self.primary_error)
        return result

    def _try_primary(self) -> bool:
        """Whether this read asks the primary: always while it answers; after it failed, one
        read at a time once RETRY_PRIMARY_SECONDS are over."""
        with self._lock:
            if not self._replica_first_until:
                return True
            if time.monotonic() < self._replica_first_until or self._probing:
                return False
            self._probing = True
            return True

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

    @property
    def primary_down(self) -> bool:
        with self._lock:
            return bool(self._replica_first_until)

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
        result = self._primary_wrote(write)
        self.backlog.confirm(key)
        return result

    def _primary_wrote(self, write: Callable[[], T]) -> T:
        """A write the primary took says it is back: reads go to it again."""
        result = write()
        if self._replica_first_until:
            self._primary_answered()
        return result


def copy_to_replica(store: ReplicatedStore, noted: Noted) -> None:
    """Copy one written object from the primary to the replica (blocking). Nothing to copy
    if the primary does not have it: a write that never landed, or deleted since."""
    if noted.deleted:
        store.replica.delete(noted.key)
        return
    try:
        data = store.primary.get(noted.key)
    except NotFound:
        return
    store.replica.put(noted.key, data)


# --- the record in the volume, and a device's copy of it ---------------------------------------


def read_record(volume: Volume) -> dict | None:
    """The volume's replica record; None if it has none."""
    try:
        blob = volume.store.get(RECORD_KEY)
    except NotFound:
        return None
    return json.loads(volume.unseal(RECORD_KEY, blob, "the replica record"))


def write_record(volume: Volume, record: dict | None) -> None:
    """Name the volume's replica (None: it has none any more); devices learn it at their next mount."""
    primary = volume.store.primary if isinstance(volume.store, ReplicatedStore) else volume.store
    if record is None:
        primary.delete(RECORD_KEY)
    else:
        primary.put(RECORD_KEY, volume.seal(RECORD_KEY, json.dumps(record).encode()))


def attach_replica(volume: Volume, cache_dir: Path | None = None) -> None:
    """Put the volume's replica behind its store, if it has one: the record in the volume,
    or while the primary does not answer the copy a device's cache dir kept."""
    if isinstance(volume.store, ReplicatedStore):
        return
    try:
        record = read_record(volume)
    except StoreUnreachable:
        kept = kept_in_cache_dir(KEPT_RECORD, volume.url, cache_dir)
        record = kept["record"] if kept is not None else None
    if record is not None:
        volume.store = ReplicatedStore(volume.store, record)


def keep_record(cache_dir: Path, volume: Volume) -> None:
    """Remember the volume's replica in a device's cache dir (or that it has none)."""
    path = cache_dir / KEPT_RECORD
    if not isinstance(volume.store, ReplicatedStore):
        path.unlink(missing_ok=True)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": volume.url, "record": volume.store.record}, f)


def check_replica(record: dict, volume: Volume) -> ObjectStore:
    """The replica store a record names, if it can be one of this volume: it answers, and
    holds no other volume."""
    replica = open_store(record["url"], record.get("endpoint_url"))
    try:
        header = replica.get(HEADER_KEY)
    except NotFound:
        return replica
    if header != volume.header:
        raise UsageError(f"{record['url']} holds another volume: a replica must be empty or this volume's copy.")
    return replica


# --- copying what is missing ---------------------------------------------------------------------


def copy_order(key: str) -> tuple[int, str]:
    """The header first (a directory store takes nothing before it), the journal last and in
    order: a reader of the replica never meets an entry or checkpoint whose blocks are not
    there yet."""
    group = 0 if key == HEADER_KEY else 3 if key.startswith("journal/") else 2 if key.startswith("checkpoints/") else 1
    return group, key


def missing_on_replica(store: ReplicatedStore) -> list[Listed]:
    """What the primary holds that the replica does not (or holds at another size), in copy order."""
    try:
        store.replica.get_range(HEADER_KEY, 0, 1)
    except NotFound:
        there = {}  # a new replica (a directory store lists nothing before its header is there)
    else:
        there = {listed.key: listed.size for listed in store.replica.list("")}
    return sorted((listed for listed in store.primary.list("") if there.get(listed.key) != listed.size),
                  key=lambda listed: copy_order(listed.key))


def sync_replica(store: ReplicatedStore, missing: list[Listed], copied: Callable[[int], None]) -> None:
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


def _copy_listed(store: ReplicatedStore, listed: Listed) -> Listed:
    copy_to_replica(store, Noted(0, listed.key, listed.size, False))
    return listed


def compare_with_replica(store: ReplicatedStore) -> list[str]:
    """What fsck --replica reports: objects the replica is missing (copies not made yet: the
    devices' backlogs, or `replica sync`), and journal entries the two stores hold
    differently (never right: a replica must be a copy)."""
    missing = missing_on_replica(store)
    problems = []
    if missing:
        shown = ", ".join(listed.key for listed in missing[:3]) + ("…" if len(missing) > 3 else "")
        problems.append(f"the replica {store.replica.url} is missing {len(missing):,} objects the store holds "
                        f"({shown}): devices copy what they wrote when they can; fusedrive replica sync copies the rest")
    missing_keys = {listed.key for listed in missing}
    for listed in store.primary.list("journal/"):
        if listed.key[len("journal/"):].isdigit() and listed.key not in missing_keys and \
                store.primary.get(listed.key) != store.replica.get(listed.key):
            problems.append(f"the replica's {listed.key} differs from the store's")
    return problems
