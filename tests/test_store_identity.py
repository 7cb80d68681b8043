"""The drive knows its store: a file:// volume directory that goes away (a USB disk
unplugged, a NAS share not mounted, the folder renamed) or is replaced by an empty one is
never written into; saves queue, `status` says why, a device that holds the volume mounts
while it is away, and when it is back every closed save arrives."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import _new_volume, _teardown
from test_posix import read, write
from test_sync import same_everywhere, wait_for


@pytest.fixture
def file_volume(tmp_path, request):
    volume = _new_volume("file", tmp_path, request)
    yield volume
    _teardown(volume)


def status_of(volume, mount) -> tuple[int, dict, str]:
    shown = volume.cli.run("status", str(mount.path), check=False)
    [entry] = json.loads(volume.cli.run("status", str(mount.path), "--json", check=False).stdout)
    return shown.returncode, entry, shown.stdout


def two_devices_with(volume, name: str, data: bytes):
    """A laptop and a desktop mounted, both holding `name`, saved on the laptop."""
    laptop = volume.mount("laptop", poll_interval=0.3)
    desktop = volume.mount("desktop", poll_interval=0.3)
    write(laptop.p(name), data)
    laptop.sync()
    same_everywhere(laptop, desktop)
    return laptop, desktop


def test_a_volume_directory_that_goes_away_is_never_recreated_and_loses_no_save(file_volume, tmp_path):
    laptop, desktop = two_devices_with(file_volume, "before.txt", b"before")
    directory = tmp_path / "volume"
    away = tmp_path / "unplugged"
    os.rename(directory, away)
    directory.mkdir()  # the empty mount point of a share not mounted yet
    write(laptop.p("laptop.txt"), b"saved while the disk was away")
    write(desktop.p("desktop.txt"), b"saved on the desktop meanwhile")
    for device in (laptop, desktop):
        code, entry, text = status_of(file_volume, device)
        assert code != 0 and (entry["ops_waiting"] or entry["files_waiting"]), text
        wait_for(lambda: status_of(file_volume, device)[1]["store_offline_since"], timeout=30,
                 what=f"{device.device} to see the store is away")
        code, entry, text = status_of(file_volume, device)
        assert code != 0 and "is missing or holds no volume" in text, text
    assert os.listdir(directory) == [], "nothing is written into the impostor"

    desktop.control("leave-queued")  # the desktop restarts while the disk is away
    file_volume.cli.run("umount", str(desktop.path), "--no-wait", check=False)
    file_volume.mounts.remove(desktop)
    desktop.start(poll_interval=0.3)
    file_volume.mounts.append(desktop)
    assert read(desktop.p("before.txt")) == b"before", "it mounts from its cache dir"
    assert read(desktop.p("desktop.txt")) == b"saved on the desktop meanwhile"

    directory.rmdir()
    os.rename(away, directory)  # the disk is back
    laptop.sync()
    desktop.sync()
    tree = same_everywhere(laptop, desktop)
    assert {"before.txt", "laptop.txt", "desktop.txt"} <= set(tree)
    assert read(desktop.p("laptop.txt")) == b"saved while the disk was away"
    assert read(laptop.p("desktop.txt")) == b"saved on the desktop meanwhile"
    assert status_of(file_volume, laptop)[0] == 0


def test_a_device_that_never_joined_is_told_there_is_no_volume(file_volume, tmp_path):
    os.rename(tmp_path / "volume", tmp_path / "unplugged")
    (tmp_path / "m").mkdir()
    result = file_volume.cli.run("mount", file_volume.url, str(tmp_path / "m"), "--cache-dir",
                                 str(tmp_path / "new-cache"), check=False)
    assert result.returncode == 3 and "No fusedrive volume" in result.stderr, result.stderr
    assert not (tmp_path / "volume").exists()
    shutil.move(str(tmp_path / "unplugged"), str(tmp_path / "volume"))


def copy_of_the_volume(tmp_path) -> None:
    """A backup of the volume directory, as it is now."""
    shutil.copytree(tmp_path / "volume", tmp_path / "backup")


def put_back_the_copy(tmp_path) -> None:
    """The backup restored: the directory moved aside at once (a device may be writing into
    it, a checkpoint), the copy put in its place."""
    (tmp_path / "volume").rename(tmp_path / "replaced")
    shutil.copytree(tmp_path / "backup", tmp_path / "volume")


def test_a_store_restored_from_an_older_copy_gets_back_every_entry_it_lost(file_volume, tmp_path):
    """The volume directory copied after f1, then f2 and f3 saved, then the copy put back
    (a backup restored, a disk image rolled back), then f4 and f5 saved on two devices: the
    devices put the lost entries back byte for byte before going on, so nothing is lost,
    no seq holds two entries, status says what happened, and a new device joins."""
    laptop, desktop = two_devices_with(file_volume, "f1.txt", b"one")
    copy_of_the_volume(tmp_path)
    write(laptop.p("f2.txt"), b"two")
    write(laptop.p("f3.txt"), b"three")
    laptop.sync()
    same_everywhere(laptop, desktop)
    put_back_the_copy(tmp_path)
    write(laptop.p("f4.txt"), b"four")
    write(desktop.p("f5.txt"), b"five")
    laptop.sync()
    desktop.sync()
    tree = same_everywhere(laptop, desktop)
    assert {f"f{n}.txt" for n in range(1, 6)} <= set(tree)
    for device in (laptop, desktop):
        for n, text in enumerate((b"one", b"two", b"three", b"four", b"five"), start=1):
            assert read(device.p(f"f{n}.txt")) == text
    said = [e for d in (laptop, desktop) for e in d.control("status")["errors"] if "gone back in time" in e]
    assert said and "which this device put back" in said[0] and "nothing saved since is lost" in said[0], said
    newcomer = file_volume.mount("newcomer")
    assert read(newcomer.p("f3.txt")) == b"three" and read(newcomer.p("f5.txt")) == b"five"


def unmounted(volume, device) -> None:
    """The device is switched off (its cache dir stays)."""
    volume.cli.run("umount", str(device.path), check=False)
    volume.mounts.remove(device)


def mounted_again(volume, device) -> None:
    device.start(poll_interval=0.3)
    volume.mounts.append(device)


def test_a_store_restored_while_a_device_was_off_forks_nothing_and_loses_nothing(file_volume, tmp_path):
    """The laptop saves f2 and edits f1, then is switched off; the volume directory is put
    back to a copy from before (the laptop's entries are gone); the desktop, which never saw
    them, saves f3 and edits f1 at the same seqs: the journal forked. The laptop, switched
    on, takes the store's history and commits its lost changes again on top — f2 arrives
    everywhere, its edit of f1 (which lost to the desktop's) as a conflicted copy — says so
    in status, and a new device reads it all."""
    laptop, desktop = two_devices_with(file_volume, "f1.txt", b"one")
    unmounted(file_volume, desktop)
    copy_of_the_volume(tmp_path)
    write(laptop.p("f2.txt"), b"two, saved on the laptop")
    write(laptop.p("f1.txt"), b"one, edited on the laptop")
    laptop.sync()
    unmounted(file_volume, laptop)
    put_back_the_copy(tmp_path)  # while the laptop is off
    mounted_again(file_volume, desktop)
    write(desktop.p("f3.txt"), b"three, saved on the desktop")
    write(desktop.p("f1.txt"), b"one, edited on the desktop")
    desktop.sync()
    mounted_again(file_volume, laptop)
    laptop.sync()
    desktop.sync()
    tree = same_everywhere(laptop, desktop)
    [copy] = [name for name in tree if name.startswith("f1 (conflicted copy")]
    for device in (laptop, desktop):
        assert read(device.p("f1.txt")) == b"one, edited on the desktop"
        assert read(device.p(copy)) == b"one, edited on the laptop"
        assert read(device.p("f2.txt")) == b"two, saved on the laptop"
        assert read(device.p("f3.txt")) == b"three, saved on the desktop"
    said = [e for e in laptop.control("status")["errors"] if "forked" in e]
    assert said and "committed again" in said[0], laptop.control("status")["errors"]
    newcomer = file_volume.mount("newcomer")
    assert read(newcomer.p("f2.txt")) == b"two, saved on the laptop"
    assert read(newcomer.p(copy)) == b"one, edited on the laptop"


def test_an_s3_volume_emptied_under_a_running_mount_is_never_refilled_and_comes_back_whole(s3_volume):
    """Every object of the volume deleted (a bucket emptied by mistake, a lifecycle rule):
    the device does not put its journal back into a store without the volume's header —
    status says the store needs attention — and when the objects are back (restored from a
    backup), a save made meanwhile arrives and fsck is clean."""
    list_objects, read_object = s3_volume.list_objects, s3_volume.read_object
    write_object, delete_object = s3_volume.write_object, s3_volume.delete_object
    laptop = s3_volume.mount("laptop", poll_interval=0.3)
    write(laptop.p("before.txt"), b"before")
    laptop.sync()
    backup = {key: read_object(key) for key, _ in list_objects()}
    for key in backup:
        delete_object(key)
    entry = wait_for(lambda: (s := status_of(s3_volume, laptop)[1])["store_needs_attention"] and s, timeout=30,
                     what="the device to see the volume is gone")
    assert "no longer holds this volume" in entry["store_needs_attention"]
    assert "volume" not in {key for key, _ in list_objects()}, "the header is not written back"
    code, _, text = status_of(s3_volume, laptop)
    assert code == 16 and "no longer holds this volume" in text, text
    write(laptop.p("after.txt"), b"saved while the bucket was away")
    for key, data in backup.items():
        write_object(key, data)
    laptop.sync()
    assert read(laptop.p("after.txt")) == b"saved while the bucket was away"
    assert read(laptop.p("before.txt")) == b"before"
    assert status_of(s3_volume, laptop)[0] == 0


def test_a_device_that_knows_the_volume_mounts_from_its_cache_while_the_bucket_is_empty(s3_volume):
    """Never "run fusedrive init" for a volume this device holds: it mounts from its cache
    dir, serves what it has, queues its saves and appends nothing to the empty store."""
    laptop = s3_volume.mount("laptop", poll_interval=0.3)
    write(laptop.p("kept.txt"), b"on this device")
    laptop.sync()
    laptop.umount()
    backup = {key: s3_volume.read_object(key) for key, _ in s3_volume.list_objects()}
    for key in backup:
        s3_volume.delete_object(key)
    laptop.start(poll_interval=0.3)
    s3_volume.mounts.append(laptop)
    assert read(laptop.p("kept.txt")) == b"on this device"
    write(laptop.p("queued.txt"), b"saved while the bucket was empty")
    wait_for(lambda: status_of(s3_volume, laptop)[1]["store_needs_attention"], timeout=30,
             what="status to say the store needs attention")
    assert not [key for key, _ in s3_volume.list_objects("journal/")], "an entry was appended to the empty store"
    for key, data in backup.items():
        s3_volume.write_object(key, data)
    laptop.sync()
    assert status_of(s3_volume, laptop)[0] == 0


def test_fsck_repair_fills_a_journal_gap_from_a_devices_copy_or_marks_it_lost(file_volume, tmp_path):
    """A journal with a gap (an entry the store lost and no running device put back) locks
    every new device out; `fsck --repair` puts the entry back from a device's cache dir,
    or without one marks it lost so devices read past it; a second repair changes nothing."""
    laptop = file_volume.mount("laptop")
    for name in ("a.txt", "b.txt", "c.txt"):
        write(laptop.p(name), name.encode())
        laptop.sync()
    laptop.umount()
    journal = sorted(key for key, _ in file_volume.list_objects("journal/"))
    lost_key = journal[-2]  # the entry that made b.txt
    lost = file_volume.read_object(lost_key)
    file_volume.delete_object(lost_key)
    (tmp_path / "m").mkdir()
    refused = file_volume.cli.run("mount", file_volume.url, str(tmp_path / "m"), "--cache-dir",
                                  str(tmp_path / "new-cache"), check=False)
    assert refused.returncode == 8 and "is missing" in refused.stderr, refused.stderr

    repaired = file_volume.cli.run("fsck", file_volume.url, "--repair", "--cache-dir", str(laptop.cache_dir))
    assert "put back from this device's copy" in repaired.stdout and file_volume.read_object(lost_key) == lost
    newcomer = file_volume.mount("newcomer")
    assert read(newcomer.p("b.txt")) == b"b.txt" and read(newcomer.p("c.txt")) == b"c.txt"
    newcomer.umount()

    file_volume.delete_object(lost_key)
    marked = file_volume.cli.run("fsck", file_volume.url, "--repair", "--cache-dir", str(tmp_path / "none"))
    assert "marked lost" in marked.stdout, marked.stdout + marked.stderr
    again = file_volume.cli.run("fsck", file_volume.url, "--repair", "--cache-dir", str(tmp_path / "none"))
    assert "Journal entry" not in again.stdout and again.returncode == 0
    late = file_volume.mount("late")
    assert read(late.p("a.txt")) == b"a.txt" and read(late.p("c.txt")) == b"c.txt"

