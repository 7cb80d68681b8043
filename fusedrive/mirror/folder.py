"""The folder's side: what a path holds on the local disk, what is never synced, and the
blocking file work (copying a local file for upload, writing a downloaded one in place
atomically), which runs in worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pathspec

from ..engine.scratch import SCRATCH_NAMES
from ..engine.staging import data_spans

IGNORE_FILE = ".fusedriveignore"
TEMP_PREFIX = b".fusedrive-"  # the mirror's own files being written: never synced
# Never synced: the mirror's own temporaries, the scratch files of engine/scratch.py (locks,
# swap files: the one list both front ends share), backup files and desktop litter (a
# .fusedriveignore in the folder adds patterns, gitignore syntax).
DEFAULT_IGNORED = [".fusedrive-*", *(f"\\{p}" if p.startswith("#") else p for p in SCRATCH_NAMES),  # "#": a comment
                   "*~", ".DS_Store", "Thumbs.db", "desktop.ini"]
COPY_CHUNK = 1 << 20
# The kernel stamps mtimes from a clock that ticks every few milliseconds (at most 10 ms
# on Linux); some file systems keep whole seconds (FAT: two).
TICK_NS, COARSE_TICK_NS = 50_000_000, 2_000_000_000


@dataclass(frozen=True)
class LocalEntry:
    kind: str  # "file", "dir" or "link"
    size: int
    mtime_ns: int
    ino: int
    mode: int  # permission bits
    target: bytes | None = None


def look(root: bytes, path: bytes) -> LocalEntry | None:
    """What `path` holds now; None if nothing, or something a mirror does not sync (a
    socket, a device node, a FIFO)."""
    full = os.path.join(root, path) if path else root
    try:
        st = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return entry_of(st, full)


def entry_of(st: os.stat_result, full: bytes) -> LocalEntry | None:
    if stat.S_ISREG(st.st_mode):
        kind, target = "file", None
    elif stat.S_ISDIR(st.st_mode):
        kind, target = "dir", None
    elif stat.S_ISLNK(st.st_mode):
        try:
            kind, target = "link", os.readlink(full)
        except FileNotFoundError:
            return None
    else:
        return None
    size = st.st_size if kind == "file" else 0
    mtime = st.st_mtime_ns if kind == "file" else 0  # a folder's mtime is its children's business
    return LocalEntry(kind, size, mtime, st.st_ino, stat.S_IMODE(st.st_mode) if kind != "link" else 0o777, target)


def written_within_a_tick(local: LocalEntry) -> bool:
    """Whether the file could be written again without its mtime changing: its mtime is
    in the file system clock's current tick. Content read now and recorded with this
    size, mtime and inode could then be replaced by a same-size write that looks the
    same (git's "racily clean" entries): such a file is taken only once its tick is over.
    An mtime set far from now (touch -d, tar, rsync -t) is not one the clock made."""
    tick = COARSE_TICK_NS if local.mtime_ns % 1_000_000_000 == 0 else TICK_NS
    return local.kind == "file" and abs(time.time_ns() - local.mtime_ns) < tick


def names_in(root: bytes, path: bytes) -> list[bytes]:
    try:
        return os.listdir(os.path.join(root, path) if path else root)
    except (FileNotFoundError, NotADirectoryError):
        return []


class IgnoreRules:
    """What is never synced, in either direction: the defaults above and the folder's
    .fusedriveignore (gitignore syntax, read again when it changes)."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self._seen: tuple[int, int] | None = None
        self._spec = pathspec.GitIgnoreSpec.from_lines(DEFAULT_IGNORED)
        self.reload()

    def reload(self) -> bool:
        """Read .fusedriveignore if it changed; True if the rules did."""
        path = os.path.join(self.root, IGNORE_FILE.encode())
        try:
            st = os.stat(path)
            seen = (st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        if seen == self._seen:
            return False
        self._seen = seen
        lines = list(DEFAULT_IGNORED)
        if seen is not None:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines += f.read().splitlines()
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)
        return True

    def ignored(self, path: bytes, is_dir: bool = False) -> bool:
        if not path:
            return False
        if path.rpartition(b"/")[2].startswith(TEMP_PREFIX):
            return True
        text = path.decode("utf-8", "surrogateescape") + ("/" if is_dir else "")
        return self._spec.match_file(text)


def copy_if_settled(source: bytes, prepared: Path, expected: LocalEntry) -> LocalEntry | None:
    """Copy a local file for upload (blocking); None if it is not the file `expected`
    describes any more, or changed while it was copied: it is being written, and is taken
    once it settles."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        before = entry_of(os.fstat(fd), source)
        if before != expected:
            return None
        with open(prepared, "wb") as out:  # holes stay holes: only the data is copied (the upload stores none)
            for start, length, is_data in data_spans(fd, before.size):
                offset = start
                while is_data and offset < start + length:
                    chunk = os.pread(fd, min(COPY_CHUNK, start + length - offset), offset)
                    if not chunk:
                        break  # cut short meanwhile: the checks below find it changed
                    out.seek(offset)
                    out.write(chunk)
                    offset += len(chunk)
            out.truncate(before.size)
        after = entry_of(os.fstat(fd), source)
    finally:
        os.close(fd)
    if after != before or look(os.path.dirname(source), os.path.basename(source)) != before:
        prepared.unlink(missing_ok=True)
        return None
    return after


def temporary_beside(full: bytes, token: str) -> bytes:
    """A name in the same folder for content being written: renamed over `full` when done."""
    directory, _, _ = full.rpartition(b"/")
    return os.path.join(directory, TEMP_PREFIX + token.encode() + b".part")


_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)


def _renameat2(source: bytes, destination: bytes, flags: int) -> bool:
    """renameat2(2); False where the file system (or libc) cannot do it with these flags."""
    call = getattr(_LIBC, "renameat2", None)
    if call is None:
        return False
    if call(_AT_FDCWD, source, _AT_FDCWD, destination, flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), destination)


def swap_in(temporary: bytes, full: bytes, expected: LocalEntry | None) -> bool:
    """Put the finished download `temporary` at `full`, which held `expected` when the
    caller looked; False (the download dropped, what is there left alone) if a save
    landed there since. A plain rename would replace a save made between that look and
    the rename: atomically swapping the names first lets us look at what we took away,
    and swap back if it is not what we looked at or someone still has it open
    (RENAME_NOREPLACE where nothing was).
    Where the file system cannot, a plain rename (the window is the look's)."""
    if expected is None:
        try:
            if _renameat2(temporary, full, _RENAME_NOREPLACE):
                return True
        except FileExistsError:
            os.unlink(temporary)
            return False
    elif expected.kind == "file" and _renameat2(temporary, full, _RENAME_EXCHANGE):
        if _open_elsewhere(temporary) or entry_of(os.lstat(temporary), temporary) != expected:
            _renameat2(temporary, full, _RENAME_EXCHANGE)  # theirs back in place
            os.unlink(temporary)
            return False
        os.unlink(temporary)
        return True
    os.replace(temporary, full)
    return True


def _open_elsewhere(path: bytes) -> bool:
    """Whether another process has this file open: one that opened it before the swap
    may still write into it (an append opens, then writes). A write lease is granted
    only to the one open file there is; where leases are off or not ours to take, no
    one is assumed (the check of its stat remains)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
        return False
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EBUSY)
    finally:
        os.close(fd)


def finish_download(temporary: bytes, mode: int, mtime_ns: int) -> None:
    os.chmod(temporary, mode)
    os.utime(temporary, ns=(mtime_ns, mtime_ns))


def clean_leftovers(root: bytes) -> None:
    """Remove the temporary files (downloads, sync markers) a killed mirror left in the folder."""
    for directory, dirs, files in os.walk(root):
        for name in files:
            if name.startswith(TEMP_PREFIX) and (name.endswith(b".part") or name.startswith(TEMP_PREFIX + b"barrier-")):
                os.unlink(os.path.join(directory, name))
