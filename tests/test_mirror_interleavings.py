"""The mirror's execution against a folder that changes under it (issue 35), in process:
the real Mirror on a real folder over the real engine (tests/engines.py), with an actor
that changes the folder — saves, saves by rename, deletes, renames, new folders — at the
awaits of the mirror and the engine (each hand-off to a thread, each read of the volume),
as a user's programs do while it works, and another device changing the volume between
passes. However they interleave, once quiet: the folder and the volume agree, both devices
agree, and every content the actor left in the folder and every save of the other device is
somewhere a user finds it (the file, a conflicted copy, the trash or a history). The
watcher is the actor itself: it reports each change at once, as watchdog would. Seeded."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from engines import Device, on_devices, tree
from fusedrive.mirror import folder
from fusedrive.mirror.folder import TEMP_PREFIX
from fusedrive.mirror.mirror import Mirror
from fusedrive.mirror.synced import SyncedState
from fusedrive.testing.simulation import digest, kept_contents

pytestmark = pytest.mark.inprocess

NAMES = [b"a.txt", b"b.txt", b"c.txt", b"d1/e.txt", b"d1/f.txt", b"d2/g.txt"]
FOLDERS = [b"d1", b"d2"]


class Actor:
    """A user's programs in the mirrored folder: one random change at a time, each told to
    the mirror as the watcher would (`local_changed`, `local_moved`)."""

    def __init__(self, rng: random.Random, root: Path, mirror: Mirror) -> None:
        self.rng, self.root, self.mirror = rng, os.fsencode(root), mirror
        self.acting = True
        self.changes = 0
        self.focus: bytes | None = None  # the path the mirror is reconciling: where races are
        # digests of the actor's saves that the actor did not itself overwrite or delete
        # since (by content, not path: the mirror may rename a file, to keep it apart)
        self.required: set[str] = set()
        self.texts: dict[str, bytes] = {}  # digest → the save, to say which one was lost

    def full(self, path: bytes) -> bytes:
        return os.path.join(self.root, path)

    def files(self) -> list[bytes]:
        found = []
        for directory, _, names in os.walk(self.root):
            for name in names:
                if not name.startswith(TEMP_PREFIX):
                    found.append(os.path.relpath(os.path.join(directory, name), self.root))
        return sorted(found)

    def maybe_act(self) -> None:
        if self.acting and self.rng.random() < 0.3:
            self.act(self.focus if self.focus in NAMES and self.rng.random() < 0.7 else None)

    def pick(self, focus: bytes | None) -> bytes:
        return focus or self.rng.choice(NAMES)

    def act(self, focus: bytes | None = None) -> None:
        rng = self.rng
        step = rng.choice(["save", "save", "save by rename", "delete", "rename", "mkdir"])
        existing = self.files()
        try:
            if step == "save":
                path = self.pick(focus)
                self._make_parent(path)
                data = f"{path.decode()} saved in the folder, change {self.changes} {rng.random()}".encode()
                self._destroy(path)
                with open(self.full(path), "wb") as f:
                    f.write(data)
                self._require(data)
                self.mirror.local_changed(path, closed=True)
            elif step == "save by rename":
                path = self.pick(focus)
                self._make_parent(path)
                temporary = path + b".new"
                data = f"{path.decode()} saved by rename, change {self.changes} {rng.random()}".encode()
                with open(self.full(temporary), "wb") as f:
                    f.write(data)
                self._destroy(path)
                os.rename(self.full(temporary), self.full(path))
                self._require(data)
                self.mirror.local_moved(temporary, path)
            elif step == "delete" and existing:
                path = focus if focus in existing else rng.choice(existing)
                self._destroy(path)
                os.unlink(self.full(path))
                self.mirror.local_changed(path)
            elif step == "rename" and existing:
                source = focus if focus in existing else rng.choice(existing)
                destination = rng.choice(NAMES)
                self._make_parent(destination)
                if destination != source:
                    self._destroy(destination)
                os.rename(self.full(source), self.full(destination))
                self.mirror.local_moved(source, destination)
            elif step == "mkdir":
                folder = rng.choice(FOLDERS)
                if not os.path.isdir(self.full(folder)):
                    os.mkdir(self.full(folder))
                    self.mirror.local_changed(folder)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return  # the mirror moved it meanwhile: a user's program would try again
        self.changes += 1

    def _require(self, data: bytes) -> None:
        self.required.add(digest(data))
        self.texts[digest(data)] = data

    def _destroy(self, path: bytes) -> None:
        """The actor is about to overwrite or delete what `path` holds: not required any more."""
        try:
            with open(self.full(path), "rb") as f:
                self.required.discard(digest(f.read()))
        except (FileNotFoundError, IsADirectoryError):
            pass

    def _make_parent(self, path: bytes) -> None:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(self.full(parent)):
            os.makedirs(self.full(parent), exist_ok=True)
            self.mirror.local_changed(parent)


@contextlib.contextmanager
def acting_at_awaits(actor: Actor, device: Device):
    """The actor gets a chance at every hand-off to a thread and every read of the volume."""
    run_sync, read = trio.to_thread.run_sync, device.drive.read
    reconcile = actor.mirror._reconcile

    async def reconcile_in_focus(path: bytes, *args, **kwargs):
        actor.focus = path
        return await reconcile(path, *args, **kwargs)

    async def run_sync_and_act(*args, **kwargs):
        actor.maybe_act()
        return await run_sync(*args, **kwargs)

    async def read_and_act(*args, **kwargs):
        actor.maybe_act()
        return await read(*args, **kwargs)

    trio.to_thread.run_sync, device.drive.read = run_sync_and_act, read_and_act
    actor.mirror._reconcile = reconcile_in_focus
    try:
        yield
    finally:
        trio.to_thread.run_sync = run_sync
        del device.drive.read, actor.mirror._reconcile


async def other_device_acts(rng: random.Random, laptop: Device, saves: set[str]) -> None:
    path = "/" + rng.choice(NAMES).decode()
    files = [p for p, content in (await tree(laptop)).items() if content is not None]
    step = rng.choice(["save", "save", "delete", "rename"])
    if step == "save":
        parent = os.path.dirname(path)
        if parent != "/" and laptop.lookup(parent) is None:
            laptop.mkdir(parent)
        data = f"{path} saved on the laptop {rng.random()}".encode()
        await laptop.save(path, data)
        saves.add(digest(data))
    elif step == "delete" and files:
        laptop.delete(rng.choice(files))
    elif step == "rename" and files:
        parent = os.path.dirname(path)
        if parent != "/" and laptop.lookup(parent) is None:
            laptop.mkdir(parent)
        if laptop.lookup(path) is None:
            laptop.rename(rng.choice(files), path)
    await laptop.sync()


async def mirror_pass(mirror: Mirror) -> None:
    async with mirror._lock:
        await mirror._pass(everything=True)


def folder_tree(root: Path) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for directory, folders, names in os.walk(root):
        for name in folders:
            found["/" + os.path.relpath(os.path.join(directory, name), root)] = None
        for name in names:
            if not name.startswith(TEMP_PREFIX.decode()):
                full = os.path.join(directory, name)
                found["/" + os.path.relpath(full, root)] = Path(full).read_bytes()
    return found


def _seeds() -> range:
    """FUSEDRIVE_MIRROR_SEEDS: how many (from 0), or FIRST:END."""
    first, _, end = os.environ.get("FUSEDRIVE_MIRROR_SEEDS", "40").rpartition(":")
    return range(int(first or 0), int(end))


@pytest.mark.parametrize("seed", _seeds())
@on_devices("laptop", "desktop")
async def test_a_folder_changed_at_every_await_ends_equal_to_the_volume_and_loses_nothing(laptop, desktop, seed,
                                                                                          tmp_path):
    rng = random.Random(seed)
    root = tmp_path / "folder"
    root.mkdir()
    state = SyncedState(str(tmp_path / "mirror.sqlite3"))
    state.start_over_for(str(root))
    mirror = Mirror(desktop.drive, str(root), state)
    actor = Actor(rng, root, mirror)
    laptop_saves: set[str] = set()
    with desktop.drive.changes_told_to(mirror), acting_at_awaits(actor, desktop):
        await mirror_pass(mirror)  # the first sync: the scan
        for _ in range(40):
            step = rng.choice(["act", "act", "other device", "pass", "pass", "sync", "pull"])
            if step == "act":
                actor.act()
            elif step == "other device":
                await other_device_acts(rng, laptop, laptop_saves)
            elif step == "pass":
                await mirror_pass(mirror)
            elif step == "sync":
                await desktop.sync()
            else:
                await desktop.pull()
        actor.acting = False
        required = actor.required
        await trio.sleep(folder.TICK_NS / 1e9)  # quiet: the clock's tick of the last save is over
        for _ in range(3):  # quiet: what each side did reaches the other
            await mirror_pass(mirror)
            await desktop.sync()
            await laptop.pull()
            await desktop.pull()
        await mirror_pass(mirror)
    volume = {path: content for path, content in (await tree(desktop)).items() if path != "/"}
    assert folder_tree(root) == volume, "the folder and the volume differ"
    assert {p: c for p, c in (await tree(laptop)).items() if p != "/"} == volume, "the devices differ"
    kept = kept_contents(laptop.drive.replica, laptop.drive.blocks)
    lost = sorted(actor.texts[saved] for saved in required - kept)
    assert not lost, f"saves made in the folder are nowhere in the volume: {lost}; the folder: {folder_tree(root)}"
    assert laptop_saves <= kept, "a save of the other device is nowhere in the volume"


@on_devices("desktop")
async def test_a_second_save_within_the_clock_tick_of_the_mirrors_copy_is_taken_too(desktop, tmp_path, monkeypatch):
    """A program saves twice within one tick of the clock that stamps mtimes, the second
    save the same size: the file then has the size, mtime and inode the mirror recorded
    when it took the first. It took the first and kept it in the volume for good."""
    root = tmp_path / "folder"
    root.mkdir()
    state = SyncedState(str(tmp_path / "mirror.sqlite3"))
    state.start_over_for(str(root))
    mirror = Mirror(desktop.drive, str(root), state)
    await mirror_pass(mirror)
    path = root / "notes.txt"
    path.write_bytes(b"first save")
    tick = path.stat().st_mtime_ns
    clock = SimpleNamespace(time_ns=lambda: tick + 1_000_000)  # the mirror looks a millisecond later
    monkeypatch.setattr(folder, "time", clock)
    mirror.local_changed(b"notes.txt", closed=True)
    await mirror_pass(mirror)
    with open(path, "r+b") as f:  # the same inode, the same size
        f.write(b"later save")
    os.utime(path, ns=(tick, tick))  # stamped in the same tick
    mirror.local_changed(b"notes.txt", closed=True)
    clock.time_ns = lambda: tick + 2 * folder.COARSE_TICK_NS
    await mirror_pass(mirror)
    assert (await tree(desktop))["/notes.txt"] == b"later save"
    assert folder_tree(root) == {"/notes.txt": b"later save"}
