"""Following other devices: the journal is pulled when the hub says something changed (or
every poll interval without one) and before an open() that has not looked lately; what a
rebase applied reaches the local files, the front end and the user."""

from __future__ import annotations

import logging
import time

import trio

from ..errors import FusedriveError, StoreUnreachable
from .blocks import BlockStore
from .changes import Changes
from .committer import Committer
from .events import Problems
from .hubclient import DEVICE_WAIT_SECONDS, PROBE_SECONDS, HubClient, HubError
from .journal import Entry
from .localfiles import LocalFiles
from .manifest import block_refs
from .rebase import Revalidator
from .replica import Rebased, Replica
from .uploads import Uploads

log = logging.getLogger(__name__)

FRESHNESS_WAIT_SECONDS = 5  # an open() waits at most this long for the journal head
OPEN_FRESHNESS_SECONDS = 1.0


class Follower:
    """Owns the hub connection; the committer's rebases report here (`applied`)."""

    def __init__(self, committer: Committer, replica: Replica, files: LocalFiles, uploads: Uploads,
                 changes: Changes, blocks: BlockStore, problems: Problems, device: str,
                 hub: HubClient | None, poll_interval: float, io_timeout: float) -> None:
        self.committer = committer
        self.replica = replica
        self.files = files
        self.uploads = uploads
        self.changes = changes
        self.blocks = blocks
        self.problems = problems
        self.device = device
        self.hub = hub
        self.hub_connected = False
        self.poll_interval = poll_interval
        self.io_timeout = io_timeout
        self.nursery: trio.Nursery | None = None  # for hub notifications, once started

    async def follow(self) -> None:
        """Follow other devices' commits: long-poll the hub when there is one (and it
        answers), else list the journal every poll interval."""
        while True:
            if not await self._wait_for_hub():
                await trio.sleep(self.poll_interval)
            await self.pull_now()

    async def pull_now(self) -> None:
        """One look at the journal: what a failure to apply means is said (status), never raised."""
        try:
            await self.committer.pull()
        except StoreUnreachable as exc:
            log.info("journal poll failed: %s", exc)
        except Exception as exc:  # noqa: BLE001 - an entry we cannot apply must not take the mount down
            self.problems.cannot("apply", f"Cannot apply the journal after entry {self.replica.applied_seq}", exc)
        else:
            self.problems.resolved("apply")

    async def _wait_for_hub(self) -> bool:
        """True once the hub says something may have changed (or its wait timed out)."""
        if self.hub is None:
            return False
        # not connected yet: a wait that answers at once tells whether the hub is there
        timeout = DEVICE_WAIT_SECONDS if self.hub_connected else 0
        try:
            # A hub that hangs holds a worker thread until its socket times out, never the follower.
            with trio.fail_after(timeout + 5 if self.hub_connected else PROBE_SECONDS):
                await trio.to_thread.run_sync(self.hub.wait, self.replica.applied_seq, timeout,
                                              abandon_on_cancel=True)
        except (HubError, trio.TooSlowError) as exc:
            if self.hub_connected:
                log.warning("hub unreachable, polling every %.1f s: %s", self.poll_interval, exc)
            self.hub_connected = False
            return False
        if not self.hub_connected:
            log.info("hub connected")
        self.hub_connected = True
        return True

    def announce(self, seq: int) -> None:
        """Tell the hub about a commit (best effort: other devices also poll)."""
        if self.hub is not None and self.nursery is not None:
            self.nursery.start_soon(self._notify_hub, seq)

    async def _notify_hub(self, seq: int) -> None:
        try:
            with trio.fail_after(PROBE_SECONDS * 3):
                await trio.to_thread.run_sync(self.hub.notify, seq, abandon_on_cancel=True)
        except (HubError, trio.TooSlowError) as exc:
            log.info("could not notify the hub: %s", exc)

    async def ensure_fresh(self) -> None:
        """Close-to-open: before open(), see the journal head unless a check just happened."""
        if trio.current_time() - self.committer.last_pull > OPEN_FRESHNESS_SECONDS:
            try:
                with trio.move_on_after(min(self.io_timeout, FRESHNESS_WAIT_SECONDS)) as waited:
                    await self.committer.pull()
                if waited.cancelled_caught:
                    log.info("freshness check took too long, serving what this device has")
            except FusedriveError as exc:
                log.info("freshness check failed, serving what this device has: %s", exc)

    def applied(self, entries: list[Entry], rebased: Rebased) -> None:
        """After a rebase: drop stale staged copies, tell the front end and the user what changed."""
        for fid in rebased.deleted_saves_brought_back:
            self._keep_deleted_save_apart(fid)
        for entry in entries:
            for op in entry.ops:
                if op["op"] == "update":
                    self.blocks.mark_known(block_refs(op["manifest"]))
                    if op["fid"] in self.files.staged and op["fid"] not in self.files.unsaved:
                        self.files.discard(op["fid"])
                elif op["op"] in ("prune", "purge"):
                    # gc may delete what nothing references now: never skip uploading those blocks
                    self.blocks.reset_known(self.replica.all_block_refs())
        self.changes.applied(rebased.applied)
        self.changes.publish_remote(entries, rebased.conflicts)

    def _keep_deleted_save_apart(self, fid: str) -> None:
        """A file deleted here before its last save uploaded, brought back by another device's
        save (a save beats a delete): that last save becomes a conflicted copy beside it now,
        as it would have had it uploaded first. Left as the revived file's unsaved content,
        it would be what the file reads here, and the next save to that name (O_TRUNC)
        would overwrite it before it uploads. A file still open here is left as it is: the
        program writing it goes on with the file as it came back. (Always an unsaved file:
        the rebase took its candidates from them, with no await since.)"""
        if self.files.open_handles[fid] > 0:
            return
        create = Revalidator(self.device).conflicted_copy(self.replica, fid, time.time_ns())
        if create is None:
            return
        if not self.files.move_unsaved(fid, create):
            return  # gone from the cache dir: its upload says so
        log.info("the last save of %s, deleted here, is kept as %s: another device's save brought the file back",
                 fid, create["fid"])
        self.changes.applied([create, {"op": "update", "fid": fid}])
        self.uploads.moved(fid, create["fid"])
