"""Range reads of the block cache (a database's page reads): the right bytes or a miss,
never wrong bytes, whatever the cache dir holds — checksums of another segment size
(a cache written by an older version), a file kept whole just after its upload, a cache
file deleted while a range read held it open (its space is given back)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusedrive.engine import cache as cache_module
from fusedrive.engine.cache import BlockCache
from fusedrive.engine.manifest import extent

pytestmark = pytest.mark.inprocess

MiB = 1024 * 1024


def _cache(directory: Path) -> BlockCache:
    return BlockCache(directory, 1 << 30, lambda block_id, data: block_id == f"id-{len(data)}")


def _read_once_from_disk(directory: Path) -> tuple[BlockCache, str, bytes, Path]:
    """A 1 MiB block cached, then read by range by a cache that has it only on disk (as
    after a restart), so that its file is open: (that cache, the block, its bytes, its file)."""
    data = os.urandom(MiB)
    block = f"id-{len(data)}"
    writer = _cache(directory)
    writer.put(block, data)
    writer.close()
    cache = _cache(directory)
    assert cache.read_range(block, 0, 4096) == data[:4096]
    return cache, block, data, next(directory.rglob("*.val"))


def test_checksums_of_another_segment_size_are_made_again_not_trusted(tmp_path, monkeypatch):
    data = os.urandom(MiB)
    block = f"id-{len(data)}"
    others = [os.urandom(64 * 1024 + n) for n in range(1, cache_module.MEMORY_BLOCKS + 1)]
    monkeypatch.setattr(cache_module, "SEGMENT", 32 * 1024)  # as an older version cached it
    older = _cache(tmp_path)
    older.put(block, data)
    older.close()
    monkeypatch.undo()
    cache = _cache(tmp_path)
    assert cache.read_range(block, 100, 4196) is None  # not checkable yet: a miss, the block is read whole
    assert cache.get(block) == data
    for other in others:  # the block leaves memory: range reads go to its file again
        cache.put(f"id-{len(other)}", other)
    hits = cache.hits
    assert cache.read_range(block, 100, 4196) == data[100:4196]
    assert cache.read_range(block, MiB - 10, MiB) == data[-10:]
    assert cache.hits == hits + 2


def test_a_file_kept_after_its_upload_is_read_by_range_at_once(tmp_path):
    blocks = [os.urandom(MiB), os.urandom(MiB // 2 + 3)]
    staged = tmp_path / "staged"
    staged.write_bytes(b"".join(blocks))
    cache = _cache(tmp_path / "cache")
    for data in blocks:  # the uploader had them in hand
        cache.note_checksums(f"id-{len(data)}", data)
    cache.keep(staged, [extent(f"id-{len(data)}", len(data)) for data in blocks])
    cache.close()
    fresh = _cache(tmp_path / "cache")  # after a restart: nothing in memory
    assert fresh.read_range(f"id-{len(blocks[1])}", 5000, 9096) == blocks[1][5000:9096]
    assert fresh.hits == 1 and fresh.misses == 0


def test_a_range_read_never_returns_a_damaged_segment(tmp_path):
    cache, block, data, path = _read_once_from_disk(tmp_path)
    with open(path, "r+b") as f:
        f.seek(20_000)
        f.write(bytes(100))
    assert cache.read_range(block, 16_384, 24_576) is None
    assert cache.read_range(block, 0, 4096) == data[:4096]  # other segments still check


def test_a_cache_file_deleted_while_open_is_closed_at_the_next_read(tmp_path):
    cache, block, data, path = _read_once_from_disk(tmp_path)
    path.unlink()  # evicted by the LRU

    def holding_it() -> bool:
        return any(target.startswith(str(path)) for target in _open_files())

    assert holding_it()
    assert cache.read_range(block, 0, 4096) is None  # gone: a miss, read again from the store
    assert not holding_it(), "the deleted file's space is given back"


def _open_files() -> list[str]:
    """What this process's descriptors point at ("... (deleted)" for a deleted file)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return targets
