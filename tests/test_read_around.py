"""A random read that has to go to the store (a database's page, an index lookup on a
new device) brings the other blocks of the file's 8 MiB window with it: the next random
reads near it are served here, without a round trip each."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from engines import devices
from fusedrive.engine.blocks import block_key
from fusedrive.engine.manifest import pieces, starts
from fusedrive.engine.reads import READ_AROUND

pytestmark = pytest.mark.inprocess

MiB = 1024 * 1024
PAGE = 4096


def test_a_random_read_from_the_store_brings_its_window_and_no_more():
    async def scenario():
        async with devices("laptop", "desktop") as (laptop, desktop):
            rng = random.Random(24)
            data = rng.randbytes(3 * READ_AROUND)
            await laptop.save("/pages.db", data)
            await laptop.sync()
            await desktop.pull()
            gets: list[str] = []
            get_range = desktop.store.get_range
            desktop.store.get_range = lambda key, start, length: (gets.append(key), get_range(key, start, length))[1]
            node = desktop.lookup("/pages.db")
            layout = pieces(node.extents())
            offsets = starts(layout)

            def blocks_touching(start: int, end: int) -> set[str]:
                return {block_key(p.block) for p, at in zip(layout, offsets) if at < end and at + p.length > start}

            async def page_at(offset: int) -> bytes:
                with trio.fail_after(30):
                    page = await desktop.drive.read(node, offset, PAGE)
                    while True:  # the window's other blocks: started, then on their way
                        await trio.testing.wait_all_tasks_blocked()
                        if not desktop.drive.reader._in_flight:
                            break
                        await trio.sleep(0.01)
                return page

            window = (READ_AROUND, 2 * READ_AROUND)
            first = READ_AROUND + 3 * MiB + 5 * PAGE
            assert await page_at(first) == data[first:first + PAGE]
            assert set(gets) == blocks_touching(*window)  # the window's blocks, each once
            assert len(gets) == len(set(gets)) > 2
            gets.clear()
            for offset in (rng.randrange(*window) // PAGE * PAGE for _ in range(50)):
                assert await page_at(offset) == data[offset:offset + PAGE]
            assert gets == []  # all served here
            beyond = next(at for at in offsets if at >= 2 * READ_AROUND) + PAGE  # a block no window read
            assert await page_at(beyond) == data[beyond:beyond + PAGE]
            assert gets and set(gets) <= blocks_touching(2 * READ_AROUND, 3 * READ_AROUND)
            desktop.check()

    trio.run(scenario)
