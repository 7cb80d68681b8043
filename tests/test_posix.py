"""POSIX behaviour through the real mount, with plain os calls: results and errnos."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time

import pytest


def expect_errno(code: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, f"{fn.__name__}{args}: {errno.errorcode.get(info.value.errno)}, wanted {errno.errorcode[code]}"


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_create_read_write_sizes(work):
    for size in (0, 1, 4095, 4096, 4097, 128 * 1024 + 3, 3 * 1024 * 1024 + 17):
        data = os.urandom(size)
        path = os.path.join(work, f"f{size}")
        write(path, data)
        assert os.stat(path).st_size == size
        assert read(path) == data


def test_random_reads_and_writes_match_a_bytearray(work):
    import random

    rng = random.Random(7)
    path = os.path.join(work, "rw")
    model = bytearray(os.urandom(2 * 1024 * 1024))
    write(path, bytes(model))
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(300):
            offset = rng.randrange(0, len(model) + 1000)
            if rng.random() < 0.5:
                chunk = rng.randbytes(rng.randrange(1, 70000))
                os.pwrite(fd, chunk, offset)
                if offset > len(model):
                    model.extend(bytes(offset - len(model)))
                model[offset:offset + len(chunk)] = chunk
            else:
                size = rng.randrange(1, 70000)
                assert os.pread(fd, size, offset) == bytes(model[offset:offset + size])
    finally:
        os.close(fd)
    assert read(path) == bytes(model)


def test_reread_after_close_comes_from_the_store(work, shared_mount):
    path = os.path.join(work, "committed")
    data = os.urandom(5 * 1024 * 1024 + 5)
    write(path, data)
    shared_mount.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, 4 * 1024 * 1024) == data[4 * 1024 * 1024:4 * 1024 * 1024 + 1000]
        assert os.pread(fd, 10, len(data) - 5) == data[-5:]
        assert os.pread(fd, 10, len(data) + 100) == b""
    finally:
        os.close(fd)
    # change one byte in the middle of a committed file
    with open(path, "r+b") as f:
        f.seek(2_000_000)
        f.write(b"X")
    expected = data[:2_000_000] + b"X" + data[2_000_001:]
    assert read(path) == expected
    shared_mount.sync()
    assert read(path) == expected


def test_o_append(work):
    path = os.path.join(work, "log")
    write(path, b"start\n")
    for i in range(5):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"line {i}\n".encode())
        os.close(fd)
    assert read(path) == b"start\n" + b"".join(f"line {i}\n".encode() for i in range(5))


def test_truncate_up_and_down(work, shared_mount):
    path = os.path.join(work, "t")
    data = os.urandom(300_000)
    write(path, data)
    os.truncate(path, 1000)
    assert read(path) == data[:1000]
    os.truncate(path, 5000)
    assert read(path) == data[:1000] + bytes(4000)
    shared_mount.sync()
    with open(path, "r+b") as f:
        f.truncate(10)
        assert os.fstat(f.fileno()).st_size == 10
    assert read(path) == data[:10]
    os.truncate(path, 0)
    assert read(path) == b""
    expect_errno(errno.EISDIR, os.truncate, work, 0)
    expect_errno(errno.EINVAL, os.truncate, path, -1)


def test_open_flags(work):
    path = os.path.join(work, "flags")
    write(path, b"hello")
    expect_errno(errno.EEXIST, os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert read(path) == b""
    expect_errno(errno.ENOENT, os.open, os.path.join(work, "missing"), os.O_RDONLY)
    expect_errno(errno.EISDIR, os.open, work, os.O_WRONLY)
    expect_errno(errno.ENOTDIR, os.open, os.path.join(path, "x"), os.O_RDONLY)
    expect_errno(errno.ENOTDIR, os.listdir, path)


def test_mmap_read_and_write(work, shared_mount):
    path = os.path.join(work, "mm")
    data = bytearray(os.urandom(1024 * 1024))
    write(path, bytes(data))
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as m:
            assert m[1000:2000] == data[1000:2000]
            m[5000:5010] = b"0123456789"
            m.flush()
    data[5000:5010] = b"0123456789"
    assert read(path) == bytes(data)
    shared_mount.sync()
    assert read(path) == bytes(data)


def test_fsync_puts_file_and_commit_in_the_store(work, shared_mount):
    path = os.path.join(work, "durable")
    before = shared_mount.volume.stored_bytes("journal/")
    data = os.urandom(2 * 1024 * 1024)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        # the commit is in the journal before fsync returned
        assert shared_mount.volume.stored_bytes("journal/") > before
    assert read(path) == data


def test_a_burst_of_new_files_goes_into_few_journal_entries(work, shared_mount):
    """Each journal entry is a PUT (request cost, server CPU): changes that keep coming
    are batched by time (BATCH_DELAY_SECONDS), not appended one entry per change."""
    from fusedrive.engine.committer import BATCH_DELAY_SECONDS

    def entries() -> int:
        return sum(1 for _ in shared_mount.volume.list_objects("journal/"))

    shared_mount.sync()
    before = entries()
    started = time.monotonic()
    for i in range(300):
        write(os.path.join(work, f"f{i}"), os.urandom(100))
    seconds = time.monotonic() - started
    shared_mount.sync()
    assert entries() - before <= seconds / BATCH_DELAY_SECONDS + 5
    assert len(os.listdir(work)) == 300


def test_directories(work):
    d = os.path.join(work, "d")
    os.mkdir(d, 0o750)
    assert stat.S_ISDIR(os.stat(d).st_mode)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o750 & ~current_umask()
    expect_errno(errno.EEXIST, os.mkdir, d)
    write(os.path.join(d, "f"), b"x")
    expect_errno(errno.ENOTEMPTY, os.rmdir, d)
    expect_errno(errno.ENOTDIR, os.rmdir, os.path.join(d, "f"))
    expect_errno(errno.EISDIR, os.unlink, d)
    expect_errno(errno.ENOENT, os.rmdir, os.path.join(work, "nope"))
    os.mkdir(os.path.join(d, "sub"))
    assert os.stat(d).st_nlink == 3
    os.unlink(os.path.join(d, "f"))
    os.rmdir(os.path.join(d, "sub"))
    os.rmdir(d)
    assert not os.path.exists(d)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_readdir_of_10000_entries(work):
    d = os.path.join(work, "many")
    os.mkdir(d)
    names = {f"file-{i:05d}" for i in range(10_000)}
    for name in names:
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
    assert set(os.listdir(d)) == names
    with os.scandir(d) as entries:
        assert sum(1 for e in entries if e.is_file()) == 10_000


def test_rename_files_and_directories(work):
    a, b = os.path.join(work, "a"), os.path.join(work, "b")
    write(a, b"A")
    write(b, b"B")
    os.rename(a, b)  # over an existing file
    assert read(b) == b"A" and not os.path.exists(a)
    d1, d2 = os.path.join(work, "d1"), os.path.join(work, "d2")
    os.mkdir(d1)
    os.mkdir(d2)
    os.rename(b, os.path.join(d1, "moved"))  # across directories
    assert read(os.path.join(d1, "moved")) == b"A"
    os.rename(d1, os.path.join(d2, "inner"))  # a directory with contents
    assert read(os.path.join(d2, "inner", "moved")) == b"A"
    os.mkdir(os.path.join(work, "empty"))
    os.rename(os.path.join(d2, "inner"), os.path.join(work, "empty"))  # dir over an empty dir
    assert os.listdir(os.path.join(work, "empty")) == ["moved"]
    os.mkdir(os.path.join(work, "full"))
    write(os.path.join(work, "full", "x"), b"")
    expect_errno(errno.ENOTEMPTY, os.rename, d2, os.path.join(work, "full"))
    expect_errno(errno.ENOTDIR, os.rename, d2, os.path.join(work, "full", "x"))
    expect_errno(errno.EISDIR, os.rename, os.path.join(work, "full", "x"), d2)
    expect_errno(errno.EINVAL, os.rename, os.path.join(work, "full"), os.path.join(work, "full", "sub"))
    expect_errno(errno.ENOENT, os.rename, os.path.join(work, "ghost"), os.path.join(work, "g2"))
    write(os.path.join(work, "h1"), b"1")
    os.link(os.path.join(work, "h1"), os.path.join(work, "h2"))
    os.rename(os.path.join(work, "h1"), os.path.join(work, "h2"))  # same inode: nothing happens
    assert os.path.exists(os.path.join(work, "h1")) and os.path.exists(os.path.join(work, "h2"))


def test_rename_noreplace_and_exchange(work):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, noreplace, exchange = -100, 1, 2

    def renameat2(src: str, dst: str, flags: int) -> None:
        if libc.renameat2(at_fdcwd, src.encode(), at_fdcwd, dst.encode(), flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    x, y = os.path.join(work, "x"), os.path.join(work, "y")
    write(x, b"X")
    write(y, b"Y")
    expect_errno(errno.EEXIST, renameat2, x, y, noreplace)
    renameat2(x, y, exchange)
    assert read(x) == b"Y" and read(y) == b"X"


def test_unlink_open_file_keeps_working_until_closed(work, shared_mount):
    path = os.path.join(work, "open")
    write(path, b"committed data")
    shared_mount.sync()
    fd = os.open(path, os.O_RDWR)
    os.unlink(path)
    assert not os.path.exists(path)
    assert os.pread(fd, 100, 0) == b"committed data"
    os.pwrite(fd, b"more", 14)
    assert os.pread(fd, 100, 0) == b"committed datamore"
    assert os.fstat(fd).st_size == 18
    os.close(fd)
    assert os.listdir(work) == []


def test_symlinks(work):
    target = os.path.join(work, "target")
    write(target, b"T")
    link = os.path.join(work, "link")
    os.symlink("target", link)
    assert os.readlink(link) == "target"
    assert read(link) == b"T"
    assert stat.S_ISLNK(os.lstat(link).st_mode)
    os.symlink("/nowhere/at/all", os.path.join(work, "dangling"))
    assert os.readlink(os.path.join(work, "dangling")) == "/nowhere/at/all"
    expect_errno(errno.ENOENT, os.stat, os.path.join(work, "dangling"))
    expect_errno(errno.EEXIST, os.symlink, "x", link)
    expect_errno(errno.EINVAL, os.readlink, target)


def test_hard_links(work, shared_mount):
    a, b = os.path.join(work, "a"), os.path.join(work, "b")
    write(a, b"shared")
    os.link(a, b)
    assert os.stat(a).st_nlink == 2 and os.stat(a).st_ino == os.stat(b).st_ino
    with open(b, "ab") as f:
        f.write(b"+more")
    assert read(a) == b"shared+more"
    shared_mount.sync()
    os.unlink(a)
    assert os.stat(b).st_nlink == 1 and read(b) == b"shared+more"
    expect_errno(errno.EEXIST, os.link, b, b)
    expect_errno(errno.EPERM, os.link, work, os.path.join(work, "dirlink"))
    expect_errno(errno.ENOENT, os.link, a, os.path.join(work, "c"))


def test_chmod_chown_utimens(work, shared_mount):
    path = os.path.join(work, "attrs")
    write(path, b"x")
    os.chmod(path, 0o4751)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o4751
    os.chown(path, 1234, 5678)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o751, "chown of an executable clears setuid (Linux, even for root)"
    os.chmod(path, 0o4751)
    os.utime(path, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    shared_mount.sync()
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o4751 and st.st_mtime_ns == 2_000_000_456


def test_times_move_as_posix_says(work, shared_mount):
    path = os.path.join(work, "m")
    write(path, b"1")
    os.utime(path, ns=(0, 0))
    before = time.time_ns()
    with open(path, "ab") as f:
        f.write(b"2")
    st = os.stat(path)
    assert st.st_mtime_ns >= before - 10**9 and st.st_ctime_ns >= before - 10**9
    shared_mount.sync()
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns, "the upload keeps the write's mtime"
    os.link(path, os.path.join(work, "m2"))
    time.sleep(0.01)
    ctime = os.stat(path).st_ctime_ns
    time.sleep(0.01)
    os.unlink(os.path.join(work, "m2"))
    assert os.stat(path).st_ctime_ns > ctime, "unlink changes the ctime of the remaining link"
    dir_mtime = os.stat(work).st_mtime_ns
    time.sleep(0.01)
    write(os.path.join(work, "new"), b"")
    assert os.stat(work).st_mtime_ns > dir_mtime, "creating a file changes its directory's mtime"
    os.utime(path, ns=(0, 4_000_000_000_000_000_000))  # far future mtime
    assert os.stat(path).st_ctime_ns < 3_000_000_000_000_000_000, "ctime is the change time, not mtime"


def test_xattrs(work, shared_mount):
    path = os.path.join(work, "x")
    write(path, b"")
    os.setxattr(path, "user.colour", b"blue")
    os.setxattr(path, "user.empty", b"")
    os.setxattr(path, "user.bin", bytes(range(256)))
    assert os.getxattr(path, "user.colour") == b"blue"
    assert sorted(os.listxattr(path)) == ["user.bin", "user.colour", "user.empty"]
    os.removexattr(path, "user.colour")
    expect_errno(errno.ENODATA, os.getxattr, path, "user.colour")
    expect_errno(errno.ENODATA, os.removexattr, path, "user.colour")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, path, "trusted.nope", b"1")
    expect_errno(errno.ENODATA, os.getxattr, path, "trusted.nope")
    expect_errno(errno.ENODATA, os.getxattr, path, "security.capability")  # what the kernel asks before a write
    os.setxattr(work, "user.ondir", b"d")
    shared_mount.sync()
    assert os.getxattr(path, "user.bin") == bytes(range(256))
    assert os.getxattr(work, "user.ondir") == b"d"


def test_statfs(work):
    st = os.statvfs(work)
    assert st.f_namemax == 255
    assert st.f_bavail > 0 and st.f_blocks >= st.f_bavail and st.f_bsize > 0


def test_names_any_bytes_up_to_255(work):
    names = [b"a" * 255, "üñí€😀".encode(), b"\xff\xfe not utf8", b"sp ace\ttab\nnewline", b"-dash", b".hidden"]
    base = os.fsencode(work)
    for name in names:
        write(base + b"/" + name, name)
    assert set(os.listdir(base)) == set(names)
    for name in names:
        assert read(base + b"/" + name) == name
    expect_errno(errno.ENAMETOOLONG, os.open, base + b"/" + b"a" * 256, os.O_CREAT | os.O_WRONLY)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, base + b"/" + b"b" * 256)
    expect_errno(errno.ENAMETOOLONG, os.stat, base + b"/" + b"c" * 256)


def test_special_files(work):
    fifo = os.path.join(work, "fifo")
    os.mkfifo(fifo, 0o600)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    os.unlink(fifo)


def test_setgid_directory_inherits_group(work):
    d = os.path.join(work, "sgid")
    os.mkdir(d)
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2775)
    write(os.path.join(d, "f"), b"")
    os.mkdir(os.path.join(d, "sub"))
    assert os.stat(os.path.join(d, "f")).st_gid == 4242
    assert os.stat(os.path.join(d, "sub")).st_mode & stat.S_ISGID
