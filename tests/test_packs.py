"""Small files share pack objects in the store: hundreds of files are a few PUTs, every
device reads each file exactly, gc deletes a pack once none of its files is left, and
a damaged or missing pack is an EIO for the files in it and an fsck finding — never
wrong bytes. A pack PUT that fails fails every upload in it, and they all retry."""

from __future__ import annotations

import errno
import json
import os
import random
import threading

from fusedrive.engine.blocks import BlockStore
from fusedrive.engine.cache import BlockCache
from fusedrive.engine.manifest import contents, extent
from fusedrive.errors import StoreUnreachable
from fusedrive.store import open_store
from fusedrive.store.volume import create_volume
from test_cache import _read_uncached
from test_gc import expire_everything_old, gc
from test_posix import write

FILES = 300
SEAL_OVERHEAD = 1 + 1 + 12 + 16  # codec byte, seal version, nonce, tag: random data is stored raw


def _small_files(mount, count: int, seed: int) -> dict[str, bytes]:
    """`count` files of 1 byte to 20 KB (each its own content), written and uploaded."""
    rng = random.Random(seed)
    os.makedirs(mount.p("src"))
    files = {}
    for i in range(count):
        files[f"src/f{i:04d}.txt"] = data = rng.randbytes(rng.randint(1, 20_000))
        write(mount.p(f"src/f{i:04d}.txt"), data)
    mount.sync()
    return files


def _objects(volume, prefix: str) -> set[str]:
    return {key for key, _size in volume.list_objects(prefix)}


def _fsck_verified(volume) -> None:
    result = volume.fsck("--verify-blocks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_small_files_share_packs_and_a_new_device_reads_every_one(volume):
    laptop = volume.mount("laptop")
    files = _small_files(laptop, FILES, seed=1)
    packs, lone = _objects(volume, "packs/"), _objects(volume, "blocks/")
    assert packs, "no pack was made"
    assert len(packs) + len(lone) <= FILES // 3, f"{len(packs)} packs and {len(lone)} blocks for {FILES} files"
    desk = volume.mount("desk")  # an empty cache: every file comes out of a pack
    for name, data in files.items():
        assert _read_uncached(desk.p(name)) == data, name
    _fsck_verified(volume)


def test_gc_deletes_a_pack_once_none_of_its_files_is_left(volume):
    laptop = volume.mount("laptop")
    files = _small_files(laptop, 80, seed=2)
    expire_everything_old(volume)
    names = sorted(files)
    for name in names[::2]:
        os.unlink(laptop.p(name))
    laptop.sync()
    gc(volume, "--grace", "0")
    held = du(volume)["unreferenced_bytes_in_packs"]  # deleted files sharing a pack with a kept one
    assert 0 < held <= sum(len(files[name]) + SEAL_OVERHEAD for name in names[::2]), held
    desk = volume.mount("desk")
    for name in names[1::2]:
        assert _read_uncached(desk.p(name)) == files[name], name
    _fsck_verified(volume)
    assert _objects(volume, "packs/"), "packs that still hold files were deleted"

    for name in names[1::2]:
        os.unlink(laptop.p(name))
    laptop.sync()
    report = gc(volume, "--grace", "0")
    assert report["packs_deleted"] >= 1
    assert _objects(volume, "packs/") == set() and _objects(volume, "blocks/") == set()
    assert du(volume)["unreferenced_bytes_in_packs"] == 0
    _fsck_verified(volume)


def du(volume) -> dict:
    return json.loads(volume.cli.run("du", volume.url, "--json").stdout)


def test_a_damaged_pack_fails_only_the_file_it_damages_and_a_missing_one_is_reported(volume):
    laptop = volume.mount("laptop")
    files = _small_files(laptop, 40, seed=3)
    pack = max(_objects(volume, "packs/"), key=lambda key: len(volume.read_object(key)))
    original = volume.read_object(pack)
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    volume.write_object(pack, bytes(damaged))
    try:
        desk = volume.mount("desk")
        failed = []
        for name, data in files.items():
            try:
                assert _read_uncached(desk.p(name)) == data, f"{name}: wrong bytes"
            except OSError as exc:
                assert exc.errno == errno.EIO
                failed.append(name)
        assert len(failed) == 1, failed  # one flipped byte is inside exactly one file's block
        desk.umount()
        assert pack in (desk.cache_dir / "mount.log").read_text(), "the error does not name the damaged pack"
        result = volume.fsck("--verify-blocks")
        assert result.returncode == 1 and pack in result.stdout
        volume.delete_object(pack)
        result = volume.fsck()
        assert result.returncode == 1 and f"Pack {pack} (holding blocks" in result.stdout
    finally:
        volume.write_object(pack, original)
    _fsck_verified(volume)


def test_a_failed_pack_put_fails_every_upload_in_it_and_marks_nothing_stored(tmp_path):
    store_dir = tmp_path / "store"
    store_dir.mkdir()  # as `fusedrive init` makes it: a store never makes a volume's directory
    volume = create_volume(open_store(f"file://{store_dir}"), "passphrase")
    blocks = BlockStore(volume, BlockCache(tmp_path / "cache", 1 << 30, volume.keys.is_id_of))
    payloads = [os.urandom(1000 + i) for i in range(16)]
    ids = [volume.keys.id_of(p) for p in payloads]

    def upload_all() -> list:
        """Upload every payload from its own thread at once; what each call returned or raised."""
        results: list = [None] * len(payloads)

        def one(i: int) -> None:
            try:
                results[i] = blocks.upload_packed(ids[i], payloads[i])
            except (OSError, StoreUnreachable) as exc:
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return results

    (store_dir / "packs").write_bytes(b"")  # a file where the packs directory goes: the PUT fails
    failed = upload_all()
    assert all(isinstance(r, (OSError, StoreUnreachable)) for r in failed), failed
    assert not any(blocks.is_known(i) for i in ids)
    (store_dir / "packs").unlink()
    locations = upload_all()
    assert len({loc.pack for loc in locations if loc is not None}) < len(payloads) // 2, locations
    fresh = BlockStore(volume, BlockCache(tmp_path / "other-cache", 1 << 30, volume.keys.is_id_of))
    manifest = [extent(i, len(p), location=loc) for i, p, loc in zip(ids, payloads, locations)]
    assert b"".join(contents(manifest, fresh.fetch)) == b"".join(payloads)



def test_an_urgent_block_sends_its_pack_without_waiting_out_the_linger(tmp_path, monkeypatch):
    """fsync of a small file waits for its block alone: the pack gathering it goes at once,
    with what joined it so far."""
    monkeypatch.setattr("fusedrive.engine.blocks.PACK_LINGER_SECONDS", 60)
    (tmp_path / "store").mkdir()  # as `fusedrive init` makes it
    volume = create_volume(open_store(f"file://{tmp_path / 'store'}"), "passphrase")
    blocks = BlockStore(volume, BlockCache(tmp_path / "cache", 1 << 30, volume.keys.is_id_of))
    payloads = [os.urandom(3000), os.urandom(3000)]
    ids = [volume.keys.id_of(p) for p in payloads]
    locations: dict[int, object] = {}
    gathering = threading.Thread(target=lambda: locations.update({0: blocks.upload_packed(ids[0], payloads[0])}))
    gathering.start()
    for _ in range(1000):  # until the first block lingers for company
        if blocks.packer._gathering is not None:
            break
        gathering.join(0.01)
    locations[1] = blocks.upload_packed(ids[1], payloads[1], urgent=True)
    gathering.join(10)
    assert not gathering.is_alive(), "the pack waited out its linger"
    assert locations[0] is not None and locations[0].pack == locations[1].pack


def test_fsck_checks_a_block_stored_both_alone_and_in_a_pack(tmp_path):
    """Two devices can store one block both ways (one packs it, the other stores it alone);
    fsck --verify-blocks checks each copy."""
    from fusedrive.tools.fsck import check_blocks
    from fusedrive.report import no_progress

    (tmp_path / "store").mkdir()  # as `fusedrive init` makes it
    volume = create_volume(open_store(f"file://{tmp_path / 'store'}"), "passphrase")
    payloads = [os.urandom(2000) for _ in range(2)]
    ids = [volume.keys.id_of(p) for p in payloads]
    alone = BlockStore(volume, BlockCache(tmp_path / "alone", 1 << 30, volume.keys.is_id_of))
    alone.upload(ids[0], payloads[0])
    packing = BlockStore(volume, BlockCache(tmp_path / "packing", 1 << 30, volume.keys.is_id_of))
    locations: list = [None, None]
    threads = [threading.Thread(target=lambda i=i: locations.__setitem__(i, packing.upload_packed(ids[i], payloads[i])))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert locations[0] is not None, "the two blocks did not share a pack"
    refs = {(ids[0], None), (ids[0], locations[0]), (ids[1], locations[1])}
    assert check_blocks(refs, packing, verify=True, progress=no_progress) == []
