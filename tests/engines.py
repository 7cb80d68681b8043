"""Several devices' engines on one volume, in this process: the sync engine with no FUSE
and no S3 server (an in-memory store), driven the way a front end drives it. The tier of
fast tests of the rules (tests/test_conflict_table.py).

    async with devices("laptop", "desktop") as (laptop, desktop):
        await laptop.save("/a.txt", b"one")
        await laptop.sync()
        await desktop.pull()
        assert await desktop.read("/a.txt") == b"one"

A device can be cut off from the store (`cut_off()`): its changes queue, as in a partition;
and killed and started again from its cache dir (`restart()`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import AsyncIterator

import trio

from fusedrive.engine.drive import Drive
from fusedrive.errors import FusedriveError
from fusedrive.engine.journal import start_journal
from fusedrive.engine.namespace import Namespace
from fusedrive.engine.tree import ROOT_INO, Inode
from fusedrive.store.memory import MemoryObjects, MemoryStore
from fusedrive.store.volume import HEADER_KEY, READER_VERSION, Volume, create_volume

PASSPHRASE = "in-process"
STEP_SECONDS = 30  # no single engine step of a test may take longer


class Device:
    """One device: its engine (`drive`) and a small front end that acts by path."""

    def __init__(self, name: str, drive: Drive, store: MemoryStore, nursery: trio.Nursery) -> None:
        self.name = name
        self.drive = drive
        self.store = store
        self.namespace = Namespace(drive.replica)
        self._nursery = nursery
        self._running: tuple[trio.CancelScope, trio.Event] | None = None

    async def start(self) -> None:
        self._running = await self._nursery.start(_serve, self.drive)

    async def restart(self, afresh: bool = False) -> None:
        """The process is killed and starts again from its cache dir: what is on disk there
        is all the new engine has (no drain, no goodbye). `afresh`: with the cache dir
        emptied, as a new device (it starts from the newest checkpoint)."""
        scope, stopped = self._running
        scope.cancel()
        with trio.fail_after(STEP_SECONDS):
            await stopped.wait()
        self.drive.close()
        volume = self.drive.volume
        if afresh:
            shutil.rmtree(self.drive.cache_dir)
            self.drive.cache_dir.mkdir()
            (self.drive.cache_dir / "volume-id").write_text(volume.volume_id)
        self.drive = Drive(volume, self.drive.cache_dir, self.name, 1 << 30, poll_interval=3600)
        self.namespace = Namespace(self.drive.replica)
        await self.start()

    # --- looking things up --------------------------------------------------------------

    def lookup(self, path: str) -> Inode | None:
        ino = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            ino = self.drive.replica.lookup(ino, part.encode())
            if ino is None:
                return None
        return self.drive.replica.inode(ino)

    def _parent_and_name(self, path: str) -> tuple[int, bytes]:
        parent, _, name = path.rstrip("/").rpartition("/")
        node = self.lookup(parent or "/")
        assert node is not None and node.is_dir, f"{self.name}: no directory {parent or '/'}"
        return node.ino, name.encode()

    def names(self, path: str = "/") -> list[str]:
        node = self.lookup(path)
        return sorted(name.decode() for name, _ in self.drive.replica.children(node.ino))

    # --- what programs do ---------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        node = self.lookup(path)
        assert node is not None, f"{self.name}: {path} does not exist"
        size, _ = self.drive.files.size_and_mtime(node)
        with trio.fail_after(STEP_SECONDS):
            return await self.drive.read(node, 0, size)

    def mkdir(self, path: str) -> None:
        parent, name = self._parent_and_name(path)
        self.namespace.create(parent, name, stat.S_IFDIR | 0o755, os.getuid(), os.getgid())

    def delete(self, path: str) -> None:
        parent, name = self._parent_and_name(path)
        node = self.lookup(path)
        self.namespace.remove(parent, name, want_dir=node is not None and node.is_dir)

    def rename(self, old: str, new: str) -> None:
        old_parent, old_name = self._parent_and_name(old)
        new_parent, new_name = self._parent_and_name(new)
        self.namespace.rename(old_parent, old_name, new_parent, new_name)

    async def open_for_writing(self, path: str) -> Inode:
        """open(O_WRONLY|O_CREAT): the file, open, until `close`."""
        node = self.lookup(path)
        if node is None:
            parent, name = self._parent_and_name(path)
            node = self.drive.replica.inode(self.namespace.create(parent, name, stat.S_IFREG | 0o644,
                                                                  os.getuid(), os.getgid()))
        self.drive.opened(node.fid, writing=True)
        return node

    async def write(self, node: Inode, data: bytes, offset: int = 0, truncate: bool = True) -> None:
        with trio.fail_after(STEP_SECONDS):
            if truncate:
                await self.drive.truncate(node, 0)
            await self.drive.write(node, offset, data)

    def close(self, node: Inode) -> None:
        self.drive.flushed(node.fid)
        self.drive.released(node.fid, writing=True)

    async def save(self, path: str, data: bytes) -> None:
        """What an editor's plain save does: open(O_TRUNC|O_CREAT), write, close."""
        node = await self.open_for_writing(path)
        try:
            await self.write(node, data)
        finally:
            self.close(node)

    async def save_by_rename(self, path: str, data: bytes) -> None:
        """What most editors and office programs do: write a temporary file, rename it over."""
        temporary = path + ".tmp~"
        await self.save(temporary, data)
        self.rename(temporary, path)

    # --- the store ----------------------------------------------------------------------

    def cut_off(self, cut: bool = True) -> None:
        """Every store request of this device fails from now on (a partition), or works again."""
        self.store.unreachable = cut

    async def sync(self) -> None:
        """Upload what is saved, commit what is queued (rebasing onto other devices' entries).
        A sync fails if an upload attempt fails while it waits (as `fusedrive sync` does);
        right after a partition heals that may be an attempt made before, so it is asked
        again, as a user would."""
        with trio.fail_after(STEP_SECONDS):
            for attempt in range(3):
                self.drive.health.retry_now()
                try:
                    await self.drive.sync_all()
                    return
                except FusedriveError:
                    if self.store.unreachable or attempt == 2:
                        raise

    async def pull(self) -> None:
        with trio.fail_after(STEP_SECONDS):
            await self.drive.committer.pull()

    def check(self) -> None:
        problems = self.drive.check_invariants()
        assert not problems, f"{self.name}: {problems}"


async def _content(device: Device, node: Inode) -> bytes:
    size, _ = device.drive.files.size_and_mtime(node)
    return await device.drive.read(node, 0, size)


async def tree(device: Device) -> dict[str, bytes | None]:
    """Every path → its content (None for a directory), as this device sees it now."""
    found = {}
    for path, node in device.drive.replica.walk():
        found[path.decode(errors="surrogateescape") if isinstance(path, bytes) else path] = \
            None if not node.is_reg else await _content(device, node)
    return found


async def _serve(drive: Drive, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """One device's engine in a nursery of its own, so that a test can stop it alone."""
    stopped = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(STEP_SECONDS):
                await drive.start(nursery)
            task_status.started((nursery.cancel_scope, stopped))
            await trio.sleep_forever()
    finally:
        stopped.set()


def new_volume() -> Volume:
    """A volume with its journal started, in memory. Its keys can serve many test volumes
    (`devices(..., keys_of=)`): the passphrase's scrypt is what costs."""
    volume = create_volume(MemoryStore(), PASSPHRASE)
    start_journal(volume)
    return volume


@contextlib.asynccontextmanager
async def devices(*names: str, keys_of: Volume | None = None,
                  reader_version: int = READER_VERSION) -> AsyncIterator[tuple[Device, ...]]:
    """Engines for `names` on one new in-memory volume, started, stopped after (every
    device's per-file state is checked first). `keys_of`: a volume whose id and keys the
    new one takes (no scrypt per test). `reader_version`: the volume's header's (an older
    volume's, to see what this build does in one)."""
    import tempfile

    objects = MemoryObjects()
    if keys_of is None:
        volume = create_volume(MemoryStore(objects=objects), PASSPHRASE)
    else:
        volume = Volume(MemoryStore(objects=objects), keys_of.volume_id, keys_of.chunking, keys_of.keys)
        volume.store.put_if_absent(HEADER_KEY, keys_of.header)  # the same volume's header, as devices check it
    start_journal(volume)
    base = Path(tempfile.mkdtemp(prefix="engines-"))
    started: list[Device] = []
    async with trio.open_nursery() as nursery:
        for name in names:
            store = MemoryStore(objects=objects)
            cache_dir = base / name
            cache_dir.mkdir()
            (cache_dir / "volume-id").write_text(volume.volume_id)
            drive = Drive(Volume(store, volume.volume_id, volume.chunking, volume.keys, reader_version=reader_version),
                          cache_dir, name, 1 << 30, poll_interval=3600)
            device = Device(name, drive, store, nursery)
            await device.start()
            started.append(device)
        try:
            yield tuple(started)
            for device in started:
                device.check()
        finally:
            nursery.cancel_scope.cancel()
    for device in started:
        device.drive.close()
    shutil.rmtree(base, ignore_errors=True)
