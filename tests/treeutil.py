"""Describe a directory tree the way a user would compare two copies of it."""

from __future__ import annotations

import hashlib
import os
import stat


def describe(root: str) -> dict:
    """path → (type, mode, size, mtime_ns, sha256 or link target, sorted xattrs, inode group)."""
    tree = {}
    inode_groups: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
                xattrs = []
            else:
                xattrs = sorted((n, os.getxattr(path, n)) for n in os.listxattr(path))
                if stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256()
                    with open(path, "rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            digest.update(block)
                    content = digest.hexdigest()
                else:
                    content = None
            group = inode_groups.setdefault(st.st_ino, rel) if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) else None
            tree[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                         None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns, content, xattrs, group)
    return tree


def inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def save(path: str, data: bytes, append: bool) -> tuple[bytes, int]:
    """Write `data` (appended, or as the whole file) and read the file back through the same
    handle: reopening could already show a newer version from another device once this one
    is uploaded. Returns (what the file holds, its inode)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+b" if append else "w+b") as f:
        f.write(data)
        f.seek(0)
        return f.read(), os.fstat(f.fileno()).st_ino


def move_or_delete(op: str, path: str, target: str, forget) -> None:
    """What a random test does to a name: rename `path` onto `target` ("rename") or unlink it
    ("delete"). `forget(inode)`: a file replaced or deleted here, whose save not yet uploaded
    the trash keeps (so it is never coalesced into a later save)."""
    if op == "rename":
        os.makedirs(os.path.dirname(target), exist_ok=True)
        source, over = inode(path), inode(target)
        os.rename(path, target)
        if over != source:
            forget(over)
    else:
        gone = inode(path)
        os.unlink(path)
        forget(gone)
