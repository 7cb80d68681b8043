"""Carried blocks (format 4): an fsync of a small edit costs one PUT, the journal entry
that commits it carrying the bytes written, and nothing is lost for it — every device
reads those bytes (one that applies the entry, one started afresh from a checkpoint
after it, an offline fsck), and a device killed before its commit sends them later.
An older volume (reader_version 3) keeps the two PUTs."""

from __future__ import annotations

import os

import pytest
import trio

from engines import Device, devices
from fusedrive.engine.blocks import BlockStore
from fusedrive.engine.cache import BlockCache
from fusedrive.engine.checkpoints import dump_state, write_checkpoint
from fusedrive.engine.journal import Journal
from fusedrive.errors import FusedriveError
from fusedrive.tools.fsck import fsck

pytestmark = pytest.mark.inprocess

MiB = 1024 * 1024


def in_trio(test):
    """Run an async test in one trio run."""
    def run(tmp_path):
        trio.run(test, tmp_path)
    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


def _writes(device: Device) -> list[str]:
    """The keys of every PUT this device makes from now on, in order."""
    keys: list[str] = []
    store = device.store
    put, put_if_absent = store.put, store.put_if_absent

    def counted_put(key: str, data: bytes) -> None:
        keys.append(key)
        return put(key, data)

    def counted_put_if_absent(key: str, data: bytes) -> bool:
        keys.append(key)
        return put_if_absent(key, data)

    store.put, store.put_if_absent = counted_put, counted_put_if_absent
    return keys


async def _edit_and_fsync(device: Device, path: str, offset: int, data: bytes) -> None:
    """What a database does: write a page in place, fsync, keep the file open meanwhile."""
    node = await device.open_for_writing(path)
    try:
        await device.write(node, data, offset, truncate=False)
        with trio.fail_after(30):
            await device.drive.fsync(node.fid)
    finally:
        device.close(node)


async def _saved(device: Device, path: str, size: int) -> bytearray:
    data = bytearray(os.urandom(size))
    await device.save(path, bytes(data))
    await device.sync()
    return data


def _no_fsck_findings(device: Device, tmp_path) -> None:
    """fsck on its own replay and block store (nothing of the device's): the journal
    carries every carried block, and each decrypts to its id."""
    volume = device.drive.volume
    blocks = BlockStore(volume, BlockCache(tmp_path / "fsck-cache", 1 << 20, volume.keys.is_id_of))
    quiet = lambda what, total: type("Bar", (), {"update": lambda self, n: None, "close": lambda self: None})()  # noqa: E731
    assert fsck(Journal(volume), blocks, None, True, quiet) == []


@in_trio
async def test_an_fsync_of_a_small_edit_is_one_put_that_every_device_reads(tmp_path):
    async with devices("laptop", "desktop") as (laptop, desktop):
        data = await _saved(laptop, "/app.db", 3 * MiB)
        writes = _writes(laptop)
        for turn, offset in enumerate((4096, 2 * MiB + 5, 3 * MiB - 4)):
            if turn == 1:  # another device takes the next entry first: the edit is rebased, still carried
                await desktop.pull()
                await desktop.save("/other.txt", b"from the desktop")
                await desktop.sync()
            writes.clear()
            page = os.urandom(16)
            await _edit_and_fsync(laptop, "/app.db", offset, page)
            data[offset:offset + len(page)] = page
            assert all(key.startswith("journal/") for key in writes), writes
            assert len(writes) == (2 if turn == 1 else 1)  # the rebased edit's first try met the desktop's entry
            entry = Journal(laptop.drive.volume).read(laptop.drive.replica.applied_seq)
            assert entry.blocks, "the entry carries the bytes written"
        writes.clear()
        big = os.urandom(100 * 1024)  # more than an entry carries for one file: stored, then committed
        await _edit_and_fsync(laptop, "/app.db", 100, big)
        data[100:100 + len(big)] = big
        assert [key.split("/")[0] for key in writes] == ["blocks", "journal"]
        await desktop.pull()
        assert await desktop.read("/app.db") == data
        assert await laptop.read("/app.db") == data
        _no_fsck_findings(laptop, tmp_path)


@in_trio
async def test_a_device_started_from_a_checkpoint_after_the_edit_reads_it(tmp_path):
    async with devices("laptop", "desktop") as (laptop, desktop):
        data = await _saved(laptop, "/app.db", 1 * MiB)
        await _edit_and_fsync(laptop, "/app.db", 1000, b"carried page")
        data[1000:1012] = b"carried page"
        write_checkpoint(laptop.drive.volume, dump_state(laptop.drive.replica))  # as the committer does
        await desktop.restart(afresh=True)
        assert desktop.drive.replica.get_state("checkpoint_seq") == laptop.drive.replica.applied_seq
        assert desktop.drive.replica.carried_blocks(), "the checkpoint says which entry carries the block"
        assert await desktop.read("/app.db") == data


@in_trio
async def test_an_edit_fsynced_while_cut_off_and_then_killed_is_committed_later(tmp_path):
    async with devices("laptop", "desktop") as (laptop, desktop):
        data = await _saved(laptop, "/app.db", 1 * MiB)
        laptop.cut_off()
        with pytest.raises(FusedriveError):
            await _edit_and_fsync(laptop, "/app.db", 77, b"written offline")
        data[77:92] = b"written offline"
        await laptop.restart()  # killed: the carried bytes are queued on disk with the edit
        laptop.cut_off(False)
        await laptop.sync()
        entry = Journal(laptop.drive.volume).read(laptop.drive.replica.applied_seq)
        assert entry.blocks
        await desktop.pull()
        assert await desktop.read("/app.db") == data
        _no_fsck_findings(laptop, tmp_path)


@in_trio
async def test_an_older_volume_keeps_the_block_put_before_the_entry(tmp_path):
    async with devices("laptop", "desktop", reader_version=3) as (laptop, desktop):
        data = await _saved(laptop, "/app.db", 1 * MiB)
        writes = _writes(laptop)
        await _edit_and_fsync(laptop, "/app.db", 5, b"page")
        data[5:9] = b"page"
        assert [key.split("/")[0] for key in writes] == ["blocks", "journal"]
        await desktop.pull()
        assert await desktop.read("/app.db") == data
