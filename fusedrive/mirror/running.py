"""Running a mirror: the folder's checks, the trio main loop, and stopping after the last
changes are taken and uploaded (`fusedrive umount FOLDER`, SIGTERM or Ctrl-C)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import trio

from ..engine.drive import Drive
from ..errors import MountError
from ..services import commands, sharing
from ..services.process import (announce, folder_for, tune_malloc, prepare_cache_dir, run_device, serve_beside,
                                 stop_serving)
from ..store.volume import Volume
from .folder import clean_leftovers
from .mirror import Mirror
from .synced import SyncedState
from .watching import watching

log = logging.getLogger(__name__)

SETTLE_AT_STOP_SECONDS = 60  # at most this long to take the folder's last changes before the drain
SETTLE_WHEN_LEAVING = 5  # the same after `umount --no-wait` (or its --timeout): what is not taken is found at the next start


def check_folder(folder: str) -> str:
    """The folder to mirror, created if missing; never a FUSE mount (of fusedrive or not)."""
    real = os.path.realpath(folder)
    if os.path.ismount(real) and _file_system_type(real).startswith("fuse"):
        raise MountError(f"{folder} is a FUSE mount; a mirror keeps a folder on a local disk.")
    return folder_for(folder, "folder")


def _file_system_type(path: str) -> str:
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and os.path.realpath(fields[1].encode().decode("unicode_escape")) == path:
                return fields[2]
    return ""


def mirror_handlers(drive: Drive, mirror: Mirror, folder: str, scratch: Path, stop: trio.Event) -> dict:
    """The mount's commands, with the folder's changes counted as pending and taken first
    by `sync`; `settle` (take them now, upload in the background) and `stop` (what
    `fusedrive umount FOLDER` asks after the upload)."""
    served = commands.handlers(drive, folder, scratch)

    async def status(request: dict, send) -> dict:
        return {**drive.status(), **mirror.status()}

    async def sync(request: dict, send) -> dict:
        await mirror.settle()
        await drive.sync_all()
        return await status(request, send)

    async def settle(request: dict, send) -> dict:
        """Take every change made in the folder so far, without waiting for the upload."""
        await mirror.settle()
        return await status(request, send)

    async def stop_mirror(request: dict, send) -> dict:
        stop.set()
        return {"stopping": True}

    return {**served, "status": status, "sync": sync, "settle": settle, "stop": stop_mirror}


def run_mirror(volume: Volume, folder: str, cache_dir: Path, device: str, cache_size: int,
               ready_fd: int | None = None, poll_interval: float = 2.0, hub_url: str | None = None,
               notify: bool = False, metrics: str | None = None, io_timeout: float = 60.0) -> None:
    """Keep `folder` and the volume equal until stopped; then upload what waits and return."""
    tune_malloc()
    path = check_folder(folder)
    os.umask(0o077)  # the cache dir's files are the owner's alone; the folder's get their modes explicitly
    lock_fd = prepare_cache_dir(cache_dir, volume)
    drive = Drive(volume, cache_dir, device, cache_size, poll_interval, hub_url, io_timeout)
    state = SyncedState(str(cache_dir / "mirror.sqlite3"))
    state.start_over_for(path)
    clean_leftovers(os.fsencode(path))

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await drive.start(nursery)
            mirror = Mirror(drive, path, state)
            with drive.changes_told_to(mirror):
                await serve_beside(nursery, drive, path,
                                   mirror_handlers(drive, mirror, path, sharing.clean_scratch(cache_dir), stop),
                                   notify, metrics)
                nursery.start_soon(_stop_on_signals, stop)
                with watching(mirror):
                    nursery.start_soon(mirror.run)
                    announce(path, volume, device, cache_dir, ready_fd, f"Mirroring {volume.url} in {path} (in the "
                             f"foreground: Ctrl-C or `fusedrive umount {path}` stops it).", mirror=True)
                    await stop.wait()
                    # the folder's last changes, before the drain uploads them (told not to wait: briefly)
                    with trio.move_on_after(SETTLE_AT_STOP_SECONDS if drive.upload_on_exit else SETTLE_WHEN_LEAVING):
                        await mirror.settle()
            await stop_serving(drive, nursery, ready_fd, f"Stopped mirroring {path}.")

    run_device(main, "mirror", path, lock_fd, state, drive)


async def _stop_on_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
