"""One volume on one device: the engine any front end (the FUSE mount, a mirror) drives.

`Drive` wires the parts together and is the one interface front ends (fuse/, mirror/, the
control socket's handlers) call: its methods, `tree` (the tree's queries), `namespace` (the
tree's changes, with their POSIX checks), `pins` and `events` — never the parts behind it
(tests/test_layers.py checks). A front end attaches itself (`attach`) to hear what changed.
Each part owns its state:

- `LocalFiles` (localfiles.py): every file's local life — staged, unsaved, open;
- `Reader` (reads.py) and `Writer` (writes.py): the content paths;
- `Uploads` (uploads.py): staged content → blocks and `update` ops;
- `Committer` (committer.py): queued ops → journal, and rebases under remote entries;
- `Follower` (follower.py): other devices' commits, the hub;
- `Changes` (changes.py): what front ends must invalidate, what the user is told;
- `Replication` (replication.py): with a replica store, copying this device's writes to it.

See docs/concurrency.md for what runs where and what may interleave.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

import trio

from ..crashpoints import crash_point
from ..errors import CacheDirError, MountError, StoreUnreachable
from ..store.replicated import store_of
from ..store.volume import Volume
from .blocks import BlockStore
from .cache import BlockCache
from . import history
from .changes import Changes, FrontEnd
from .checkpoints import load_state, newest_live_checkpoint
from .committer import GAP_FILL_SECONDS, Committer
from .events import EventBus, Problems, StoreHealth
from .follower import FRESHNESS_WAIT_SECONDS, Follower
from .hubclient import HubClient
from .entrycopies import KeptEntries
from .commitevents import (Applied, CommitFailed, Committed, CommitsWork, CommitterEvent, EntriesPutBack,
                           GapFilled, HistoryForked, HistoryRetaken)
from .journal import Entry, Journal, JournalGap
from .localfiles import LocalFiles
from .pins import Pins
from .manifest import Piece
from .namespace import Namespace
from .reads import Reader
from .rebase import conflict_name
from .replica import Replica
from .replication import Replication
from .tree import ROOT_INO, Inode, TreeView
from .staging import Staging
from .uploads import Uploads
from .writes import Writer

log = logging.getLogger(__name__)

CONFLICTS_LISTED = 20  # status names this many conflicted copies
CACHE_DIR_CHECK_SECONDS = 1.0


class Drive:
    def __init__(self, volume: Volume, cache_dir: Path, device: str, cache_size: int,
                 poll_interval: float = 2.0, hub_url: str | None = None, io_timeout: float = 60.0) -> None:
        store_of(volume)  # from here on one store object that knows the replica and follows a move, for all parts
        self.volume = volume
        self.device = device
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self.io_timeout = io_timeout
        self.cache = BlockCache(cache_dir / "blocks", cache_size, volume.keys.is_id_of)
        self.blocks = BlockStore(volume, self.cache)
        self.replica = Replica(str(cache_dir / "replica.sqlite3"), in_use=lambda ino: self.files.in_use(ino),
                               # a rename or delete commits on its own, not with the next upload
                               on_record=lambda: self.committer.kick(), on_carried=self.blocks.carried_in)
        self.staging = Staging(cache_dir / "staging")
        self.files = LocalFiles(self.replica, self.staging, self.cache)
        self.blocks.carried_in(self.replica.carried_blocks())
        self.blocks.still_carrying(self.replica.carrying_blocks())
        self.journal = Journal(volume, KeptEntries(cache_dir / "journal"))
        self.events = EventBus()
        self.problems = Problems()
        self.health = StoreHealth(self.events)
        self.replication = Replication(volume, cache_dir, self.events, lambda: self.replica.applied_seq,
                                       lambda: self.journal.fenced)
        self.reader = Reader(self.replica, self.files, self.staging, self.cache, self.blocks, self.health,
                             self.problems, volume.url, io_timeout)
        self.writer = Writer(self.replica, self.files, self.staging, cache_dir)
        self.pins = Pins(self.replica, self.blocks, self.cache, self.events, cache_size)
        self.changes = Changes(self.replica, self.events, device, self.reader.forget, self.files.changed.fire)
        self.uploads = Uploads(volume, device, self.replica, self.files, self.staging, self.blocks, self.health,
                               self.events, self.problems, self.changes)
        self.committer = Committer(
            self.replica, self.journal, device, self.health, self._committer_said,
            unsaved=lambda: set(self.files.unsaved), open_files=lambda: set(self.files.open_handles),
            sent=self.blocks.uploaded,
            # every block this device's tree names, not only the restored entries': what it uploaded
            # after the older copy was made may be named by an entry the store kept
            put_back_blocks=lambda: self.blocks.put_back(self.replica.all_block_refs()),
            check_ready=self._check_cache_dir)
        self.follower = Follower(self.committer, self.replica, self.files, self.uploads, self.changes, self.blocks,
                                 self.problems, device, HubClient(hub_url, volume.volume_id) if hub_url else None,
                                 poll_interval, io_timeout)
        self.cache_dir_lost: str | None = None
        self.namespace = Namespace(self.replica)  # what front ends change the tree through
        self.upload_on_exit = True  # after the unmount, upload what is waiting before exiting (see services/process.drain)

    # --- start and stop ---------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Catch up with the journal, recover what a crash left, start the background tasks."""
        self.reader.nursery = self.follower.nursery = nursery
        endpoint = getattr(self.volume.store, "endpoint", None)
        log.info("volume %s%s, device %s", self.volume.url, f" at {endpoint}" if endpoint else "", self.device)
        joining = self.replica.inode(1) is None
        if joining:
            await self._start_from_checkpoint()
        # What a crash or a kill left unsaved must be known before the first pull: its
        # rebase keeps unsaved files alive (a remote delete brings them back, a remote save
        # makes ours a conflicted copy) and drops the staged copy of any other file it updates.
        self.files.recover()
        self.staging.drop_prepared()  # a front end's content a crash left half handed over (take_content)
        self.committer.follow_roster_at_start()  # before anything is sealed: the key epoch its roster names
        try:
            if self.replica.inode(1) is None:
                await self.committer.pull()
            else:  # a store that hangs must not keep a device that has the volume from mounting
                with trio.fail_after(min(self.io_timeout, FRESHNESS_WAIT_SECONDS * 2)):
                    await self.committer.pull()
        except trio.TooSlowError:
            log.warning("mounted offline: the store did not answer the first pull in time")
        except Exception as exc:  # noqa: BLE001 - what is here must stay reachable: mount, commits retry
            if self.replica.inode(1) is None or (joining and isinstance(exc, JournalGap)):
                raise  # nothing here to serve (a new device, or one that would show part of the tree): say why
            if isinstance(exc, StoreUnreachable):
                log.warning("mounted offline, serving what this device has: %s", exc)
            else:
                self.problems.cannot("apply", f"Cannot apply the journal after entry {self.replica.applied_seq}", exc)
        if self.replica.inode(1) is None:
            raise MountError(f"The volume at {self.volume.url} has no root directory in its journal.")
        for orphan in self.replica.reap_orphans():
            self.files.discard(orphan.fid)
        self.blocks.mark_known(self.replica.all_block_refs())
        self.uploads.start(nursery)
        nursery.start_soon(self.committer.run)
        nursery.start_soon(self.follower.follow)
        nursery.start_soon(self._watch_cache_dir)
        nursery.start_soon(self.pins.keep_local)
        nursery.start_soon(self.replication.run)
        if self.replica.pending_count():
            self.committer.kick()

    def _committer_said(self, event: CommitterEvent) -> None:
        """What follows from each thing the committer tells (commitevents.py)."""
        match event:
            case Applied(entries, rebased):
                self.follower.applied(entries, rebased)
            case Committed(seq):
                self.follower.announce(seq)
            case CommitFailed(cause):
                self.problems.cannot("commit", "Cannot commit its changes", cause)
            case CommitsWork():
                self.problems.resolved("commit")
            case EntriesPutBack(restored, lost):
                self._store_went_back(restored, lost)
            case HistoryForked(requeued, lost):
                self._journal_forked(requeued, lost)
            case GapFilled(missing):
                self._journal_gap_filled(missing)
            case HistoryRetaken():
                self.blocks.carried_anew(self.replica.carried_blocks(), self.replica.carrying_blocks())

    def _store_went_back(self, restored: list[Entry], lost: list[str]) -> None:
        """Said once, to status and events: the store lost entries and this device put them back."""
        entries = _entries_named(restored[0].seq, restored[-1].seq)
        message = (f"The store had gone back in time (restored from an older copy?): it had lost journal {entries}, "
                   "which this device put back")
        message += _not_put_back(lost) if lost else ", with their content: nothing saved since is lost."
        self.problems.report(message)
        self.events.publish("store-went-back", error=message)

    def _journal_forked(self, lost: list[Entry], missing: list[str]) -> None:
        """Said once, to status and events: the journal had forked, and this device commits
        again what the store's history lost."""
        entries = _entries_named(lost[0].seq, lost[-1].seq)
        message = (f"The store had gone back in time and other devices committed since (the journal forked): the "
                   f"changes of journal {entries}, which the store lost, are committed again on top of theirs "
                   "(a file changed on both sides keeps both, as a conflicted copy)")
        message += _not_put_back(missing) if missing else "."
        self.problems.report(message)
        self.events.publish("journal-forked", error=message)

    def _journal_gap_filled(self, missing: range) -> None:
        entries = _entries_named(missing.start, missing[-1])
        message = (f"Journal {entries} had been missing from the store for over "
                   f"{GAP_FILL_SECONDS // 60} minutes and no device put them back: this device filled their place, and "
                   "the devices that committed after them commit their changes again; what only those entries held "
                   "is lost unless a device that applied them mounts.")
        self.problems.report(message)
        self.events.publish("journal-gap-filled", error=message)

    def _check_cache_dir(self) -> None:
        """The cache dir deleted under a running mount (a cleanup script, a user): what is
        staged is gone and what is queued may be half made, so nothing more is committed;
        status says so. Checked before every commit and every second."""
        if self.cache_dir_lost is None and not (
                (self.cache_dir / "volume-id").exists() and self.staging.directory.is_dir()):
            self.cache_dir_lost = (f"The cache dir {self.cache_dir} was deleted while mounted: nothing more is "
                                   "committed from this device; unmount (fusedrive umount --no-wait) and mount again.")
            self.problems.report(self.cache_dir_lost)
            self.events.publish("cache-dir-lost", error=self.cache_dir_lost)
        if self.cache_dir_lost is not None:
            raise CacheDirError(self.cache_dir_lost)

    async def _watch_cache_dir(self) -> None:
        while self.cache_dir_lost is None:
            await trio.sleep(CACHE_DIR_CHECK_SECONDS)
            try:
                self._check_cache_dir()
            except CacheDirError:
                return

    async def _start_from_checkpoint(self) -> None:
        """A new (or wiped) device starts from the newest checkpoint, then replays what follows."""
        # (read through this device's journal: it keeps a copy of the entry the checkpoint stands
        # at, as of every entry applied here, so a later fork at that seq is seen)
        state = await trio.to_thread.run_sync(newest_live_checkpoint, self.journal)
        if state is None:
            return
        load_state(self.replica, state)
        log.info("started from checkpoint %d", state["seq"])

    def close(self) -> None:
        self.staging.close_all()
        self.uploads.close()
        self.cache.close()
        self.replica.close()
        self.replication.close()

    # --- what front ends call -----------------------------------------------------------
    # Front ends (fuse/, mirror/, the control socket's handlers in services/) use this and
    # `tree`, `namespace`, `pins`, `events`: never the parts behind them (tests/test_layers.py).

    @property
    def tree(self) -> TreeView:
        """The tree's queries; changes go through `namespace` and the content calls below."""
        return self.replica

    @contextlib.contextmanager
    def changes_told_to(self, front_end: FrontEnd) -> Iterator[None]:
        """Within the block, `front_end` is told what changed here (applied entries, restores)."""
        self.changes.front_ends.append(front_end)
        try:
            yield
        finally:
            self.changes.front_ends.remove(front_end)

    def node_at(self, path: str) -> Inode:
        """The node at a path of the drive ("/docs/a.txt"); UsageError if there is none."""
        return self.replica.inode(history.resolve(self.replica, path))

    def size_and_mtime(self, node: Inode) -> tuple[int, int]:
        """The file's size and mtime as this device sees it now (its staged content's, if any)."""
        return self.files.size_and_mtime(node)

    def attributes(self, node: Inode) -> tuple[int, int, int, int]:
        """(size, mtime_ns, ctime_ns, 512-byte blocks stored) as this device sees the file now."""
        size, mtime_ns = self.files.size_and_mtime(node)
        return size, mtime_ns, self.files.ctime(node), self.files.stored_blocks(node, size)

    def set_mtime(self, node: Inode, mtime_ns: int) -> None:
        self.files.set_mtime(node, mtime_ns)

    def looked_up(self, ino: int) -> None:
        """The front end (the kernel) holds one more reference to `ino`: it is not forgotten."""
        self.files.lookups[ino] += 1

    def forgotten(self, ino: int, count: int) -> bool:
        """The front end dropped `count` references; True if that was the last one (the
        kernel's pages went with it: a later open reads again; a file with no name left is
        dropped)."""
        self.files.lookups[ino] -= count
        if self.files.lookups[ino] > 0:
            return False
        del self.files.lookups[ino]
        node = self.replica.inode(ino)
        if node is not None:
            self.files.saved_here.pop(node.fid, None)
            if node.nlink <= 0:
                self.forget_unlinked(node)
        return True

    def holds(self, ino: int) -> bool:
        """Whether the front end (the kernel) holds a reference to `ino` (or it is the root)."""
        return self.files.lookups[ino] > 0 or ino == ROOT_INO

    def same_content(self, fid: str, seen: int, version: int) -> bool:
        """Whether version `version` of the file holds what the front end saw at `seen`."""
        return self.files.same_content(fid, seen, version)

    def is_staged(self, fid: str) -> bool:
        return fid in self.files.staged

    def is_open(self, fid: str) -> bool:
        return self.files.open_handles[fid] > 0

    def prepared_path(self) -> Path:
        """Where a front end prepares a file's new content for `take_content`."""
        return self.staging.prepared_path()

    def conflicted_copy_name(self, parent_fid: str, name: str) -> str:
        """The name a conflicted copy of `name` (JSON form) in that folder gets, as the engine's own are named."""
        return conflict_name(self.replica, parent_fid, name, self.device)

    def conflict_seen(self, conflict: dict) -> None:
        """A front end kept both sides of a name apart itself (a mirror): told like the engine's."""
        self.changes.publish_conflict(conflict, self.device)

    def versions(self, fid: str) -> list[history.Version]:
        return history.versions(self.replica, fid)

    def version(self, fid: str, number: int) -> history.Version:
        return history.version(self.replica, fid, number)

    def trash(self) -> list[history.TrashItem]:
        return history.trash_items(self.replica)

    def restore_version(self, node: Inode, kept: history.Version, to: str | None) -> None:
        """Make `kept` current again (or a copy of it at path `to`), as a user's change."""
        target = None
        if to is not None:
            parent = self.node_at(os.path.dirname(to))
            target = (parent.fid, os.fsencode(os.path.basename(to)))
        self.record_user_ops(history.restore_version_ops(self.replica, node.fid, kept, target, self.device))

    def restore_from_trash(self, path: str, item_id: str | None) -> str:
        """Bring back what was deleted at `path` (one item of it with `item_id`); its path now."""
        ops = history.trash_restore_ops(self.replica, path, self.device, item_id)
        self.record_user_ops(ops)
        return self.replica.path_of(next(op["fid"] for op in ops if op["op"] in ("mknod", "symlink")))

    def pause_commits(self) -> None:
        self.committer.pause()

    def resume_commits(self) -> None:
        self.committer.resume()

    async def pull(self) -> None:
        """Apply what other devices committed, now."""
        await self.committer.pull()

    async def ensure_fresh(self) -> None:
        await self.follower.ensure_fresh()

    async def read(self, node: Inode, offset: int, size: int) -> bytes:
        return await self.reader.read(node, offset, size)

    def data_ranges(self, node: Inode) -> list[tuple[int, int]]:
        return self.files.data_ranges(node)

    async def fetch_block(self, piece: Piece, node: Inode | None) -> bytes:
        return await self.reader.fetch_block(piece, node)

    async def write(self, node: Inode, offset: int, data: bytes) -> int:
        return await self.writer.write(node, offset, data)

    async def truncate(self, node: Inode, size: int) -> None:
        await self.writer.truncate(node, size)

    def take_content(self, node: Inode, prepared: Path, mtime_ns: int) -> None:
        """A front end that keeps files elsewhere (a mirror) hands over a file's whole new
        content, prepared beside staging (`staging.prepared_path()`); it uploads at once
        unless the file is open here."""
        self.writer.replace(node, prepared, mtime_ns)
        if self.files.open_handles[node.fid] <= 0:
            self.uploads.queue(node.fid)

    def opened(self, fid: str, writing: bool) -> None:
        self.files.opened(fid, writing)

    def flushed(self, fid: str) -> None:
        """close(): a written file starts uploading in the background."""
        if fid in self.files.unsaved:
            self.uploads.queue(fid)

    def released(self, fid: str, writing: bool) -> None:
        last_writer, last_handle = self.files.released(fid, writing)
        if fid in self.files.unsaved:
            if last_writer or last_handle:
                crash_point("staged")
                self.uploads.queue(fid)  # the last writer (or the last handle) is done: the content uploads now
        elif last_handle:
            self.replica.forget_vanished(fid)  # closed unchanged: another device's delete stands
            if fid in self.files.staged and fid not in self.uploads.uploading:
                self.files.discard(fid, keep_as=self.files.keep_on_close.get(fid))

    def forget_unlinked(self, node: Inode) -> None:
        """The front end let go of a file that has no name left: drop its content. The row
        itself goes once no queued operation could bring the name back (see reap_orphans)."""
        files = self.files
        if files.lookups[node.ino] <= 0 and files.open_handles[node.fid] <= 0 and node.nlink <= 0:
            if node.fid in files.unsaved:
                return  # unsaved content: the upload brings it back or puts it in the trash
            files.discard(node.fid)
            self.reader.forget(node.ino)
            if not self.replica.pending_count():
                self.replica.forget_inode(node.ino)

    def record_user_ops(self, ops: list[dict]) -> None:
        """Commit operations a command made (restores, emptying the trash) as if the user
        made them in the mount: front ends forget what they cached of those files. A caller
        restoring a file waits for its unsaved content first (wait_uploaded), since the
        ops are based on the version it saw."""
        self.replica.record(*ops)
        for op in ops:
            fid = op.get("fid")
            if op["op"] == "update" and fid in self.files.staged and fid not in self.files.unsaved \
                    and fid not in self.uploads.uploading:
                self.files.discard(fid)
        self.changes.applied(ops)

    # --- durability -------------------------------------------------------------------

    async def wait_uploaded(self, fids: set[str] | None = None) -> None:
        await self.uploads.wait_uploaded(fids)

    async def fsync(self, fid: str) -> None:
        """Return once this file's blocks and its journal commit are in the store."""
        await self.uploads.wait_uploaded({fid})
        await self.wait_committed()

    async def wait_committed(self) -> None:
        """Return once every change made here so far is in the journal (fsync of a directory)."""
        await self.committer.wait_committed(self.replica.last_pending_id())

    def has_unsaved_work(self) -> bool:
        return bool(self.files.unsaved) or self.replica.pending_count() > 0

    async def sync_all(self) -> None:
        await self.uploads.wait_uploaded()
        await self.committer.wait_committed(self.replica.last_pending_id())

    def write_refusal(self) -> str | None:
        """Why this device may not change the volume (a reader, a removed member, no identity in
        a volume shared with people: membership.py), as of what it applied; None if it may."""
        return self.committer.write_refusal()

    def check_invariants(self) -> list[str]:
        """What does not hold in the per-file state right now (empty when all is well)."""
        return self.files.check_invariants()

    def status(self) -> dict:
        """Everything `fusedrive status` shows (times are Unix seconds)."""
        files = self.files
        waiting_since = [files.unsaved_since[fid] for fid in files.unsaved if fid in files.unsaved_since]
        store_down_since, store_error = self.health.state()
        oldest_op = self.replica.oldest_pending_time()
        if oldest_op is not None:
            waiting_since.append(oldest_op)
        return {
            "volume": self.volume.url,
            "endpoint": getattr(self.volume.store, "endpoint", None),  # an S3 store's, as both its clients use it
            "device": self.device,
            "files_waiting": len(files.unsaved),
            "bytes_waiting": files.unsaved_bytes(),
            "ops_waiting": self.replica.pending_count(),
            "waiting_since": min(waiting_since, default=None),
            "store_offline_since": store_down_since,
            "store_error": store_error,
            "store_needs_attention": self.health.refused,
            "hub": None if self.follower.hub is None else ("connected" if self.follower.hub_connected else "polling"),
            "journal_head": max(self.committer.journal_head, self.replica.applied_seq),
            "applied_seq": self.replica.applied_seq,
            "checkpoint_seq": self.replica.get_state("checkpoint_seq", 0),
            "bytes_uploaded": self.blocks.uploaded.bytes,
            "bytes_downloaded": self.blocks.downloaded.bytes,
            "upload_rate": self.blocks.uploaded.rate(),
            "download_rate": self.blocks.downloaded.rate(),
            "cache_bytes": self.cache.volume_bytes(),
            "cache_limit": self.cache_size,
            "conflicted_copies": len(conflicts := self.replica.conflicted_copies()),
            "conflicted_copy_paths": conflicts[:CONFLICTS_LISTED],
            "paused": self.committer.paused,
            "cache_dir_lost": self.cache_dir_lost,
            "needs_upgrade": self.problems.needs_upgrade,
            "integrity_problem": self.problems.integrity,
            "key_not_given": self.problems.key_not_given,
            "stuck": next(iter(self.problems.stuck.values()), None),
            "cannot_write": self.write_refusal(),
            "errors": list(self.problems.recent),
            **self.pins.state(),
            **self.replication.status(),
        }


def _entries_named(first: int, last: int) -> str:
    return f"entries {first}–{last}" if last > first else f"entry {first}"


def _not_put_back(missing: list[str]) -> str:
    """The end of a sentence about a store that went back: the objects this device could not restore."""
    return (f"; {len(missing)} stored objects with content saved since are not on this device to put back "
            f"({', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}): another device may have them.")
