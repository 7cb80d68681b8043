"""Running a mount: checks, the trio main loop, background start, and the drain on unmount."""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyfuse3
import trio

from ..services import control, commands, sharing
from ..engine.cache import free_and_reserve
from ..engine.drive import Drive
from ..errors import CacheDirError, FuseUnavailable, FusedriveError, MountError, UsageError, first_clear_error
from ..engine.events import notify_desktop
from ..services.metrics import serve_metrics
from ..report import human_bytes
from .kernel import KernelCache
from .operations import DriveOperations
from .options import Presentation
from ..store.volume import Volume, keep_header

log = logging.getLogger(__name__)

READY_TIMEOUT = 120
DEVICE_NAME_MAX = 64
DRAIN_RETRY_SECONDS = 2
DRAIN_OFFLINE_SECONDS = 30
M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """glibc gives threads that allocate at once their own malloc arenas (up to eight per
    core) and keeps what is freed in them: with the upload and download threads, a mount
    that has moved a few GiB held ~40 MiB more (bench: 236 vs 196 MiB with 100,000
    files). Two arenas are plenty for a process that holds the GIL to allocate."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:  # not glibc: its allocator has its own policy
        mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def _glibc(function: str):
    """A function of glibc's allocator, or None where the C library is another."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):
        return None


TRIM_SECONDS = 60


async def return_freed_memory() -> None:
    """Every minute, hand the memory freed since back to the system (`malloc_trim`): glibc
    keeps freed chunks in the middle of its heaps, so a mount that once copied a tree or
    held big blocks kept that RSS for good (bench: 117 MiB with 100,000 files alone,
    244 MiB after every other workload). A call takes milliseconds, without the GIL."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return
    while True:
        await trio.sleep(TRIM_SECONDS)
        trim(0)


def check_mountpoint(mountpoint: str) -> str:
    """The mount point, created if it is missing (the README's first command names a folder
    a new user does not have yet)."""
    path = os.path.realpath(mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("/dev/fuse is missing: this system cannot mount FUSE file systems "
                              "(load the fuse module, or give the container the device).")
    if os.path.ismount(path):
        raise MountError(f"{mountpoint} is already a mount point.")
    if not os.path.lexists(path):
        try:
            os.makedirs(path)
        except OSError as exc:
            raise MountError(f"Cannot create the mount point {mountpoint}: {exc.strerror}.") from None
    if not os.path.isdir(path):
        raise MountError(f"The mount point {mountpoint} is not a directory.")
    if os.listdir(path):
        raise MountError(f"The mount point {mountpoint} is not empty.")
    return path


def check_device_name(name: str) -> str:
    """A device's name becomes part of file names (conflicted copies, the history tree)."""
    if not name or len(name.encode()) > DEVICE_NAME_MAX or "/" in name or any(ord(c) < 32 for c in name):
        raise UsageError(f"Invalid device name {name!r}: use 1 to {DEVICE_NAME_MAX} bytes, "
                         "without '/' or control characters.")
    return name


CACHE_MARKER = "volume-id"
STARTING_FILES = {"mount.log", "lock"}  # made in a cache dir before its marker


def check_cache_dir(cache_dir: Path) -> None:
    """Refuse a cache dir that cannot serve: not a directory, someone else's files (`--cache-dir
    ~` would scatter the cache over the home folder), or on a full disk."""
    if cache_dir.exists() or cache_dir.is_symlink():
        if not cache_dir.is_dir():
            raise CacheDirError(f"The cache dir {cache_dir} is not a directory; choose another --cache-dir.")
        try:
            names = {p.name for p in cache_dir.iterdir()}
            foreign = bool(names - STARTING_FILES) and CACHE_MARKER not in names
        except OSError as exc:
            raise CacheDirError(f"Cannot use the cache dir {cache_dir}: {exc.strerror}.") from None
        if foreign:
            raise CacheDirError(f"The cache dir {cache_dir} holds other files and is not a fusedrive cache; "
                                "choose a new or empty directory.")
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheDirError(f"Cannot create the cache dir {cache_dir}: {exc.strerror}.") from None
    free, reserve = free_and_reserve(cache_dir)
    if free < reserve:
        raise CacheDirError(f"The cache dir {cache_dir} is on a full disk ({human_bytes(free)} free, fusedrive "
                            f"needs {human_bytes(reserve)}): free some space or choose another --cache-dir.")


def cache_size_warning(cache_dir: Path, cache_size: int) -> str | None:
    """A sentence when --cache-size is more than the cache disk can give (what the cache
    already holds counts as available)."""
    free, reserve = free_and_reserve(cache_dir)
    held = sum(f.stat().st_size for f in (cache_dir / "blocks").rglob("*") if f.is_file()) \
        if (cache_dir / "blocks").is_dir() else 0
    room = free - reserve + held
    if cache_size <= room:
        return None
    return (f"The cache may grow to {human_bytes(cache_size)} (--cache-size) but its disk has room for "
            f"{human_bytes(max(room, 0))}: it stops there, and writes fail with ENOSPC once the disk is nearly full.")


def prepare_cache_dir(cache_dir: Path, volume: Volume) -> int:
    """Create or check the cache dir, owner-only (it holds file names and plaintext); returns a
    locked fd so one cache dir serves one mount."""
    check_cache_dir(cache_dir)  # creates it
    try:
        make_private(cache_dir)
        marker = cache_dir / CACHE_MARKER
        if marker.exists() and marker.read_text().strip() != volume.volume_id:
            raise CacheDirError(f"The cache dir {cache_dir} belongs to another volume; choose another --cache-dir.")
        marker.write_text(volume.volume_id + "\n")
        if volume.header:
            keep_header(cache_dir, volume)
        lock_fd = os.open(cache_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CacheDirError(f"Cannot use the cache dir {cache_dir}: {exc.strerror}.") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CacheDirError(f"The cache dir {cache_dir} is in use by another mount.") from None
    return lock_fd


def make_private(directory: Path) -> None:
    """Owner-only modes for a directory and everything in it, whatever the umask was when they
    were made (an earlier version left the cache world-readable: names and plaintext)."""
    loosened = False
    for root, dirs, files in os.walk(directory):
        for name, private in [(root, 0o700)] + [(os.path.join(root, d), 0o700) for d in dirs] + \
                [(os.path.join(root, f), 0o600) for f in files]:
            mode = os.lstat(name).st_mode
            if stat.S_ISLNK(mode) or stat.S_IMODE(mode) & 0o077 == 0:
                continue
            os.chmod(name, stat.S_IMODE(mode) & private)
            loosened = True
    if loosened:
        log.warning("%s was readable by other users of this machine: it is owner-only now", directory)


async def _drain(drive: Drive) -> None:
    """After unmount: upload everything closed, for as long as the store takes it; once it
    has failed for DRAIN_OFFLINE_SECONDS (or at once, if `umount` said so), exit and leave
    the rest queued on disk for the next mount. A stop (SIGTERM) here loses nothing either."""
    failing_since = None
    while drive.upload_on_exit:
        try:
            await drive.sync_all()
            break
        except FusedriveError as exc:
            now = trio.current_time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= DRAIN_OFFLINE_SECONDS:
                break
            log.warning("waiting for the store to upload the last changes: %s", exc)
            await trio.sleep(DRAIN_RETRY_SECONDS)
    if drive.has_unsaved_work():
        log.warning("exiting with %d files and %d changes queued in the cache dir: the next mount uploads them",
                    len(drive.files.unsaved), drive.replica.pending_count())
        return
    with trio.move_on_after(min(drive.io_timeout, DRAIN_RETRY_SECONDS * 5)):
        try:
            await drive.committer.pull()  # leave the replica at the head for the next mount, if the store answers
        except FusedriveError:
            pass


def run_mount(volume: Volume, mountpoint: str, cache_dir: Path, device: str, cache_size: int,
              ready_fd: int | None = None, debug: bool = False, poll_interval: float = 2.0,
              hub_url: str | None = None, notify: bool = False, metrics: str | None = None,
              io_timeout: float = 60.0, presentation: Presentation = Presentation()) -> None:
    """Mount and serve until unmounted; then drain the upload queue and return."""
    limit_malloc_arenas()  # before the first worker thread
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
    registry = control.registry_path(path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await drive.start(nursery)
            await nursery.start(control.serve, control.socket_path(path),
                                commands.handlers(drive, path, sharing.clean_scratch(cache_dir)))
            nursery.start_soon(return_freed_memory)
            if notify:
                nursery.start_soon(notify_desktop, drive.events)
            if metrics:
                await nursery.start(serve_metrics, drive, metrics)
            pyfuse3.init(operations, path, options)
            drive.changes.front_end = KernelCache(drive.files, nursery)
            registry.write_text(json.dumps({
                "mountpoint": path, "pid": os.getpid(), "cache_dir": str(cache_dir),
                "volume": volume.url, "device": device,
            }))
            signal.signal(signal.SIGTERM, lambda *_: pyfuse3.terminate())
            signal.signal(signal.SIGINT, lambda *_: pyfuse3.terminate())
            if ready_fd is not None:
                os.write(ready_fd, b"READY\n")
                os.close(ready_fd)
            else:
                print(f"Mounted {volume.url} at {path} (in the foreground: Ctrl-C or `fusedrive umount {path}` "
                      "stops it).", flush=True)
            try:
                await pyfuse3.main()
            finally:
                drive.changes.front_end = None
                pyfuse3.close(unmount=True)
            await _drain(drive)
            if ready_fd is None:
                print(f"Unmounted {path}.", flush=True)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        error = first_clear_error(group)
        if not isinstance(error, FusedriveError):  # a bug: its traceback belongs in mount.log
            log.error("the mount stopped on an internal error", exc_info=group)
        raise error from None
    finally:
        registry.unlink(missing_ok=True)
        control.socket_path(path).unlink(missing_ok=True)
        drive.close()
        os.close(lock_fd)


def start_background(argv: list[str], log_path: Path, env: dict) -> None:
    """Start `fusedrive mount --foreground` detached; return once it is mounted (or say why not)."""
    read_fd, write_fd = os.pipe()
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "fusedrive.cli", *argv, "--foreground", "--ready-fd", str(write_fd)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, pass_fds=(write_fd,),
            start_new_session=True, env=env,
        )
    os.close(write_fd)
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            piece = pipe.read(4096)
            if not piece:
                break
            data += piece
            if data.endswith(b"\n"):
                break
    if data.startswith(b"READY"):
        return
    if child.poll() is None:
        child.wait(timeout=5)
    message = data.decode(errors="replace").strip()
    if message.startswith("ERROR "):
        code, _, text = message[6:].partition(" ")
        error = FusedriveError(text)
        error.exit_code = int(code)
        raise error
    raise MountError(f"The mount process exited without mounting; see {log_path}.")


def report_failure(ready_fd: int | None, exc: FusedriveError) -> None:
    if ready_fd is not None:
        os.write(ready_fd, f"ERROR {exc.exit_code} {exc}\n".encode())
