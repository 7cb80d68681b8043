"""Running a device (a FUSE mount or a mirror) as a process: its memory, its cache dir,
starting it in the background, and the drain of its upload queue when it stops."""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import trio

from ..engine.cache import free_and_reserve
from ..engine.drive import Drive
from ..engine.events import notify_desktop
from . import control
from .metrics import serve_metrics
from ..errors import CacheDirError, FusedriveError, MountError, UsageError, first_clear_error
from ..report import human_bytes
from ..store.replicated import keep_record
from ..store.volume import Volume, keep_header

log = logging.getLogger(__name__)

READY_TIMEOUT = 120
DEVICE_NAME_MAX = 64
DRAIN_RETRY_SECONDS = 2
DRAIN_OFFLINE_SECONDS = 30
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters
MALLOC_ARENAS = 2
MMAP_THRESHOLD = 32 << 20  # above a chunking window and its tail: blocks and windows come from the heaps
TRIM_THRESHOLD = 16 << 20  # a few blocks in flight; RSS with 100,000 files: 177 MiB (195 with 64 MiB)


def tune_malloc() -> None:
    """glibc's allocator set for a process that moves megabyte blocks around; before the
    first worker thread.

    Arenas: glibc gives threads that allocate at once their own (up to eight per core)
    and keeps what is freed in them: with the upload and download threads, a mount that
    has moved a few GiB held ~40 MiB more (bench: 236 vs 196 MiB with 100,000 files).
    Two are plenty for a process that holds the GIL to allocate.

    Trim threshold: every block uploaded or read is a few buffers of about a megabyte
    (plaintext, compressed, sealed) made and freed at once. By default freeing them hands
    the top of the heap back to the kernel as soon as twice the last big buffer is free
    there, and the next block faults every page in again: sealing a 1 MiB block took
    ~950 µs that way, ~230 without; opening one ~1,100 and ~340. Up to TRIM_THRESHOLD per
    arena stays (return_freed_memory gives it back within a minute when idle)."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:  # not glibc: its allocator has its own policy
        mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


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


FUSEDRIVE_FS_TYPE = "fuse.fusedrive"


def mounted_at(path: str) -> str | None:
    """The type of the file system mounted exactly at `path` ("fuse.fusedrive", "ext4"), None
    if none, from the mount table: os.path.ismount says False for a FUSE mount whose process
    died (stat fails with ENOTCONN), and a dead mount must still be found to be cleaned up."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            lines = table.read().splitlines()
    except OSError:
        return "unknown" if os.path.ismount(path) else None
    found = None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split(" ")
        if len(parts) > 4 and _unescape(parts[4]) == path:
            found = rest.split(" ")[0]  # the last mount there is the one seen
    return found


def _unescape(field: str) -> str:
    """The mount table writes a space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def folder_for(given: str, what: str) -> str:
    """The real path of the folder a device serves (a mount point, a mirrored folder),
    created if missing (the README's first command names a folder a new user does not have)."""
    path = os.path.realpath(given)
    if not os.path.lexists(path):
        try:
            os.makedirs(path)
        except OSError as exc:
            raise MountError(f"Cannot create the {what} {given}: {exc.strerror}.") from None
    if not os.path.isdir(path):
        raise MountError(f"The {what} {given} is not a directory.")
    entry = control.read_registry(path)
    if entry is not None and not control.has_exited(entry["pid"]):
        raise MountError(f"{given} is already served by fusedrive (process {entry['pid']}).")
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
    room = free - reserve + bytes_under(cache_dir / "blocks")
    if cache_size <= room:
        return None
    return (f"The cache may grow to {human_bytes(cache_size)} (--cache-size) but its disk has room for "
            f"{human_bytes(max(room, 0))}: it stops there, and writes fail with ENOSPC once the disk is nearly full.")


def bytes_under(directory: Path) -> int:
    """What the files under `directory` hold. It runs beside the mount just started, which
    evicts and removes emptied folders meanwhile: what goes while it counts counts as
    gone (a folder gone mid-walk made `fusedrive mount` exit 14 after it had mounted)."""
    total = 0
    for root, _dirs, files in os.walk(directory):  # a folder that cannot be listed is skipped
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


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
        keep_record(cache_dir, volume)
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


async def serve_beside(nursery: trio.Nursery, drive: Drive, folder: str, handlers: dict, notify: bool,
                       metrics: str | None) -> None:
    """What runs beside a device's front end: the control socket the commands talk to,
    the memory trim, desktop notifications and Prometheus metrics if asked for."""
    await nursery.start(control.serve, control.socket_file(folder), handlers)
    nursery.start_soon(return_freed_memory)
    if notify:
        nursery.start_soon(notify_desktop, drive.events)
    if metrics:
        await nursery.start(serve_metrics, drive, metrics)


def announce(path: str, volume: Volume, device: str, cache_dir: Path, ready_fd: int | None, message: str,
             **extra) -> None:
    """The device serves `path` now: register it (status and the commands find it by its
    folder) and tell whoever started it (the background starter, or the terminal). The
    registry's name is found from the real path without looking at it: a mount's process
    must never stat its own mount point before it serves requests."""
    control.registry_file(path).write_text(json.dumps({
        "mountpoint": path, "pid": os.getpid(), "cache_dir": str(cache_dir), "volume": volume.url,
        "device": device, **extra}))
    if ready_fd is not None:
        os.write(ready_fd, b"READY\n")
        os.close(ready_fd)
    else:
        print(message, flush=True)


async def stop_serving(drive: Drive, nursery: trio.Nursery, ready_fd: int | None, goodbye: str) -> None:
    """The front end has let go: upload what waits (see drain), say so in a terminal, and
    stop the tasks beside it."""
    await drain(drive)
    if ready_fd is None:
        print(goodbye, flush=True)
    nursery.cancel_scope.cancel()


def run_device(main, what: str, path: str, lock_fd: int, *owned) -> None:
    """Run a device's trio main loop: what stops it reaches the user as one clear error,
    not an exception group; a bug's traceback goes to the log (mount.log). Whatever
    happens, the device is unregistered, what it `owned` closed and its cache dir unlocked."""
    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        error = first_clear_error(group)
        if not isinstance(error, FusedriveError):
            log.error("the %s stopped on an internal error", what, exc_info=group)
        raise error from None
    finally:
        control.registry_file(path).unlink(missing_ok=True)
        control.socket_file(path).unlink(missing_ok=True)
        for thing in owned:
            thing.close()
        os.close(lock_fd)


async def drain(drive: Drive) -> None:
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
        waiting = drive.status()
        log.warning("exiting with %d files and %d changes queued in the cache dir: the next mount uploads them",
                    waiting["files_waiting"], waiting["ops_waiting"])
        return
    with trio.move_on_after(min(drive.io_timeout, DRAIN_RETRY_SECONDS * 5)):
        try:
            await drive.pull()  # leave the replica at the head for the next mount, if the store answers
        except FusedriveError:
            pass


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
