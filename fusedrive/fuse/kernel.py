"""The kernel's caches of the mount: the engine's `FrontEnd` for FUSE. What the engine
says changed (another device's commit, a conflicted copy, a restore) is invalidated here."""

from __future__ import annotations

import os
from typing import Callable

import pyfuse3
import trio


class KernelCache:
    """Attached to the engine (`Drive.attach`) while the file system is mounted. `holds`:
    whether the kernel holds a reference to an inode (only those have pages to drop)."""

    def __init__(self, holds: Callable[[int], bool], nursery: trio.Nursery) -> None:
        self.holds = holds
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
            if self.holds(ino):
                await invalidate_inode(ino)


async def invalidate_inode(ino: int) -> None:
    """Drop the kernel's attributes and pages of one inode, from a worker thread: called
    in the trio thread it could wait on a page lock held by a read we have yet to serve."""
    try:
        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino)
    except OSError:
        pass


READAHEAD_KB = 1024  # a block of the default chunking, on average


async def widen_readahead(mountpoint: str) -> bool:
    """Let the kernel read ahead a block at a time (where it may: root only); True if it did.

    The kernel reads ahead 128 KiB at a time on a FUSE mount, and a FUSE mount may only
    lower that, so a sequential reader costs a request per 128 KiB: 2,062 requests for
    256 MiB, read from the cache at 2.1–2.5 GB/s; with 1 MiB, 262 requests and 3.8 GB/s.
    (Random reads are not read ahead either way.) Run beside the request loop: the stat
    of the mount point, from a worker thread, returns once the kernel's INIT is answered,
    which would set the knob back."""
    try:
        st = await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
        with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb", "w") as knob:
            knob.write(f"{READAHEAD_KB}\n")
    except OSError:  # not root, no sysfs, or unmounted already: the kernel's default stays
        return False
    return True
