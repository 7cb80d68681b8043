"""`Mirror`: the front end that keeps a local folder equal to the volume.

Both sides name the paths that changed — the folder's watcher (`local_changed`,
`local_moved`) and the engine (`invalidate`, as `Changes.front_end`) — and one task
(`run`) reconciles each named path by the rules (rules.py): it pushes the folder's
change into the engine (which uploads and commits it as a mount's would) or pulls the
volume's into the folder (a temporary file in the same folder, renamed into place), and
records what both sides now agree on (synced.py). A local change is taken once its path
has been quiet for QUIET_SECONDS, or at once when the program writing it closed it; a
copy that changes while it is taken is dropped and taken again, so a half-written file
never uploads. Renames on either side are renames on the other, not a delete and a new
copy. The mirror's own writes show up in the watcher too; their paths then agree with
their rows, so nothing is echoed back.

All of it runs in the trio thread; file copies and local writes run in worker threads.
At each await another path's change may arrive: before anything is replaced, the side
that was decided on is looked at again (see docs/concurrency.md).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import uuid

import trio

from ..engine.drive import Drive
from ..engine.tree import ROOT_INO, Inode, name_from_json, name_to_json
from ..errors import FusedriveError
from .folder import (COARSE_TICK_NS, IGNORE_FILE, TEMP_PREFIX, TICK_NS, IgnoreRules, LocalEntry, copy_if_settled,
                     finish_download, look, names_in, swap_in, temporary_beside, written_within_a_tick)
from .rules import Action, Merge, RemoteEntry, decide, local_unchanged, merge
from .synced import Synced, SyncedState, join, name_of, parent_of

log = logging.getLogger(__name__)

Views = tuple[LocalEntry | None, Synced | None, Inode | None, RemoteEntry | None]

QUIET_SECONDS = 0.5  # a local change is taken once its path has had no event for this long
RETRY_SECONDS = 5.0  # a path whose transfer failed (the store is away) is tried again after this
READ_CHUNK = 1 << 20
YIELD_EVERY = 256  # paths reconciled between two checkpoints of a long scan
PARALLEL_DOWNLOADS = 8  # files of one folder fetched side by side (each file's blocks: the reader's own limit)
CATCH_UP_SECONDS = 5.0  # the watcher has this long to bring the events of changes made before a sync


class Mirror:
    """Owns the queue of changed paths; the engine owns the volume's side, SyncedState
    what both agreed on, the folder its own side."""

    def __init__(self, drive: Drive, folder: str, state: SyncedState) -> None:
        self.drive = drive
        self.root = os.fsencode(folder)
        self.state = state
        self.namespace = drive.namespace
        self.ignore = IgnoreRules(self.root)
        self.failing: set[bytes] = set()  # paths whose last transfer failed: tried again later
        self.not_uploaded: set[bytes] = set()  # paths changed in the folder of a mirror that may not write
        self.scanned = 0  # paths looked at by the scan in progress (the first sync's progress)
        self.scanning = True
        self._due: dict[bytes, float] = {}  # path → when it is to be reconciled (trio's clock)
        self._moves: list[tuple[bytes, bytes]] = []
        self._rescan = True  # the first pass looks at everything: changes made while not running
        self._wake = trio.Event()
        self._lock = trio.Lock()  # one pass at a time (the task, or a `sync` settling what waits)
        self._since_yield = 0
        self._barriers: dict[bytes, trio.Event] = {}  # marker files whose event the watcher has yet to bring

    # --- what the two sides say changed (trio thread, no await) -----------------------------

    def local_changed(self, path: bytes, closed: bool = False) -> None:
        """The watcher saw `path` change; `closed`: its writer closed it, so it is complete."""
        if path in self._barriers:
            self._barriers.pop(path).set()
            return
        self._due[path] = trio.current_time() + (0 if closed else QUIET_SECONDS)
        self._wake.set()

    def local_moved(self, source: bytes, destination: bytes) -> None:
        self._moves.append((source, destination))
        self._wake.set()

    def events_lost(self) -> None:
        """The watcher's queue overflowed: only a scan knows what changed."""
        self._rescan = True
        self._wake.set()

    def invalidate(self, inodes: set[int], names: set[tuple[int, bytes]]) -> None:
        """The engine applied changes (another device's, a rebase, a restore): their paths
        are reconciled now, unless a local change of theirs is still settling."""
        now = trio.current_time()
        paths = {self._path_of(ino) for ino in inodes}
        for parent, name in names:
            parent_path = self._path_of(parent)
            if parent_path is not None:
                paths.add(join(parent_path, name))
        for path in paths - {None}:
            self._due.setdefault(path, now)
        self._wake.set()

    def waiting(self) -> int:
        """Changes noticed and not reconciled yet (status counts them as pending)."""
        return len(self._due) + len(self._moves) + (1 if self._rescan or self.scanning else 0)

    # --- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wait_for_work()
            async with self._lock:
                await self._pass(everything=False)

    async def settle(self) -> None:
        """Reconcile every change made in the folder before this call, without waiting for
        it to be quiet (before `sync` uploads, and before the mirror stops). A path that
        fails stays queued."""
        await self._catch_up()
        async with self._lock:
            await self._pass(everything=True)
            # what was put off to the end of its clock tick, or changed while it was copied
            deadline = trio.current_time() + COARSE_TICK_NS / 1e9
            while self._due and (soonest := min(self._due.values())) <= deadline:
                await trio.sleep_until(soonest)
                await self._pass(everything=False)

    async def _catch_up(self) -> None:
        """Wait until the watcher has brought every event of changes made so far: a file
        closed just before `sync` was asked must be part of it. The watcher's events come
        in order, so once a marker file made now is heard of, everything before it was."""
        marker = TEMP_PREFIX + b"barrier-" + uuid.uuid4().hex.encode()
        heard = self._barriers[marker] = trio.Event()
        full = self._full(marker)
        try:
            os.close(os.open(full, os.O_CREAT | os.O_WRONLY, 0o600))
            with trio.move_on_after(CATCH_UP_SECONDS):
                await heard.wait()
        finally:
            self._barriers.pop(marker, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)

    async def _wait_for_work(self) -> None:
        while not (self._rescan or self._moves):
            if self._due:
                delay = min(self._due.values()) - trio.current_time()
                if delay <= 0:
                    return
                with trio.move_on_after(delay):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = trio.Event()

    async def _pass(self, everything: bool) -> None:
        if self._rescan:
            self._rescan = False
            self.ignore.reload()
            self.scanning, self.scanned = True, 0
            for source, destination in await self._moves_while_away():
                await self._local_move(source, destination)
            await self._reconcile(b"", deep=True)
            self.scanning = False
        moves, self._moves = self._moves, []
        for source, destination in moves:
            await self._local_move(source, destination)
        now = trio.current_time()
        ready = sorted(path for path, when in self._due.items() if everything or when <= now)
        for path in ready:
            self._due.pop(path, None)
        if IGNORE_FILE.encode() in ready and self.ignore.reload():
            self._rescan = True
        for path in ready:  # sorted: a folder before what is in it
            await self._reconcile(path)

    # --- reconciling one path ---------------------------------------------------------------

    async def _reconcile(self, path: bytes, deep: bool = False, views: Views | None = None) -> None:
        """Make `path` agree on both sides; `deep`: everything under it too. `views`: the
        path's three views, when the caller just read them (no await since)."""
        self._since_yield += 1
        self.scanned += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await trio.sleep(0)
        if not path:
            await self._children(path)
            return
        local, synced, node, remote = views or self._views(path)
        if node is not None and remote is None:
            return  # a device node or FIFO made in a mount: not something a folder mirrors
        kind = (local or remote or synced).kind if (local or remote or synced) else None
        if self.ignore.ignored(path, kind == "dir"):
            return
        try:
            action = decide(local, synced, remote)
            if action is Action.NOTHING:
                self.failing.discard(path)
                if deep and local is not None and local.kind == "dir":
                    await self._children(path)
                return
            log.debug("%s: %s (folder %s, agreed %s, volume %s)", self._shown(path), action.value, local, synced,
                      remote)
            if action is Action.PULL:
                await self._pull(path, local, node, remote, synced)
            elif action is Action.PUSH:
                await self._push(path, local, synced, node, remote)
            else:
                await self._merge(path, local, node, remote)
            self.failing.discard(path)
        except (OSError, FusedriveError, trio.TooSlowError) as exc:
            self._failed(path, exc)

    def _failed(self, path: bytes, exc: BaseException) -> None:
        if path not in self.failing:
            log.warning("cannot sync %s yet (tried again in %.0f s): %s", self._shown(path), RETRY_SECONDS, exc)
        self.failing.add(path)
        self._due[path] = trio.current_time() + RETRY_SECONDS

    async def _children(self, path: bytes) -> None:
        names = set(names_in(self.root, path)) | set(self.state.children(path))
        node, remote = self._remote(path)
        if remote is not None and remote.kind == "dir":
            names |= {name for name, _ in self.drive.tree.children(node.ino)}
        downloads = []
        for name in sorted(names):
            child = join(path, name)
            views = self._views(child)
            if self._is_download(child, views):
                downloads.append(child)  # reconciled later, from views read again then
            else:
                await self._reconcile(child, deep=True, views=views)
        if downloads:  # the volume's new or changed files: several at a time (a first sync is mostly these)
            limiter = trio.CapacityLimiter(PARALLEL_DOWNLOADS)

            async def fetch(child: bytes) -> None:
                async with limiter:
                    await self._reconcile(child)

            async with trio.open_nursery() as nursery:
                for child in downloads:
                    nursery.start_soon(fetch, child)

    def _is_download(self, path: bytes, views: Views) -> bool:
        """Whether reconciling `path` now means fetching the volume's file into the folder:
        such paths are independent of each other, so they may be fetched side by side."""
        local, synced, _, remote = views
        return remote is not None and remote.kind == "file" and (local is None or local.kind == "file") and \
            decide(local, synced, remote) is Action.PULL and not self.ignore.ignored(path)

    # --- the volume's side wins ----------------------------------------------------------------

    async def _pull(self, path: bytes, local: LocalEntry | None, node: Inode | None,
                    remote: RemoteEntry | None, synced: Synced | None = None) -> None:
        """`synced`: what was agreed, when the local side still holds it."""
        full = self._full(path)
        if remote is None:
            if local is not None and synced is not None and self._moved_away(path, synced):
                return
            if local is not None:
                await self._remove_local(path, local)
            else:
                self.state.forget(path)
            return
        if local is not None and local.kind != remote.kind:
            if not await self._remove_local(path, local):
                return  # a folder with new things in it stays: they are pushed as it is
            local = None
        if local is None and self._moved_here(path, remote):
            return  # and reconciled again: its content or permissions may have changed too
        if remote.kind == "dir":
            if local is None:
                os.makedirs(full, mode=0o700)  # opened to its mode just below, never wider first
            os.chmod(full, remote.mode)
            self._agree(path, remote)
            await self._children(path)
        elif remote.kind == "link":
            temporary = self._temporary_for(path)
            os.symlink(remote.target, temporary)
            self._replace(path, temporary, local, remote)
        elif local is not None and synced is not None and (remote.size, remote.mtime_ns) == \
                (synced.size, synced.mtime_ns):
            os.chmod(full, remote.mode)  # only its permissions changed
            self._agree(path, remote)
        else:
            await self._download(path, node, local, remote)

    async def _download(self, path: bytes, node: Inode, local: LocalEntry | None, remote: RemoteEntry) -> None:
        temporary = self._temporary_for(path)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        complete = True
        try:
            for start, length in self.drive.data_ranges(node):  # holes stay holes: never written
                offset, end = start, min(start + length, remote.size)
                while offset < end:
                    data = await self.drive.read(node, offset, min(READ_CHUNK, end - offset))
                    if not data:
                        complete = False
                        break
                    await trio.to_thread.run_sync(os.pwrite, fd, data, offset)
                    offset += len(data)
            os.ftruncate(fd, remote.size)
        except BaseException:
            os.close(fd)
            os.unlink(temporary)
            raise
        os.close(fd)
        if self._remote(path)[1] != remote or not complete:
            os.unlink(temporary)  # it changed while it came: fetched again
            self._due[path] = trio.current_time()
            return
        finish_download(temporary, remote.mode, remote.mtime_ns)
        self._replace(path, temporary, local, remote)

    def _replace(self, path: bytes, temporary: bytes, local: LocalEntry | None, remote: RemoteEntry) -> None:
        """Put what was pulled in place, unless the local side changed while it came: then
        it is left alone and the path reconciled again (a merge now)."""
        if look(self.root, path) != local:
            os.unlink(temporary)
        elif swap_in(temporary, self._full(path), local):  # (drops the download itself if not)
            self._agree(path, remote)
            return
        self._due[path] = trio.current_time()

    def _moved_here(self, path: bytes, remote: RemoteEntry) -> bool:
        """Another device renamed what this folder holds elsewhere: rename it here too
        instead of fetching it again. True if it was."""
        for old in self.state.paths_of(remote.fid):
            synced, local = self.state.get(old), look(self.root, old)
            still_there = self._remote(old)[1]
            if old == path or synced is None or local is None or synced.kind != remote.kind or \
                    (still_there is not None and still_there.fid == remote.fid) or \
                    not local_unchanged(local, synced):
                continue
            self._rename_locally(old, path)
            return True
        return False

    def _moved_away(self, path: bytes, synced: Synced) -> bool:
        """Another device renamed what this folder holds at `path` (the rename's old name is
        reconciled first): rename it here too. True if it was."""
        now_at = self._path_of_fid(synced.fid)
        if now_at is None or now_at == path or look(self.root, now_at) is not None or \
                self.ignore.ignored(now_at, synced.kind == "dir"):
            return False
        remote = self._remote(now_at)[1]
        if remote is None or remote.kind != synced.kind:
            return False
        self._rename_locally(path, now_at)
        return True

    def _rename_locally(self, old: bytes, new: bytes) -> None:
        """Rename in the folder what another device renamed, and its agreed rows with it;
        `new` is reconciled again, since its content or mode may have changed too."""
        os.makedirs(os.path.dirname(self._full(new)), exist_ok=True)
        os.rename(self._full(old), self._full(new))
        self.state.move(old, new)
        self._due[new] = trio.current_time()

    async def _remove_local(self, path: bytes, local: LocalEntry) -> bool:
        """The volume deleted it: so does the folder. A folder goes once what is in it has
        been reconciled: something changed here stays and goes back to the volume (as a
        change beats a delete), and so does the folder then. True if it is gone."""
        full = self._full(path)
        if local.kind != "dir":
            os.unlink(full)
            self.state.forget(path)
            return True
        await self._children(path)
        leftovers = names_in(self.root, path)
        if leftovers and all(self.ignore.ignored(join(path, name)) for name in leftovers):
            for name in leftovers:  # editor swap files and the like of a deleted folder
                inner = os.path.join(full, name)
                shutil.rmtree(inner) if os.path.isdir(inner) and not os.path.islink(inner) else os.unlink(inner)
        try:
            os.rmdir(full)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False
        self.state.forget(path)
        return True

    # --- the folder's side wins ---------------------------------------------------------------

    async def _push(self, path: bytes, local: LocalEntry | None, synced: Synced | None, node: Inode | None,
                    remote: RemoteEntry | None) -> None:
        refused = self.drive.write_refusal()
        if refused is not None:  # a reader's mirror (engine/membership.py): the folder's changes stay in it
            if path not in self.not_uploaded:
                self.not_uploaded.add(path)
                log.warning("not uploading %s: %s", self._shown(path), refused)
            return
        if local is None:
            if remote is not None:
                await self._remove_remote(path, remote)
            else:
                self.state.forget(path)
            return
        if remote is not None and (remote.kind != local.kind or local.kind == "link"):
            if not await self._remove_remote(path, remote):
                return
            node, remote, synced = None, None, None
        if local.kind == "dir":
            if node is None:
                self._remote_directory(path)  # (records what both now agree on)
            else:
                if remote.mode != local.mode:
                    self.namespace.set_attributes(node, mode=local.mode)
                self.state.put(path, Synced.of(local, node.fid))
            await self._children(path)
        elif local.kind == "link":
            parent, name = self._remote_parent(path)
            ino = self.namespace.create(parent, name, stat.S_IFLNK | 0o777, os.getuid(), os.getgid(),
                                        target=local.target)
            self.state.put(path, Synced.of(local, self.drive.tree.inode(ino).fid))
        elif synced is None or node is None or (local.size, local.mtime_ns, local.ino) != \
                (synced.size, synced.mtime_ns, synced.ino):
            await self._upload(path, local, remote)
        else:  # only its permissions changed
            self.namespace.set_attributes(node, mode=local.mode)
            self.state.put(path, Synced.of(local, node.fid))

    async def _upload(self, path: bytes, local: LocalEntry, remote: RemoteEntry | None) -> None:
        if written_within_a_tick(local):
            self._after_its_tick(path)
            return
        prepared = self.drive.prepared_path()
        taken = await trio.to_thread.run_sync(copy_if_settled, self._full(path), prepared, local)
        if taken is None:
            self.local_changed(path)  # being written: taken once it settles
            return
        # No await from here on: the engine records the new content as based on the
        # version the volume has now, which is the one the rules looked at.
        node, remote_now = self._remote(path)
        if remote_now != remote:
            prepared.unlink(missing_ok=True)
            self._due[path] = trio.current_time()
            return
        if node is None:
            parent, name = self._remote_parent(path)
            node = self.drive.tree.inode(self.namespace.create(parent, name, stat.S_IFREG | local.mode,
                                                                  os.getuid(), os.getgid()))
        elif remote.mode != local.mode:
            self.namespace.set_attributes(node, mode=local.mode)
        self.drive.take_content(node, prepared, local.mtime_ns)
        self.state.put(path, Synced.of(local, node.fid))

    async def _remove_remote(self, path: bytes, remote: RemoteEntry) -> bool:
        """The folder deleted it: so does the volume (to its trash). In a folder, what
        another device added or changed meanwhile comes back here instead (a change beats
        a delete), and so does the folder. True if it is gone."""
        if remote.kind == "dir":
            await self._children(path)
        parent, name = self._remote_parent(path)
        try:
            self.namespace.remove(parent, name, want_dir=remote.kind == "dir")
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self.state.forget(path)
                return True
            if exc.errno != errno.ENOTEMPTY:
                raise
            local = look(self.root, path)
            if local is not None and local.kind == "dir":
                self.state.put(path, Synced.of(local, remote.fid))
            return False
        self.state.forget(path)
        return True

    # --- both sides changed -----------------------------------------------------------------------

    async def _merge(self, path: bytes, local: LocalEntry | None, node: Inode | None,
                     remote: RemoteEntry | None) -> None:
        if local is not None and written_within_a_tick(local):
            self._after_its_tick(path)  # its content is compared, or kept apart and pushed
            return
        same = local is not None and remote is not None and local.kind == remote.kind == "file" and \
            local.size == remote.size and await self._same_content(path, node, local)
        outcome = merge(local, remote, same)
        if outcome is Merge.PULL:
            await self._pull(path, local, node, remote)
        elif outcome is Merge.PUSH:
            await self._push(path, local, None, node, remote)
        elif outcome is Merge.CONFLICT:
            await self._keep_local_apart(path)
        elif local is None:
            self.state.forget(path)
        else:  # the same on both sides
            if local.kind == "file" and local.mtime_ns != remote.mtime_ns:
                os.utime(self._full(path), ns=(remote.mtime_ns, remote.mtime_ns), follow_symlinks=False)
            if local.mode != remote.mode and local.kind != "link":
                self.namespace.set_attributes(node, mode=local.mode)
                node, remote = self._remote(path)
            self._agree(path, remote)
            if local.kind == "dir":
                await self._children(path)

    async def _keep_local_apart(self, path: bytes) -> None:
        """Both sides made something different of `path`: the local one becomes a conflicted
        copy beside it (named as a mount names one) and is pushed as new; the volume's is
        pulled under the name."""
        parent, name = self._remote_parent(path)
        parent_fid = self.drive.tree.inode(parent).fid
        copy_name = self.drive.conflicted_copy_name(parent_fid, name_to_json(name))
        copy = join(parent_of(path), name_from_json(copy_name))
        if look(self.root, copy) is not None:
            raise OSError(errno.EEXIST, "the conflicted copy's name is taken; tried again")
        os.rename(self._full(path), self._full(copy))
        self.state.forget(path)
        self.drive.conflict_seen({"parent": parent_fid, "name": name_to_json(name), "copy": copy_name})
        log.info("both sides changed %s: this device's version is kept as %s", self._shown(path), self._shown(copy))
        await self._reconcile(copy, deep=True)
        await self._reconcile(path, deep=True)

    async def _same_content(self, path: bytes, node: Inode, local: LocalEntry) -> bool:
        ours = await trio.to_thread.run_sync(_digest_of_file, self._full(path))
        theirs = hashlib.blake2b()
        offset = 0
        while offset < local.size:
            data = await self.drive.read(node, offset, min(READ_CHUNK, local.size - offset))
            if not data:
                break
            theirs.update(data)
            offset += len(data)
        return ours == theirs.digest()

    # --- renames in the folder ----------------------------------------------------------------

    async def _moves_while_away(self) -> list[tuple[bytes, bytes]]:
        """Renames made in the folder while no watcher saw them (the mirror stopped, its
        events lost): a path nothing was agreed at now holds the inode agreed at a path
        that no longer holds it — the same kind, and for a file the same size and mtime
        (an inode reused by a new file rarely has both). Outermost first: a folder's move
        carries what is in it. `_local_move` checks each again before renaming."""
        agreed = self.state.by_inode()
        if not agreed:
            return []
        found = await trio.to_thread.run_sync(self._walk_for, set(agreed))
        moves = []
        for path, entry in found:
            source, synced = agreed[entry.ino]
            if path == source or self.state.get(path) is not None or synced.kind != entry.kind:
                continue
            if entry.kind == "file" and (entry.size, entry.mtime_ns) != (synced.size, synced.mtime_ns):
                continue
            moves.append((source, path))
        return sorted(moves, key=lambda move: move[1].count(b"/"))

    def _walk_for(self, inodes: set[int]) -> list[tuple[bytes, LocalEntry]]:
        """Every path in the folder (not ignored) whose inode is one of `inodes` (blocking).
        A directory listing says each name's inode: only those are looked at further."""
        found = []
        folders = [b""]
        while folders:
            base = folders.pop()
            try:
                listing = list(os.scandir(os.path.join(self.root, base) if base else self.root))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for item in listing:
                path = join(base, item.name)
                is_dir = item.is_dir(follow_symlinks=False)
                if self.ignore.ignored(path, is_dir):
                    continue
                if is_dir:
                    folders.append(path)
                if item.inode() in inodes and (entry := look(self.root, path)) is not None:
                    found.append((path, entry))
        return found

    async def _local_move(self, source: bytes, destination: bytes) -> None:
        """A rename in the folder is a rename in the volume (its history follows it), when
        the volume still has what was agreed at `source`; otherwise both paths are simply
        reconciled."""
        synced = self.state.get(source)
        node, remote = self._remote(source)
        moved = look(self.root, destination)
        now = trio.current_time()
        if synced is None or remote is None or remote.fid != synced.fid or moved is None or \
                moved.ino != synced.ino or look(self.root, source) is not None or \
                self.ignore.ignored(source, synced.kind == "dir") or \
                self.ignore.ignored(destination, synced.kind == "dir") or \
                not self._renamed_in_volume(source, destination):
            self._due.setdefault(source, now)
            self._due.setdefault(destination, now)
            return
        self.state.move(source, destination)
        self._due.setdefault(destination, now)  # content or mode may have changed too

    def _renamed_in_volume(self, source: bytes, destination: bytes) -> bool:
        """False if the volume has something in the way (then both paths are reconciled:
        a delete and a new file)."""
        try:
            new_parent = self._remote_directory(parent_of(destination))
            old_parent, old_name = self._remote_parent(source)
            self.namespace.rename(old_parent, old_name, new_parent, name_of(destination))
        except OSError:
            return False
        return True

    # --- the volume's side, by path -------------------------------------------------------------

    def _views(self, path: bytes) -> Views:
        """What the folder holds, what both agreed on, and the volume's inode and entry."""
        node, remote = self._remote(path)
        return look(self.root, path), self.state.get(path), node, remote

    def _remote(self, path: bytes) -> tuple[Inode | None, RemoteEntry | None]:
        ino = ROOT_INO
        for part in path.split(b"/") if path else []:
            ino = self.drive.tree.lookup(ino, part)
            if ino is None:
                return None, None
        node = self.drive.tree.inode(ino)
        if node is None:
            return None, None
        if node.is_dir:
            return node, RemoteEntry("dir", node.fid, 0, 0, stat.S_IMODE(node.mode))
        if stat.S_ISLNK(node.mode):
            return node, RemoteEntry("link", node.fid, 0, 0, 0o777, node.target)
        if node.is_reg:
            size, mtime_ns = self.drive.size_and_mtime(node)
            return node, RemoteEntry("file", node.fid, size, mtime_ns, stat.S_IMODE(node.mode))
        return node, None

    def _remote_parent(self, path: bytes) -> tuple[int, bytes]:
        node, _ = self._remote(parent_of(path))
        if node is None or not node.is_dir:
            raise OSError(errno.ENOENT, f"the volume has no folder {self._shown(parent_of(path))} (yet)")
        return node.ino, name_of(path)

    def _remote_directory(self, path: bytes) -> int:
        """The volume's folder at `path`, made (with the folders above it) where missing."""
        if not path:
            return ROOT_INO
        node, _ = self._remote(path)
        if node is not None:
            if not node.is_dir:
                raise OSError(errno.ENOTDIR, f"{self._shown(path)} is not a folder in the volume")
            return node.ino
        parent = self._remote_directory(parent_of(path))
        local = look(self.root, path)
        mode = local.mode if local is not None and local.kind == "dir" else 0o755
        ino = self.namespace.create(parent, name_of(path), stat.S_IFDIR | mode, os.getuid(), os.getgid())
        if local is not None and local.kind == "dir":
            self.state.put(path, Synced.of(local, self.drive.tree.inode(ino).fid))
        return ino

    def _path_of(self, ino: int) -> bytes | None:
        node = self.drive.tree.inode(ino)
        return None if node is None else self._path_of_fid(node.fid)

    def _path_of_fid(self, fid: str) -> bytes | None:
        shown = self.drive.tree.path_of(fid)
        return None if shown is None else name_from_json(shown)[1:]

    # --- small helpers ----------------------------------------------------------------------------

    def _agree(self, path: bytes, remote: RemoteEntry) -> None:
        """Both sides hold `remote` at `path` now: remember it with the local inode."""
        local = look(self.root, path)
        self.state.put(path, Synced.of(local, remote.fid))

    def _after_its_tick(self, path: bytes) -> None:
        """The file was written in the clock's current tick: reconciled again once the tick
        is over, so that what is recorded for it is not a look-alike of a later write."""
        self._due[path] = trio.current_time() + TICK_NS / 1e9

    def _temporary_for(self, path: bytes) -> bytes:
        """A new temporary name beside `path` (its folder made if missing)."""
        full = self._full(path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return temporary_beside(full, uuid.uuid4().hex)

    def _full(self, path: bytes) -> bytes:
        return os.path.join(self.root, path)

    def _shown(self, path: bytes) -> str:
        return os.fsdecode(self._full(path))

    def status(self) -> dict:
        return {"folder": os.fsdecode(self.root), "folder_changes_waiting": self.waiting(),
                "folder_changes_not_uploaded": len(self.not_uploaded),
                "folder_paths_failing": len(self.failing), "first_scan_done": not self.scanning,
                "scanned": self.scanned, "volume_entries": self.drive.tree.stats()["inodes"]}


def _digest_of_file(path: bytes) -> bytes:
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.digest()

