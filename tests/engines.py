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
import inspect
import shutil
from pathlib import Path
from typing import AsyncIterator

import trio

from fusedrive.engine.drive import Drive
from fusedrive.errors import FusedriveError
from fusedrive.engine.journal import start_journal
from fusedrive.store.memory import MemoryObjects, MemoryStore
from fusedrive.store.replicated import VolumeStore
from fusedrive.store.sealing import KeyRing
from fusedrive.store.volume import HEADER_KEY, READER_VERSION, Volume, create_volume
from fusedrive.testing.bypath import STEP_SECONDS, PathFrontEnd, tree as drive_tree

PASSPHRASE = "in-process"
REPLICA_URL = "memory://replica"


class Device(PathFrontEnd):
    """One device: its engine (`drive`) and a small front end that acts by path."""

    def __init__(self, name: str, drive: Drive, store: MemoryStore, nursery: trio.Nursery) -> None:
        self.name = name
        self.drive = drive
        self.store = store
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
        await self.start()

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


async def tree(device: Device) -> dict[str, bytes | None]:
    """Every path → its content (None for a directory), as this device sees it now."""
    return await drive_tree(device.drive)


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
async def devices(*names: str, keys_of: Volume | None = None, reader_version: int = READER_VERSION,
                  objects: MemoryObjects | None = None,
                  replica: MemoryObjects | None = None) -> AsyncIterator[tuple[Device, ...]]:
    """Engines for `names` on one new in-memory volume, started, stopped after (every
    device's per-file state is checked first). `keys_of`: a volume whose id and keys the
    new one takes (no scrypt per test). `reader_version`: the volume's header's (an older
    volume's, to see what this build does in one). `objects`: the store's (to look at
    them); `replica`: a replica store's, which the devices copy to."""
    import tempfile

    objects = objects or MemoryObjects()
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
            seen = store if replica is None else \
                VolumeStore(store, {"url": REPLICA_URL}, MemoryStore(REPLICA_URL, replica))
            keys = KeyRing(volume.volume_id, dict(volume.keys.masters))  # each device's own (key epochs learnt)
            drive = Drive(Volume(seen, volume.volume_id, volume.chunking, keys, reader_version=reader_version),
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


def on_devices(*names: str):
    """Run the async test on engines of these devices (its first arguments), in one trio run."""
    def decorate(test):
        def run(*args, **kwargs):
            async def scenario():
                async with devices(*names) as started:
                    await test(*started, *args, **kwargs)
            trio.run(scenario)
        signature = inspect.signature(test)
        run.__signature__ = signature.replace(parameters=list(signature.parameters.values())[len(names):])
        run.__name__, run.__doc__ = test.__name__, test.__doc__
        return run
    return decorate
