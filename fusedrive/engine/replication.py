"""Copying what this device writes to the volume's replica store, in the background, and
telling the user how far behind the replica is and when reads come from it (issue 38).

The store wrapper (store/replicated.py) notes each write in the backlog before it goes to
the primary; `Replication.run` copies the noted objects, oldest first, a few at a time,
after the primary has them — never in the way of the primary's path: an upload or a
commit waits for nothing here. While the primary is down the copies wait (they are read
from it); the backlog is on disk, so a kill loses none of it. Runs in the trio loop;
each copy is a blocking GET and PUT in a worker thread.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from ..errors import StoreUnreachable
from ..store import NotFound, ObjectStore
from ..store.replicated import Backlog, ReplicatedStore, copy_to_replica
from ..store.volume import HEADER_KEY
from .events import EventBus
from .journal import PREFIX, entry_key

log = logging.getLogger(__name__)

BATCH = 64
PARALLEL_COPIES = 4
IDLE_SECONDS = 1.0  # how often an empty backlog is looked at again
RETRY_SECONDS = 5.0  # after a copy failed (either store away)
LAG_CHECK_SECONDS = 10.0  # how often the replica's journal head is looked at
LAG_LOOKBACK = 1000  # entries below this device's head where the replica's is looked for first


class Replication:
    """Owns the copying task and what status says of the replica; the backlog is the
    store wrapper's (one writer of rows: the wrapper; one remover: this). With a replica
    the provider keeps (`provider_replicated`) there is no backlog: only its lag is measured."""

    def __init__(self, store: ReplicatedStore, backlog: Backlog | None, events: EventBus,
                 applied: Callable[[], int]) -> None:
        self.store, self.backlog, self.events, self.applied = store, backlog, events, applied
        store.backlog = backlog
        self.copy_error: str | None = None
        self.entries_behind: int | None = None  # the replica's journal head behind what this device applied
        self._reading_replica = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._measure_lag)
            if self.backlog is not None:
                nursery.start_soon(self._copy_backlog)

    async def _copy_backlog(self) -> None:
        while True:
            self._tell_failover()
            noted = await trio.to_thread.run_sync(self.backlog.ready, BATCH)
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

    async def _measure_lag(self) -> None:
        while True:
            self._tell_failover()
            applied = self.applied()
            try:
                head = await trio.to_thread.run_sync(replica_journal_head, self.store.replica, applied)
            except StoreUnreachable as exc:
                self.entries_behind = None
                if self.backlog is None:
                    self.copy_error = str(exc)
            else:
                self.entries_behind = max(0, applied - head)
                if self.backlog is None:
                    self.copy_error = None
            await trio.sleep(LAG_CHECK_SECONDS)

    def _tell_failover(self) -> None:
        """One event when reads move to the replica, one when they are back on the primary."""
        reading = self.store.reading_replica_since is not None
        if reading != self._reading_replica:
            self._reading_replica = reading
            if reading:
                self.events.publish("replica-reads", replica=self.store.replica.url, error=self.store.primary_error)
            else:
                self.events.publish("primary-reads", store=self.store.url)

    def status(self) -> dict:
        objects, size = self.backlog.lag() if self.backlog is not None else (0, 0)
        return {"replica": self.store.replica.url, "replica_objects_behind": objects, "replica_bytes_behind": size,
                "replica_entries_behind": self.entries_behind, "replica_reads_since": self.store.reading_replica_since,
                "replica_error": self.copy_error, "replica_by_provider": self.backlog is None}


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
