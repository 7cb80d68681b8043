"""Every file's local life on this device, in one place.

A file may be *staged* (its content is a file in the staging dir: it is being written, or
was written and not uploaded yet), *unsaved* (staged content the journal does not have:
the `dirty` set, mirrored in the replica's `dirty` table so a crash does not forget it),
*open* (handles, some of them for writing) and *referenced* by the front end (the kernel's
lookups). Uploads, writes, the follower and the front end change these only through the
transitions below; `check_invariants()` says whether they still agree (every mounted
test's teardown asks). The states and transitions are drawn in docs/concurrency.md.
"""

from __future__ import annotations

import os
import time
from collections import Counter

from ..signals import Broadcast
from .cache import BlockCache
from .manifest import data_ranges, pieces
from .replica import Replica
from .tree import Inode
from .staging import Staging

Attrs = tuple[int, int, int]  # size, mtime_ns, ctime_ns of staged content


class LocalFiles:
    """One owner for every per-file field; all of it runs in the trio thread."""

    def __init__(self, replica: Replica, staging: Staging, cache: BlockCache) -> None:
        self.replica = replica
        self.staging = staging
        self.cache = cache
        self.lookups: Counter[int] = Counter()  # the front end's references to inodes (kernel lookups)
        self.open_handles: Counter[str] = Counter()
        self.writers: Counter[str] = Counter()  # handles open for writing, per file
        self.staged: set[str] = {p.name for p in staging.directory.iterdir() if "." not in p.name}
        self.attrs: dict[str, Attrs] = {}  # only for files with staged content that was written
        self.unsaved: set[str] = set()
        self.unsaved_since: dict[str, float] = {}  # fid → when its unsaved content was first written
        self.sync_requested: set[str] = set()  # files fsync or sync wants uploaded though a writer is open
        self.keep_on_close: dict[str, list[list]] = {}  # uploaded while open: kept whole once closed
        self.changed = Broadcast()  # fired whenever a file stops being unsaved (sync waits on it)
        # fid → (first, last): its versions first..last came from this device's own saves in
        # a row of what its front end wrote (`same_content`)
        self.saved_here: dict[str, tuple[int, int]] = {}

    # --- questions ----------------------------------------------------------------------

    def in_use(self, ino: int) -> bool:
        """Whether the replica must keep a nameless inode's row (see Replica.reap_orphans)."""
        node_fid = self.replica.db.execute("SELECT fid FROM inodes WHERE ino=?", (ino,)).fetchone()
        if node_fid is None:
            return self.lookups[ino] > 0
        fid = node_fid[0]
        # unsaved local content keeps a file's row even when another device deletes it
        return self.lookups[ino] > 0 or self.open_handles[fid] > 0 or fid in self.unsaved

    def size_and_mtime(self, node: Inode) -> tuple[int, int]:
        size, mtime_ns, _ctime_ns = self.attrs.get(node.fid, (node.size, node.mtime_ns, 0))
        return size, mtime_ns

    def ctime(self, node: Inode) -> int:
        """The later of the last metadata change and the last staged write."""
        return max(node.ctime_ns, self.attrs.get(node.fid, (0, 0, 0))[2])

    def data_ranges(self, node: Inode) -> list[tuple[int, int]]:
        """Where the file has data, holes left out (a copy leaves them unwritten, as `cp
        --sparse` does); all of it while its content is staged here."""
        size, _ = self.size_and_mtime(node)
        if node.fid in self.attrs:
            return [(0, size)] if size else []
        return data_ranges(node.extents(), size)

    def stored_blocks(self, node: Inode, size: int) -> int:
        """st_blocks: the 512-byte units really stored, so `du` of a sparse file counts only
        its data (holes are never stored, and a staged file is sparse on the cache disk)."""
        if node.fid in self.attrs:
            try:
                staged = os.stat(self.staging.path(node.fid)).st_blocks
            except FileNotFoundError:
                pass
            else:
                partial = self.staging.partial(node.fid)
                if partial is None:
                    return staged
                # what it holds, and its base's data (some of which those bytes replace)
                base = sum(length for _, length in data_ranges(partial.base, partial.base_size))
                return min(staged + (base + 511) // 512, (size + 511) // 512)
        elif "[null," in node.manifest:  # holes: rare, so only such manifests are read
            size = sum(piece.length for piece in pieces(node.extents()) if piece.block is not None)
        return (size + 511) // 512

    def same_content(self, fid: str, seen: int, now: int) -> bool:
        """Whether a front end that saw version `seen` of a file has the content of version
        `now`: the same version, or only this device's saves of what it wrote since (the
        kernel's pages of a file written here need not be dropped once it is uploaded)."""
        first, last = self.saved_here.get(fid, (now + 1, now))
        return seen == now or last == now and first <= seen <= last

    def unsaved_bytes(self) -> int:
        return sum(self.attrs.get(fid, (0, 0, 0))[0] for fid in self.unsaved)

    # --- transitions ----------------------------------------------------------------------

    def recover(self) -> None:
        """At start: files whose closed content is staged and not uploaded (the replica's
        dirty table) are unsaved again; other staged copies are stale (nothing is open)."""
        for fid in self.replica.dirty_fids():
            if fid in self.staged:
                st = os.stat(self.staging.path(fid))
                self.attrs[fid] = (st.st_size, st.st_mtime_ns, st.st_mtime_ns)
                self.staging.bump(fid)  # a generation, so an upload sees the copy change or go
                self.unsaved.add(fid)
                self.unsaved_since[fid] = st.st_mtime
            else:
                self.replica.set_dirty(fid, False)
        for fid in self.staged - self.unsaved:
            self.discard(fid)

    def staged_now(self, fid: str) -> None:
        """Its content is in staging now (downloaded, or truncated to nothing)."""
        self.staged.add(fid)

    def written(self, node: Inode, size: int) -> None:
        """A write or truncate changed staged content: unsaved from now on, based on the
        version it started from."""
        now = time.time_ns()
        self.attrs[node.fid] = (size, now, now)
        if node.fid not in self.unsaved:
            self.unsaved_since[node.fid] = now / 1e9
            self.replica.set_dirty(node.fid, True, base=node.version)
            self.unsaved.add(node.fid)

    def set_mtime(self, node: Inode, mtime_ns: int) -> None:
        """An explicit utimens on a file with staged content wins over the write time; the
        staged file gets it too, since that is where `recover` reads it after a crash (else
        a mirror, whose files' mtimes say whether they changed, fetched them again)."""
        if node.fid in self.attrs:
            size, _, ctime_ns = self.attrs[node.fid]
            self.attrs[node.fid] = (size, mtime_ns, ctime_ns)
            os.utime(self.staging.path(node.fid), ns=(mtime_ns, mtime_ns))

    def resized(self, fid: str, size: int) -> None:
        """The staged file holds `size` bytes whatever was recorded (see Uploads)."""
        _, mtime_ns, ctime_ns = self.attrs.get(fid, (0, time.time_ns(), time.time_ns()))
        self.attrs[fid] = (size, mtime_ns, ctime_ns)

    def opened(self, fid: str, writing: bool) -> None:
        self.open_handles[fid] += 1
        if writing:
            self.writers[fid] += 1

    def released(self, fid: str, writing: bool) -> tuple[bool, bool]:
        """A handle closed: (was it the last writer, was it the last handle)."""
        self.open_handles[fid] -= 1
        last_handle = self.open_handles[fid] <= 0
        if last_handle:
            del self.open_handles[fid]
        if writing:
            self.writers[fid] -= 1
        last_writer = writing and self.writers[fid] <= 0
        if last_writer:
            del self.writers[fid]
        return last_writer, last_handle

    def saved(self, fid: str) -> None:
        """Its upload is recorded (the replica's dirty row went in the same transaction)."""
        self.unsaved.discard(fid)
        self.unsaved_since.pop(fid, None)
        self.attrs.pop(fid, None)
        self.sync_requested.discard(fid)

    def saved_as_is(self, fid: str, base: int, version: int) -> None:
        """A save of what was written here, from version `base`, is recorded as `version`."""
        first, last = self.saved_here.get(fid, (base, base))
        self.saved_here[fid] = (first if last == base else base, version)

    def discard(self, fid: str, keep_as: list[list] | None = None) -> None:
        """Drop a file's staged copy; `keep_as`: the manifest it was uploaded as, to keep
        it whole in the cache instead."""
        self.sync_requested.discard(fid)
        self.keep_on_close.pop(fid, None)
        if keep_as is not None:  # no await until remove() closes its descriptor: nothing writes to it moved
            self.cache.keep(self.staging.path(fid), keep_as)  # moves it away, or leaves it to be removed
        self.staging.remove(fid)
        self.staged.discard(fid)
        self.attrs.pop(fid, None)
        if fid in self.unsaved:
            self.unsaved.discard(fid)
            self.unsaved_since.pop(fid, None)
            self.replica.set_dirty(fid, False)
            self.changed.fire()

    def move_unsaved(self, fid: str, create: dict) -> bool:
        """The unsaved content of `fid` becomes that of the new file `create` makes (a
        conflicted copy), recorded in the same transaction; False if the staged file is
        gone. Linked first, forgotten last: a crash in between leaves both, and recover()
        drops whichever staged file the replica does not say is unsaved."""
        copy = create["fid"]
        try:
            self.staging.copy_as(fid, copy)
        except FileNotFoundError:
            return False
        with self.replica:
            self.replica.record(create)
            self.replica.set_dirty(fid, False)
            self.replica.set_dirty(copy, True, base=0)
        self.unsaved.add(copy)
        self.unsaved_since[copy] = self.unsaved_since.get(fid, time.time())
        self.staged.add(copy)
        self.attrs[copy] = self.attrs[fid]
        self.discard(fid)
        return True

    # --- invariants -----------------------------------------------------------------------

    def check_invariants(self) -> list[str]:
        """What does not hold now (empty when all is well). True between any two awaits."""
        problems = []

        def expect(condition: bool, text: str) -> None:
            if not condition:
                problems.append(text)

        expect(self.unsaved <= self.staged, f"unsaved but not staged: {sorted(self.unsaved - self.staged)}")
        expect(set(self.attrs) <= self.staged, f"attributes of unstaged files: {sorted(set(self.attrs) - self.staged)}")
        expect(self.unsaved <= set(self.attrs), f"unsaved without attributes: {sorted(self.unsaved - set(self.attrs))}")
        expect(set(self.unsaved_since) == self.unsaved,
               f"unsaved-since out of step: {sorted(set(self.unsaved_since) ^ self.unsaved)}")
        recorded = set(self.replica.dirty_fids())
        expect(recorded == self.unsaved, f"replica's dirty table differs: {sorted(recorded ^ self.unsaved)}")
        expect(self.sync_requested <= self.unsaved,
               f"sync requested of saved files: {sorted(self.sync_requested - self.unsaved)}")
        expect(set(self.keep_on_close) <= self.staged,
               f"kept-on-close of unstaged files: {sorted(set(self.keep_on_close) - self.staged)}")
        expect(all(n > 0 for n in self.open_handles.values()), "an open count at or below zero")
        expect(all(n > 0 for n in self.writers.values()), "a writer count at or below zero")
        expect(all(self.open_handles[fid] >= n for fid, n in self.writers.items()), "more writers than handles")
        expect(all(n > 0 for n in self.lookups.values()), "a lookup count at or below zero")
        if self.staging.directory.is_dir():  # (a cache dir deleted under the mount is said in status)
            on_disk = {p.name for p in self.staging.directory.iterdir() if "." not in p.name}
            expect(self.unsaved <= on_disk, f"unsaved content missing from staging: {sorted(self.unsaved - on_disk)}")
        return problems
