"""Uploads: a closed file's staged content becomes blocks in the store and an `update`
in the replica's queue (the committer puts it in the journal). Many small files upload
side by side so their blocks share packs; a failed upload retries with backoff and says
so once per file."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import trio

from ..crashpoints import crash_point
from ..errors import FusedriveError, StoreUnreachable
from ..store.volume import Volume
from .blocks import BlockStore
from .changes import Changes
from .events import EventBus, Problems, StoreHealth
from .localfiles import LocalFiles
from .rebase import Revalidator
from .replica import Replica
from .tree import Inode
from .staging import Patchable, Staging
from .uploader import Built, NeedsStore, StagingChanged, build_manifest, is_small

log = logging.getLogger(__name__)

# Small files upload from many tasks at once, so their blocks share packs (see blocks.py);
# at most LARGE_UPLOADS files of a minimum chunk or more are chunked at a time (each holds
# a window and up to 16 blocks in memory).
UPLOAD_WORKERS = 32
LARGE_UPLOADS = 2


class Uploads:
    """Owns the upload queue, which files are uploading, and what failed."""

    def __init__(self, volume: Volume, device: str, replica: Replica, files: LocalFiles, staging: Staging,
                 blocks: BlockStore, health: StoreHealth, events: EventBus, problems: Problems,
                 changes: Changes) -> None:
        self.volume = volume
        self.device = device
        self.replica = replica
        self.files = files
        self.staging = staging
        self.blocks = blocks
        self.health = health
        self.events = events
        self.problems = problems
        self.changes = changes
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="upload")
        self._upload_threads = trio.CapacityLimiter(UPLOAD_WORKERS)
        self._large_uploads = trio.Semaphore(LARGE_UPLOADS)
        self._send, self._receive = trio.open_memory_channel(1_000_000)
        self._queued: set[str] = set()
        self.uploading: set[str] = set()
        self._upload_again: set[str] = set()
        self.last_error: str | None = None
        self.failures = 0  # attempts that failed, ever: a sync fails on a new one, not an old error
        self._failing: set[str] = set()

    def start(self, nursery: trio.Nursery) -> None:
        for fid in list(self.files.unsaved):
            self.queue(fid)
        for _ in range(UPLOAD_WORKERS):
            nursery.start_soon(self._worker)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def queue(self, fid: str) -> None:
        if fid not in self._queued:
            self._queued.add(fid)
            self._send.send_nowait(fid)

    def moved(self, fid: str, copy: str) -> None:
        """`fid`'s unsaved content is now `copy`'s (LocalFiles.move_unsaved): upload that."""
        if fid in self._failing:
            self._failing.discard(fid)
            self._failing.add(copy)
        self.queue(copy)

    async def _worker(self) -> None:
        delay = 1.0
        async for fid in self._receive:
            self._queued.discard(fid)
            if fid not in self.files.unsaved:
                continue
            if fid in self.uploading:
                self._upload_again.add(fid)  # one upload per file at a time
                continue
            self.uploading.add(fid)
            try:
                if await self._upload(fid):
                    self._went_through(fid)
                delay = 1.0
            except (FusedriveError, OSError, sqlite3.OperationalError) as exc:  # store down, disk full
                self._failed(fid, exc, delay)
                await self.health.backoff(delay)
                delay = min(delay * 2, 30)
                self.queue(fid)
            finally:
                self.uploading.discard(fid)
                if fid in self._upload_again:
                    self._upload_again.discard(fid)
                    self.queue(fid)
            self.files.changed.fire()

    def _failed(self, fid: str, exc: Exception, retry_in: float) -> None:
        """Say so once per file (not per retry), and mark the store offline if it is."""
        self.last_error = str(exc)
        self.failures += 1
        log.warning("upload of %s failed, retrying in %.0f s: %s", fid, retry_in, exc)
        if isinstance(exc, StoreUnreachable):
            self.health.failed(exc)
        if fid not in self._failing:
            self._failing.add(fid)
            path = self.replica.path_of(fid) or f"a deleted file ({fid}, for its trash entry)"
            self.problems.report(f"Upload of {path} failed, retrying: {exc}")
            self.events.publish("upload-failed", path=path, error=str(exc))

    def _went_through(self, fid: str) -> None:
        self.last_error = None
        self.health.succeeded(wrote=True)
        if fid in self._failing:
            self._failing.discard(fid)
            if not self._failing:
                self.events.publish("upload-recovered")

    def _keeps_whole(self, size: int) -> bool:
        """Files of an average block or more are kept whole in the cache once uploaded;
        a smaller file's one block goes into the block cache as it uploads."""
        return size >= self.volume.chunking["avg"]

    async def _upload(self, fid: str) -> bool:
        """Upload a closed file's staged content and queue its update; True if it did.

        Not while a program still has the file open for writing (unless fsync or sync asks):
        what is staged then may be a save half made (open(O_TRUNC) has emptied the file, the
        write has not come yet), and uploading it could lose to another device's save and
        leave the rest of the write to land on that save's bytes."""
        files = self.files
        if files.writers[fid] > 0 and fid not in files.sync_requested:
            return False  # released() queues it when the last writer closes
        ino = self.replica.ino_of(fid)
        node = self.replica.inode(ino) if ino is not None else None
        if node is None or node.nlink <= 0 and not self._keeps_nameless(fid):
            if files.open_handles[fid] <= 0:
                log.warning("the unsaved content of %s is dropped: the file has no name, no trash entry", fid)
                files.discard(fid)  # the trash was emptied meanwhile: nothing to keep
            return False
        generation = self.staging.generation.get(fid)
        patchable = self.staging.patchable(fid)
        size, mtime_ns = files.size_and_mtime(node)
        try:
            # Our own descriptor: the staging one may be closed (file deleted) while we read.
            fd = os.open(self.staging.path(fid), os.O_RDONLY)
        except FileNotFoundError:
            if files.open_handles[fid] <= 0:  # nothing left to upload: do not keep asking
                self.problems.report(f"The unsaved content of {self.replica.path_of(fid)} is gone from the cache dir.")
                files.discard(fid)
            return False
        try:
            # a partial staged file is not the file: its new blocks go to the cache instead
            keep = self._keeps_whole(size) and (patchable is None or patchable.present is None)
            # an fsync (or a sync) waiting for this file alone: its pack need not wait for others
            urgent = files.sync_requested == {fid}
            # Carried by the entry only while the store answers: offline it would save no
            # round trip, and the file would leave the files waiting for the changes queued.
            carry = urgent and self.health.state()[0] is None and self.health.refused is None
            built = self._carried_here(fd, size, keep, patchable) if carry else None
            if built is None:
                async with nullcontext() if is_small(size, self.volume.chunking) else self._large_uploads:
                    built = await trio.to_thread.run_sync(
                        build_manifest, fd, size, self.volume.chunking, self.blocks, self.pool, not keep, patchable,
                        urgent, True, carry, limiter=self._upload_threads,
                    )
            manifest, carried = built
        except StagingChanged:
            if self.staging.generation.get(fid) == generation:
                self._trust_staged_size(fid, os.fstat(fd).st_size, size)
            return False  # truncated meanwhile: the next close uploads again
        finally:
            os.close(fd)
        node = self.replica.inode(ino)
        if fid not in files.unsaved or self.staging.generation.get(fid) != generation or node is None:
            # written again meanwhile (the next close uploads the newer content), or its
            # content moved on (to a conflicted copy, which uploads it) or was dropped:
            # recording this manifest for the file would pair it with another size
            self._drop_carried(carried)
            return False
        crash_point("blocks-stored")
        if not self._record(node, manifest, keep, carried):
            self._drop_carried(carried)
            return False
        return True

    def _carried_here(self, fd: int, size: int, keep: bool, patchable: Patchable | None) -> Built | None:
        """The fsync of a small edit or a small file, whose few new bytes the entry will
        carry, prepared in the trio thread (no hop to a worker thread and back: a tenth of
        the fsync on loopback); None if it has to send anything, or chunk much."""
        if not self.volume.carries_blocks:
            return None
        try:
            return build_manifest(fd, size, self.volume.chunking, self.blocks, self.pool, not keep, patchable,
                                  urgent=True, store_allowed=False, carry=True)
        except NeedsStore:
            return None

    def _drop_carried(self, carried: dict[str, bytes]) -> None:
        """Carried blocks of an upload that queued nothing, unless a queued update names them."""
        queued = self.replica.carrying_ids() if carried else set()
        self.blocks.forget_carrying(carried.keys() - queued)

    def _record(self, node: Inode, manifest: list[list], keep: bool, carried: dict[str, bytes]) -> bool:
        """Queue the update (by the conflict rule, or bringing the file back) and let the
        staged copy go; False if there is nowhere to keep it. No await: what the replica
        records and what LocalFiles says change together. `carried`: blocks the update's
        entry carries, queued with it."""
        fid = node.fid
        size, mtime_ns = self.files.size_and_mtime(node)
        base = self.replica.dirty_base(fid)
        update = {"op": "update", "fid": fid, "base": node.version if base is None else base, "manifest": manifest,
                  "size": size, "mtime_ns": mtime_ns, "t": time.time_ns(), "device": self.device}
        person = self.replica.get_state("person")  # who saves, in a volume shared with people (Committer.follow_roster)
        if person is not None:
            update["by"] = person
        rules = Revalidator(self.device)
        with self.replica:
            revival = self._revival(node)
            if revival:
                ops = [*revival, dict(update, base=0)]
            elif node.nlink <= 0:
                if not self._keeps_nameless(fid):
                    return False
                ops = [dict(update, trash=True)]  # into its trash entry, or its path's history
            else:  # another device's save may have arrived since this edit began: the conflict rule
                ops = rules(self.replica, update)
            self.replica.carry(carried)
            self.replica.record(*ops)
            self.replica.set_dirty(fid, False)
        self.blocks.still_carrying(carried)
        if ops != [update]:  # it came back, or went to a conflicted copy: the kernel's view of it changed
            self.changes.applied([*ops, update])
        for conflict in rules.conflicts:
            self.changes.publish_conflict(conflict, self.device)
        self.files.saved(fid)
        uploaded_as_itself = any(op["op"] == "update" and op["fid"] == fid for op in ops)
        if ops == [update] and self.files.lookups[node.ino] > 0:  # (a front end that caches it)
            self.files.saved_as_is(fid, update["base"], self.replica.inode(node.ino).version)
        if not uploaded_as_itself:
            # Gone to a conflicted copy: the file holds the other device's save now, so what
            # is staged is not its content (a handle still open reads and writes that save).
            self.files.discard(fid)
        elif self.files.open_handles[fid] <= 0:
            self.files.discard(fid, keep_as=manifest if keep else None)
        else:
            self.staging.uploaded(fid, manifest, size)  # still open: the next upload patches this one
            if keep:
                self.files.keep_on_close[fid] = manifest
        return True

    def _trust_staged_size(self, fid: str, staged: int, recorded: int) -> None:
        """Nothing raced, yet the staged file is shorter than the size recorded for it (seen
        in hour-long soaks, cause not found yet): the staged bytes are all there is, so
        they upload as they are, and the user is told. Retrying the recorded size would leave
        the file unsynced forever."""
        self.problems.report(f"The staged content of {self.replica.path_of(fid)} is {staged} bytes, not the "
                             f"{recorded} recorded for it; uploading what is staged.")
        self.files.resized(fid, staged)
        self.changes.content_changed(fid)
        self.queue(fid)

    def _keeps_nameless(self, fid: str) -> bool:
        """A file with no name left still uploads its last save: back where it was if
        another device deleted it while it was written here, else into its trash entry, or
        into the history of the file that replaced it (a program saved over it by rename)."""
        return bool(self.replica.vanished_locations(fid)) or self.replica.in_trash(fid) \
            or self.replica.successor_of(fid) is not None

    def _revival(self, node: Inode) -> list[dict]:
        """Operations that bring back a file another device deleted while it was open and
        written here (the rule: an update to a deleted file brings it back)."""
        locations = self.replica.vanished_locations(node.fid) if node.nlink <= 0 else None
        if not locations:
            return []
        self.replica.forget_vanished(node.fid)
        revival = Revalidator(self.device).revive_file(self.replica, node.fid, locations)
        if revival:
            log.info("%s was deleted on another device while being written here: it comes back", node.fid)
        return revival

    async def wait_uploaded(self, fids: set[str] | None = None) -> None:
        """Wait until the given (default: all) staged files are uploaded and recorded; raises
        if an upload attempt fails meanwhile (not for an error from before the call: the
        store may be back)."""
        failures = self.failures
        self.health.retry_now()
        while True:
            waiting = self.files.unsaved if fids is None else self.files.unsaved & fids
            if not waiting:
                return
            if self.failures != failures:
                raise FusedriveError(self.last_error)
            self.files.sync_requested |= waiting
            for fid in waiting:
                self.queue(fid)
            await self.files.changed.wait()
