"""A mounted drive's moving parts, and the content operations the fs layer calls.

Owns the replica, staging, block cache, block store and committer of one mount.
Reads come from staging (a file being written) or from blocks (via the cache,
prefetching ahead of sequential readers); writes go to staging; closing a
written file queues its upload, and the upload records an `update` operation
that the committer puts in the journal. See docs/concurrency.md.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import sqlite3
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from .blocks import BlockStore
from .cache import BlockCache, leaves_reserve
from .checkpoints import checkpoint_seqs, load_state, read_checkpoint
from .committer import Committer
from .crashpoints import crash_point
from .errors import CacheDirError, FusedriveError, MountError, StoreUnreachable
from .events import EventBus, StoreHealth
from .hub import DEVICE_WAIT_SECONDS, PROBE_SECONDS, HubClient, HubError
from .journal import Entry, Journal
from .manifest import Location, Piece, block_refs, pieces, starts
from .history import check_not_archived
from .rebase import Revalidator, conflict_of
from .replica import Inode, Replica, name_from_json
from .signals import Broadcast
from .staging import Staging
from .uploader import StagingChanged, build_manifest, is_small
from .volume import Volume

log = logging.getLogger(__name__)

FRESHNESS_WAIT_SECONDS = 5  # an open() waits at most this long for the journal head
CHANGE_WORDS = {"mknod": "created", "symlink": "created", "link": "linked", "unlink": "deleted",
                "rename": "moved", "update": "changed"}  # the rest (attributes, xattrs) is "changed"

# Small files upload from many tasks at once, so their blocks share packs (see blocks.py);
# at most LARGE_UPLOADS files of a minimum chunk or more are chunked at a time (each holds
# a window and up to 8 blocks in memory).
UPLOAD_WORKERS = 32
LARGE_UPLOADS = 2
OPEN_FRESHNESS_SECONDS = 1.0
CONFLICTS_LISTED = 20  # status names this many conflicted copies
CACHE_DIR_CHECK_SECONDS = 1.0
DOWNLOAD_THREADS = 16
PREFETCH_BLOCKS = 6
SEQUENTIAL_WINDOW = 1024 * 1024


@dataclass
class Layout:
    """A committed file's extents with their start offsets, for bisecting reads."""

    version: int
    starts: list[int]
    pieces: list[Piece]


class Drive:
    def __init__(self, volume: Volume, cache_dir: Path, device: str, cache_size: int,
                 poll_interval: float = 2.0, hub_url: str | None = None, io_timeout: float = 60.0) -> None:
        self.volume = volume
        self.device = device
        self.cache_dir = cache_dir
        self.lookups: Counter[int] = Counter()
        self.open_handles: Counter[str] = Counter()
        self.writers: Counter[str] = Counter()  # handles open for writing, per file
        self._sync_requested: set[str] = set()  # files fsync or sync wants uploaded though a writer is open
        self.replica = Replica(str(cache_dir / "replica.sqlite3"), in_use=self._in_use)
        self.staging = Staging(cache_dir / "staging")
        self.cache_size = cache_size
        self.cache = BlockCache(cache_dir / "blocks", cache_size, volume.keys.id_of)
        self.blocks = BlockStore(volume, self.cache)
        self.journal = Journal(volume)
        self.events = EventBus()
        self.conflicts_seen = 0
        self.health = StoreHealth(self.events)
        self.committer = Committer(self.replica, self.journal, device, self._remote_applied, self.health,
                                   unsaved=lambda: set(self.dirty), open_files=lambda: set(self.open_handles))
        self.poll_interval = poll_interval
        self.io_timeout = io_timeout
        self.hub = HubClient(hub_url, volume.volume_id) if hub_url else None
        self.hub_connected = False
        self.committer.on_commit = self._announce
        self.committer.on_error = self._error
        self.committer.check_ready = self._check_cache_dir
        self.cache_dir_lost: str | None = None
        self.replica.on_record = self.committer.kick  # a rename or delete commits on its own, not with the next upload
        self.mounted = False
        self.upload_on_exit = True  # after the unmount, upload what is waiting before exiting (see mounting._drain)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="upload")
        self._upload_threads = trio.CapacityLimiter(UPLOAD_WORKERS)
        self._large_uploads = trio.Semaphore(LARGE_UPLOADS)
        self.download_limiter = trio.CapacityLimiter(DOWNLOAD_THREADS)
        self.changed = Broadcast()
        self.staged: set[str] = {p.name for p in self.staging.directory.iterdir() if "." not in p.name}
        self.staged_attrs: dict[str, tuple[int, int]] = {}
        self.dirty: set[str] = set()
        self.dirty_since: dict[str, float] = {}  # fid → when its unsaved content was first written
        self._upload_send, self._upload_receive = trio.open_memory_channel(1_000_000)
        self._queued: set[str] = set()
        self._uploading: set[str] = set()
        self._upload_again: set[str] = set()
        self._keep_on_close: dict[str, list[list]] = {}  # uploaded while open: kept whole once closed
        self._stage_locks: dict[str, trio.Lock] = {}
        self._layouts: dict[int, Layout] = {}
        self._in_flight: dict[str, trio.Event] = {}
        self._read_end: dict[int, int] = {}
        self.upload_error: str | None = None
        self.upload_failures = 0  # attempts that failed, ever: a sync fails on a new one, not an old error
        self._failing_uploads: set[str] = set()
        self.errors: deque[str] = deque(maxlen=20)
        self._nursery: trio.Nursery | None = None

    def _in_use(self, ino: int) -> bool:
        node_fid = self.replica.db.execute("SELECT fid FROM inodes WHERE ino=?", (ino,)).fetchone()
        if node_fid is None:
            return self.lookups[ino] > 0
        fid = node_fid[0]
        # unsaved local content keeps a file's row even when another device deletes it
        return self.lookups[ino] > 0 or self.open_handles[fid] > 0 or fid in self.dirty

    # --- start and stop ---------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Catch up with the journal, recover what a crash left, start the background tasks."""
        self._nursery = nursery
        if self.replica.inode(1) is None:
            await self._start_from_checkpoint()
        # What a crash or a kill left unsaved must be known before the first pull: its
        # rebase keeps unsaved files alive (a remote delete brings them back, a remote save
        # makes ours a conflicted copy) and drops the staged copy of any other file it updates.
        self._recover_unsaved()
        try:
            if self.replica.inode(1) is None:
                await self.committer.pull()
            else:  # a store that hangs must not keep a device that has the volume from mounting
                with trio.fail_after(min(self.io_timeout, FRESHNESS_WAIT_SECONDS * 2)):
                    await self.committer.pull()
        except trio.TooSlowError:
            log.warning("mounted offline: the store did not answer the first pull in time")
        except Exception as exc:  # noqa: BLE001 - what is here must stay reachable: mount, commits retry
            if self.replica.inode(1) is None:
                raise  # nothing here to serve (a new device): say why and stop
            if isinstance(exc, StoreUnreachable):
                log.warning("mounted offline, serving what this device has: %s", exc)
            else:
                log.exception("cannot apply the journal at start")
                self._error(f"Cannot apply the journal after entry {self.replica.applied_seq} (changes stay "
                            f"queued here): {exc}")
        if self.replica.inode(1) is None:
            raise MountError(f"The volume at {self.volume.url} has no root directory in its journal.")
        for orphan in self.replica.reap_orphans():
            self._discard_staged(orphan.fid)
        self.blocks.mark_known(self.replica.all_block_refs())
        for fid in list(self.dirty):
            self.queue_upload(fid)
        for _ in range(UPLOAD_WORKERS):
            nursery.start_soon(self._upload_worker)
        nursery.start_soon(self.committer.run)
        nursery.start_soon(self._tail_journal)
        nursery.start_soon(self._watch_cache_dir)
        if self.replica.pending_count():
            self.committer.kick()

    def _check_cache_dir(self) -> None:
        """The cache dir deleted under a running mount (a cleanup script, a user): what is
        staged is gone and what is queued may be half made, so nothing more is committed;
        status says so. Checked before every commit and every second."""
        if self.cache_dir_lost is None and not (
                (self.cache_dir / "volume-id").exists() and self.staging.directory.is_dir()):
            self.cache_dir_lost = (f"The cache dir {self.cache_dir} was deleted while mounted: nothing more is "
                                   "committed from this device; unmount (fusedrive umount --no-wait) and mount again.")
            self._error(self.cache_dir_lost)
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

    def _recover_unsaved(self) -> None:
        """Files whose closed content is staged and not uploaded yet (the `dirty` table) are
        unsaved again; staged copies that are not unsaved are stale (nothing is open yet)."""
        for fid in self.replica.dirty_fids():
            if fid in self.staged:
                st = os.stat(self.staging.path(fid))
                self.staged_attrs[fid] = (st.st_size, st.st_mtime_ns, st.st_mtime_ns)
                self.dirty.add(fid)
                self.dirty_since[fid] = st.st_mtime
            else:
                self.replica.set_dirty(fid, False)
        for fid in self.staged - self.dirty:
            self._discard_staged(fid)

    async def _start_from_checkpoint(self) -> None:
        """A new (or wiped) device starts from the newest checkpoint, then replays what follows."""
        seqs = await trio.to_thread.run_sync(checkpoint_seqs, self.volume)
        if not seqs:
            return
        state = await trio.to_thread.run_sync(read_checkpoint, self.volume, max(seqs))
        load_state(self.replica, state)
        log.info("started from checkpoint %d", state["seq"])

    def close(self) -> None:
        self.staging.close_all()
        self.pool.shutdown(wait=True)
        self.cache.close()
        self.replica.close()

    # --- other devices' changes --------------------------------------------------------

    async def _tail_journal(self) -> None:
        """Follow other devices' commits: long-poll the hub when there is one (and it
        answers), else list the journal every poll interval."""
        while True:
            if not await self._wait_for_hub():
                await trio.sleep(self.poll_interval)
            try:
                await self.committer.pull()
            except StoreUnreachable as exc:
                log.info("journal poll failed: %s", exc)
            except Exception as exc:  # noqa: BLE001 - an entry we cannot apply must not take the mount down
                self._error(f"Cannot apply the journal after entry {self.replica.applied_seq}: {exc}")

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

    def _announce(self, seq: int) -> None:
        """Tell the hub about a commit (best effort: other devices also poll)."""
        if self.hub is not None and self._nursery is not None:
            self._nursery.start_soon(self._notify_hub, seq)

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

    def _remote_applied(self, entries: list[Entry], applied: list[dict], revalidator: Revalidator) -> None:
        """After a rebase: drop stale staged copies, tell the kernel and the user what changed."""
        for fid in revalidator.deleted_saves_brought_back:
            self._keep_deleted_save_apart(fid, revalidator)
        for entry in entries:
            for op in entry.ops:
                if op["op"] == "update":
                    self.blocks.mark_known(block_refs(op["manifest"]))
                    if op["fid"] in self.staged and op["fid"] not in self.dirty:
                        self._discard_staged(op["fid"])
                elif op["op"] in ("prune", "purge"):
                    # gc may delete what nothing references now: never skip uploading those blocks
                    self.blocks.reset_known(self.replica.all_block_refs())
        self._tell_kernel(applied)
        self._publish_changes(entries, revalidator.conflicts)

    def _keep_deleted_save_apart(self, fid: str, revalidator: Revalidator) -> None:
        """A file deleted here before its last save uploaded, brought back by another device's
        save (a save beats a delete): that last save becomes a conflicted copy beside it now,
        as it would have had it uploaded first. Left as the revived file's unsaved content,
        it would be what the file reads here, and the next save to that name (O_TRUNC)
        would overwrite it before it uploads. A file still open here is left as it is: the
        program writing it goes on with the file as it came back. (Always a file in
        `self.dirty`: the rebase took its candidates from it, with no await since.)"""
        if self.open_handles[fid] > 0:
            return
        create = revalidator.conflicted_copy(self.replica, fid, time.time_ns())
        if create is None:
            return
        copy = create["fid"]
        # Linked first, forgotten last: a crash in between leaves both, and start() drops
        # whichever staged file the replica does not say is unsaved.
        try:
            os.link(self.staging.path(fid), self.staging.path(copy))
        except FileNotFoundError:
            return  # gone from the cache dir: its upload says so
        with self.replica:
            self.replica.record(create)
            self.replica.set_dirty(fid, False)
            self.replica.set_dirty(copy, True, base=0)
        self.dirty.add(copy)
        self.dirty_since[copy] = self.dirty_since.get(fid, time.time())
        self.staged.add(copy)
        self.staged_attrs[copy] = self.staged_attrs[fid]
        self.staging.bump(copy)
        if fid in self._failing_uploads:
            self._failing_uploads.discard(fid)
            self._failing_uploads.add(copy)
        self._discard_staged(fid)
        log.info("the last save of %s, deleted here, is kept as %s: another device's save brought the file back",
                 fid, copy)
        self._tell_kernel([create, {"op": "update", "fid": fid}])
        self.queue_upload(copy)

    def _publish_changes(self, entries: list[Entry], conflicts: list[dict]) -> None:
        """One event per file per remote entry (a new file's create and content are one
        change), and one per conflicted copy, wherever it was made."""
        for entry in entries:
            seen = set()
            for op in entry.ops:
                fid = op.get("fid")
                if fid is None or fid in seen or op["op"] == "mkroot":
                    continue
                seen.add(fid)
                if "conflict_of" in op:
                    self._publish_conflict(conflict_of(op), entry.device)
                    continue
                if op["op"] == "unlink":
                    path = self.replica.path_of(op["parent"], name_from_json(op["name"]))
                else:
                    path = self.replica.path_of(fid)
                self.events.publish("remote-change", path=path, change=CHANGE_WORDS.get(op["op"], "changed"),
                                    device=entry.device)
        for conflict in conflicts:
            self._publish_conflict(conflict, self.device)

    def _publish_conflict(self, conflict: dict, device: str) -> None:
        """`device`: whose version went into the copy."""
        self.conflicts_seen += 1
        self.events.publish("conflict", device=device,
                            path=self.replica.path_of(conflict["parent"], name_from_json(conflict["name"])),
                            copy=self.replica.path_of(conflict["parent"], name_from_json(conflict["copy"])))

    def _tell_kernel(self, applied: list[dict]) -> None:
        """Invalidate the kernel's entries, attributes and pages that `applied` operations changed."""
        inodes, names = set(), set()
        for op in applied:
            for key in ("fid", "parent", "newparent"):
                ino = self.replica.ino_of(op[key]) if key in op else None
                if ino is not None:
                    inodes.add(ino)
                    self._layouts.pop(ino, None)
            for parent_key, name_key in (("parent", "name"), ("newparent", "newname")):
                ino = self.replica.ino_of(op[parent_key]) if parent_key in op else None
                if ino is not None and name_key in op:
                    names.add((ino, name_from_json(op[name_key])))
        if self.mounted and self._nursery is not None and (inodes or names):
            self._nursery.start_soon(self._invalidate, inodes, names)
        self.changed.fire()

    async def _invalidate(self, inodes: set[int], names: set[tuple[int, bytes]]) -> None:
        """Use only the non-blocking invalidations: the blocking one can deadlock inside a request."""
        for parent, name in names:
            try:
                pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
            except OSError:
                pass
        for ino in inodes:
            if self.lookups[ino] > 0 or ino == 1:
                await self.invalidate_kernel_cache(ino)

    async def invalidate_kernel_cache(self, ino: int) -> None:
        """Drop the kernel's attributes and pages of one inode, from a worker thread: called
        in the trio thread it could wait on a page lock held by a read we have yet to serve."""
        if not self.mounted:
            return
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
        except OSError:
            pass

    # --- attributes of files whose content is staged ------------------------------------

    def size_and_mtime(self, node: Inode) -> tuple[int, int]:
        size, mtime_ns, _ctime_ns = self.staged_attrs.get(node.fid, (node.size, node.mtime_ns, 0))
        return size, mtime_ns

    def stored_blocks(self, node: Inode, size: int) -> int:
        """st_blocks: the 512-byte units really stored, so `du` of a sparse file counts only
        its data (holes are never stored, and a staged file is sparse on the cache disk)."""
        if node.fid in self.staged_attrs:
            try:
                return os.stat(self.staging.path(node.fid)).st_blocks
            except FileNotFoundError:
                pass
        elif "[null," in node.manifest:  # holes: rare, so only such manifests are read
            size = sum(piece.length for piece in pieces(node.extents()) if piece.block is not None)
        return (size + 511) // 512

    def ctime(self, node: Inode) -> int:
        """The later of the last metadata change and the last staged write."""
        return max(node.ctime_ns, self.staged_attrs.get(node.fid, (0, 0, 0))[2])

    def set_times(self, node: Inode, mtime_ns: int) -> None:
        """An explicit utimens on a file with staged content wins over the write time."""
        if node.fid in self.staged_attrs:
            size, _, ctime_ns = self.staged_attrs[node.fid]
            self.staged_attrs[node.fid] = (size, mtime_ns, ctime_ns)

    # --- reading ----------------------------------------------------------------------

    async def read(self, node: Inode, offset: int, size: int) -> bytes:
        if node.fid in self.staged:
            return self.staging.read(node.fid, offset, size)
        file_size = node.size
        if offset >= file_size:
            return b""
        size = min(size, file_size - offset)
        layout = self._layout(node)
        index = bisect.bisect_right(layout.starts, offset) - 1
        # Kernel readahead sends several reads at once and they are served concurrently,
        # so "sequential" means near where the last read ended, not exactly there.
        last_end = self._read_end.get(node.ino)
        sequential = last_end is not None and abs(offset - last_end) <= SEQUENTIAL_WINDOW
        self._read_end[node.ino] = max(offset + size, last_end or 0) if sequential else offset + size
        if sequential or offset == 0:
            self._prefetch(layout, index + 1)
        parts = []
        end = offset + size
        while offset < end:
            start = layout.starts[index]
            piece = layout.pieces[index]
            take_from, take_to = offset - start, min(piece.length, end - start)
            if piece.block is None:
                parts.append(bytes(take_to - take_from))
            else:
                parts.append(piece.of(await self.fetch_block(piece, node), take_from, take_to))
            offset = start + take_to
            index += 1
        return b"".join(parts)

    def _layout(self, node: Inode) -> Layout:
        layout = self._layouts.get(node.ino)
        if layout is None or layout.version != node.version:
            layout_pieces = pieces(node.extents())
            layout = Layout(node.version, starts(layout_pieces), layout_pieces)
            self._layouts[node.ino] = layout
        return layout

    def _prefetch(self, layout: Layout, index: int) -> None:
        """Start fetching the next blocks a sequential reader will want. Called for every
        kernel read, so blocks already in memory or on their way cost no task."""
        for piece in layout.pieces[index:index + PREFETCH_BLOCKS]:
            if (piece.block is not None and piece.block not in self._in_flight and self._nursery is not None
                    and not self.cache.in_memory(piece.block)):
                self._nursery.start_soon(self._prefetch_one, piece)

    async def _prefetch_one(self, piece: Piece) -> None:
        try:
            await self.fetch_block(piece, None)
        except FusedriveError:
            pass  # the reader that needs it will fetch again and report the error

    async def fetch_block(self, piece: Piece, node: Inode | None) -> bytes:
        """The verified block of a piece; concurrent requests for one block share one download."""
        block_id = piece.block
        data = self.cache.memory_get(block_id)
        if data is not None:
            return data
        check_not_archived(self.replica, block_id, self.volume.url)
        while block_id in self._in_flight:
            await self._in_flight[block_id].wait()
            data = self.cache.memory_get(block_id)
            if data is not None:
                return data
        done = self._in_flight[block_id] = trio.Event()
        try:
            return await self._fetch_within_timeout(block_id, piece.location)
        except FusedriveError as exc:
            if node is not None:
                self._error(f"Cannot read {self.replica.path_of(node.fid) or '(deleted file)'!r} "
                            f"(block {block_id}): {exc}")
            raise
        finally:
            del self._in_flight[block_id]
            done.set()

    async def _fetch_within_timeout(self, block_id: str, location: Location | None) -> bytes:
        """A store that does not answer makes the read fail (EIO) after --io-timeout instead
        of holding the program (and the kernel request) forever; the thread is abandoned."""
        try:
            with trio.fail_after(self.io_timeout), self.health.request():
                return await trio.to_thread.run_sync(self.blocks.fetch, block_id, location,
                                                     limiter=self.download_limiter,
                                                     abandon_on_cancel=True)
        except trio.TooSlowError:
            exc = StoreUnreachable(f"The store did not answer within {self.io_timeout:g} s (--io-timeout).")
            self.health.failed(exc)
            raise exc from None

    # --- writing ----------------------------------------------------------------------

    async def _ensure_staged(self, node: Inode) -> Inode:
        """Bring a committed file's content into staging before its first change; returns
        the file as it is now. The download awaits: another device's save may arrive
        meanwhile (then the newer content is staged instead, or the edit would silently
        undo that save), and a truncate to zero may stage the file first (it wins)."""
        if node.fid in self.staged:
            return node  # the common case, once per kernel write: no query
        lock = self._stage_locks.setdefault(node.fid, trio.Lock())
        async with lock:
            while node.fid not in self.staged:
                node = self.replica.inode(node.ino) or node
                extents = node.extents()
                if not extents:
                    self.staging.truncate(node.fid, node.size)
                    self.staged.add(node.fid)
                    break
                version = node.version
                materialized = await trio.to_thread.run_sync(
                    self.staging.materialize, node.fid, extents, node.size, self.blocks.fetch
                )
                latest = self.replica.inode(node.ino)
                if node.fid in self.staged or (latest is not None and latest.version != version):
                    os.unlink(materialized)
                    continue
                self.staging.adopt(node.fid, materialized, extents, node.size)
                self.staged.add(node.fid)
        self._stage_locks.pop(node.fid, None)
        return self.replica.inode(node.ino) or node

    def _mark_dirty(self, node: Inode, size: int) -> None:
        now = time.time_ns()
        self.staged_attrs[node.fid] = (size, now, now)
        if node.fid not in self.dirty:
            self.dirty_since[node.fid] = now / 1e9
            self.replica.set_dirty(node.fid, True, base=node.version)
            self.dirty.add(node.fid)

    def _check_room(self, nbytes: int) -> None:
        """ENOSPC before the cache disk is completely full (see leaves_reserve)."""
        if not leaves_reserve(self.cache_dir, nbytes):
            raise OSError(errno.ENOSPC, "the cache disk is full")

    async def write(self, node: Inode, offset: int, data: bytes) -> int:
        node = await self._ensure_staged(node)
        self._check_room(len(data))
        self.staging.write(node.fid, offset, data)
        current, _ = self.size_and_mtime(node)
        self._mark_dirty(node, max(current, offset + len(data)))
        return len(data)

    async def truncate(self, node: Inode, size: int) -> None:
        if size == 0 and node.fid not in self.staged:
            self.staged.add(node.fid)
            self.staging.truncate(node.fid, 0)
        else:
            node = await self._ensure_staged(node)
            self.staging.truncate(node.fid, size)
        self._mark_dirty(node, size)

    # --- open handles and uploads -----------------------------------------------------

    def opened(self, fid: str, writing: bool) -> None:
        self.open_handles[fid] += 1
        if writing:
            self.writers[fid] += 1

    def flushed(self, fid: str) -> None:
        """close(): a written file starts uploading in the background."""
        if fid in self.dirty:
            self.queue_upload(fid)

    def released(self, fid: str, writing: bool) -> None:
        self.open_handles[fid] -= 1
        last_handle = self.open_handles[fid] <= 0
        if last_handle:
            del self.open_handles[fid]
        if writing:
            self.writers[fid] -= 1
        last_writer = writing and self.writers[fid] <= 0
        if last_writer:
            del self.writers[fid]
        if fid in self.dirty:
            if last_writer or last_handle:
                crash_point("staged")
                self.queue_upload(fid)  # the last writer (or the last handle) is done: the content uploads now
        elif last_handle:
            self.replica.forget_vanished(fid)  # closed unchanged: another device's delete stands
            if fid in self.staged and fid not in self._uploading:
                self._discard_staged(fid, keep_as=self._keep_on_close.get(fid))

    def _keeps_whole(self, size: int) -> bool:
        """Files of an average block or more are kept whole in the cache once uploaded;
        a smaller file's one block goes into the block cache as it uploads."""
        return size >= self.volume.chunking["avg"]

    def _discard_staged(self, fid: str, keep_as: list[list] | None = None) -> None:
        """Drop a file's staged copy; `keep_as`: the manifest it was uploaded as, to keep
        it whole in the cache instead."""
        self._sync_requested.discard(fid)
        self._keep_on_close.pop(fid, None)
        if keep_as is not None:  # no await until remove() closes its descriptor: nothing writes to it moved
            self.cache.keep(self.staging.path(fid), keep_as)  # moves it away, or leaves it to be removed
        self.staging.remove(fid)
        self.staged.discard(fid)
        self.staged_attrs.pop(fid, None)
        if fid in self.dirty:
            self.dirty.discard(fid)
            self.dirty_since.pop(fid, None)
            self.replica.set_dirty(fid, False)
            self.changed.fire()

    def forget_unlinked(self, node: Inode) -> None:
        """The kernel let go of a file that has no name left: drop its content. The row
        itself goes once no queued operation could bring the name back (see reap_orphans)."""
        if self.lookups[node.ino] <= 0 and self.open_handles[node.fid] <= 0 and node.nlink <= 0:
            if node.fid in self.dirty:
                return  # unsaved content: the upload brings it back or puts it in the trash
            self._discard_staged(node.fid)
            self._layouts.pop(node.ino, None)
            if not self.replica.pending_count():
                self.replica.forget_inode(node.ino)

    def queue_upload(self, fid: str) -> None:
        if fid not in self._queued:
            self._queued.add(fid)
            self._upload_send.send_nowait(fid)

    async def _upload_worker(self) -> None:
        delay = 1.0
        async for fid in self._upload_receive:
            self._queued.discard(fid)
            if fid not in self.dirty:
                continue
            if fid in self._uploading:
                self._upload_again.add(fid)  # one upload per file at a time
                continue
            self._uploading.add(fid)
            try:
                if await self._upload(fid):
                    self._upload_went_through(fid)
                delay = 1.0
            except (FusedriveError, OSError, sqlite3.OperationalError) as exc:  # store down, disk full
                self._upload_failed(fid, exc, delay)
                await self.health.backoff(delay)
                delay = min(delay * 2, 30)
                self.queue_upload(fid)
            finally:
                self._uploading.discard(fid)
                if fid in self._upload_again:
                    self._upload_again.discard(fid)
                    self.queue_upload(fid)
            self.changed.fire()

    def _error(self, message: str) -> None:
        """A problem the user should see in `fusedrive status` (the last 20 are kept)."""
        log.error(message)
        if self.errors and self.errors[-1].endswith(message):
            return  # the same problem again (a retry): said once
        self.errors.append(f"{time.strftime('%H:%M:%S')} {message}")

    def _upload_failed(self, fid: str, exc: Exception, retry_in: float) -> None:
        """Say so once per file (not per retry), and mark the store offline if it is."""
        self.upload_error = str(exc)
        self.upload_failures += 1
        log.warning("upload of %s failed, retrying in %.0f s: %s", fid, retry_in, exc)
        if isinstance(exc, StoreUnreachable):
            self.health.failed(exc)
        if fid not in self._failing_uploads:
            self._failing_uploads.add(fid)
            path = self.replica.path_of(fid) or f"a deleted file ({fid}, for its trash entry)"
            self._error(f"Upload of {path} failed, retrying: {exc}")
            self.events.publish("upload-failed", path=path, error=str(exc))

    def _upload_went_through(self, fid: str) -> None:
        self.upload_error = None
        self.health.succeeded()
        if fid in self._failing_uploads:
            self._failing_uploads.discard(fid)
            if not self._failing_uploads:
                self.events.publish("upload-recovered")

    async def _upload(self, fid: str) -> bool:
        """Upload a closed file's staged content and queue its update; True if it did.

        Not while a program still has the file open for writing (unless fsync or sync asks):
        what is staged then may be a save half made (open(O_TRUNC) has emptied the file, the
        write has not come yet), and uploading it could lose to another device's save and
        leave the rest of the write to land on that save's bytes."""
        if self.writers[fid] > 0 and fid not in self._sync_requested:
            return False  # released() queues it when the last writer closes
        ino = self.replica.ino_of(fid)
        node = self.replica.inode(ino) if ino is not None else None
        if node is None or node.nlink <= 0 and not self._keeps_nameless(fid):
            if self.open_handles[fid] <= 0:
                log.warning("the unsaved content of %s is dropped: the file has no name, no trash entry", fid)
                self._discard_staged(fid)  # the trash was emptied meanwhile: nothing to keep
            return False
        generation = self.staging.generation.get(fid)
        patchable = self.staging.patchable(fid)
        size, mtime_ns = self.size_and_mtime(node)
        try:
            # Our own descriptor: the staging one may be closed (file deleted) while we read.
            fd = os.open(self.staging.path(fid), os.O_RDONLY)
        except FileNotFoundError:
            if self.open_handles[fid] <= 0:  # nothing left to upload: do not keep asking
                self._error(f"The unsaved content of {self.replica.path_of(fid)} is gone from the cache dir.")
                self._discard_staged(fid)
            return False
        try:
            keep = self._keeps_whole(size)
            # an fsync (or a sync) waiting for this file alone: its pack need not wait for others
            urgent = self._sync_requested == {fid}
            async with nullcontext() if is_small(size, self.volume.chunking) else self._large_uploads:
                manifest = await trio.to_thread.run_sync(
                    build_manifest, fd, size, self.volume.chunking, self.blocks, self.pool, not keep, patchable,
                    urgent, limiter=self._upload_threads,
                )
        except StagingChanged:
            if self.staging.generation.get(fid) == generation:
                self._trust_staged_size(fid, os.fstat(fd).st_size, size)
            return False  # truncated meanwhile: the next close uploads again
        finally:
            os.close(fd)
        if self.staging.generation.get(fid) != generation:
            return False  # written again meanwhile: the next close uploads the newer content
        crash_point("blocks-stored")
        node = self.replica.inode(ino)
        if node is None:
            return False
        size, mtime_ns = self.size_and_mtime(node)
        base = self.replica.dirty_base(fid)
        update = {"op": "update", "fid": fid, "base": node.version if base is None else base, "manifest": manifest,
                  "size": size, "mtime_ns": mtime_ns, "t": time.time_ns(), "device": self.device}
        conflicts = Revalidator(self.device)
        with self.replica:
            revival = self._revival(node)
            if revival:
                ops = [*revival, dict(update, base=0)]
            elif node.nlink <= 0:
                if not self.replica.in_trash(fid):
                    return False
                ops = [dict(update, trash=True)]
            else:  # another device's save may have arrived since this edit began: the conflict rule
                ops = conflicts(self.replica, update)
            self.replica.record(*ops)
            self.replica.set_dirty(fid, False)
        if ops != [update]:  # it came back, or went to a conflicted copy: the kernel's view of it changed
            self._tell_kernel([*ops, update])
        for conflict in conflicts.conflicts:
            self._publish_conflict(conflict, self.device)
        self.dirty.discard(fid)
        self.dirty_since.pop(fid, None)
        self.staged_attrs.pop(fid, None)
        self._sync_requested.discard(fid)
        uploaded_as_itself = any(op["op"] == "update" and op["fid"] == fid for op in ops)
        if not uploaded_as_itself:
            # Gone to a conflicted copy: the file holds the other device's save now, so what
            # is staged is not its content (a handle still open reads and writes that save).
            self._discard_staged(fid)
        elif self.open_handles[fid] <= 0:
            self._discard_staged(fid, keep_as=manifest if keep else None)
        else:
            self.staging.uploaded(fid, manifest, size)  # still open: the next upload patches this one
            if keep:
                self._keep_on_close[fid] = manifest
        return True

    def _trust_staged_size(self, fid: str, staged: int, recorded: int) -> None:
        """Nothing raced, yet the staged file is shorter than the size recorded for it (seen
        in hour-long soaks, cause not found yet): the staged bytes are all there is, so
        they upload as they are, and the user is told. Retrying the recorded size would leave
        the file unsynced forever."""
        self._error(f"The staged content of {self.replica.path_of(fid)} is {staged} bytes, not the {recorded} "
                    "recorded for it; uploading what is staged.")
        _, mtime_ns, ctime_ns = self.staged_attrs.get(fid, (0, time.time_ns(), time.time_ns()))
        self.staged_attrs[fid] = (staged, mtime_ns, ctime_ns)
        self._tell_kernel([{"op": "update", "fid": fid}])
        self.queue_upload(fid)

    def _keeps_nameless(self, fid: str) -> bool:
        """A file with no name left still uploads its last save: back where it was if
        another device deleted it while it was written here, else into its trash entry."""
        return bool(self.replica.vanished_locations(fid)) or self.replica.in_trash(fid)

    def record_user_ops(self, ops: list[dict]) -> None:
        """Commit operations a command made (restores, emptying the trash) as if the user
        made them in the mount: the kernel forgets what it cached of those files. A caller
        restoring a file waits for its unsaved content first (wait_uploaded), since the
        ops are based on the version it saw."""
        self.replica.record(*ops)
        for op in ops:
            if op["op"] == "update" and op["fid"] in self.staged and op["fid"] not in self.dirty \
                    and op["fid"] not in self._uploading:
                self._discard_staged(op["fid"])
        self._tell_kernel(ops)

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

    # --- durability -------------------------------------------------------------------

    async def wait_uploaded(self, fids: set[str] | None = None) -> None:
        """Wait until the given (default: all) staged files are uploaded and recorded; raises
        if an upload attempt fails meanwhile (not for an error from before the call: the
        store may be back)."""
        failures = self.upload_failures
        self.health.retry_now()
        while True:
            waiting = self.dirty if fids is None else self.dirty & fids
            if not waiting:
                return
            if self.upload_failures != failures:
                raise FusedriveError(self.upload_error)
            self._sync_requested |= waiting
            for fid in waiting:
                self.queue_upload(fid)
            await self.changed.wait()

    async def fsync(self, fid: str) -> None:
        """Return once this file's blocks and its journal commit are in the store."""
        await self.wait_uploaded({fid})
        await self.committer.wait_committed(self.replica.last_pending_id())

    def has_unsaved_work(self) -> bool:
        return bool(self.dirty) or self.replica.pending_count() > 0

    async def sync_all(self) -> None:
        await self.wait_uploaded()
        await self.committer.wait_committed(self.replica.last_pending_id())

    def status(self) -> dict:
        """Everything `fusedrive status` shows (times are Unix seconds)."""
        waiting_since = [self.dirty_since[fid] for fid in self.dirty if fid in self.dirty_since]
        store_down_since, store_error = self.health.state()
        oldest_op = self.replica.oldest_pending_time()
        if oldest_op is not None:
            waiting_since.append(oldest_op)
        return {
            "volume": self.volume.url,
            "device": self.device,
            "files_waiting": len(self.dirty),
            "bytes_waiting": sum(self.staged_attrs.get(fid, (0, 0, 0))[0] for fid in self.dirty),
            "ops_waiting": self.replica.pending_count(),
            "waiting_since": min(waiting_since, default=None),
            "store_offline_since": store_down_since,
            "store_error": store_error,
            "hub": None if self.hub is None else ("connected" if self.hub_connected else "polling"),
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
            "errors": list(self.errors),
        }
