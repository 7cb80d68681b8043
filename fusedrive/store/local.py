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


HEADER = "volume"  # the key whose presence says the directory holds a volume (store/volume.py)
PROBES = "probe/"  # init's test of put-if-absent, made before the header
SHARES = "shares/"  # a share link's copy: shares/<token>/<name> (services/sharing.py)


class FileStore:
    """Writes go only into a directory that holds a volume, and the one this store first
    saw there: a directory that vanished (a USB disk unplugged, a share not mounted, a
    rename) or was replaced is never recreated or written into — a device's saves would
    land in an impostor and fork the volume. Only the header itself may be written into a
    directory without one (`fusedrive init`, which makes the directory)."""

    def __init__(self, url: str, root: str) -> None:
        self.url = url
        self.root = os.path.abspath(root)
        self._tmp = os.path.join(self.root, ".tmp")
        self._header: tuple[tuple, bytes] | None = None  # (stat identity, content) of the header first seen

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _gone(self, why: str) -> StoreUnreachable:
        return StoreUnreachable(f"The volume directory {self.root} {why} (a disk unplugged, a network share not "
                                "mounted, a folder renamed?); nothing is written until it is back.")

    def _check_volume(self) -> None:
        """The directory still holds the volume this store first saw (its header, unchanged);
        StoreUnreachable if not. A stat per call; the header is read again only when its
        file changed (a restored copy has the same content and passes)."""
        header = os.path.join(self.root, HEADER)
        try:
            st = os.stat(header)
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if self._header is not None and self._header[0] == identity:
                return
            with open(header, "rb") as f:
                content = f.read()
        except FileNotFoundError:
            raise self._gone("is missing or holds no volume") from None
        except OSError as exc:
            raise StoreUnreachable(f"Cannot read the volume directory {self.root}: "
                                   f"{DISK_ERRORS.get(exc.errno, exc.strerror)}.") from exc
        if self._header is not None and self._header[1] != content:
            raise self._gone("holds another volume now")
        self._header = (identity, content)

    def _make_parents(self, path: str) -> None:
        """The folders between the volume directory and `path`, never the directory itself."""
        parent = os.path.dirname(path)
        if parent != self.root and not os.path.isdir(parent):
            self._make_parents(parent)
            try:
                os.mkdir(parent, 0o700)
            except FileExistsError:
                pass
            except FileNotFoundError:
                raise self._gone("is missing") from None

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
        tmp = os.path.join(self._tmp, uuid.uuid4().hex)
        self._make_parents(tmp)
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
                data = f.read(length)
        except FileNotFoundError as exc:
            if key != HEADER:
                self._check_volume()  # a block missing from a missing volume is not a missing block
            raise NotFound(key) from exc
        if key == HEADER and self._header is None:
            self._check_volume()  # remember what this directory held when first read
        return data

    def put(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        with self._disk("write to"):
            self._writable(key)
            tmp = self._write_temp(data)
            self._make_parents(dest)
            os.replace(tmp, dest)

    def _writable(self, key: str) -> None:
        if key == HEADER or key.startswith(PROBES):  # init's: into the directory it made, before the header
            if not os.path.isdir(self.root):
                raise self._gone("is missing")
        else:
            self._check_volume()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        dest = self._path(key)
        with self._disk("write to"):
            self._writable(key)
            tmp = self._write_temp(data)
            try:
                self._make_parents(dest)
                os.link(tmp, dest)
                created = True
            except FileExistsError:
                created = False
            finally:
                os.unlink(tmp)
        if created and key == HEADER:
            self._check_volume()
        return created

    def list(self, prefix: str, start_after: str = "") -> Iterator[Listed]:
        directory, _, name_prefix = prefix.rpartition("/")
        base = self._path(directory) if directory else self.root
        keys = []
        with self._disk("list"):
            self._check_volume()  # an empty listing of a missing directory is not an empty volume
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
                self._writable(key)
                os.unlink(self._path(key))
                if key.startswith(SHARES):  # a share's own folder goes with its copy (others stay: a PUT may be
                    self._remove_if_empty(os.path.dirname(self._path(key)))  # making its file in them)
        except FileNotFoundError:
            pass

    def _remove_if_empty(self, folder: str) -> None:
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty: another file of it is there

    def put_file(self, key: str, path: str) -> None:
        dest = self._path(key)
        with self._disk("write to"):
            self._writable(key)
            tmp = self._write_temp(b"")
            shutil.copyfile(path, tmp)
            self._make_parents(dest)
            os.replace(tmp, dest)

    def share_url(self, key: str, expires_in: int) -> str:
        """A directory has no web server: the link is the copy's file:// URL, for this machine
        and whoever mounts the same directory. `fusedrive shares` deletes it once expired."""
        return Path(self._path(key)).as_uri()
