"""Running a mount: the mount point, the trio main loop with pyfuse3, and the unmount."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pyfuse3
import trio

from ..services import commands, sharing
from ..services.process import (FUSEDRIVE_FS_TYPE, announce, folder_for, mounted_at, tune_malloc, prepare_cache_dir,
                                 run_device, serve_beside, stop_serving)
from ..engine.drive import Drive
from ..errors import FuseUnavailable, MountError
from .kernel import KernelCache, widen_readahead
from .operations import DriveOperations
from .options import Presentation
from ..store.volume import Volume

log = logging.getLogger(__name__)


def check_mountpoint(mountpoint: str) -> str:
    """The mount point, created if it is missing (the README's first command names a folder
    a new user does not have yet)."""
    path = os.path.realpath(mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("/dev/fuse is missing: this system cannot mount FUSE file systems "
                              "(load the fuse module, or give the container the device).")
    mounted = mounted_at(path)
    if mounted == FUSEDRIVE_FS_TYPE:
        raise MountError(f"{mountpoint} is already a mount point (a fusedrive mount; if its process stopped, "
                         f"`fusedrive umount {mountpoint}` cleans it up).")
    if mounted:
        raise MountError(f"{mountpoint} is already a mount point.")
    folder_for(mountpoint, "mount point")
    if os.listdir(path):
        raise MountError(f"The mount point {mountpoint} is not empty.")
    return path


def attach(operations: DriveOperations, path: str, options: set[str]) -> None:
    """pyfuse3.init, whose failure (libfuse printed why on stderr) is said in one sentence:
    most often this user may not open /dev/fuse and fusermount3 could not do it for them."""
    try:
        pyfuse3.init(operations, path, options)
    except RuntimeError as exc:
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise FuseUnavailable(f"This user cannot open /dev/fuse (permission denied) and fusermount3 could not "
                                  f"mount for it ({exc}): run as a user who may, or make fusermount3 setuid root "
                                  "(the fuse3 package does).") from None
        raise MountError(f"The kernel refused the mount at {path} ({exc}); the mount's log says more.") from None


def run_mount(volume: Volume, mountpoint: str, cache_dir: Path, device: str, cache_size: int,
              ready_fd: int | None = None, debug: bool = False, poll_interval: float = 2.0,
              hub_url: str | None = None, notify: bool = False, metrics: str | None = None,
              io_timeout: float = 60.0, presentation: Presentation = Presentation()) -> None:
    """Mount and serve until unmounted; then drain the upload queue and return."""
    tune_malloc()  # before the first worker thread
    os.umask(0o077)  # everything the mount creates in its cache dir is the owner's alone
    path = check_mountpoint(mountpoint)
    lock_fd = prepare_cache_dir(cache_dir, volume)
    drive = Drive(volume, cache_dir, device, cache_size, poll_interval, hub_url, io_timeout)
    operations = DriveOperations(drive, presentation)
    # /proc/mounts and df name the volume (a comma would split the option list)
    options = set(pyfuse3.default_options) | {f"fsname={volume.url.replace(',', '%2C')}", "subtype=fusedrive"}
    options |= presentation.fuse_options()
    if debug:
        options.add("debug")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await drive.start(nursery)
            refusal = drive.write_refusal()
            if refusal is not None:  # a reader's mount (membership.py): the kernel answers EROFS to every write
                log.info("mounted read-only: %s", refusal)
                options.add("ro")
            await serve_beside(nursery, drive, path, commands.handlers(drive, path, sharing.clean_scratch(cache_dir)),
                               notify, metrics)
            attach(operations, path, options)
            nursery.start_soon(widen_readahead, path)
            with drive.changes_told_to(KernelCache(drive.holds, nursery)):
                signal.signal(signal.SIGTERM, lambda *_: pyfuse3.terminate())
                signal.signal(signal.SIGINT, lambda *_: pyfuse3.terminate())
                announce(path, volume, device, cache_dir, ready_fd, f"Mounted {volume.url} at {path} (in the "
                         f"foreground: Ctrl-C or `fusedrive umount {path}` stops it).")
                try:
                    await pyfuse3.main()
                finally:
                    pyfuse3.close(unmount=True)
            await stop_serving(drive, nursery, ready_fd, f"Unmounted {path}.")

    run_device(main, "mount", path, lock_fd, drive)


