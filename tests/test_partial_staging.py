"""A write into a committed file costs what it writes (issue 37): the file is staged
*partial* — only what is written here is in the staging dir, over the committed manifest —
so a first write into a big file this device never read fetches nothing and copies
nothing; reads merge the two, truncates and holes keep their meaning, a killed device finds
its ranges again, and other devices get exactly the edited file."""

from __future__ import annotations

import os
import random

import pytest

from engines import on_devices, tree

pytestmark = pytest.mark.inprocess

MiB = 1024 * 1024


def count_reads(device) -> list[str]:
    """The keys this device's store GETs from now on."""
    asked: list[str] = []
    store = device.store
    get, get_range = store.get, store.get_range
    store.get = lambda key: (asked.append(key), get(key))[1]
    store.get_range = lambda key, start, length: (asked.append(key), get_range(key, start, length))[1]
    return asked


def count_sent(device) -> list[int]:
    """The sizes of what this device's store is sent from now on."""
    sent: list[int] = []
    store = device.store
    put, put_if_absent = store.put, store.put_if_absent
    store.put = lambda key, data: (sent.append(len(data)), put(key, data))[1]
    store.put_if_absent = lambda key, data: (sent.append(len(data)), put_if_absent(key, data))[1]
    return sent


def staged_bytes_on_disk(device, path: str) -> int:
    node = device.lookup(path)
    return os.stat(device.drive.staging.path(node.fid)).st_blocks * 512


async def saved_elsewhere(laptop, desktop, path: str, size: int, seed: int) -> bytes:
    """Random content of `size` bytes saved on the laptop, and known (not read) by the desktop."""
    data = random.Random(seed).randbytes(size)
    await laptop.save(path, data)
    await laptop.sync()
    await desktop.pull()
    return data


async def edit(device, path: str, offset: int, data: bytes) -> None:
    """open without O_TRUNC, pwrite, close."""
    node = await device.open_for_writing(path)
    try:
        await device.write(node, data, offset, truncate=False)
    finally:
        device.close(node)


@on_devices("laptop", "desktop")
async def test_a_byte_written_into_a_big_file_this_device_never_read_fetches_and_copies_nothing(laptop, desktop):
    original = await saved_elsewhere(laptop, desktop, "/vm.img", 24 * MiB, 1)
    asked = count_reads(desktop)
    await edit(desktop, "/vm.img", 13 * MiB + 5, b"!")
    assert [key for key in asked if key.startswith(("blocks/", "packs/"))] == []
    assert staged_bytes_on_disk(desktop, "/vm.img") <= 64 * 1024  # a page, not 24 MiB
    expected = bytearray(original)
    expected[13 * MiB + 5] = ord("!")
    sent = count_sent(desktop)
    await desktop.sync()
    assert sum(sent) < 256 * 1024  # the byte's new block and the entry, not the file
    assert desktop.lookup("/vm.img").fid not in desktop.drive.files.staged
    await laptop.pull()
    assert (await tree(laptop))["/vm.img"] == expected
    assert (await tree(desktop))["/vm.img"] == expected


@on_devices("laptop", "desktop")
async def test_reads_of_a_file_being_edited_merge_what_was_written_with_what_was_saved(laptop, desktop):
    rng = random.Random(2)
    model = bytearray(await saved_elsewhere(laptop, desktop, "/db", 5 * MiB, 2))
    node = await desktop.open_for_writing("/db")
    try:
        for _ in range(40):
            at, length = rng.randrange(6 * MiB), rng.randrange(1, 70_000)
            data = rng.randbytes(length)
            await desktop.write(node, data, at, truncate=False)
            if at > len(model):
                model.extend(bytes(at - len(model)))
            model[at:at + length] = data
            start, size = rng.randrange(len(model)), rng.randrange(1, 300_000)
            assert await desktop.drive.read(node, start, size) == bytes(model[start:start + size])
    finally:
        desktop.close(node)
    await desktop.sync()
    await laptop.pull()
    assert (await tree(laptop))["/db"] == bytes(model)


@on_devices("laptop", "desktop")
async def test_truncates_of_a_partial_file_cut_its_saved_bytes_and_grow_with_zeros(laptop, desktop):
    original = await saved_elsewhere(laptop, desktop, "/f", 3 * MiB, 3)
    node = await desktop.open_for_writing("/f")
    try:
        await desktop.write(node, b"head", 100, truncate=False)
        await desktop.drive.truncate(node, MiB + 7)  # the saved bytes past here are gone ...
        await desktop.drive.truncate(node, 2 * MiB)  # ... and do not come back: zeros
        await desktop.write(node, b"tail", 2 * MiB - 4, truncate=False)
    finally:
        desktop.close(node)
    expected = original[:100] + b"head" + original[104:MiB + 7] + bytes(MiB - 7 - 4) + b"tail"
    assert (await tree(desktop))["/f"] == expected
    await desktop.sync()
    await laptop.pull()
    assert (await tree(laptop))["/f"] == expected


@on_devices("laptop", "desktop")
async def test_a_killed_device_finds_its_written_ranges_again_and_uploads_them(laptop, desktop):
    original = await saved_elsewhere(laptop, desktop, "/f", 4 * MiB, 4)
    desktop.cut_off()
    await edit(desktop, "/f", 2 * MiB, b"written offline")
    node = await desktop.open_for_writing("/f")
    await desktop.drive.truncate(node, 3 * MiB)
    desktop.close(node)
    expected = original[:2 * MiB] + b"written offline" + original[2 * MiB + 15:3 * MiB]
    await desktop.restart()
    desktop.cut_off(False)  # (it never read the file: the rest of it is in the store)
    assert (await tree(desktop))["/f"] == expected
    await desktop.sync()
    await laptop.pull()
    assert (await tree(laptop))["/f"] == expected


@on_devices("laptop", "desktop")
async def test_an_edit_that_loses_to_another_devices_save_becomes_a_conflicted_copy_of_the_edit(laptop, desktop):
    original = await saved_elsewhere(laptop, desktop, "/doc", 2 * MiB, 5)
    desktop.cut_off()
    await edit(desktop, "/doc", MiB, b"desktop's edit")
    await laptop.save("/doc", b"laptop's new version")
    await laptop.sync()
    desktop.cut_off(False)
    await desktop.sync()
    await laptop.pull()
    files = await tree(laptop)
    assert files["/doc"] == b"laptop's new version"
    copies = [content for path, content in files.items() if "conflicted copy" in path]
    assert copies == [original[:MiB] + b"desktop's edit" + original[MiB + 14:]]
    assert files == await tree(desktop)


@pytest.mark.parametrize("seed", range(12))
@on_devices("laptop", "desktop")
async def test_random_writes_truncates_reads_and_kills_of_a_partial_file_match_a_model(laptop, desktop, seed):
    """Seeded, replayable: one device writes, truncates, reads, closes, syncs, is cut off
    and killed at random on a file it never read; every read and, at the end, every device
    sees exactly what a bytearray saw."""
    rng = random.Random(seed)
    model = bytearray(await saved_elsewhere(laptop, desktop, "/f", rng.randrange(1, 6 * MiB), seed))
    node = None
    for _ in range(60):
        step = rng.choices(["write", "truncate", "read", "close", "sync", "cut", "kill"], [8, 2, 5, 2, 1, 1, 1])[0]
        if step in ("write", "truncate") and node is None:
            node = await desktop.open_for_writing("/f")
        if step == "write":
            at = rng.randrange(len(model) + MiB)
            data = rng.randbytes(rng.choice([1, 100, 4096, 70_000, 600_000]))
            await desktop.write(node, data, at, truncate=False)
            model.extend(bytes(max(0, at + len(data) - len(model))))
            model[at:at + len(data)] = data
        elif step == "truncate":
            size = rng.randrange(len(model) + MiB)
            await desktop.drive.truncate(node, size)
            model[:] = model[:size] + bytes(max(0, size - len(model)))
        elif step == "read" and not desktop.store.unreachable:  # (its base is in the store)
            start = rng.randrange(len(model) + 1)
            current = desktop.lookup("/f")
            assert await desktop.drive.read(current, start, 300_000) == bytes(model[start:start + 300_000])
        elif step == "close" and node is not None:
            desktop.close(node)
            node = None
        elif step == "sync" and node is None and not desktop.store.unreachable:
            await desktop.sync()
        elif step == "cut":
            desktop.cut_off(not desktop.store.unreachable)
        elif step == "kill":
            await desktop.restart()  # a handle open for writing dies with the process
            node = None
    if node is not None:
        desktop.close(node)
    desktop.cut_off(False)
    await desktop.sync()
    await laptop.pull()
    assert (await tree(laptop))["/f"] == bytes(model)
    assert (await tree(desktop))["/f"] == bytes(model)
