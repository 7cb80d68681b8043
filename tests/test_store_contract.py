"""One contract, three stores: the in-memory store of the in-process tier, file:// and S3
(SeaweedFS). Whatever the engine relies on is checked here on each of them."""

from __future__ import annotations

import threading
import uuid

import pytest

from conftest import BUCKET
from fusedrive.errors import StoreUnreachable
from fusedrive.store import NotFound, ShareLinks, StorageClasses, open_store
from fusedrive.store.memory import MemoryStore

KINDS = ["memory", "file", "s3"]


@pytest.fixture(params=[pytest.param(kind, marks=[pytest.mark.inprocess] if kind != "s3" else [])
                        for kind in KINDS])
def store(request, tmp_path, monkeypatch):
    if request.param == "memory":
        return MemoryStore()
    if request.param == "file":
        (tmp_path / "volume").mkdir()  # as `fusedrive init` makes it, with the header first
        store = open_store((tmp_path / "volume").as_uri())
        assert store.put_if_absent("volume", b"a header")
        return store
    server = request.getfixturevalue("seaweed")
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    return open_store(f"s3://{BUCKET}/contract-{uuid.uuid4().hex[:8]}")


def test_get_put_and_ranges(store):
    with pytest.raises(NotFound):
        store.get("blocks/none")
    store.put("blocks/a", b"0123456789")
    assert store.get("blocks/a") == b"0123456789"
    assert store.get_range("blocks/a", 2, 3) == b"234"
    assert store.get_range("blocks/a", 8, 10) == b"89"  # fewer at the end
    store.put("blocks/a", b"replaced")
    assert store.get("blocks/a") == b"replaced"


def test_put_if_absent_has_exactly_one_winner(store):
    results, barrier = [], threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        results.append((store.put_if_absent("journal/00000000000000000001", f"entry {i}".encode()), i))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [i for won, i in results if won]
    assert len(results) == 8 and len(winners) == 1
    assert store.get("journal/00000000000000000001") == f"entry {winners[0]}".encode()


def test_list_is_in_key_order_under_a_prefix_after_a_key(store):
    for seq in (3, 1, 2, 10):
        store.put(f"journal/{seq:020d}", b"x" * seq)
    store.put("journalist", b"not under the prefix")
    store.put("blocks/b", b"other")
    listed = list(store.list("journal/"))
    assert [item.key for item in listed] == [f"journal/{seq:020d}" for seq in (1, 2, 3, 10)]
    assert [item.size for item in listed] == [1, 2, 3, 10]
    after = [item.key for item in store.list("journal/", start_after=f"journal/{2:020d}")]
    assert after == [f"journal/{3:020d}", f"journal/{10:020d}"]
    assert list(store.list("nothing/")) == []


def test_delete_is_idempotent_and_put_file_stores_a_file(store, tmp_path):
    store.put("blocks/gone", b"x")
    store.delete("blocks/gone")
    store.delete("blocks/gone")
    with pytest.raises(NotFound):
        store.get("blocks/gone")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 4096)
    store.put_file("packs/p", str(big))
    assert store.get("packs/p") == big.read_bytes()


def test_optional_abilities_are_declared_not_discovered(store):
    kind = type(store).__name__
    assert isinstance(store, ShareLinks) == (kind in ("FileStore", "S3Store"))
    assert isinstance(store, StorageClasses) == (kind == "S3Store")


@pytest.mark.inprocess
def test_a_memory_store_cut_off_fails_as_a_store_that_is_down():
    shared = MemoryStore()
    cut = MemoryStore(objects=shared.objects)
    shared.put("volume", b"header")
    cut.unreachable = True
    for call in (lambda: cut.get("volume"), lambda: cut.put("x", b""), lambda: list(cut.list(""))):
        with pytest.raises(StoreUnreachable):
            call()
    assert shared.get("volume") == b"header"


@pytest.mark.inprocess
def test_a_volume_directory_that_vanished_or_was_replaced_is_never_written_into(tmp_path):
    """A USB disk unplugged, a NAS share not mounted yet, the folder renamed away, another
    volume's folder in its place: writes and listings fail as a store that is down (work
    queues), nothing recreates the directory, a missing block there is not a lost block."""
    import os
    import shutil

    root = tmp_path / "volume"
    root.mkdir()
    store = open_store(root.as_uri())
    with pytest.raises(StoreUnreachable, match="holds no volume"):
        store.put("blocks/ab/cd", b"x")  # not even init's directory takes anything but a header
    assert store.put_if_absent("volume", b"this volume") and store.get("volume") == b"this volume"
    store.put("blocks/ab/cd", b"block")
    os.rename(root, tmp_path / "unplugged")
    for write in (lambda: store.put("blocks/ef/01", b"y"), lambda: store.put_if_absent("journal/2", b"e"),
                  lambda: store.delete("blocks/ab/cd"), lambda: list(store.list("journal/")),
                  lambda: store.get("blocks/ab/cd")):
        with pytest.raises(StoreUnreachable, match="is missing"):
            write()
    assert not root.exists(), "the vanished directory was recreated"
    root.mkdir()  # an empty mount point where the share should be
    with pytest.raises(StoreUnreachable):
        store.put_if_absent("journal/2", b"entry")
    assert os.listdir(root) == []
    shutil.rmtree(root)
    other = tmp_path / "another"
    other.mkdir()
    (other / "volume").write_bytes(b"another volume")
    os.rename(other, root)
    with pytest.raises(StoreUnreachable, match="another volume"):
        store.put("blocks/ef/01", b"y")
    shutil.rmtree(root)
    shutil.copytree(tmp_path / "unplugged", root)  # the disk back (a copy: other inodes, same volume)
    store.put("blocks/ef/01", b"y")
    assert store.get("blocks/ab/cd") == b"block"


@pytest.mark.inprocess
def test_a_file_volume_keeps_no_empty_folder_of_a_share_that_is_gone(tmp_path):
    root = tmp_path / "volume"
    root.mkdir()
    store = open_store(root.as_uri())
    assert store.put_if_absent("volume", b"a header")
    store.put("shares/0123abcd/report.pdf", b"shared copy")
    store.put("blocks/ab/abcdef", b"a block")
    store.delete("shares/0123abcd/report.pdf")
    store.delete("blocks/ab/abcdef")
    assert not (root / "shares" / "0123abcd").exists(), "unshare leaves an empty folder behind"
    assert (root / "blocks" / "ab").is_dir(), "a block folder stays: an upload may be making its file there"
