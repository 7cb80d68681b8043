"""Manifests cut around in-place writes describe exactly the written file.

Seeded random files (blocks, pieces of blocks, holes; blocks alone or in packs) get random writes, inside and
past their end; the patched manifest, read back as a user would, must equal the file
the writes made. A failure prints its seed; replay with FUSEDRIVE_SEEDS=<seed>.
Then the uploader on a real `file://` volume: many small edits stay small uploads,
and the manifest is compacted before it gets cut up past its limit.
"""

from __future__ import annotations

import hashlib
import os
import random

from concurrent.futures import ThreadPoolExecutor

import pytest

from fusedrive.engine.blocks import BlockStore
from fusedrive.engine.cache import BlockCache
from fusedrive.errors import IntegrityError
from fusedrive.engine.manifest import Location, block_ids, contents, extent, patch_plan, pieces
from fusedrive.engine.staging import Patchable
from fusedrive.store import open_store
from fusedrive.engine.uploader import MAX_PATCH_EXTENTS, build_manifest
from fusedrive.store.volume import create_volume

pytestmark = pytest.mark.inprocess

MiB = 1024 * 1024

SEEDS = [int(s) for s in os.environ.get("FUSEDRIVE_SEEDS", "1,2,3,4,5,6,7,8").split(",")]


class Stored(dict):
    """Block id → (bytes, where stored); fetching with another location than the block's
    is an error, so a manifest that loses a packed block's location fails."""

    def fetch(self, block_id: str, location: Location | None) -> bytes:
        data, stored_at = self[block_id]
        assert location == stored_at, f"block {block_id} fetched from {location}, stored at {stored_at}"
        return data


def _random_file(rng: random.Random, blocks: Stored) -> tuple[list[list], bytearray]:
    """A manifest of whole blocks, pieces of blocks and holes, some of the blocks in
    packs, and the bytes it stands for."""
    manifest, data = [], bytearray()
    for _ in range(rng.randint(0, 6)):
        kind = rng.choice(["block", "piece", "hole"])
        length = rng.randint(1, 300)
        if kind == "hole":
            manifest.append([None, length])
            data += bytes(length)
            continue
        block = rng.randbytes(length + (rng.randint(0, 50) if kind == "piece" else 0))
        block_id = hashlib.sha256(block).hexdigest()
        location = Location(f"pack{rng.randint(0, 3)}", rng.randint(0, 9999), len(block) + 29) if rng.random() < 0.5 \
            else None
        blocks[block_id] = (block, location)
        if kind == "block":
            manifest.append(extent(block_id, length, location=location))
            data += block
        else:
            offset = rng.randint(0, len(block) - length)
            manifest.append(extent(block_id, length, offset, location))
            data += block[offset:offset + length]
    return manifest, data


@pytest.mark.parametrize("seed", SEEDS)
def test_a_patched_manifest_reads_as_the_written_file(seed):
    rng = random.Random(seed)
    for round_ in range(200):
        blocks = Stored()
        base, data = _random_file(rng, blocks)
        staged, written = bytearray(data), []
        for _ in range(rng.randint(0, 5)):
            start = rng.randint(0, len(staged) + 100)
            payload = rng.randbytes(rng.randint(1, 120))
            if start > len(staged):
                staged += bytes(start - len(staged))  # a write past the end leaves a hole
            staged[start:start + len(payload)] = payload
            written.append((start, start + len(payload)))
        plan = patch_plan(base, len(data), written, len(staged))
        patched = []
        for item in plan:
            if isinstance(item, tuple):  # uploaded from the staged file as a new block
                start, length = item
                block = bytes(staged[start:start + length])
                blocks[hashlib.sha256(block).hexdigest()] = (block, None)
                patched.append([hashlib.sha256(block).hexdigest(), length])
            else:
                patched.append(item)
        where = f"seed {seed} round {round_}: base {base}, writes {written}"
        assert b"".join(contents(patched, blocks.fetch)) == staged, where
        assert all(piece.length > 0 for piece in pieces(patched)), where
        uploaded = sum(item[1] for item in plan if isinstance(item, tuple))
        assert uploaded <= sum(end - start for start, end in written), where


def test_a_plan_is_refused_when_the_base_does_not_add_up():
    assert patch_plan([["a", 10]], 11, [(0, 1)], 11) is None
    assert patch_plan([["a", 10]], 10, [(0, 1)], 9) is None  # shrank: not a patch


def test_a_block_too_short_for_its_piece_is_an_integrity_error_not_short_data():
    with pytest.raises(IntegrityError):
        b"".join(contents([["a", 10, 5]], lambda block_id, location: b"x" * 12))


def _stored_bytes(root) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _dirs, files in os.walk(root) for f in files)


def _file_volume(tmp_path):
    """A new volume in a `file://` store under `tmp_path`: (its directory, it, its block store)."""
    store_dir = tmp_path / "store"
    store_dir.mkdir()  # as `fusedrive init` makes it: a store never makes a volume's directory
    volume = create_volume(open_store(f"file://{store_dir}"), "passphrase")
    return store_dir, volume, BlockStore(volume, BlockCache(tmp_path / "cache", 1 << 30, volume.keys.is_id_of))


def test_small_edits_upload_small_blocks_until_the_manifest_is_compacted(tmp_path):
    store_dir, volume, blocks = _file_volume(tmp_path)
    rng = random.Random(7)
    data = bytearray(rng.randbytes(8 * MiB))
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    limit = len(data) // volume.chunking["avg"] + MAX_PATCH_EXTENTS
    fd = os.open(staged, os.O_RDWR)
    try:
        with ThreadPoolExecutor(4) as pool:
            manifest = build_manifest(fd, len(data), volume.chunking, blocks, pool).extents
            patched = compacted = 0
            for _ in range(2 * MAX_PATCH_EXTENTS):
                at = rng.randrange(len(data))
                os.pwrite(fd, b"!", at)
                data[at] = ord("!")
                before = _stored_bytes(store_dir)
                manifest = build_manifest(fd, len(data), volume.chunking, blocks, pool,
                                          patchable=Patchable(manifest, len(data), [(at, at + 1)])).extents
                assert len(manifest) <= limit
                if any(len(extent) == 3 for extent in manifest):
                    patched += 1
                    assert _stored_bytes(store_dir) - before < 4096  # the byte's own block, not its old block
                else:
                    compacted += 1
        assert b"".join(contents(manifest, blocks.fetch)) == data
    finally:
        os.close(fd)
    assert patched > MAX_PATCH_EXTENTS // 2 and compacted >= 1


def test_a_file_cut_up_in_one_place_is_compacted_there_not_chunked_whole(tmp_path, monkeypatch):
    """A database written in place at a few pages of a big file: once its manifest is too
    cut up, the upload reads and chunks the cut-up place again, not the whole file, and
    sends only the blocks the edits changed."""
    from fusedrive.engine import uploader

    store_dir, volume, blocks = _file_volume(tmp_path)
    rng = random.Random(11)
    data = bytearray(rng.randbytes(48 * MiB))
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    chunked: list[int] = []
    chunk_spans = uploader.chunk_spans
    monkeypatch.setattr(uploader, "chunk_spans", lambda window, chunking: (chunked.append(len(window)),
                                                                           chunk_spans(window, chunking))[1])
    fd = os.open(staged, os.O_RDWR)
    try:
        with ThreadPoolExecutor(4) as pool:
            manifest = build_manifest(fd, len(data), volume.chunking, blocks, pool).extents
            whole_before = {extent[0] for extent in manifest}
            hot = range(20 * MiB, 22 * MiB)  # the pages written: 2 MiB of the 48
            for _ in range(MAX_PATCH_EXTENTS):
                at = rng.choice(hot) // 4096 * 4096
                page = rng.randbytes(4096)
                os.pwrite(fd, page, at)
                data[at:at + 4096] = page
                chunked.clear()
                before = _stored_bytes(store_dir)
                manifest = build_manifest(fd, len(data), volume.chunking, blocks, pool,
                                          patchable=Patchable(manifest, len(data), [(at, at + 4096)])).extents
                if all(len(extent) == 2 for extent in manifest):
                    break
            else:
                pytest.fail("the manifest was never compacted")
        assert sum(chunked) < 12 * MiB  # the cut-up place and the blocks around it, not 48 MiB
        assert _stored_bytes(store_dir) - before < 8 * MiB  # the blocks the pages changed
        assert len(whole_before & {extent[0] for extent in manifest}) >= len(whole_before) - 8
        assert b"".join(contents(manifest, blocks.fetch)) == data
    finally:
        os.close(fd)


def test_an_edit_keeping_a_block_gc_may_have_deleted_uploads_the_whole_file_again(tmp_path):
    store_dir, volume, blocks = _file_volume(tmp_path)
    staged = tmp_path / "staged"
    staged.write_bytes(os.urandom(3 * MiB))
    fd = os.open(staged, os.O_RDWR)
    try:
        with ThreadPoolExecutor(4) as pool:
            manifest = build_manifest(fd, 3 * MiB, volume.chunking, blocks, pool).extents
            for block_id in block_ids(manifest):  # gc took them: no manifest it knows of held them
                os.unlink(store_dir / "blocks" / block_id)
            blocks.reset_known(set())
            os.pwrite(fd, b"!", MiB)
            manifest = build_manifest(fd, 3 * MiB, volume.chunking, blocks, pool,
                                      patchable=Patchable(manifest, 3 * MiB, [(MiB, MiB + 1)])).extents
        assert all(len(extent) == 2 for extent in manifest)
        assert b"".join(contents(manifest, blocks.fetch)) == staged.read_bytes()
    finally:
        os.close(fd)


def test_fsck_finds_a_piece_reaching_past_its_block():
    from fusedrive.tools.fsck import check_tree
    from fusedrive.engine.replica import Replica

    replica = Replica(":memory:")
    replica.apply({"op": "mkroot", "mode": 0o40755, "uid": 0, "gid": 0, "t": 0})
    replica.db.execute("INSERT INTO versions(fid, version, manifest, size, mtime_ns, t, device) "
                       "VALUES('f', 1, '[[\"b\", 10], [null, 20]]', 30, 0, 0, 'laptop')")
    assert check_tree(replica) == []
    replica.db.execute("INSERT INTO versions(fid, version, manifest, size, mtime_ns, t, device) "
                       "VALUES('f', 2, '[[null, 30], [\"b\", 5, 8]]', 35, 0, 0, 'laptop')")
    assert check_tree(replica) == ["A manifest takes bytes 8-13 of block b, which has 10."]
