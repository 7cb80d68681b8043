"""A volume in a plain directory (`file:///dir`): the embedded default, NAS, USB disks.

Same key layout as S3. put-if-absent is a hard link of a fully written, fsync'ed
temporary file: link(2) fails with EEXIST atomically, so exactly one writer wins.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import StoreUnreachable
from . import Listed, NotFound


DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the disk is read-only", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
               errno.EIO: "the disk reports an I/O error", errno.ENOTCONN: "the disk is disconnected",
               errno.ESTALE: "the network share went away"}


def _raise(error: OSError) -> None:
    """os.walk's onerror: a directory that cannot be listed is an error, not an empty one
    (a missing one is fine: nothing stored under it yet)."""
    if not isinstance(error, FileNotFoundError):
        raise error


class FileStore:
    def __init__(self, url: str, root: str) -> None:
        self.url = url
        self.root = os.path.abspath(root)
        self._tmp = os.path.join(self.root, ".tmp")

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    @contextmanager
    def _disk(self, doing: str) -> Iterator[None]:
        """A disk that is full, read-only, gone or failing is a store that is down for now
        (StoreUnreachable: work is queued and retried), said in one sentence."""
        try:
            yield
        except (FileNotFoundError, FileExistsError, NotFound):
            raise
        except OSError as exc:
            reason = DISK_ERRORS.get(exc.errno, exc.strerror or str(exc))
            raise StoreUnreachable(f"Cannot {doing} the volume directory {self.root}: {reason}.") from exc

    def _write_temp(self, data: bytes) -> str:
        os.makedirs(self._tmp, mode=0o700, exist_ok=True)
        tmp = os.path.join(self._tmp, uuid.uuid4().hex)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            os.close(fd)
            os.unlink(tmp)  # a disk that filled up keeps no half-written temp files
            raise
        os.close(fd)
        return tmp

    def get(self, key: str) -> bytes:
        return self.get_range(key, 0, -1)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (fewer at the end of the object; -1: all the rest)."""
        try:
            with self._disk("read from"), open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError as exc:
            raise NotFound(key) from exc

    def put(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        with self._disk("write to"):
            tmp = self._write_temp(data)
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            os.replace(tmp, dest)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        dest = self._path(key)
        with self._disk("write to"):
            tmp = self._write_temp(data)
            try:
                os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
                os.link(tmp, dest)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)

    def list(self, prefix: str, start_after: str = "") -> Iterator[Listed]:
        directory, _, name_prefix = prefix.rpartition("/")
        base = self._path(directory) if directory else self.root
        keys = []
        with self._disk("list"):
            for dirpath, dirnames, filenames in os.walk(base, onerror=_raise):
                dirnames[:] = [d for d in dirnames if not (dirpath == self.root and d == ".tmp")]
                rel = os.path.relpath(dirpath, self.root)
                for name in filenames:
                    key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                    if key.startswith(prefix) and key > start_after:
                        keys.append(key)
        for key in sorted(keys):
            try:
                st = os.stat(self._path(key))
                yield Listed(key, st.st_size, st.st_mtime)
            except FileNotFoundError:
                continue

    def delete(self, key: str) -> None:
        try:
            with self._disk("delete from"):
                os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def put_file(self, key: str, path: str) -> None:
        dest = self._path(key)
        with self._disk("write to"):
            tmp = self._write_temp(b"")
            shutil.copyfile(path, tmp)
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            os.replace(tmp, dest)

    def share_url(self, key: str, expires_in: int) -> str:
        """A directory has no web server: the link is the copy's file:// URL, for this machine
        and whoever mounts the same directory. `fusedrive shares` deletes it once expired."""
        return Path(self._path(key)).as_uri()
