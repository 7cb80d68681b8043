"""A front end that acts by path on one device's engine, as the FUSE mount and the mirror
do by inode: what the in-process test tier (tests/engines.py) and the whole-engine
simulation (simulation.py) drive. `drive` may be replaced (a device killed and started
again): every call looks it up afresh."""

from __future__ import annotations

import os
import stat

import trio

from ..engine.drive import Drive
from ..engine.namespace import Namespace
from ..engine.tree import ROOT_INO, Inode

STEP_SECONDS = 30  # no single engine step of a test may take longer


class PathFrontEnd:
    drive: Drive
    name: str

    @property
    def namespace(self) -> Namespace:
        return self.drive.namespace

    # --- looking things up --------------------------------------------------------------

    def lookup(self, path: str) -> Inode | None:
        ino = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            ino = self.drive.tree.lookup(ino, part.encode())
            if ino is None:
                return None
        return self.drive.tree.inode(ino)

    def _parent_and_name(self, path: str) -> tuple[int, bytes]:
        parent, _, name = path.rstrip("/").rpartition("/")
        node = self.lookup(parent or "/")
        if node is None or not node.is_dir:
            raise FileNotFoundError(f"{self.name}: no directory {parent or '/'}")
        return node.ino, name.encode()

    def names(self, path: str = "/") -> list[str]:
        node = self.lookup(path)
        return sorted(name.decode() for name, _ in self.drive.tree.children(node.ino))

    # --- what programs do ---------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        node = self.lookup(path)
        if node is None:
            raise FileNotFoundError(f"{self.name}: {path} does not exist")
        with trio.fail_after(STEP_SECONDS):
            return await content(self.drive, node)

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

    def link(self, existing: str, new: str) -> None:
        node = self.lookup(existing)
        if node is None:
            raise FileNotFoundError(existing)
        parent, name = self._parent_and_name(new)
        self.namespace.link(node.ino, parent, name)

    def create_file(self, path: str) -> Inode:
        """A new empty regular file (mknod)."""
        parent, name = self._parent_and_name(path)
        return self.drive.tree.inode(self.namespace.create(parent, name, stat.S_IFREG | 0o644, os.getuid(),
                                                              os.getgid()))

    async def open_for_writing(self, path: str) -> Inode:
        """open(O_WRONLY|O_CREAT): the file, open, until `close`."""
        node = self.lookup(path) or self.create_file(path)
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


async def content(drive: Drive, node: Inode) -> bytes:
    size, _ = drive.size_and_mtime(node)
    return await drive.read(node, 0, size)


async def tree(drive: Drive) -> dict[str, bytes | None]:
    """Every path → its content (None for a directory), as this device sees it now."""
    found = {}
    for path, node in drive.replica.walk():
        found[path.decode(errors="surrogateescape") if isinstance(path, bytes) else path] = \
            None if not node.is_reg else await content(drive, node)
    return found
