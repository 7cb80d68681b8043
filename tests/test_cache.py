"""The block cache stays within its limit, and what it evicted is fetched again."""

from __future__ import annotations

import hashlib
import os
import shutil

from test_sync import wait_for

MiB = 1024 * 1024


def _du(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _dirs, files in os.walk(path) for f in files)


def _read_uncached(path, offset: int = 0) -> bytes:
    """Read (from `offset` to the end) through fusedrive, not the kernel's page cache of the mount."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        f.seek(offset)
        return f.read()


def _uploaded(mount) -> None:
    mount.sync()
    wait_for(lambda: not os.listdir(mount.cache_dir / "staging"), what="the staged copies to be kept or dropped")


def _bytes_written(pid: int) -> int:
    """Bytes the process dirtied in the page cache of a disk (`write_bytes`; `wchar` would also
    count what it writes to sockets and to /dev/fuse)."""
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("write_bytes:")).split()[1])


def test_cache_respects_its_size_limit(volume):
    writer = volume.mount("writer")
    digests = {}
    for name in ("one", "two", "three"):
        data = os.urandom(20 * MiB)
        digests[name] = hashlib.sha256(data).hexdigest()
        with open(writer.p(name), "wb") as f:
            f.write(data)
    writer.umount()
    shutil.rmtree(writer.cache_dir)

    reader = volume.mount("reader", cache_size="16M")
    for _ in range(2):  # the second pass must fetch again what the first evicted
        for name, digest in digests.items():
            assert hashlib.sha256(_read_uncached(reader.p(name))).hexdigest() == digest
            # limit + one block of slack (eviction happens after the insert) + SQLite index
            assert _du(reader.cache_dir / "blocks") < 16 * MiB + 4 * MiB + 1 * MiB


def test_a_saved_file_is_written_to_the_local_disk_once_and_reads_back_with_the_store_down(
        proxied_volume, store_proxy):
    from fusedrive.services import control

    mount = proxied_volume.mount("laptop", args=("--io-timeout", "5"))
    pid = control.read_registry(str(mount.path))["pid"]
    data = os.urandom(12 * MiB)
    before = _bytes_written(pid)
    with open(mount.p("video.bin"), "wb") as f:
        f.write(data)
    _uploaded(mount)
    # the staged file becomes the cached copy: not written a second time block by block
    assert len(data) <= _bytes_written(pid) - before < 1.2 * len(data)
    store_proxy.down()
    assert _read_uncached(mount.p("video.bin")) == data
    store_proxy.up()


def test_a_damaged_kept_file_is_fetched_again_not_returned(proxied_volume, store_proxy):
    mount = proxied_volume.mount("laptop")
    data = os.urandom(6 * MiB)
    with open(mount.p("photo.raw"), "wb") as f:
        f.write(data)
    _uploaded(mount)
    kept_dir = mount.cache_dir / "blocks" / "kept"
    [kept] = [p for p in kept_dir.iterdir() if not p.name.startswith("index")]
    with open(kept, "r+b") as f:
        f.seek(3 * MiB)
        f.write(b"\xff" * 4096)
    assert _read_uncached(mount.p("photo.raw")) == data  # from the store, the damaged range unused
    store_proxy.down()
    assert _read_uncached(mount.p("photo.raw")) == data  # the block fetched again is cached in its place
    store_proxy.up()


def test_kept_files_give_way_within_the_cache_limit(volume):
    mount = volume.mount("laptop", cache_size="16M")
    files = {f"clip{i}.bin": os.urandom(7 * MiB) for i in range(3)}
    for name, data in files.items():
        with open(mount.p(name), "wb") as f:
            f.write(data)
        _uploaded(mount)
        assert _du(mount.cache_dir / "blocks") < 16 * MiB + 1 * MiB  # + the SQLite indexes
    for name, data in files.items():  # the oldest went first; it comes from the store again
        assert _read_uncached(mount.p(name)) == data


def test_a_sparse_files_holes_do_not_count_against_the_cache_limit(proxied_volume, store_proxy):
    mount = proxied_volume.mount("laptop", cache_size="16M", args=("--io-timeout", "5"))
    data = os.urandom(2 * MiB)
    with open(mount.p("disk.img"), "wb") as f:
        f.seek(200 * MiB)  # a 202 MiB file that takes 2 MiB
        f.write(data)
    _uploaded(mount)
    store_proxy.down()
    assert _read_uncached(mount.p("disk.img"), 200 * MiB) == data  # still kept: it counted as 2 MiB, not 202
    store_proxy.up()


def _random_reads(path, data: bytes, offsets: list[int]) -> None:
    """4 KiB reads at scattered offsets (each far from where the last ended: the drive's
    range reads), each the file's bytes there."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        for offset in offsets:
            assert os.pread(f.fileno(), 4096, offset) == data[offset:offset + 4096], offset


def _damage(path, offset: int) -> None:
    """4 KiB at `offset` changed (every byte: none keeps its value by chance)."""
    with open(path, "r+b") as f:
        original = os.pread(f.fileno(), 4096, offset)
        os.pwrite(f.fileno(), bytes(b ^ 0x5A for b in original), offset)


def test_random_reads_of_a_damaged_cached_copy_are_the_files_bytes(proxied_volume, store_proxy):
    """A 4 KiB read checks only the segments it reads: damage in the kept copy of a file
    just saved, or in a block cached by an earlier read, is found there and the block is
    fetched again, never returned. (Each damage is made with the drive unmounted, so no
    block is still held in memory.)"""
    mount = proxied_volume.mount("laptop")
    data = os.urandom(12 * MiB)
    with open(mount.p("db.sqlite"), "wb") as f:
        f.write(data)
    _uploaded(mount)
    offsets = [(i * 5 * MiB) % (12 * MiB) + 12288 for i in range(12)]  # each 5 or 7 MiB from the last
    _random_reads(mount.p("db.sqlite"), data, offsets)  # the blocks' checksums are known now
    mount.umount()
    [kept] = [p for p in (mount.cache_dir / "blocks" / "kept").iterdir() if not p.name.startswith("index")]
    for offset in offsets[:4]:
        _damage(kept, offset)
    mount = proxied_volume.mount("laptop")
    _random_reads(mount.p("db.sqlite"), data, offsets)

    mount.umount()  # now from the block cache proper, not a kept copy
    shutil.rmtree(mount.cache_dir / "blocks" / "kept")
    mount = proxied_volume.mount("laptop")
    assert _read_uncached(mount.p("db.sqlite")) == data
    mount.umount()
    cached = [p for p in (mount.cache_dir / "blocks").rglob("*.val") if "pinned" not in p.parts]
    assert cached, "the blocks read are in the cache"
    for block_file in cached:
        _damage(block_file, 40 * 1024)
    mount = proxied_volume.mount("laptop")
    _random_reads(mount.p("db.sqlite"), data, [40 * 1024 + 8192] + offsets)
    store_proxy.down()  # what was fetched again is cached in its place
    _random_reads(mount.p("db.sqlite"), data, offsets)
    store_proxy.up()
