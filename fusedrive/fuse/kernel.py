"""The kernel's caches of the mount: the engine's `FrontEnd` for FUSE. What the engine
says changed (another device's commit, a conflicted copy, a restore) is invalidated here."""

from __future__ import annotations

import pyfuse3
import trio

from ..engine.localfiles import LocalFiles


class KernelCache:
    """Attached to the engine (`drive.changes.front_end`) while the file system is mounted."""

    def __init__(self, files: LocalFiles, nursery: trio.Nursery) -> None:
        self.files = files
        self.nursery = nursery

    def invalidate(self, inodes: set[int], names: set[tuple[int, bytes]]) -> None:
        self.nursery.start_soon(self._invalidate, inodes, names)

    async def _invalidate(self, inodes: set[int], names: set[tuple[int, bytes]]) -> None:
        """Use only the non-blocking invalidations: the blocking one can deadlock inside a request."""
        for parent, name in names:
            try:
                pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
            except OSError:
                pass
        for ino in inodes:
            if self.files.lookups[ino] > 0 or ino == 1:
                await invalidate_inode(ino)


async def invalidate_inode(ino: int) -> None:
    """Drop the kernel's attributes and pages of one inode, from a worker thread: called
    in the trio thread it could wait on a page lock held by a read we have yet to serve."""
    try:
        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
    except OSError:
        pass
