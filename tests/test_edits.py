"""Editing a big file in place, or appending to it, uploads what was written — not the
blocks around it — and every device reads the edited file."""

from __future__ import annotations

import hashlib
import os

from test_cache import _read_uncached
from test_sync import wait_for

MiB = 1024 * 1024
SMALL_UPLOAD = 64 * 1024  # the write's own block and the journal entry; any block around it is 256 KiB or more


def _digest(path) -> str:
    return hashlib.sha256(_read_uncached(path)).hexdigest()


def _saved(mount, name: str, size: int) -> bytearray:
    """A random file of `size` bytes, saved and uploaded; its content."""
    data = bytearray(os.urandom(size))
    with open(mount.p(name), "wb") as f:
        f.write(data)
    mount.sync()
    return data


def _reads_on_a_new_device(volume, name: str, data: bytes) -> None:
    """A device with an empty cache (every block comes from the store) reads `data`."""
    desk = volume.mount("desk")
    expected = hashlib.sha256(data).hexdigest()
    wait_for(lambda: _digest(desk.p(name)) == expected, what=f"the desk to read {name}")


def test_an_in_place_edit_uploads_the_bytes_written_and_every_device_reads_it(proxied_volume, store_proxy):
    laptop = proxied_volume.mount("laptop")
    data = _saved(laptop, "disk.img", 16 * MiB)
    for at, patch in ((5 * MiB + 123, b"edited"), (5 * MiB + 100, b"overlapping edit"), (12 * MiB, b"x" * 9000)):
        before = store_proxy.uploaded_bytes
        with open(laptop.p("disk.img"), "r+b") as f:
            f.seek(at)
            f.write(patch)
        data[at:at + len(patch)] = patch
        laptop.sync()
        assert store_proxy.uploaded_bytes - before < SMALL_UPLOAD
    assert _digest(laptop.p("disk.img")) == hashlib.sha256(data).hexdigest()
    _reads_on_a_new_device(proxied_volume, "disk.img", data)


def test_appends_to_a_log_upload_what_was_appended(proxied_volume, store_proxy):
    laptop = proxied_volume.mount("laptop")
    data = _saved(laptop, "app.log", 3 * MiB)
    for i in range(5):
        line = f"line {i} ".encode() * 100
        before = store_proxy.uploaded_bytes
        with open(laptop.p("app.log"), "ab") as f:
            f.write(line)
        data += line
        laptop.sync()
        assert store_proxy.uploaded_bytes - before < SMALL_UPLOAD
    _reads_on_a_new_device(proxied_volume, "app.log", data)


def test_a_file_kept_open_uploads_each_fsynced_edit_small(proxied_volume, store_proxy):
    """A database keeps its file open and fsyncs each change: each upload patches the last."""
    laptop = proxied_volume.mount("laptop")
    data = _saved(laptop, "app.db", 4 * MiB)
    with open(laptop.p("app.db"), "r+b") as f:
        for at in (4096, 3 * MiB, 4096 + 10, 4 * MiB - 1):
            before = store_proxy.uploaded_bytes
            f.seek(at)
            f.write(b"page")
            f.flush()
            os.fsync(f.fileno())
            data[at:at + 4] = b"page"
            assert store_proxy.uploaded_bytes - before < SMALL_UPLOAD
    _reads_on_a_new_device(proxied_volume, "app.db", data)


def test_a_byte_written_into_a_gib_file_a_device_never_read_fetches_and_copies_nothing(proxied_volume, store_proxy):
    """Issue 37: the first write into a big file on a device that has none of its blocks
    (a VM image after a reboot on another machine) sends no GET and stages a page, not
    the file; every device then reads the file exactly."""
    from fusedrive.testing.faultproxy import Fault

    laptop = proxied_volume.mount("laptop")
    data = {at: os.urandom(4 * MiB) for at in (0, 512 * MiB, 1020 * MiB)}  # 1 GiB, holes between (never stored)
    with open(laptop.p("vm.img"), "wb") as f:
        f.truncate(1024 * MiB)
        for at, part in data.items():
            f.seek(at)
            f.write(part)
    laptop.sync()
    desk = proxied_volume.mount("desk")
    wait_for(lambda: os.path.exists(desk.p("vm.img")), what="the desk to see vm.img")
    gets = store_proxy.inject(Fault(method="GET", path=r"/(blocks|packs)/"))  # counts them, changes nothing
    with open(desk.p("vm.img"), "r+b") as f:
        f.seek(512 * MiB + 12345)
        f.write(b"!")
        f.flush()
        staged = sum(p.stat().st_blocks * 512 for p in (desk.cache_dir / "staging").iterdir())
    desk.sync()
    assert gets.hits == 0, "nothing of the file was fetched to change a byte of it"
    assert staged <= 1 * MiB, f"{staged} bytes staged for a 1-byte write"
    part = bytearray(data[512 * MiB])
    part[12345] = ord("!")
    data[512 * MiB] = bytes(part)
    expected = hashlib.sha256()
    pos = 0
    for at, part in data.items():
        expected.update(bytes(at - pos) + part)
        pos = at + len(part)
    expected.update(bytes(1024 * MiB - pos))
    wait_for(lambda: _digest(laptop.p("vm.img")) == expected.hexdigest(), what="the laptop to read the edit")
    store_proxy.clear()
    assert _digest(desk.p("vm.img")) == expected.hexdigest()
