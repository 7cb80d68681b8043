"""The commit queue → journal, and the journal → replica.

Runs in the trio loop. Queued operations (the replica's `pending` table, on disk)
are batched into one entry and appended at applied_seq + 1 with put-if-absent.
If another device took that seq, its entries are pulled and this device's queue
is rebased onto them (conflict rules in rebase.py), then the append is tried at
the new head. Pulling and appending share one lock, so an entry of ours is never
applied twice; the commit id of an append in flight is kept on disk so that
after a crash our own entry is recognized too. Store calls run in worker threads.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import trio

from .blocks import Transfers
from .checkpoints import CHECKPOINT_EVERY, dump_state, write_checkpoint
from .commitevents import (Applied, CommitFailed, Committed, CommitsWork, EntriesPutBack, GapFilled,
                           HistoryForked, HistoryRetaken, Tell)
from .forks import queue_first, read_forked_history, take_store_history
from ..crashpoints import crash_point
from ..errors import DeviceStuck, FusedriveError, StoreUnreachable
from .events import StoreHealth
from .journal import Entry, Journal, JournalForked, StoreWentBack
from .membership import NotAWriter, Roster, admitted, follow_epoch
from .rebase import Revalidator
from .replica import Replica
from ..signals import Broadcast
from ..store.devices import DeviceKey, this_machine_key
from ..store.volume import config_dir

log = logging.getLogger(__name__)

BATCH_OPS = 2000
BATCH_DELAY_SECONDS = 0.05
ENTRY_CARRY_MAX_BYTES = 1 << 20  # of carried blocks in one entry (see blocks.py)
RETRY_MAX_SECONDS = 30
IDENTITY_RECHECK_SECONDS = 300  # the store's header is read again before an append at least this often
# a journal gap (entries missing below others: a store restored from a copy taken while a gap was
# open, or past every device's kept copies) no device has put back in this long is filled here
GAP_FILL_SECONDS = 300

class Committer:
    def __init__(self, replica: Replica, journal: Journal, device: str, health: StoreHealth, tell: Tell, *,
                 unsaved: Callable[[], set[str]] = set, open_files: Callable[[], set[str]] = set,
                 sent: Transfers | None = None, put_back_blocks: Callable[[], list[str]] = list,
                 check_ready: Callable[[], None] = lambda: None) -> None:
        """`tell(event)`: what follows from a pull or a commit is the drive's to do
        (commitevents.py); `unsaved()`: ids of files with local content not yet uploaded (kept
        alive by rebases); `open_files()`: ids of files open here (remembered if another device
        deletes them); `sent`: where the blocks an entry carries are counted as uploaded (status,
        metrics); `put_back_blocks()`: after the store went back in time, put back the objects
        this device's tree names that the store lost (blocking; the keys it could not);
        `check_ready()`: raises FusedriveError when nothing may be committed."""
        self.sent = sent or Transfers()
        self.health = health
        self.tell = tell
        self.unsaved = unsaved
        self.open_files = open_files
        self.put_back_blocks = put_back_blocks
        self.check_ready = check_ready
        self.replica = replica
        self.journal = journal
        self.device = device
        self.lock = trio.Lock()
        # when the store was last seen to hold this volume's header (trio's clock): asked again
        # before an append after start, after a store failure and every few minutes, since a
        # device mounted from its cache dir on a store emptied (or replaced) must append nothing
        self.identity_seen = float("-inf")
        self.committed = Broadcast()
        self._wake = trio.Event()
        self._hurry = trio.Event()  # someone waits (fsync): the batching delay ends now
        self.last_pull = float("-inf")
        self.last_failure: Exception | None = None
        self.failures = 0  # commit attempts that failed, ever (see wait_committed)
        self.journal_head = 0  # the newest entry seen in the store
        self.commits = 0
        self.commit_seconds = 0.0  # total time of successful appends (for metrics)
        self._resumed: trio.Event | None = None
        self._gap_seen: tuple[int, float] | None = None  # the first missing entry seen, and since when

    def pause(self) -> None:
        """Hold commits (changes keep queueing locally) until resume()."""
        if self._resumed is None:
            self._resumed = trio.Event()

    def resume(self) -> None:
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None
            self.kick(urgent=True)

    @property
    def paused(self) -> bool:
        return self._resumed is not None

    def kick(self, urgent: bool = False) -> None:
        """Commit soon; `urgent` (someone waits, e.g. fsync) skips the batching delay."""
        if urgent:
            self._hurry.set()
        self._wake.set()

    async def pull(self) -> None:
        """Apply every journal entry this device has not seen, under its queued changes."""
        async with self.lock:
            await self._pull_locked()

    async def _pull_locked(self) -> None:
        await self._pull_up_to_a_gap()
        gap = self.journal.gap
        if gap is None:
            self._gap_seen = None
            return
        if self._gap_seen is None or self._gap_seen[0] != gap.missing.start:
            self._gap_seen = (gap.missing.start, trio.current_time())
        if trio.current_time() - self._gap_seen[1] < GAP_FILL_SECONDS or \
                self.replica.applied_seq != gap.missing.start - 1:
            raise gap  # (a device that has the entries may put them back meanwhile)
        await self._fill_gap(gap.missing)
        await self._pull_up_to_a_gap()
        if self.journal.gap is not None:
            raise self.journal.gap

    async def _fill_gap(self, missing: range) -> None:
        """No device put the `missing` entries back within GAP_FILL_SECONDS: this device takes
        their seqs with entries of no operations that follow what it applied. The entries above
        the gap name a lost one before them, so they are dead for every reader: this device
        queues their changes again (those no entry below it commits again already), first,
        fitted to its tree by the conflict rules, naming them (`restores`) — their writers, if
        they come back, find their history forked and drop what it names. Nothing they held is
        lost; what only the missing entries held is, unless a device that applied them comes
        back (it forks and commits them again)."""
        try:
            signer = self.signer_now()
        except NotAWriter:
            return  # (a reader's device: a member who may write fills it, signing what it puts there)
        above = await self._store_call(self.journal.stored_entries, missing[-1])
        # (an entry above written before its device found the store had gone back, which that
        # device then committed again below the gap: its changes are in the history already)
        restored = await trio.to_thread.run_sync(self.journal.restored_below, missing[0])
        above = [entry for entry in above if entry.commit_id not in restored]
        for seq in missing:
            entry = Entry(seq=seq, device=self.device, ops=[], prev=self.replica.get_state("applied_commit"))
            if not await self._store_call(self.journal.append, entry, signer):
                return  # another device filled it (or put it back) first: the next pull reads it
            with self.replica:
                self.replica.set_state("applied_seq", seq)
                self.replica.set_state("applied_commit", entry.chain_id)
        queue_first(self.replica, above, Revalidator(self.device))
        self.tell(HistoryRetaken())
        await self._store_call(self.journal.mark_went_back, missing[-1])
        self.tell(GapFilled(missing))
        self.kick()

    async def _pull_up_to_a_gap(self) -> None:
        started = trio.current_time()
        self._drop_stale_copies()
        forked = None
        try:
            entries, restored = await self._entries_after_applied()
        except JournalForked:
            forked = await self._take_store_history()
            entries, restored = await self._entries_after_applied()
        seen = set(json.loads(self.replica.get_state("went_back_marks", "[]")))
        if restored is not None or forked or self.journal.went_back_marks - seen:
            # This device put entries back, or another did (its mark), or the journal forked: the
            # objects this device's tree names that the store lost go back from here, once for all.
            lost = await self._store_call(self.put_back_blocks)
            if restored:  # (empty when another device put the same entries back first)
                self.tell(EntriesPutBack(restored, lost))
            elif forked:
                self.tell(HistoryForked(forked, lost))
            elif lost:
                log.warning("the store went back in time; %d objects are not on this device to put back", len(lost))
            self.replica.set_state("went_back_marks", json.dumps(sorted(self.journal.went_back_marks)))
        self.last_pull = started
        start = self.replica.applied_seq
        self.journal_head = max(self.journal_head, entries[-1].seq if entries else start)
        inflight = json.loads(self.replica.get_state("inflight", "null") or "null")
        while entries:
            own = next((i for i, e in enumerate(entries)
                        if inflight and not e.dead and e.commit_id == inflight["commit_id"]), None)
            others, refused = admitted(Roster.of(self.replica), entries if own is None else entries[:own])
            if others:
                rebased = self.replica.rebase(others, Revalidator(self.device), self.unsaved(), self.open_files())
                self.tell(Applied(others, rebased))
                self.follow_roster()
            if refused is not None:
                raise refused  # (nothing after it is applied: not even this device's own entry)
            if own is None:
                return
            # Our own append went through before a crash or a lost answer: it is committed.
            with self.replica:
                self.replica.mark_committed(inflight["last_id"], entries[own].seq, entries[own].commit_id)
                self.replica.carried_by(entries[own].seq, entries[own].blocks)
                self.replica.set_state("inflight", None)
            self.committed.fire()  # an fsync or sync waiting for it is done (it waited forever)
            entries = entries[own + 1:]

    async def _entries_after_applied(self) -> tuple[list[Entry], list[Entry] | None]:
        """The store's entries after the one this device applied last (dead ones emptied, see
        Journal.entries_after), and the entries it put back first if the store had lost some."""
        start, chain = self.replica.applied_seq, self.replica.get_state("applied_commit")
        read = lambda: list(self.journal.entries_after(start, chain, self.device, up_to_a_gap=True))  # noqa: E731
        try:
            return await self._store_call(read, abandon=True), None
        except StoreWentBack as went_back:
            # Restored from an older copy: put back what it lost before anything is appended
            # after it (an append at our head would leave a gap; one at its head, a fork).
            restored = await self._store_call(self.journal.put_back, went_back)  # (asks it first)
            self.identity_seen = trio.current_time()
            return await self._store_call(read, abandon=True), restored

    async def _take_store_history(self) -> list[Entry]:
        """The journal forked (the store went back in time and another device committed at seqs
        this device had applied): this device takes the store's history up to the fork point,
        with everything it applied after it queued again (its own changes and others', from the
        kept copies) and its queue after them (forks.py). The pull that follows rebases
        them onto the store's entries like any queued change — a file changed on both sides
        keeps both, as a conflicted copy — and they commit as new entries. The lost entries."""
        applied = self.replica.applied_seq
        history = await self._store_call(read_forked_history, self.journal, applied, self.device,
                                         self.replica.get_state("applied_commit"), abandon=True)
        common, lost = history.common, history.lost
        await self._store_call(self.journal.mark_went_back, applied)
        log.warning("the journal forked after entry %d: %d entries this device applied (%d–%d) are not in the "
                    "store's history; their changes are committed again", common, len(lost), common + 1, applied)
        with self.replica:
            take_store_history(self.replica, history, self.device)
            # the copies of the lost entries are not the store's entries at those seqs
            first = min([entry.seq for entry in lost] + [common + 1])
            self.replica.set_state("stale_copies", json.dumps([first, applied]))
        self.tell(HistoryRetaken())
        self._drop_stale_copies()
        self.kick()  # what is queued again commits as soon as the pull has put it on top
        return lost

    def _drop_stale_copies(self) -> None:
        """Forget the kept copies of entries the store's history lost (after the replica took
        its history, in a transaction of its own: a crash between the two finds them here)."""
        stale = self.replica.get_state("stale_copies")
        if not stale:
            return
        if self.journal.kept is not None:
            first, last = json.loads(stale)
            self.journal.kept.drop(range(first, last + 1))
        self.replica.set_state("stale_copies", None)

    async def commit_pending(self) -> bool:
        """Commit everything queued now; raises StoreUnreachable if the store fails. Whether
        it did anything (pulled or appended): a call with nothing to do proves nothing about
        a problem a failed one had.

        Not what is queued while this commits: that waits for the next kick and its
        batching delay, or a steady stream of changes (an untar, 2,000 small files)
        would go out as one tiny entry per append, each a PUT."""
        while self._resumed is not None:
            await self._resumed.wait()
        self.check_ready()
        async with self.lock:
            identity_due = trio.current_time() - self.identity_seen > IDENTITY_RECHECK_SECONDS
            if identity_due:  # is this still the volume?
                await self._store_call(self.journal.check_identity)
            # A pull, when the store is to be checked (does it still hold what this device
            # applied: went back, forked?) or an append's outcome was never learned (a crash, an
            # error after the PUT: pulling recognizes it if it landed; that attempt is settled then).
            worked = False
            if identity_due or self.replica.get_state("inflight"):
                await self._pull_locked()
                self.replica.set_state("inflight", None)
                worked = True
            if identity_due:
                self.identity_seen = trio.current_time()
            through = self.replica.last_pending_id()
            while True:
                rows = self.replica.pending_ops(BATCH_OPS, through)
                if not rows:
                    return worked
                worked = True
                last_id, ops, carried = self._batch(rows)
                if not ops:  # everything in these rows was dropped by a rebase
                    self.replica.mark_committed(last_id, self.replica.applied_seq)
                    self.committed.fire()
                    continue
                signer = self.signer_now()
                entry = Entry(seq=self.replica.applied_seq + 1, device=self.device, ops=ops, blocks=carried,
                              prev=self.replica.get_state("applied_commit"),
                              restores=self.replica.requeued_commits(rows[0][0], last_id))
                self.replica.set_state("inflight", json.dumps({"commit_id": entry.commit_id, "last_id": last_id}))
                started = trio.current_time()
                crash_point("before-append")
                if await self._store_call(self.journal.append, entry, signer):
                    crash_point("after-append")
                    self.commit_seconds += trio.current_time() - started
                    with self.replica:
                        self.replica.mark_committed(last_id, entry.seq, entry.commit_id)
                        self.replica.carried_by(entry.seq, entry.blocks)
                        self.replica.set_state("inflight", None)
                        self.replica.reap_orphans()
                    self.commits += 1
                    for blob in entry.blocks.values():  # small writes travel in the entry: uploaded too
                        self.sent.add(len(blob))
                    self.last_pull = started  # taking the next seq proves we were at the head then
                    self.journal_head = max(self.journal_head, entry.seq)
                    await self._maybe_checkpoint()
                    self.committed.fire()
                    self.tell(Committed(entry.seq))
                else:
                    self.replica.set_state("inflight", None)  # 412 and not ours: settled
                    await self._pull_locked()

    def write_refusal(self) -> str | None:
        """Why this device may not commit, by the roster it applied (membership.py); None if it may."""
        roster, volume = Roster.of(self.replica), self.journal.volume
        if roster.founded and volume.signer is None:  # an identity made here since the mount started
            volume.signer = this_machine_key(config_dir())
        return roster.may_write(volume.signer)

    def follow_roster(self) -> Roster:
        """Take up what the applied roster says of this device: the key epoch to seal with
        (membership.follow_epoch), and how its person is named where its saves and conflicted
        copies are (`person` in the replica's state, this device's own). The roster."""
        roster = Roster.of(self.replica)
        person = roster.person(self.journal.volume.signer)
        if self.replica.get_state("person") != person:
            self.replica.set_state("person", person)
        follow_epoch(self.journal.volume.keys, roster)
        return roster

    def follow_roster_at_start(self) -> None:
        """follow_roster before anything is sealed; a key this device was not given is said
        (status) and stops nothing else here: its pulls say it again."""
        try:
            self.follow_roster()
        except FusedriveError as exc:
            self.tell(CommitFailed(exc))

    def signer_now(self) -> DeviceKey | None:
        """The key this device signs its next entry with (None: unsigned, a volume without
        members); NotAWriter if it may write nothing."""
        refused = self.write_refusal()
        if refused is not None:
            raise NotAWriter(f"This device cannot commit its changes: {refused}; they stay queued here.")
        return self.journal.volume.signer if self.follow_roster().founded else None

    def _batch(self, rows: list[tuple[int, list[dict]]]) -> tuple[int, list[dict], dict[str, bytes]]:
        """The queued rows one entry takes: (the last row's id, their ops, the blocks the
        entry carries), stopping before the blocks carried pass ENTRY_CARRY_MAX_BYTES (one
        row at least): every device downloads every entry."""
        ops: list[dict] = []
        carried: dict[str, bytes] = {}
        carried_bytes = 0
        last_id = rows[0][0]
        for row_id, row_ops in rows:
            row_carried = {block: blob for block, blob in self.replica.blocks_to_carry(row_ops).items()
                           if block not in carried}
            row_bytes = sum(map(len, row_carried.values()))
            if ops and carried_bytes + row_bytes > ENTRY_CARRY_MAX_BYTES:
                break
            last_id = row_id
            ops += row_ops
            carried.update(row_carried)
            carried_bytes += row_bytes
        return last_id, ops, carried

    async def _store_call(self, function, *args, abandon: bool = False):
        """Run a journal call in a worker thread, telling StoreHealth whether the store answered.
        `abandon`: a cancelled caller may leave the thread behind (reads only: a pull that
        is given up changes nothing)."""
        try:
            with self.health.request():
                result = await trio.to_thread.run_sync(function, *args, abandon_on_cancel=abandon)
        except StoreUnreachable as exc:
            self.health.failed(exc)
            self.identity_seen = float("-inf")  # what answers next may not be the same store
            raise
        self.health.succeeded(wrote=not abandon)
        return result

    async def _maybe_checkpoint(self) -> None:
        """Every CHECKPOINT_EVERY entries, save the committed state (only when nothing is
        queued here, so the replica is exactly the committed state); in a volume shared with
        people, only an admin's device, which signs it (new devices trust no one else's)."""
        seq = self.replica.applied_seq
        if seq - self.replica.get_state("checkpoint_seq", 0) < CHECKPOINT_EVERY or self.replica.pending_count():
            return
        roster, signer = Roster.of(self.replica), self.journal.volume.signer
        if roster.founded and (signer is None or roster.role_of(signer.member) != "admin"
                               or roster.may_write(signer) is not None):
            return
        state = dump_state(self.replica)
        chain = self.replica.get_state("applied_commit")

        def write_if_live() -> None:
            # the entries this device appended last may be dead (the store went back under
            # them): a checkpoint of them would hand a history no reader applies to new devices
            if self.journal.fork_point(seq, self.device, chain) == seq:
                write_checkpoint(self.journal.volume, state, signer if roster.founded else None)

        try:
            await trio.to_thread.run_sync(write_if_live)
        except FusedriveError as exc:
            log.warning("could not write checkpoint %d (will try after the next commit): %s", seq, exc)
            return
        crash_point("checkpoint")
        self.replica.set_state("checkpoint_seq", seq)

    async def run(self) -> None:
        """Commit whenever kicked; back off while the store is unreachable."""
        delay = 1.0
        while True:
            await self._wake.wait()
            # let a burst of operations (untar, a build) gather into one journal entry,
            # unless someone waits for it (an fsync pays the round trips it must, no more)
            with trio.move_on_after(BATCH_DELAY_SECONDS):
                await self._hurry.wait()
            self._wake = trio.Event()
            self._hurry = trio.Event()
            try:
                if await self.commit_pending():
                    self.tell(CommitsWork())
                self.last_failure, delay = None, 1.0
            except Exception as exc:  # noqa: BLE001 - a commit that fails stops commits, never the mount
                self.last_failure = exc
                self.failures += 1
                self.committed.fire()
                if isinstance(exc, StoreUnreachable):
                    log.warning("commit failed, retrying in %.0f s: %s", delay, exc)
                else:  # an entry this device cannot apply, a lost cache dir, a bug: the user must hear of it
                    self.tell(CommitFailed(exc))
                await self.health.backoff(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                self.kick()

    def _failure_for_waiters(self) -> FusedriveError:
        """What an fsync or a `sync` waiting for a commit is told: our own errors as they
        are (the store, the cache dir, a newer format), anything else as this device being
        stuck (the raw text is in the log)."""
        failure = self.last_failure
        if isinstance(failure, FusedriveError):
            return failure
        return DeviceStuck("This device cannot commit its changes (an internal error, in the mount's log); they "
                           "stay queued here.")

    async def wait_committed(self, pending_id: int) -> None:
        """Wait until the queued operation `pending_id` (and all before it) is in the journal;
        raises if a commit attempt fails meanwhile (an error from before the call may be
        stale: the store may be back)."""
        failures = self.failures
        self.health.retry_now()
        while True:
            first = self.replica.first_pending_id()
            if first is None or first > pending_id:
                return
            if self.failures != failures:
                raise self._failure_for_waiters()
            self.kick(urgent=True)
            await self.committed.wait()
