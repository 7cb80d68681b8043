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

import trio

from ..errors import StoreUnreachable
from ..store.replicated import Backlog, ReplicatedStore, copy_to_replica
from .events import EventBus

log = logging.getLogger(__name__)

BATCH = 64
PARALLEL_COPIES = 4
IDLE_SECONDS = 1.0  # how often an empty backlog is looked at again
RETRY_SECONDS = 5.0  # after a copy failed (either store away)


class Replication:
    """Owns the copying task and what status says of the replica; the backlog is the
    store wrapper's (one writer of rows: the wrapper; one remover: this)."""

    def __init__(self, store: ReplicatedStore, backlog: Backlog, events: EventBus) -> None:
        self.store, self.backlog, self.events = store, backlog, events
        store.backlog = backlog
        self.copy_error: str | None = None
        self._reading_replica = False

    async def run(self) -> None:
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
        objects, size = self.backlog.lag()
        return {"replica": self.store.replica.url, "replica_objects_behind": objects, "replica_bytes_behind": size,
                "replica_reads_since": self.store.reading_replica_since, "replica_error": self.copy_error}
