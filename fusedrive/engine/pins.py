"""Files available offline: what the user pinned is downloaded now, kept current as other
devices change it, and never evicted.

Pins belong to this device (a table of the local replica database, never in the journal)
and name files or folders by id, so a pinned folder includes what any device adds to it
later and a rename keeps the pin. A background task compares the blocks pinned files need
with the blocks the cache keeps pinned: it downloads what is missing (through the same
verified fetch as reads) and lets go of what no pinned file needs any more.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Awaitable, Callable

import trio

from ..errors import FusedriveError, UsageError
from ..signals import Broadcast
from .blocks import BlockStore
from .cache import BlockCache
from .events import EventBus
from .manifest import Where, pieces
from .replica import Replica
from .tree import Inode

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0  # how often pinned folders are looked at for what other devices changed
DOWNLOADS = 4

SCHEMA = "CREATE TABLE IF NOT EXISTS pins(fid TEXT PRIMARY KEY)"


class Pins:
    """Owns the device's pins and the pinned tier of the block cache."""

    def __init__(self, replica: Replica, blocks: BlockStore, cache: BlockCache, events: EventBus,
                 cache_size: int) -> None:
        self.replica = replica
        self.blocks = blocks
        self.cache = cache
        self.events = events
        self.cache_size = cache_size
        replica.db.execute(SCHEMA)
        self._wake = trio.Event()
        self.missing: dict[str, tuple[Where, int]] = {}  # blocks still to download
        self.last_error: str | None = None
        self.passes = 0
        self._settled_at: int | None = None  # the replica's change stamp when all was last local
        self.progressed = Broadcast()  # after every block pinned, and every pass

    # --- what is pinned -----------------------------------------------------------------

    def pinned_fids(self) -> list[str]:
        return pinned_fids(self.replica)

    def files(self) -> list[Inode]:
        return pinned_files(self.replica)

    def wanted(self) -> dict[str, tuple[Where, int]]:
        """The blocks pinned files need now."""
        return blocks_needed(self.files())

    def is_local(self, node: Inode) -> bool:
        """Whether every block of the file is on this device (pinned, or cached for now)."""
        return all(piece.block is None or self.cache.contains(piece.block) for piece in pieces(node.extents()))

    # --- changing pins ------------------------------------------------------------------

    def pin(self, nodes: list[Inode]) -> None:
        """Pin these files and folders, refusing (before anything changes) what the cache
        cannot hold."""
        with self.replica:
            self.replica.db.executemany("INSERT OR IGNORE INTO pins(fid) VALUES(?)", [(n.fid,) for n in nodes])
            needed = sum(length for _location, length in self.wanted().values())
            if needed > self.cache_size:  # (the transaction rolls back)
                raise UsageError(f"Pinning that needs {_gib(needed)} on this device, more than the cache holds "
                                 f"({_gib(self.cache_size)}, --cache-size); nothing was pinned.")
        self._wake.set()

    def unpin(self, nodes: list[Inode]) -> int:
        with self.replica:
            gone = sum(self.replica.db.execute("DELETE FROM pins WHERE fid=?", (n.fid,)).rowcount for n in nodes)
        self._wake.set()
        return gone

    # --- keeping pinned files local -------------------------------------------------------

    async def keep_local(self) -> None:
        """Forever: download what pinned files need, let go of what they no longer need. A
        pass that fails (store down, disk full, the cache dir gone) is said in status and
        tried again at the next; nothing here may take the mount down."""
        limiter = trio.CapacityLimiter(DOWNLOADS)
        was_missing = False
        while True:
            try:
                await self._pass(limiter)
            except Exception as exc:  # noqa: BLE001 - status says it; the next pass tries again
                self.last_error = str(exc)
                if not isinstance(exc, (FusedriveError, OSError, sqlite3.Error)):
                    log.exception("keeping pinned files local failed")
            if was_missing and not self.missing:
                self.events.publish("pinned-local", files=len(self.files()))
            was_missing = bool(self.missing)
            self.passes += 1
            self.progressed.fire()
            with trio.move_on_after(CHECK_SECONDS):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _pass(self, limiter: trio.CapacityLimiter) -> None:
        stamp = self.replica.change_stamp
        if stamp == self._settled_at:
            return  # nothing in the tree (or the pins) changed since all of it was local
        wanted = self.wanted()
        have = await trio.to_thread.run_sync(self.cache.pinned_ids)
        self.missing = {block: where for block, where in wanted.items() if block not in have}
        unneeded = have - set(wanted)
        if unneeded:
            await trio.to_thread.run_sync(self.cache.unpin, unneeded)
        for block, (location, _length) in list(self.missing.items()):
            await trio.to_thread.run_sync(self._pin_block, block, location, limiter=limiter)
            del self.missing[block]
            self.last_error = None
            self.progressed.fire()
        self._settled_at = stamp

    async def settle(self, report: Callable[[int, int], Awaitable[None]]) -> None:
        """Wait until everything pinned is local, or a pass could not finish (the store is
        down, the disk is full: `last_error`), telling `report(done, total)` bytes meanwhile."""
        started, total, total_at = self.passes, 0, None
        while True:
            await self.progressed.wait()
            if total_at != self.passes:  # once a pass, not once a block: it walks every pinned file
                total, total_at = sum(length for _location, length in self.wanted().values()), self.passes
            waiting = sum(length for _location, length in self.missing.values())
            await report(total - waiting, total)
            if self.passes > started and (not self.missing or self.last_error):
                return

    def _pin_block(self, block: str, location: Where) -> None:
        self.cache.pin(block, self.blocks.fetch(block, location))

    def state(self) -> dict:
        files = self.files()
        missing = self.missing
        waiting = [n for n in files if any(p.block in missing for p in pieces(n.extents()))]
        return {"pinned": len(self.pinned_fids()), "pinned_files": len(files),
                "pinned_bytes": sum(n.size for n in files), "pinned_files_waiting": len(waiting),
                "pinned_bytes_waiting": sum(length for _location, length in missing.values()),
                "pinned_error": self.last_error if missing else None}


def pinned_fids(replica: Replica) -> list[str]:
    return [fid for (fid,) in replica.db.execute("SELECT fid FROM pins ORDER BY fid")]


def pinned_files(replica: Replica) -> list[Inode]:
    """Every regular file a pin covers now (a pinned folder's, at any depth)."""
    found: dict[str, Inode] = {}
    for fid in pinned_fids(replica):
        ino = replica.ino_of(fid)
        node = replica.inode(ino) if ino is not None else None
        if node is None or node.nlink <= 0:
            continue
        todo = [node]
        while todo:
            node = todo.pop()
            if node.is_dir:
                todo += [replica.inode(child) for _name, child in replica.children(node.ino)]
            elif node.is_reg:
                found[node.fid] = node
    return list(found.values())


def blocks_needed(files: list[Inode]) -> dict[str, tuple[Where, int]]:
    """The blocks these files need: block id → (where it is stored, its length at least)."""
    needed: dict[str, tuple[Where, int]] = {}
    for node in files:
        for piece in pieces(node.extents()):
            if piece.block is not None:  # a piece may hold part of its block: the block is at least that long
                _location, known = needed.get(piece.block, (None, 0))
                needed[piece.block] = (piece.location, max(known, piece.offset + piece.length))
    return needed


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"
