"""A replica store in another region (issue 38): reads fail over to it when the store fails
or hangs, devices copy what they write to it, a new device joins from it, and nothing of
what waits to be copied is lost to a kill. In process: the store wrapper over in-memory
stores. Mounted: an S3 primary behind a fault proxy with a second SeaweedFS server or a
directory as the replica."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from conftest import BUCKET
from fusedrive.errors import StoreUnreachable
from fusedrive.store import NotFound
from fusedrive.store import replicated
from fusedrive.store.memory import MemoryStore
from fusedrive.store.replicated import Backlog, VolumeStore, copy_to_replica
from fusedrive.testing.seaweed import start_seaweed
from test_crash import kill_mount
from test_posix import read, write
from test_sync import wait_for


def _pair() -> tuple[MemoryStore, MemoryStore, VolumeStore]:
    primary, replica = MemoryStore("memory://primary"), MemoryStore("memory://replica")
    for store in (primary, replica):
        store.put("volume", b"the header")
    return primary, replica, VolumeStore(primary, {"url": replica.url}, replica)


@pytest.mark.inprocess
def test_reads_come_from_the_replica_while_the_store_fails_and_from_the_store_again_after(monkeypatch):
    primary, replica, store = _pair()
    primary.put("blocks/a", b"from the primary")
    replica.put("blocks/a", b"from the replica")
    replica.put("blocks/only-copied", b"copied")
    assert store.get("blocks/a") == b"from the primary"
    with pytest.raises(NotFound):  # the store's word on what exists is final while it answers
        store.get("blocks/only-copied")
    primary.unreachable = True
    assert store.get("blocks/a") == b"from the replica"
    assert [listed.key for listed in store.list("blocks/")] == ["blocks/a", "blocks/only-copied"]
    assert store.reading_replica_since is not None
    with pytest.raises(StoreUnreachable, match="replica does not have blocks/missing"):
        store.get("blocks/missing")  # not "missing": the store that would know does not answer
    primary.unreachable = False
    assert store.get("blocks/a") == b"from the replica"  # the replica first for a while
    monkeypatch.setattr(replicated, "RETRY_PRIMARY_SECONDS", 0.0)
    store._primary_failed(StoreUnreachable("again"))
    assert store.get("blocks/a") == b"from the replica"  # a reader never waits on the probe
    deadline = time.monotonic() + 10
    while store.reading_replica_since is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.get("blocks/a") == b"from the primary"
    assert store.reading_replica_since is None


@pytest.mark.inprocess
def test_a_store_that_hangs_is_left_to_answer_on_its_own_and_the_replica_answers(monkeypatch):
    primary, replica, store = _pair()
    replica.put("journal/1", b"entry")
    released = threading.Event()
    real_get_range = primary.get_range

    def hanging(key, start, length):
        released.wait(30)
        return real_get_range(key, start, length)

    monkeypatch.setattr(primary, "get_range", hanging)
    monkeypatch.setattr(replicated, "FAILOVER_SECONDS", 0.2)
    started = time.monotonic()
    assert store.get("journal/1") == b"entry"
    assert time.monotonic() - started < 5
    released.set()


@pytest.mark.inprocess
def test_writes_go_to_the_store_only_and_are_copied_from_the_backlog_a_kill_loses_none(tmp_path):
    primary, replica, store = _pair()
    store.backlog = Backlog(str(tmp_path / "replication.sqlite3"))
    store.put("blocks/b", b"block")
    assert store.put_if_absent("journal/00000000000000000001", b"entry")
    assert "blocks/b" not in replica.objects.data  # copying is the replication task's, after
    assert store.backlog.lag() == (2, len(b"block") + len(b"entry"))
    store.backlog.note("blocks/never-written", 9, False)  # killed between the note and the write
    store.backlog.close()

    after_kill = Backlog(str(tmp_path / "replication.sqlite3"))
    ready = after_kill.ready(10)
    assert [noted.key for noted in ready] == ["blocks/b", "journal/00000000000000000001", "blocks/never-written"]
    for noted in ready:
        copy_to_replica(store, noted)
        after_kill.copied(noted)
    assert replica.get("blocks/b") == b"block" and replica.get("journal/00000000000000000001") == b"entry"
    assert "blocks/never-written" not in replica.objects.data
    assert after_kill.lag() == (0, 0)
    store.backlog = None  # a command, not a device: each write is copied at once
    store.put("blocks/c", b"c")
    store.delete("blocks/b")
    assert replica.get("blocks/c") == b"c" and "blocks/b" not in replica.objects.data


@pytest.mark.inprocess
def test_a_write_in_flight_is_not_copied_until_it_is_over(tmp_path):
    """The replication task must not copy a write the primary has not answered yet: it
    would find nothing, drop the note, and the write would land after."""
    backlog = Backlog(str(tmp_path / "replication.sqlite3"))
    backlog.note("blocks/in-flight", 5, False)
    assert backlog.ready(10) == []
    backlog.settled("blocks/in-flight")
    assert [noted.key for noted in backlog.ready(10)] == ["blocks/in-flight"]


# --- mounted: a real primary, a real replica -------------------------------------------------


@pytest.fixture(scope="module")
def replica_server(tmp_path_factory):
    """A second S3 server: the replica's region."""
    server = start_seaweed(tmp_path_factory.mktemp("replica-seaweed"))
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def replica_status(mount) -> dict:
    return mount.control("status")


def wait_replicated(mount, timeout: float = 60) -> None:
    wait_for(lambda: replica_status(mount).get("replica_objects_behind") == 0, timeout=timeout,
             what=f"{mount.device}'s writes to reach the replica")


def nothing_missing_on_replica(volume, *replica_options: str) -> None:
    """`replica sync` finds nothing to copy: the replica has every object the store has."""
    result = volume.cli.run("replica", "sync", volume.url, *replica_options)
    assert " 0 objects " in result.stdout, result.stdout


FILES = {"notes.txt": b"the notes\n", "docs/report.odt": os.urandom(3 * 1024 * 1024 + 17),
         "docs/empty": b"", "photos/2026/a.jpg": os.urandom(200_000)}


def test_with_the_store_down_a_new_device_reads_every_file_from_the_replica_and_changes_arrive_through_it(
        proxied_volume, store_proxy, seaweed, replica_server):
    volume = proxied_volume
    replica = [f"s3://{BUCKET}/replica-{uuid.uuid4().hex[:8]}", "--replica-endpoint-url", replica_server.endpoint]
    added = volume.cli.run("replica", "add", volume.url, *replica)
    assert "is the replica of" in added.stdout
    # the laptop reaches the store directly: its region is up; the desk's way to it goes down
    laptop = volume.mount("laptop", poll_interval=1, endpoint=seaweed.endpoint)
    for path, data in FILES.items():
        write_file(laptop.p(path), data)
    laptop.sync()
    wait_replicated(laptop)
    assert replica_status(laptop)["replica"] == replica[0]

    store_proxy.down()
    desk = volume.mount("desk", poll_interval=1, args=("--replica-url", *replica))  # a new device, an empty cache
    for path, data in FILES.items():
        assert read(desk.p(path)) == data, path
    shown = volume.cli.run("status", str(desk.path)).stdout
    assert "READING FROM IT" in shown and "files are read from its replica" in shown, shown

    write_file(laptop.p("later.txt"), b"saved on the laptop while the desk's store is down")
    laptop.sync()
    wait_replicated(laptop)
    wait_for(lambda: os.path.exists(desk.p("later.txt")), timeout=30, what="the laptop's save to reach the desk")
    assert read(desk.p("later.txt")) == b"saved on the laptop while the desk's store is down"

    write_file(desk.p("from-the-desk.txt"), b"written while the store is down")  # queued: commits need the store
    waiting = volume.cli.run("status", str(desk.path), check=False)
    assert waiting.returncode == 1 and "waiting" in waiting.stdout, waiting.stdout
    store_proxy.up()
    desk.sync()
    wait_for(lambda: os.path.exists(laptop.p("from-the-desk.txt")), timeout=30, what="the desk's save to arrive")
    wait_replicated(desk)
    wait_for(lambda: replica_status(desk)["replica_reads_since"] is None, timeout=30,
             what="the desk to read from the store again")
    nothing_missing_on_replica(volume, *replica[1:])
    checked = volume.cli.run("fsck", replica[0], "--endpoint-url", replica_server.endpoint, "--verify-blocks",
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_replica_added_late_is_filled_by_replica_sync_and_serves_a_new_device(proxied_volume, store_proxy,
                                                                                  tmp_path):
    volume = proxied_volume
    laptop = volume.mount("laptop", poll_interval=1, endpoint=store_proxy.endpoint)
    for path, data in FILES.items():
        write_file(laptop.p(path), data)
    laptop.umount()
    replica_dir = tmp_path / "replica"
    replica_dir.mkdir()
    added = volume.cli.run("replica", "add", volume.url, replica_dir.as_uri(), endpoint=store_proxy.endpoint)
    assert "objects" in added.stdout and " 0 objects " not in added.stdout, added.stdout
    nothing_missing_on_replica(volume)

    store_proxy.down()  # (a store that hangs instead: in process, and in the chaos test's cuts)
    desk = volume.mount("desk", poll_interval=1, endpoint=store_proxy.endpoint, args=("--replica-url", replica_dir.as_uri()))
    for path, data in FILES.items():
        assert read(desk.p(path)) == data, path
    store_proxy.up()


def test_a_kill_while_the_replica_is_away_loses_nothing_of_what_waits_to_be_copied(s3_volume, tmp_path):
    volume = s3_volume
    replica_dir = tmp_path / "replica"
    replica_dir.mkdir()
    volume.cli.run("replica", "add", volume.url, replica_dir.as_uri())
    away = tmp_path / "replica-away"
    replica_dir.rename(away)  # the replica's disk unplugged
    laptop = volume.mount("laptop", poll_interval=1)
    saved = {f"f{i}.bin": os.urandom(5000 + i) for i in range(12)}
    for path, data in saved.items():
        write_file(laptop.p(path), data)
    laptop.sync()
    wait_for(lambda: replica_status(laptop)["replica_error"], timeout=30, what="copies to the replica to fail")
    assert replica_status(laptop)["replica_objects_behind"] > 0  # (small files travel in journal entries)
    kill_mount(laptop)
    away.rename(replica_dir)
    laptop.start(poll_interval=1)
    wait_replicated(laptop)
    compared = volume.cli.run("fsck", volume.url, "--replica", check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    checked = volume.cli.run("fsck", replica_dir.as_uri(), "--verify-blocks", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    entry = sorted(key for key, _ in volume.list_objects("journal/") if key[len("journal/"):].isdigit())[-1]
    (replica_dir / entry).write_bytes(volume.read_object(entry)[:-1] + b"!")  # a copy that is not one
    compared = volume.cli.run("fsck", volume.url, "--replica", check=False)
    assert compared.returncode == 1 and f"the replica's {entry} differs" in compared.stdout, compared.stdout
    (replica_dir / entry).write_bytes(volume.read_object(entry))


def write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write(path, data)


def test_a_replica_the_provider_keeps_is_only_measured(s3_volume, tmp_path):
    """--provider-replicated: the provider copies the bucket (S3 cross-region replication);
    devices copy nothing and say how many journal entries the replica is behind."""
    volume = s3_volume
    replica_dir = tmp_path / "replica"
    replica_dir.mkdir()
    volume.cli.run("replica", "add", volume.url, replica_dir.as_uri(), "--provider-replicated")
    laptop = volume.mount("laptop", poll_interval=1)
    for path, data in FILES.items():
        write_file(laptop.p(path), data)
    laptop.sync()
    behind = wait_for(lambda: (replica_status(laptop).get("replica_entries_behind") or 0) > 0 and
                      replica_status(laptop), timeout=30, what="the replica's lag to be measured")
    assert behind["replica_by_provider"] and behind["replica_objects_behind"] == 0
    assert not (laptop.cache_dir / "replication.sqlite3").exists()
    assert "kept by the provider's replication" in volume.cli.run("status", str(laptop.path)).stdout
    assert not os.listdir(replica_dir), "a device copied to a replica the provider keeps"
    compared = volume.cli.run("fsck", volume.url, "--replica", check=False)
    assert compared.returncode == 1 and "the replica" in compared.stdout and "is missing" in compared.stdout, \
        compared.stdout
    volume.cli.run("replica", "sync", volume.url)  # what the provider would have done
    wait_for(lambda: replica_status(laptop)["replica_entries_behind"] == 0, timeout=45,
             what="the replica's lag to return to 0")  # (measured every 15 s)
    assert volume.cli.run("fsck", volume.url, "--replica", check=False).returncode == 0


def journal_entries(volume) -> list[str]:
    return sorted(key for key, _ in volume.list_objects("journal/") if key[len("journal/"):].isdigit())


def test_promotion_while_the_region_is_lost_moves_every_device_and_the_old_store_never_takes_a_write(
        proxied_volume, store_proxy, replica_server, tmp_path):
    volume = proxied_volume
    replica = [f"s3://{BUCKET}/replica-{uuid.uuid4().hex[:8]}", "--replica-endpoint-url", replica_server.endpoint]
    volume.cli.run("replica", "add", volume.url, *replica)
    laptop = volume.mount("laptop", poll_interval=1)
    desk = volume.mount("desk", poll_interval=1)
    for path, data in FILES.items():
        write_file(laptop.p(path), data)
    laptop.sync()
    wait_replicated(laptop)
    wait_for(lambda: os.path.exists(desk.p("notes.txt")), timeout=30, what="the desk to catch up")
    before = journal_entries(volume)

    store_proxy.down()  # the region is lost
    promoted = volume.cli.run("replica", "promote", volume.url, *replica)  # the store cannot say which replica
    assert f"now lives at {replica[0]}" in promoted.stdout and "does not answer" in promoted.stdout, promoted.stdout
    for device in (laptop, desk):
        wait_for(lambda: replica_status(device).get("moved_from") == volume.url, timeout=60,
                 what=f"{device.device} to move to the promoted replica")
    write_file(laptop.p("after-the-move.txt"), b"committed to the new store")
    laptop.sync()
    wait_for(lambda: os.path.exists(desk.p("after-the-move.txt")), timeout=30, what="the laptop's save on the desk")
    shown = volume.cli.run("status", str(desk.path)).stdout
    assert "moved" in shown and "not fenced yet" in shown, shown

    store_proxy.up()  # the old region comes back: a device fences it before anything is written there
    wait_for(lambda: replica_status(desk)["old_store_fenced"] and replica_status(laptop)["old_store_fenced"],
             timeout=60, what="the devices to fence the old store")
    write_file(desk.p("old-store-back.txt"), b"written once the old store answers again")
    desk.sync()
    assert journal_entries(volume) == before, "a device committed to the old store after the promotion"
    assert "journal/moved" in {key for key, _ in volume.list_objects("journal/")}

    tablet = volume.mount("tablet", poll_interval=1)  # offline all along, it names the old store
    for path, data in {**FILES, "after-the-move.txt": b"committed to the new store",
                       "old-store-back.txt": b"written once the old store answers again"}.items():
        assert read(tablet.p(path)) == data, path
    write_file(tablet.p("from-the-tablet.txt"), b"the tablet's save")
    tablet.sync()
    wait_for(lambda: os.path.exists(laptop.p("from-the-tablet.txt")), timeout=30, what="the tablet's save")
    assert journal_entries(volume) == before
    checked = volume.cli.run("fsck", replica[0], "--endpoint-url", replica_server.endpoint, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.inprocess
def test_two_promotions_at_once_agree_on_one_move_and_a_promoted_replica_is_no_ones_replica_again():
    from fusedrive.errors import UsageError
    from fusedrive.store.replicated import FENCE_KEY, check_replica, moved, promote
    from fusedrive.store.volume import create_volume, open_volume

    primary, replica = MemoryStore("memory://primary"), MemoryStore("memory://replica")
    create_volume(primary, "passphrase")
    for key, (data, _) in list(primary.objects.data.items()):
        replica.put(key, data)
    devices = [open_volume(VolumeStore(primary, {"url": replica.url}, replica), "passphrase") for _ in range(2)]
    results: list = []
    threads = [threading.Thread(target=lambda volume=volume: results.append(promote(volume))) for volume in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results[0][0] == results[1][0], "two moves recorded"
    assert all(fenced for _, fenced in results) and FENCE_KEY in primary.objects.data
    assert all(volume.store.primary is replica and volume.store.replica is None for volume in devices)
    late = open_volume(VolumeStore(primary), "passphrase")  # a device that opens the old store
    assert moved(late) == results[0][0]
    elsewhere = open_volume(VolumeStore(MemoryStore("memory://elsewhere", primary.objects), {"url": replica.url},
                                        replica), "passphrase")
    with pytest.raises(UsageError, match="promoted already"):
        promote(elsewhere)
    with pytest.raises(UsageError, match="was promoted"):
        check_replica(replica, late)


async def _until(check, what: str, seconds: float = 15) -> None:
    import trio

    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.05)


@pytest.mark.inprocess
def test_a_device_that_commits_to_the_old_store_after_a_promotion_moves_and_brings_its_change_along():
    """The old store still answers while the replica is promoted (a planned move, or a
    partition): a device that has not seen the fence commits to the old store, then sees
    it and moves; its change must reach the new store (its backlog, or the put-back of a
    store that went back in time), and every device ends on the new store, in agreement."""
    import trio

    from engines import REPLICA_URL, devices, tree
    from fusedrive.store.memory import MemoryObjects
    from fusedrive.store.replicated import missing_on_replica, promote, sync_replica
    from fusedrive.store.volume import Volume

    def entries(objects: MemoryObjects) -> list[str]:
        return sorted(key for key in objects.data if key.startswith("journal/") and key[8:].isdigit())

    async def scenario():
        objects, replica = MemoryObjects(), MemoryObjects()
        async with devices("laptop", "desktop", objects=objects, replica=replica) as (laptop, desktop):
            seen = laptop.drive.volume
            promoter = Volume(VolumeStore(MemoryStore(objects=objects), {"url": REPLICA_URL},
                                          MemoryStore(REPLICA_URL, replica)), seen.volume_id, seen.chunking, seen.keys)
            sync_replica(promoter.store, missing_on_replica(promoter.store), lambda size: None)  # replica add
            await laptop.save("/a.txt", b"before the promotion")
            await laptop.sync()
            await desktop.pull()
            await _until(lambda: laptop.drive.status()["replica_objects_behind"] == 0, "the copies")

            move, fenced = promote(promoter)
            assert fenced and move["to"] == REPLICA_URL
            before = entries(objects)
            await laptop.save("/b.txt", b"saved before the laptop saw the fence")
            await laptop.sync()
            assert len(entries(objects)) == len(before) + 1, "the save was to be committed to the old store"
            await laptop.pull()  # (its poll) the listing of the old store shows the fence
            await _until(lambda: laptop.drive.replication.moved is not None, "the laptop to move")
            await desktop.pull()
            await _until(lambda: desktop.drive.replication.moved is not None, "the desktop to move")
            old_entries = entries(objects)
            for device in (laptop, desktop, laptop, desktop):
                await device.sync()
                await device.pull()
            assert await desktop.read("/b.txt") == b"saved before the laptop saw the fence"
            await desktop.save("/c.txt", b"saved on the new store")
            await desktop.sync()
            await laptop.pull()
            assert await laptop.read("/c.txt") == b"saved on the new store"
            assert await tree(laptop) == await tree(desktop)
            assert entries(objects) == old_entries, "a device committed to the old store after it moved"
            assert laptop.drive.volume.url == desktop.drive.volume.url == REPLICA_URL

    trio.run(scenario)
