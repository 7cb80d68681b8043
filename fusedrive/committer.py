"""The commit queue → journal: turns queued local operations into journal entries.

Runs as one trio task. Queued operations (the replica's `pending` table, on disk)
are batched into one entry and appended at applied_seq + 1 with put-if-absent.
If another device took that seq, its entries are pulled and applied first, then
the append is tried again at the new head. Store calls run in worker threads.
"""

from __future__ import annotations

import logging
import time

import trio

from .errors import FusedriveError, StoreUnreachable
from .journal import Entry, Journal
from .replica import Replica
from .signals import Broadcast

log = logging.getLogger(__name__)

BATCH_OPS = 2000
BATCH_DELAY_SECONDS = 0.05
RETRY_MAX_SECONDS = 30


class Committer:
    def __init__(self, replica: Replica, journal: Journal, device: str) -> None:
        self.replica = replica
        self.journal = journal
        self.device = device
        self.committed = Broadcast()
        self._wake = trio.Event()
        self._urgent = False
        self.offline_since: float | None = None
        self.last_error: str | None = None
        self.commits = 0

    def kick(self, urgent: bool = False) -> None:
        """Commit soon; `urgent` (someone waits, e.g. fsync) skips the batching delay."""
        if urgent:
            self._urgent = True
        self._wake.set()

    async def pull(self) -> int:
        """Apply every journal entry this replica has not seen yet; returns how many."""
        start = self.replica.applied_seq
        entries = await trio.to_thread.run_sync(lambda: list(self.journal.entries_after(start)))
        for entry in entries:
            if entry.seq != self.replica.applied_seq + 1:
                break
            self.replica.apply_remote(entry.seq, entry.ops)
        return len(entries)

    async def commit_pending(self) -> None:
        """Commit everything queued now; raises StoreUnreachable if the store fails."""
        while True:
            batch = self.replica.pending_ops(BATCH_OPS)
            if not batch:
                return
            last_id = batch[-1][0]
            entry = Entry(seq=self.replica.applied_seq + 1, device=self.device, ops=[op for _, op in batch])
            while not await trio.to_thread.run_sync(self.journal.append, entry):
                await self.pull()
                entry.seq = self.replica.applied_seq + 1
            self.replica.mark_committed(last_id, entry.seq)
            self.commits += 1
            self.committed.fire()

    async def run(self) -> None:
        """Commit whenever kicked; back off while the store is unreachable."""
        delay = 1.0
        while True:
            await self._wake.wait()
            if not self._urgent:
                # let a burst of operations (untar, a build) gather into one journal entry
                with trio.move_on_after(BATCH_DELAY_SECONDS):
                    while not self._urgent:
                        await trio.sleep(BATCH_DELAY_SECONDS / 5)
            self._wake = trio.Event()
            self._urgent = False
            try:
                await self.commit_pending()
                self.offline_since, self.last_error, delay = None, None, 1.0
            except FusedriveError as exc:
                if isinstance(exc, StoreUnreachable) and self.offline_since is None:
                    self.offline_since = time.time()
                self.last_error = str(exc)
                self.committed.fire()
                log.warning("commit failed, retrying in %.0f s: %s", delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                self.kick()

    async def wait_committed(self, pending_id: int) -> None:
        """Wait until the queued operation `pending_id` (and all before it) is in the journal."""
        while True:
            first = self.replica.pending_ops(1)
            if not first or first[0][0] > pending_id:
                return
            if self.last_error:
                raise StoreUnreachable(self.last_error)
            self.kick(urgent=True)
            await self.committed.wait()
