"""The volume's replica store as a device lives with it (issue 38): copying what this device
writes to the replica in the background, learning when the volume names a replica (or
none), following the volume when its replica is promoted, and telling the user how far
behind the replica is and when reads come from it.

The store (store/replicated.py, `VolumeStore`) notes each write in the backlog before it
goes to the primary; `_copy_backlog` copies the noted objects, oldest first, a few at a
time, after the primary has them — never in the way of the primary's path: an upload or
a commit waits for nothing here. While the primary is down the copies wait (they are read
from it); the backlog is on disk, so a kill loses none of it. `_watch` looks at the volume
once a second: the fence of a promotion seen in a journal listing (free) or, while reads
come from the replica, the promotion record on it, makes the device move to the new store
in place — what it committed to the old one after the copy it then finds is put back
from its kept entries as for a store that went back in time (engine/forks.py). Runs in the
trio loop; store calls run in worker threads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import trio

from ..errors import StoreUnreachable
from ..store import NotFound, ObjectStore
from ..store.replicated import Backlog, copy_to_replica, fence, follow_move, read_record, store_of
from ..store.volume import HEADER_KEY, Volume
from .events import EventBus
from .journal import PREFIX, entry_key

log = logging.getLogger(__name__)

BATCH = 64
PARALLEL_COPIES = 4
IDLE_SECONDS = 1.0  # how often an empty backlog, and the volume's state, are looked at again
RETRY_SECONDS = 5.0  # after a copy failed (either store away)
LAG_CHECK_SECONDS = 15.0  # how often the replica's journal head is looked at (a listing of it)
MOVE_CHECK_SECONDS = 3.0  # how often the replica's promotion record (while reads come from it) and a fence not
#                           written yet are looked at
RECORD_CHECK_SECONDS = 60.0  # how often the volume's replica record is read again (a replica added or removed)
LAG_LOOKBACK = 1000  # entries below this device's head where the replica's is looked for first
BACKLOG_FILE = "replication.sqlite3"


class Replication:
    """Owns the backlog's copying and what status says of the replica and of a move; which
    store is the volume's is the VolumeStore's (this tells it to attach, detach, move)."""

    def __init__(self, volume: Volume, cache_dir: Path, events: EventBus, applied: Callable[[], int],
                 fence_seen: Callable[[], bool]) -> None:
        self.volume, self.store, self.events = volume, store_of(volume), events
        self.applied, self.fence_seen = applied, fence_seen
        self._backlog_path = cache_dir / BACKLOG_FILE
        self.backlog: Backlog | None = None
        self._open_backlog()
        self.copy_error: str | None = None
        self.entries_behind: int | None = None  # the replica's journal head behind what this device applied
        self.moved: dict | None = None  # the move record, once this device followed a promotion
        self._fence_pending: tuple[dict, ObjectStore] | None = None  # the old store, not fenced yet
        self._reading_replica = False

    def _open_backlog(self) -> None:
        """The backlog, once there is something to copy: a replica devices copy to, or rows
        left from before (a replica removed or promoted since)."""
        if self.backlog is None and (self.store.copies or self._backlog_path.exists()):
            self.backlog = Backlog(str(self._backlog_path))
            self.store.backlog = self.backlog

    def close(self) -> None:
        if self.backlog is not None:
            self.backlog.close()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._copy_backlog)
            nursery.start_soon(self._watch)

    # --- copying -------------------------------------------------------------------------------

    async def _copy_backlog(self) -> None:
        while True:
            if self.backlog is None:  # no replica (yet): the record is read again this often
                await trio.sleep(RECORD_CHECK_SECONDS)
                continue
            noted = await trio.to_thread.run_sync(self.backlog.ready, BATCH) if self.store.copy_to is not None else []
            if not noted:
                await trio.sleep(IDLE_SECONDS)
                continue
            failed: list[StoreUnreachable] = []
            limiter = trio.CapacityLimiter(PARALLEL_COPIES)

            async def copy(one) -> None:
                async with limiter:
                    try:
                        await trio.to_thread.run_sync(copy_to_replica, self.store, one)
                    except StoreUnreachable as exc:
                        failed.append(exc)
                        return
                    await trio.to_thread.run_sync(self.backlog.copied, one)

            async with trio.open_nursery() as nursery:
                for one in noted:
                    nursery.start_soon(copy, one)
            if failed:
                if self.copy_error is None:
                    log.warning("cannot copy to the replica yet (tried again every %g s): %s", RETRY_SECONDS, failed[0])
                self.copy_error = str(failed[0])
                await trio.sleep(RETRY_SECONDS)
            else:
                self.copy_error = None

    # --- watching the volume ----------------------------------------------------------------

    async def _watch(self) -> None:
        """Once a second while the volume has a replica or a move is under way; else once
        a minute (reading the record again), which is also when a device that knew of no
        replica notices a fence its listings saw."""
        next_record = trio.current_time() + RECORD_CHECK_SECONDS
        next_lag = next_check = trio.current_time()
        while True:
            self._tell_failover()
            now = trio.current_time()
            try:
                check = now >= next_check
                if check:
                    next_check = now + MOVE_CHECK_SECONDS
                if self.fence_seen() or (self.store.reading_replica_since is not None and check):
                    await self._follow_move()
                if self._fence_pending is not None and check:
                    await self._write_fence()
                if now >= next_record:
                    next_record = now + RECORD_CHECK_SECONDS
                    await self._read_record()
                if now >= next_lag:
                    next_lag = now + LAG_CHECK_SECONDS
                    await self._measure_lag()
            except StoreUnreachable as exc:
                log.debug("the volume's replica state not looked at: %s", exc)
            closely = self.store.replica is not None or self._fence_pending is not None
            await trio.sleep(IDLE_SECONDS if closely else max(IDLE_SECONDS, next_record - trio.current_time()))

    async def _follow_move(self) -> None:
        old = self.store.primary
        move = await trio.to_thread.run_sync(follow_move, self.volume)
        if move is None:
            return
        self.moved, self._fence_pending = move, (move, old)
        self.entries_behind = None
        self.events.publish("store-moved", old=move["from"], new=move["to"])
        await self._write_fence()

    async def _write_fence(self) -> None:
        move, old = self._fence_pending
        if await trio.to_thread.run_sync(fence, self.volume, move, old):
            self._fence_pending = None

    async def _read_record(self) -> None:
        record = await trio.to_thread.run_sync(read_record, self.volume)
        if record == self.store.record:
            return
        if record is None:
            log.warning("the volume names no replica any more: copying to %s stops", self.store.replica.url)
            self.store.detach()
        else:
            log.warning("the volume's replica is %s now", record["url"])
            await trio.to_thread.run_sync(self.store.attach, record)
            self._open_backlog()

    async def _measure_lag(self) -> None:
        replica = self.store.replica
        if replica is None:
            self.entries_behind = None
            return
        applied = self.applied()
        try:
            head = await trio.to_thread.run_sync(replica_journal_head, replica, applied)
        except StoreUnreachable as exc:
            self.entries_behind = None
            if not self.store.copies:
                self.copy_error = str(exc)
        else:
            self.entries_behind = max(0, applied - head)
            if not self.store.copies:
                self.copy_error = None

    def _tell_failover(self) -> None:
        """One event when reads move to the replica, one when they are back on the primary."""
        reading = self.store.reading_replica_since is not None
        if reading != self._reading_replica:
            self._reading_replica = reading
            if reading and self.store.replica is not None:
                self.events.publish("replica-reads", replica=self.store.replica.url, error=self.store.primary_error)
            else:
                self.events.publish("primary-reads", store=self.store.url)

    def status(self) -> dict:
        found: dict = {}
        objects, size = self.backlog.lag() if self.backlog is not None else (0, 0)
        if self.store.replica is not None:
            found.update({"replica": self.store.replica.url, "replica_by_provider": not self.store.copies,
                          "replica_entries_behind": self.entries_behind,
                          "replica_reads_since": self.store.reading_replica_since})
        if self.store.replica is not None or objects:
            found.update({"replica_objects_behind": objects, "replica_bytes_behind": size,
                          "replica_error": self.copy_error})
        if self.moved is not None:
            found.update({"moved_from": self.moved["from"], "moved_at": self.moved["time"],
                          "old_store_fenced": self._fence_pending is None})
        return found


def replica_journal_head(replica: ObjectStore, near: int) -> int:
    """The highest journal seq the replica holds, looked for from `near` back (blocking)."""
    try:
        replica.get_range(HEADER_KEY, 0, 1)
    except NotFound:
        return 0  # nothing there yet (a directory store lists nothing before its header is there)
    for start in (max(0, near - LAG_LOOKBACK), 0):
        seqs = [int(suffix) for listed in replica.list(PREFIX, entry_key(start) if start else "")
                if (suffix := listed.key[len(PREFIX):]).isdigit()]
        if seqs or not start:
            return max(seqs, default=0)
    return 0
