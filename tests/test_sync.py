"""Several devices on one volume: changes propagate, close-to-open holds, and every
conflict rule keeps both sides' data. Conflicts are forced deterministically by
holding one device's commits (`pause`) until the other device's have landed."""

from __future__ import annotations

import os
import time

import pytest

from fusedrive.testing.faultproxy import Fault
from test_posix import read, write
from treeutil import describe

POLL = 0.3


def wait_for(check, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def same_everywhere(*mounts) -> dict:
    """Wait until every device shows the same tree; return it."""
    def check():
        trees = [describe(m.path) for m in mounts]
        return trees[0] if all(t == trees[0] for t in trees) else None
    return wait_for(check, what="identical trees")


@pytest.fixture
def devices(s3_volume):
    return [s3_volume.mount(name, poll_interval=POLL) for name in ("laptop", "desktop", "server")]


def test_every_operation_kind_reaches_the_other_devices(devices):
    a, b, c = devices
    os.makedirs(a.p("docs/old"))
    write(a.p("docs/report.txt"), b"v1")
    write(a.p("big.bin"), os.urandom(3 * 1024 * 1024))
    os.symlink("docs/report.txt", a.p("shortcut"))
    os.link(a.p("big.bin"), a.p("big-link.bin"))
    a.sync()
    tree = same_everywhere(a, b, c)
    assert "docs/report.txt" in tree and "shortcut" in tree

    write(a.p("docs/report.txt"), b"version two")
    os.rename(a.p("docs/old"), a.p("archive"))
    os.chmod(a.p("big.bin"), 0o600)
    os.setxattr(a.p("docs"), "user.tag", b"work")
    os.utime(a.p("shortcut"), ns=(5, 5), follow_symlinks=False) if os.utime in os.supports_follow_symlinks else None
    os.unlink(a.p("big-link.bin"))
    a.sync()
    tree = same_everywhere(a, b, c)
    assert "archive" in tree and "docs/old" not in tree and "big-link.bin" not in tree
    assert read(c.p("docs/report.txt")) == b"version two"
    assert os.getxattr(b.p("docs"), "user.tag") == b"work"
    assert os.stat(c.p("big.bin")).st_mode & 0o777 == 0o600

    # and back the other way, from the server
    write(c.p("from-server"), b"hello")
    os.rmdir(c.p("archive"))
    c.sync()
    tree = same_everywhere(a, b, c)
    assert "from-server" in tree and "archive" not in tree


def test_renames_and_deletes_alone_reach_the_other_devices_without_a_sync(devices):
    """Changes that upload nothing (rename, mkdir, chmod, delete) still go to the journal on
    their own: nobody calls sync and nothing else is written afterwards."""
    a, b, _ = devices
    write(a.p("plan.txt"), b"the plan")
    a.sync()
    wait_for(lambda: os.path.exists(b.p("plan.txt")), what="the desktop to see plan.txt")
    os.rename(a.p("plan.txt"), a.p("plan-final.txt"))
    os.mkdir(a.p("attic"))
    os.chmod(a.p("plan-final.txt"), 0o600)
    wait_for(lambda: os.path.isdir(b.p("attic")) and os.path.exists(b.p("plan-final.txt"))
             and os.stat(b.p("plan-final.txt")).st_mode & 0o777 == 0o600, what="the rename, mkdir and chmod")
    assert not os.path.exists(b.p("plan.txt"))
    os.unlink(a.p("plan-final.txt"))
    wait_for(lambda: not os.path.exists(b.p("plan-final.txt")), what="the delete")
    assert a.control("status")["ops_waiting"] == 0


def test_close_to_open_without_waiting_for_a_poll(s3_volume):
    a = s3_volume.mount("writer", poll_interval=POLL)
    b = s3_volume.mount("reader", poll_interval=3600)  # never polls: only open() can see the change
    write(a.p("f"), b"old")
    a.sync()
    time.sleep(1.2)
    assert read(b.p("f")) == b"old"
    for i in range(3):
        data = os.urandom(100_000 + i)
        with open(a.p("f"), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        time.sleep(1.1)  # B's last freshness check is older than a second
        assert read(b.p("f")) == data


def held(device):
    """Hold the device's commits; changes queue locally until the block ends."""
    class Hold:
        def __enter__(self):
            device.control("pause")

        def __exit__(self, *exc):
            device.control("resume")
    return Hold()


def names(mount) -> set[str]:
    return set(os.listdir(mount.path))


def conflicted(mount) -> list[str]:
    return sorted(n for n in os.listdir(mount.path) if "(conflicted copy from" in n)


def test_concurrent_updates_make_a_conflicted_copy(devices):
    a, b, c = devices
    write(a.p("notes.txt"), b"original")
    a.sync()
    same_everywhere(a, b, c)
    with held(b):
        write(b.p("notes.txt"), b"edited on desktop")
        write(a.p("notes.txt"), b"edited on laptop")
        a.sync()
    b.sync()
    same_everywhere(a, b, c)
    assert read(c.p("notes.txt")) == b"edited on laptop", "the first commit wins the name"
    copies = conflicted(c)
    assert len(copies) == 1 and copies[0].startswith("notes (conflicted copy from desktop ")
    assert copies[0].endswith(").txt")
    assert read(c.p(copies[0])) == b"edited on desktop"


def test_same_new_name_on_two_devices(devices):
    a, b, c = devices
    with held(b):
        write(b.p("plan.md"), b"desktop plan")
        write(a.p("plan.md"), b"laptop plan")
        a.sync()
    b.sync()
    same_everywhere(a, b, c)
    assert read(c.p("plan.md")) == b"laptop plan"
    [copy] = conflicted(c)
    assert copy.startswith("plan (conflicted copy from desktop ") and read(c.p(copy)) == b"desktop plan"


def test_update_of_a_file_deleted_elsewhere_brings_it_back(devices):
    a, b, c = devices
    os.mkdir(a.p("d"))
    write(a.p("d/keep.txt"), b"v1")
    a.sync()
    same_everywhere(a, b, c)
    with held(b):
        write(b.p("d/keep.txt"), b"saved on desktop")
        os.unlink(a.p("d/keep.txt"))
        os.rmdir(a.p("d"))
        a.sync()
    b.sync()
    same_everywhere(a, b, c)
    assert read(c.p("d/keep.txt")) == b"saved on desktop"


def test_write_through_a_handle_open_when_another_device_deleted_the_file(devices):
    a, b, c = devices
    os.mkdir(a.p("d"))
    write(a.p("d/open.txt"), b"v1")
    a.sync()
    same_everywhere(a, b, c)
    with open(b.p("d/open.txt"), "r+b") as f:
        os.unlink(a.p("d/open.txt"))
        os.rmdir(a.p("d"))
        a.sync()
        wait_for(lambda: not os.path.exists(b.p("d")), what="the delete to reach the desktop")
        f.write(b"written after the delete")
    b.sync()
    same_everywhere(a, b, c)
    assert read(c.p("d/open.txt")) == b"written after the delete"


def test_save_under_a_name_just_deleted_elsewhere_keeps_the_save(s3_volume):
    a = s3_volume.mount("laptop", poll_interval=POLL)
    b = s3_volume.mount("desktop", poll_interval=3600)  # only open() sees the delete
    write(a.p("doc.txt"), b"v1")
    a.sync()
    time.sleep(1.2)
    assert read(b.p("doc.txt")) == b"v1"  # the desktop's kernel now holds the name
    os.unlink(a.p("doc.txt"))
    a.sync()
    time.sleep(1.2)  # the desktop's next open checks the journal
    write(b.p("doc.txt"), b"saved on desktop")
    b.sync()
    same_everywhere(a, b)
    assert read(a.p("doc.txt")) == b"saved on desktop"


def test_rename_and_concurrent_update_both_apply(devices):
    a, b, c = devices
    write(a.p("draft.txt"), b"v1")
    a.sync()
    same_everywhere(a, b, c)
    with held(b):
        write(b.p("draft.txt"), b"v2 from desktop")
        os.rename(a.p("draft.txt"), a.p("final.txt"))
        a.sync()
    b.sync()
    same_everywhere(a, b, c)
    assert names(c) == {"final.txt"}
    assert read(c.p("final.txt")) == b"v2 from desktop"


def test_a_rename_of_a_file_deleted_elsewhere_brings_it_back_under_its_new_name(store_proxy, s3_volume):
    """The desktop renames plan.txt, and saves draft.txt then renames it before that save
    could upload (503); meanwhile the laptop deletes plan.txt and renames another file over
    draft.txt. Both files live on under the desktop's new names, as they would if the
    desktop had committed first (the laptop's delete of a file moved elsewhere is dropped).
    Seen in the soak: the rename was dropped, the file came back under its old name, and
    the next save to that name overwrote the save made under the new one."""
    laptop = s3_volume.mount("laptop", poll_interval=POLL)
    desktop = s3_volume.mount("desktop", poll_interval=POLL, endpoint=store_proxy.endpoint)
    write(laptop.p("plan.txt"), b"the plan")
    write(laptop.p("draft.txt"), b"first draft")
    write(laptop.p("other.txt"), b"the laptop's other file")
    laptop.sync()
    same_everywhere(laptop, desktop)
    with held(desktop):
        os.rename(desktop.p("plan.txt"), desktop.p("plan-final.txt"))
        store_proxy.inject(Fault(method="PUT", path="/(blocks|packs)/", status=503))
        write(desktop.p("draft.txt"), b"the desktop's final draft")
        os.rename(desktop.p("draft.txt"), desktop.p("final.txt"))
        os.unlink(laptop.p("plan.txt"))
        os.rename(laptop.p("other.txt"), laptop.p("draft.txt"))
        laptop.sync()
        laptop_head = laptop.control("status")["applied_seq"]
        wait_for(lambda: desktop.control("status")["applied_seq"] >= laptop_head,
                 what="the desktop to apply the laptop's changes")
        assert names(desktop) == {"plan-final.txt", "final.txt", "draft.txt"}
        store_proxy.clear()
    desktop.sync()
    tree = same_everywhere(laptop, desktop)
    assert set(tree) == {"plan-final.txt", "final.txt", "draft.txt"}
    for mount in (laptop, desktop):
        assert read(mount.p("plan-final.txt")) == b"the plan"
        assert read(mount.p("final.txt")) == b"the desktop's final draft"
        assert read(mount.p("draft.txt")) == b"the laptop's other file"


def test_file_created_in_a_directory_deleted_elsewhere_is_kept(devices):
    a, b, c = devices
    os.mkdir(a.p("photos"))
    a.sync()
    same_everywhere(a, b, c)
    with held(b):
        write(b.p("photos/new.jpg"), b"jpeg bytes")
        os.rmdir(a.p("photos"))
        a.sync()
    b.sync()
    same_everywhere(a, b, c)
    assert read(c.p("photos/new.jpg")) == b"jpeg bytes"


def test_delete_of_a_file_changed_elsewhere_keeps_the_change(devices):
    a, b, c = devices
    write(a.p("shared.txt"), b"v1")
    a.sync()
    same_everywhere(a, b, c)
    with held(b):
        os.unlink(b.p("shared.txt"))
        write(a.p("shared.txt"), b"v2 from laptop")
        a.sync()
    b.sync()
    same_everywhere(a, b, c)
    assert read(c.p("shared.txt")) == b"v2 from laptop"


def test_crossed_directory_renames_make_no_cycle(devices):
    a, b, c = devices
    os.mkdir(a.p("x"))
    os.mkdir(a.p("y"))
    a.sync()
    same_everywhere(a, b, c)
    with held(b):
        os.rename(b.p("y"), b.p("x/y"))
        os.rename(a.p("x"), a.p("y/x"))
        a.sync()
    b.sync()
    tree = same_everywhere(a, b, c)
    assert set(tree) == {"y", "y/x"}, "the first rename wins; the crossing one is dropped"


def test_editor_save_by_rename_over_a_file_changed_elsewhere(devices):
    a, b, c = devices
    write(a.p("essay.txt"), b"v1")
    a.sync()
    same_everywhere(a, b, c)
    with held(b):
        write(b.p(".essay.txt.tmp"), b"desktop save")
        os.rename(b.p(".essay.txt.tmp"), b.p("essay.txt"))
        write(a.p("essay.txt"), b"laptop save")
        a.sync()
    b.sync()
    same_everywhere(a, b, c)
    assert read(c.p("essay.txt")) == b"laptop save"
    [copy] = conflicted(c)
    assert read(c.p(copy)) == b"desktop save"
