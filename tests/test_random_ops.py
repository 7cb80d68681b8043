"""Seeded random operation sequences through the mount, checked step by step against
a simple in-memory model, then again after a remount on a fresh device.

A failure prints its seed; replay it with FUSEDRIVE_SEEDS=<seed> pytest -k random.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from dataclasses import dataclass, field

import pytest

SEEDS = [int(s) for s in os.environ.get("FUSEDRIVE_SEEDS", "11,22,33").split(",")]
STEPS = int(os.environ.get("FUSEDRIVE_STEPS", "300"))
NAMES = ["a", "b", "c", "dir1", "dir2"]


@dataclass
class Model:
    """The expected tree: path → "dir" | ("file", inode) | ("link", target); inode → bytes."""

    nodes: dict = field(default_factory=lambda: {"": "dir"})
    data: dict = field(default_factory=dict)
    next_inode: int = 0

    def parent_ok(self, path: str) -> int | None:
        parent = os.path.dirname(path)
        if parent not in self.nodes:
            return errno.ENOENT
        if self.nodes[parent] != "dir":
            return errno.ENOTDIR
        return None

    def is_dir(self, path: str) -> bool:
        return self.nodes.get(path) == "dir"

    def children(self, path: str) -> list[str]:
        prefix = path + "/" if path else ""
        return [p for p in self.nodes if p.startswith(prefix) and p != path and "/" not in p[len(prefix):]]

    def new_file(self, path: str, content: bytes) -> None:
        self.nodes[path] = ("file", self.next_inode)
        self.data[self.next_inode] = bytearray(content)
        self.next_inode += 1


class Exerciser:
    def __init__(self, root: str, rng: random.Random) -> None:
        self.root, self.rng, self.model = root, rng, Model()

    def real(self, path: str) -> str:
        return os.path.join(self.root, path)

    def pick_path(self) -> str:
        dirs = [p for p, n in self.model.nodes.items() if n == "dir"]
        base = self.rng.choice(dirs + ["nonexistent"])
        name = self.rng.choice(NAMES)
        return f"{base}/{name}" if base else name

    def pick_file(self) -> str | None:
        files = [p for p, n in self.model.nodes.items() if isinstance(n, tuple) and n[0] == "file"]
        return self.rng.choice(files) if files else None

    def check(self, expected_errno: int | None, action, what: str) -> None:
        self.doing = what
        try:
            action()
        except OSError as exc:
            assert exc.errno == expected_errno, f"{what}: got {errno.errorcode.get(exc.errno)}, model says {expected_errno and errno.errorcode[expected_errno]}"
            return
        assert expected_errno is None, f"{what}: succeeded, model says {errno.errorcode[expected_errno]}"

    # --- operations: each computes the model's verdict, acts, then updates the model ---

    def op_create(self) -> str:
        path, content = self.pick_path(), self.rng.randbytes(self.rng.choice([0, 1, 100, 5000, 300_000]))
        m = self.model
        err = m.parent_ok(path) or (errno.EISDIR if m.is_dir(path) else None)
        if isinstance(m.nodes.get(path), tuple) and m.nodes[path][0] == "link":
            return "skip"

        def act():
            with open(self.real(path), "wb") as f:
                f.write(content)
        self.check(err, act, f"create {path}")
        if err is None:
            node = m.nodes.get(path)
            if node is None:
                m.new_file(path, content)
            else:
                m.data[node[1]][:] = content
        return f"create {path} {len(content)}"

    def op_write(self) -> str:
        path = self.pick_file()
        if path is None:
            return "skip"
        buf = self.model.data[self.model.nodes[path][1]]
        offset = self.rng.randrange(0, len(buf) + 5000)
        content = self.rng.randbytes(self.rng.randrange(1, 20000))
        fd = os.open(self.real(path), os.O_WRONLY)
        try:
            os.pwrite(fd, content, offset)
        finally:
            os.close(fd)
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(content)] = content
        return f"write {path} @{offset} {len(content)}"

    def op_append(self) -> str:
        path = self.pick_file()
        if path is None:
            return "skip"
        content = self.rng.randbytes(self.rng.randrange(1, 3000))
        with open(self.real(path), "ab") as f:
            f.write(content)
        self.model.data[self.model.nodes[path][1]].extend(content)
        return f"append {path} {len(content)}"

    def op_truncate(self) -> str:
        path = self.pick_file()
        if path is None:
            return "skip"
        buf = self.model.data[self.model.nodes[path][1]]
        size = self.rng.randrange(0, len(buf) + 10000)
        os.truncate(self.real(path), size)
        del buf[size:]
        buf.extend(bytes(size - len(buf)))
        return f"truncate {path} {size}"

    def op_read(self) -> str:
        path = self.pick_file()
        if path is None:
            return "skip"
        with open(self.real(path), "rb") as f:
            assert f.read() == bytes(self.model.data[self.model.nodes[path][1]]), f"content of {path}"
        return f"read {path}"

    def op_mkdir(self) -> str:
        path, m = self.pick_path(), self.model
        err = m.parent_ok(path) or (errno.EEXIST if path in m.nodes else None)
        self.check(err, lambda: os.mkdir(self.real(path)), f"mkdir {path}")
        if err is None:
            m.nodes[path] = "dir"
        return f"mkdir {path}"

    def op_unlink(self) -> str:
        path, m = self.pick_path(), self.model
        err = m.parent_ok(path) or (errno.ENOENT if path not in m.nodes else errno.EISDIR if m.is_dir(path) else None)
        self.check(err, lambda: os.unlink(self.real(path)), f"unlink {path}")
        if err is None:
            del m.nodes[path]
        return f"unlink {path}"

    def op_rmdir(self) -> str:
        path, m = self.pick_path(), self.model
        err = (m.parent_ok(path) or (errno.ENOENT if path not in m.nodes else None)
               or (errno.ENOTDIR if not m.is_dir(path) else None)
               or (errno.ENOTEMPTY if m.children(path) else None))
        self.check(err, lambda: os.rmdir(self.real(path)), f"rmdir {path}")
        if err is None:
            del m.nodes[path]
        return f"rmdir {path}"

    def op_rename(self) -> str:
        src, dst, m = self.pick_path(), self.pick_path(), self.model
        err = m.parent_ok(src) or (errno.ENOENT if src not in m.nodes else None) or m.parent_ok(dst)
        # The VFS checks ancestry before types: source above target is EINVAL,
        # target above source is ENOTEMPTY.
        if err is None and dst.startswith(src + "/"):
            err = errno.EINVAL
        if err is None and src.startswith(dst + "/" if dst else ""):
            err = errno.ENOTEMPTY
        if err is None and dst in m.nodes and dst != src:
            if m.is_dir(src) and not m.is_dir(dst):
                err = errno.ENOTDIR
            elif not m.is_dir(src) and m.is_dir(dst):
                err = errno.EISDIR
            elif m.is_dir(dst) and m.children(dst):
                err = errno.ENOTEMPTY
        self.check(err, lambda: os.rename(self.real(src), self.real(dst)), f"rename {src} {dst}")
        # POSIX: renaming a name onto another link of the same file does nothing (two
        # symlinks with one target are two files: that rename does happen)
        same_file = isinstance(m.nodes.get(src), tuple) and m.nodes[src][0] == "file" and m.nodes[src] == m.nodes.get(dst)
        if err is None and src != dst and not same_file:
            moved = {p: n for p, n in m.nodes.items() if p == src or p.startswith(src + "/")}
            for p in moved:
                del m.nodes[p]
            for p in [q for q in m.nodes if q == dst or q.startswith(dst + "/")]:
                del m.nodes[p]
            for p, n in moved.items():
                m.nodes[dst + p[len(src):]] = n
        return f"rename {src} {dst}"

    def op_link(self) -> str:
        src, dst, m = self.pick_file(), self.pick_path(), self.model
        if src is None:
            return "skip"
        err = m.parent_ok(dst) or (errno.EEXIST if dst in m.nodes else None)
        self.check(err, lambda: os.link(self.real(src), self.real(dst)), f"link {src} {dst}")
        if err is None:
            m.nodes[dst] = m.nodes[src]
        return f"link {src} {dst}"

    def op_symlink(self) -> str:
        dst, m = self.pick_path(), self.model
        target = self.rng.choice(["a", "../b", "/abs/path", "dir1/c"])
        err = m.parent_ok(dst) or (errno.EEXIST if dst in m.nodes else None)
        self.check(err, lambda: os.symlink(target, self.real(dst)), f"symlink {dst}")
        if err is None:
            m.nodes[dst] = ("link", target)
        return f"symlink {dst} -> {target}"

    def compare_tree(self, root: str) -> None:
        seen = {""}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.relpath(os.path.join(dirpath, name), root)
                seen.add(path)
                node = self.model.nodes.get(path)
                assert node is not None, f"unexpected {path}"
                full = os.path.join(dirpath, name)
                if node == "dir":
                    assert os.path.isdir(full) and not os.path.islink(full), path
                elif node[0] == "link":
                    assert os.readlink(full) == node[1], path
                else:
                    with open(full, "rb") as f:
                        assert f.read() == bytes(self.model.data[node[1]]), f"content of {path}"
        assert seen == set(self.model.nodes), f"missing: {set(self.model.nodes) - seen}"


WEIGHTS = {"create": 5, "write": 4, "append": 3, "truncate": 2, "read": 4, "mkdir": 3, "unlink": 2, "rmdir": 2,
           "rename": 4, "link": 1, "symlink": 1}


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_the_model(volume, seed):
    mount = volume.mount()
    rng = random.Random(seed)
    exerciser = Exerciser(str(mount.path), rng)
    history = []
    ops, weights = zip(*WEIGHTS.items())
    try:
        for step in range(STEPS):
            op = rng.choices(ops, weights)[0]
            history.append(getattr(exerciser, f"op_{op}")())
            if step % 50 == 49:
                mount.sync()
        exerciser.compare_tree(str(mount.path))
        mount.umount()
        shutil.rmtree(mount.cache_dir)
        fresh = volume.mount("fresh")
        exerciser.compare_tree(str(fresh.path))
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}, after: {history[-8:]}: {exc}") from None
