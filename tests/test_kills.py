"""A device killed while it has saves it could not upload yet loses none of them, whatever
another device did meanwhile, and always mounts again from its cache dir.

Each test: the laptop reaches the store through a proxy that refuses every connection,
saves, and is killed (SIGKILL) with that save queued; meanwhile the desktop changes,
deletes or renames the same file. Then the store answers again and the laptop mounts
from the same cache dir: its save must be live, a conflicted copy or in the trash, on
both devices.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from test_crash import kill_mount, kill_mount_process
from test_history import trash
from test_posix import read, write
from test_store_faults import wait_caught_up, wait_drained
from test_sync import same_everywhere, wait_for


def remount(mount, proxy) -> None:
    """The killed laptop comes back from the same cache dir, the store reachable again."""
    proxy.up()
    mount.start(poll_interval=1, endpoint=proxy.endpoint)
    mount.sync()
    wait_drained(mount, timeout=60)


def offline_save_then_kill(laptop, proxy, path: str, data: bytes) -> None:
    proxy.down()
    write(laptop.p(path), data)  # write and close() return 0: the upload fails and is queued
    wait_for(lambda: laptop.control("status")["errors"], timeout=30, what="the laptop's upload to fail")
    kill_mount(laptop)


@pytest.fixture
def pair(store_proxy, s3_volume):
    desktop = s3_volume.mount("desktop", poll_interval=1)
    laptop = s3_volume.mount("laptop", poll_interval=1, endpoint=store_proxy.endpoint)
    yield desktop, laptop
    store_proxy.up()  # so that the laptop can drain and unmount


def start_with(desktop, laptop, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        os.makedirs(os.path.dirname(laptop.p(path)), exist_ok=True)
        write(laptop.p(path), data)
    laptop.sync()
    wait_caught_up(desktop, laptop, what="the desktop to see the laptop's files")


def test_a_killed_devices_queued_save_of_a_file_saved_elsewhere_becomes_a_conflicted_copy(pair, store_proxy):
    desktop, laptop = pair
    start_with(desktop, laptop, {"f.bin": b"v1"})
    offline_save_then_kill(laptop, store_proxy, "f.bin", b"v2, the laptop's queued save")
    write(desktop.p("f.bin"), b"v3, the desktop's save")
    desktop.sync()
    remount(laptop, store_proxy)
    tree = same_everywhere(laptop, desktop)
    [copy] = [name for name in tree if name.startswith("f (conflicted copy from laptop ")]
    for mount in (laptop, desktop):
        assert read(mount.p("f.bin")) == b"v3, the desktop's save"
        assert read(mount.p(copy)) == b"v2, the laptop's queued save"


@pytest.mark.parametrize("where", ["f.bin", "docs/f.bin"], ids=["file", "folder"])
def test_a_killed_devices_queued_save_of_a_file_deleted_elsewhere_brings_it_back(pair, store_proxy, where):
    desktop, laptop = pair
    start_with(desktop, laptop, {where: b"v1"})
    offline_save_then_kill(laptop, store_proxy, where, b"v2, the laptop's queued save")
    if "/" in where:
        shutil.rmtree(desktop.p("docs"))
    else:
        os.unlink(desktop.p(where))
    desktop.sync()
    remount(laptop, store_proxy)
    same_everywhere(laptop, desktop)
    for mount in (laptop, desktop):
        assert read(mount.p(where)) == b"v2, the laptop's queued save"


def test_a_killed_devices_queued_save_of_a_file_renamed_elsewhere_follows_it(pair, store_proxy):
    desktop, laptop = pair
    start_with(desktop, laptop, {"f.bin": b"v1"})
    offline_save_then_kill(laptop, store_proxy, "f.bin", b"v2, the laptop's queued save")
    os.rename(desktop.p("f.bin"), desktop.p("g.bin"))
    desktop.sync()
    remount(laptop, store_proxy)
    same_everywhere(laptop, desktop)
    for mount in (laptop, desktop):
        assert os.listdir(mount.path) == ["g.bin"]
        assert read(mount.p("g.bin")) == b"v2, the laptop's queued save"


def test_a_killed_devices_queued_save_of_a_file_it_deleted_stays_in_the_trash(pair, store_proxy):
    """The same, with the laptop deleting the file after its save (and the desktop saving it)."""
    desktop, laptop = pair
    start_with(desktop, laptop, {"f.bin": b"v1", "other.txt": b"x"})
    store_proxy.down()
    write(laptop.p("f.bin"), b"v2, the laptop's deleted save")
    os.unlink(laptop.p("f.bin"))
    wait_for(lambda: laptop.control("status")["errors"], timeout=30, what="the laptop's upload to fail")
    kill_mount(laptop)
    write(desktop.p("other.txt"), b"the desktop's unrelated change")
    desktop.sync()
    remount(laptop, store_proxy)
    same_everywhere(laptop, desktop)
    assert not os.path.exists(desktop.p("f.bin"))
    assert [item["path"] for item in trash(desktop)] == ["/f.bin"]
    desktop.volume.cli.run("trash", "restore", desktop.p("f.bin"))
    assert read(desktop.p("f.bin")) == b"v2, the laptop's deleted save"


def test_a_device_killed_with_creates_in_flight_under_names_taken_elsewhere_mounts_again(pair, store_proxy):
    """Creates queued and one commit in flight (its PUT never reached the store), the same
    names created on another device meanwhile: the next mount rebases them into conflicted
    copies instead of failing at start (it exited 9 on a UNIQUE constraint)."""
    desktop, laptop = pair
    start_with(desktop, laptop, {"keep.txt": b"k"})
    store_proxy.down()
    for i in range(5):
        os.makedirs(laptop.p(f"dir{i}"))
        write(laptop.p(f"dir{i}/note.txt"), f"laptop {i}".encode())
        write(laptop.p(f"top{i}.txt"), f"laptop top {i}".encode())
    wait_for(lambda: laptop.control("status")["errors"], timeout=30, what="the laptop's uploads to fail")
    kill_mount(laptop)
    for i in range(5):
        os.makedirs(desktop.p(f"dir{i}"))
        write(desktop.p(f"dir{i}/note.txt"), f"desktop {i}".encode())
        write(desktop.p(f"top{i}.txt"), f"desktop top {i}".encode())
    desktop.sync()
    remount(laptop, store_proxy)
    tree = same_everywhere(laptop, desktop)
    for i in range(5):
        assert read(desktop.p(f"top{i}.txt")) == f"desktop top {i}".encode()
        [copy] = [n for n in tree if n.startswith(f"top{i} (conflicted copy from laptop ")]
        assert read(desktop.p(copy)) == f"laptop top {i}".encode()
        notes = {read(os.path.join(desktop.path, n)) for n in tree if n.endswith("note.txt")}
        assert {f"laptop {i}".encode(), f"desktop {i}".encode()} <= notes


def mount_process(mount) -> int:
    from fusedrive.services import control

    return control.read_registry(str(mount.path))["pid"]


@pytest.mark.parametrize("how", [("--timeout", "5"), ("--no-wait",)], ids=["timeout", "no-wait"])
def test_umount_while_the_store_is_unreachable_keeps_the_queue_for_the_next_mount(proxied_volume, store_proxy, how):
    from fusedrive.services import control

    laptop = proxied_volume.mount("laptop")
    write(laptop.p("offline.txt"), b"written on the train")
    store_proxy.down()
    pid = mount_process(laptop)
    started = time.monotonic()
    result = proxied_volume.cli.run("umount", str(laptop.path), *how, check=False, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "1 files" in result.stderr and "next mount" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
    assert not os.path.ismount(laptop.path)
    assert control.wait_for_exit(pid, 10), "the mount process must exit once unmounted"
    proxied_volume.mounts.remove(laptop)
    store_proxy.up()
    again = proxied_volume.mount("laptop", cache_dir=laptop.cache_dir)
    again.sync()
    fresh = proxied_volume.mount("fresh")
    assert read(fresh.p("offline.txt")) == b"written on the train"


def test_umount_with_nothing_waiting_stops_promptly_while_the_store_is_unreachable(proxied_volume, store_proxy):
    from fusedrive.services import control

    laptop = proxied_volume.mount("laptop")
    write(laptop.p("saved.txt"), b"saved")
    laptop.sync()
    store_proxy.down()
    pid = mount_process(laptop)
    result = proxied_volume.cli.run("umount", str(laptop.path), "--timeout", "20", check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert control.wait_for_exit(pid, 15), "a mount with nothing waiting must not linger after its unmount"
    proxied_volume.mounts.remove(laptop)


def test_a_dead_mount_is_named_so_by_status_and_cleaned_up_by_umount(proxied_volume, tmp_path):
    from fusedrive.services.process import mounted_at

    laptop = proxied_volume.mount("laptop")
    write(laptop.p("kept.txt"), b"closed before the kill")
    kill_mount_process(laptop)
    assert mounted_at(str(laptop.path)) == "fuse.fusedrive"
    refused = proxied_volume.cli.run("mount", proxied_volume.url, str(laptop.path), "--cache-dir",
                                     str(tmp_path / "other-cache"), check=False)
    assert refused.returncode == 9 and "fusedrive umount" in refused.stderr, refused.stderr
    status = proxied_volume.cli.run("status", str(laptop.path), check=False)
    assert status.returncode == 13
    assert "has stopped" in status.stdout and f"fusedrive umount {laptop.path}" in status.stdout
    result = proxied_volume.cli.run("umount", str(laptop.path), check=False)
    assert result.returncode == 0, result.stderr
    assert "cleaned up" in result.stdout
    # os.path.ismount says False for a dead FUSE mount too (stat fails): ask the mount table,
    # and look in the folder as the user would
    assert mounted_at(str(laptop.path)) is None, "the dead mount is still attached"
    assert os.listdir(laptop.path) == []
    proxied_volume.mounts.remove(laptop)
    again = proxied_volume.mount("laptop", cache_dir=laptop.cache_dir)
    assert read(again.p("kept.txt")) == b"closed before the kill"


def test_a_device_mounts_offline_from_its_cache_dir_and_catches_up(proxied_volume, store_proxy, tmp_path):
    laptop = proxied_volume.mount("laptop")
    write(laptop.p("before.txt"), b"synced before the train")
    laptop.sync()
    laptop.umount()
    store_proxy.down()
    fresh = proxied_volume.cli.run("mount", proxied_volume.url, str(tmp_path / "new"), "--cache-dir",
                                   str(tmp_path / "empty-cache"), check=False, timeout=120)
    assert fresh.returncode == 6 and "Traceback" not in fresh.stderr  # nothing here to serve
    offline = proxied_volume.mount("laptop", cache_dir=laptop.cache_dir)
    assert read(offline.p("before.txt")) == b"synced before the train"
    wait_for(lambda: offline.control("status")["store_offline_since"], timeout=30, what="status to say offline")
    write(offline.p("on-the-train.txt"), b"written offline")
    store_proxy.up()
    offline.sync()
    wait_drained(offline, timeout=60)
    other = proxied_volume.mount("desktop")
    assert read(other.p("on-the-train.txt")) == b"written offline"


def test_a_device_killed_while_cut_off_mounts_again_while_still_cut_off(pair, store_proxy):
    desktop, laptop = pair
    start_with(desktop, laptop, {"f.bin": b"v1"})
    offline_save_then_kill(laptop, store_proxy, "f.bin", b"v2, saved and killed offline")
    laptop.start(poll_interval=1, endpoint=store_proxy.endpoint)  # the store still does not answer
    assert read(laptop.p("f.bin")) == b"v2, saved and killed offline"
    write(laptop.p("g.bin"), b"more work offline")
    write(desktop.p("f.bin"), b"v3, the desktop's save")
    desktop.sync()
    store_proxy.up()
    laptop.sync()
    wait_drained(laptop, timeout=60)
    tree = same_everywhere(laptop, desktop)
    [copy] = [name for name in tree if name.startswith("f (conflicted copy from laptop ")]
    assert read(desktop.p(copy)) == b"v2, saved and killed offline"
    assert read(desktop.p("g.bin")) == b"more work offline"
