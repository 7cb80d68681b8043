"""The store misbehaving while devices keep working: answering 500 or 503, answering
slowly, losing the answer to a commit, hanging, stopping, or unreachable from one
device for a minute (past the longest backoff, 30 s; partitions of many virtual minutes are
the simulation's, tests/test_simulation.py). Faults come from the HTTP proxy in front of
SeaweedFS (fusedrive/testing/faultproxy.py). Every wait is bounded; nothing closed is lost.

Replay the partition longer: FUSEDRIVE_PARTITION_SECONDS=600 scripts/test.sh -k cut_off
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from fusedrive.engine.journal import Journal
from fusedrive.engine.tree import name_from_json
from fusedrive.testing.faultproxy import Fault, FaultProxy
from test_history import history, subprocess_bytes, trash
from test_posix import read, write
from test_sync import wait_for

PARTITION_SECONDS = float(os.environ.get("FUSEDRIVE_PARTITION_SECONDS", "60"))


def drained(mount) -> bool:
    status = mount.control("status")
    return status["files_waiting"] == 0 and status["ops_waiting"] == 0


def wait_caught_up(reader, writer, what: str) -> None:
    """Wait until `reader` has applied every journal entry `writer` has applied so far."""
    head = writer.control("status")["applied_seq"]
    wait_for(lambda: reader.control("status")["applied_seq"] >= head, timeout=30, what=what)


def store_back_for(device, proxy, other) -> None:
    """The store answers `device` again: its queue drains and `other` applies all of it."""
    proxy.clear()
    device.sync()
    wait_drained(device, timeout=60)
    wait_caught_up(other, device, what=f"{other.device} to apply all of {device.device}'s changes")


def wait_drained(*mounts, timeout: float = 120) -> None:
    for mount in mounts:
        wait_for(lambda: drained(mount), timeout=timeout, what=f"{mount.device}'s queue to drain")


def test_503_on_every_block_upload_queues_the_write_until_the_store_recovers(proxied_volume, store_proxy):
    laptop = proxied_volume.mount("laptop")
    refusing = store_proxy.inject(Fault(method="PUT", path="/(blocks|packs)/", status=503))
    data = os.urandom(1_500_000)
    write(laptop.p("report.bin"), data)
    status = wait_for(lambda: (s := laptop.control("status"))["errors"] and s, timeout=60, what="an upload error")
    assert status["files_waiting"] == 1 and status["bytes_waiting"] == len(data)
    assert "report.bin" in status["errors"][-1] and "SlowDown" in status["errors"][-1]
    assert read(laptop.p("report.bin")) == data  # served from staging meanwhile
    store_proxy.clear()
    wait_drained(laptop)
    assert refusing.hits >= 1
    fresh = proxied_volume.mount("fresh")
    assert read(fresh.p("report.bin")) == data


def test_a_staged_file_cut_short_in_the_cache_dir_uploads_what_is_left_and_says_so(proxied_volume, store_proxy):
    """Damage below the drive: a file waiting to upload loses its tail in the cache dir. What
    is left uploads (the file does not stay unsynced forever) and status says so."""
    laptop = proxied_volume.mount("laptop")
    store_proxy.inject(Fault(method="PUT", path="/(blocks|packs)/", status=503))
    data = os.urandom(300_000)
    write(laptop.p("draft.bin"), data)
    wait_for(lambda: laptop.control("status")["errors"], timeout=60, what="an upload error")
    [staged] = (laptop.cache_dir / "staging").iterdir()
    os.truncate(staged, 1000)
    # An attempt that read the file before the truncate may still be retrying with the whole
    # content: the store comes back only once an attempt has seen the file cut short.
    wait_for(lambda: any("draft.bin is 1000 bytes, not the 300000" in e
                         for e in laptop.control("status")["errors"]), timeout=60, what="the cut to be noticed")
    store_proxy.clear()
    wait_drained(laptop)
    assert read(laptop.p("draft.bin")) == data[:1000]
    fresh = proxied_volume.mount("fresh")
    assert read(fresh.p("draft.bin")) == data[:1000]


def test_a_commit_whose_answer_was_lost_is_in_the_journal_exactly_once(proxied_volume, store_proxy):
    laptop = proxied_volume.mount("laptop")
    lost = store_proxy.inject(Fault(method="PUT", path="/journal/", lose_answer=True, times=1))
    write(laptop.p("once.txt"), b"written once")
    laptop.sync()
    assert lost.hits == 1
    with proxied_volume.opened() as volume:
        entries = list(Journal(volume).entries_after(0))
    assert len({entry.commit_id for entry in entries}) == len(entries)
    creates = [op for entry in entries for op in entry.ops
               if op["op"] == "mknod" and name_from_json(op["name"]) == b"once.txt"]
    assert len(creates) == 1
    fresh = proxied_volume.mount("fresh")
    assert os.listdir(fresh.path) == ["once.txt"]
    assert read(fresh.p("once.txt")) == b"written once"


def test_a_slow_store_still_serves_and_500s_on_reads_are_eio_within_the_io_timeout(proxied_volume, store_proxy):
    writer = proxied_volume.mount("writer")
    first, second = os.urandom(3_000_000), os.urandom(2_000_000)
    write(writer.p("first.bin"), first)
    write(writer.p("second.bin"), second)
    writer.sync()
    slow = store_proxy.inject(Fault(delay=0.3))
    reader = proxied_volume.mount("reader", args=("--io-timeout", "5"))
    assert read(reader.p("first.bin")) == first
    assert slow.hits > 0
    store_proxy.clear()
    failing = store_proxy.inject(Fault(method="GET", path="/(blocks|packs)/", status=500))
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        read(reader.p("second.bin"))
    assert caught.value.errno == errno.EIO
    assert time.monotonic() - started < 30 and failing.hits >= 1
    store_proxy.clear()
    assert read(reader.p("second.bin")) == second  # the failure was not remembered as data


def test_a_hanging_store_fails_uncached_reads_after_io_timeout_and_takes_every_write(proxied_volume, store_proxy):
    writer = proxied_volume.mount("writer")
    remote = os.urandom(2_000_000)
    write(writer.p("remote.bin"), remote)
    writer.sync()
    laptop = proxied_volume.mount("laptop", args=("--io-timeout", "3"))
    cached = os.urandom(500_000)
    write(laptop.p("cached.bin"), cached)
    laptop.sync()
    store_proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        read(laptop.p("remote.bin"))  # never read on this device: not in its cache
    assert caught.value.errno == errno.EIO
    assert time.monotonic() - started < 30, "bounded by --io-timeout, not hanging"
    with open(laptop.p("remote.bin"), "ab") as f:  # an edit needs nothing of what it does not change
        f.write(b"one more line")
    assert read(laptop.p("cached.bin")) == cached
    offline = os.urandom(300_000)
    write(laptop.p("offline.bin"), offline)  # accepted into staging while the store hangs
    status = laptop.control("status")
    assert status["files_waiting"] == 2 and status["bytes_waiting"] == len(offline) + len(remote) + 13
    store_proxy.up()
    wait_drained(laptop)
    fresh = proxied_volume.mount("fresh")
    assert read(fresh.p("offline.bin")) == offline
    assert read(fresh.p("remote.bin")) == remote + b"one more line"
    assert read(laptop.p("remote.bin")) == remote + b"one more line"


def test_a_file_deleted_before_its_save_uploaded_keeps_that_save_in_the_trash(proxied_volume, store_proxy):
    laptop = proxied_volume.mount("laptop")
    write(laptop.p("report.txt"), b"first draft")
    write(laptop.p("plan.txt"), b"old plan")
    laptop.sync()
    store_proxy.down()
    write(laptop.p("report.txt"), b"final report, never uploaded before the delete")
    os.unlink(laptop.p("report.txt"))
    write(laptop.p("plan.txt"), b"new plan, replaced before it uploaded")
    write(laptop.p("other.txt"), b"renamed over plan.txt")
    os.rename(laptop.p("other.txt"), laptop.p("plan.txt"))
    write(laptop.p("draft.txt"), b"a new file deleted while offline")
    os.unlink(laptop.p("draft.txt"))
    store_proxy.up()
    wait_drained(laptop)
    fresh = proxied_volume.mount("fresh")
    # plan.txt was saved over by a rename: not deleted, so not in the trash, but in its history
    assert sorted(item["path"] for item in trash(fresh)) == ["/draft.txt", "/report.txt"]
    for name in ("report.txt", "draft.txt"):
        proxied_volume.cli.run("trash", "restore", fresh.p(name))
    assert read(fresh.p("report.txt")) == b"final report, never uploaded before the delete"
    assert read(fresh.p("draft.txt")) == b"a new file deleted while offline"
    assert read(fresh.p("plan.txt")) == b"renamed over plan.txt"
    saves = [subprocess_bytes(proxied_volume, "cat", fresh.p("plan.txt"), "--version", str(v["number"]))
             for v in history(fresh, "plan.txt")]
    assert b"new plan, replaced before it uploaded" in saves and b"old plan" in saves


def test_a_file_deleted_here_before_its_save_uploaded_stays_deleted_when_another_devices_change_arrives(
        store_proxy, s3_volume):
    """The laptop saves draft.txt and deletes it while the save still waits to upload (503).
    The desktop's unrelated change arriving must not bring draft.txt back: the name is free,
    a new draft.txt is a new file, and the deleted save is in the trash (seen in the soak: the
    file came back and the next save to its name overwrote the deleted save's content)."""
    desktop = s3_volume.mount("desktop", poll_interval=1)
    laptop = s3_volume.mount("laptop", poll_interval=1, endpoint=store_proxy.endpoint)
    write(laptop.p("draft.txt"), b"the first draft")
    laptop.sync()
    store_proxy.inject(Fault(method="PUT", path="/", status=503))  # no block and no commit goes through
    write(laptop.p("draft.txt"), b"the deleted draft")
    os.unlink(laptop.p("draft.txt"))
    write(desktop.p("other.txt"), b"the desktop's unrelated change")
    desktop.sync()
    wait_caught_up(laptop, desktop, what="the laptop to apply the desktop's change")
    assert not os.path.exists(laptop.p("draft.txt"))
    write(laptop.p("draft.txt"), b"a new draft")
    store_back_for(laptop, store_proxy, desktop)
    for mount in (laptop, desktop):
        assert read(mount.p("draft.txt")) == b"a new draft"
        assert sorted(os.listdir(mount.path)) == ["draft.txt", "other.txt"]
    assert [item["path"] for item in trash(desktop)] == ["/draft.txt"]
    desktop.volume.cli.run("trash", "restore", desktop.p("draft.txt"))
    copy = next(n for n in os.listdir(desktop.path) if n.startswith("draft (conflicted copy"))
    assert read(desktop.p(copy)) == b"the deleted draft"


@pytest.fixture
def desktop_proxy(seaweed):
    """A second proxy, so that one device's requests can fail while the other's go through."""
    proxy = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    yield proxy
    proxy.down()


@pytest.mark.parametrize("unlink_committed", [False, True], ids=["unlink-queued", "unlink-committed"])
def test_a_deleted_save_brought_back_by_another_devices_save_is_not_overwritten_by_the_next_save(
        store_proxy, desktop_proxy, s3_volume, unlink_committed):
    """The laptop saves notes.txt and deletes it while that save waits to upload (503); the
    desktop's save of the same file beats the delete and brings notes.txt back on the
    laptop. The laptop's next save to notes.txt (O_TRUNC) must go into the file as it came
    back, not into the deleted save still waiting to upload: that one is kept as a
    conflicted copy, as it would have been had it uploaded first (seen twice in the hour
    soak: the deleted save was overwritten before it uploaded). Whether the laptop's
    delete was still queued or already committed when the desktop's save arrived, the
    result is the same."""
    desktop = s3_volume.mount("desktop", poll_interval=1, endpoint=desktop_proxy.endpoint)
    laptop = s3_volume.mount("laptop", poll_interval=1, endpoint=store_proxy.endpoint)
    write(laptop.p("notes.txt"), b"version 1")
    laptop.sync()
    wait_for(lambda: os.path.exists(desktop.p("notes.txt")), what="the desktop to see notes.txt")
    if unlink_committed:  # the desktop sees nothing new until its save is made
        desktop_proxy.inject(Fault(method="GET", path="journal", status=503))
        store_proxy.inject(Fault(method="PUT", path="(blocks|packs)/", status=503))
    else:  # nothing the laptop does reaches the store
        store_proxy.inject(Fault(method="PUT", status=503))
    write(laptop.p("notes.txt"), b"the laptop's deleted save")
    os.unlink(laptop.p("notes.txt"))
    if unlink_committed:
        wait_for(lambda: laptop.control("status")["ops_waiting"] == 0, timeout=30,
                 what="the laptop to commit the delete")
    write(desktop.p("notes.txt"), b"the desktop's save")
    desktop_proxy.clear()
    desktop.sync()
    wait_caught_up(laptop, desktop, what="the laptop to apply the desktop's save")
    assert read(laptop.p("notes.txt")) == b"the desktop's save"  # a save beats a delete
    write(laptop.p("notes.txt"), b"the laptop's next save")
    store_back_for(laptop, store_proxy, desktop)
    for mount in (laptop, desktop):
        names = sorted(os.listdir(mount.path))
        assert len(names) == 2 and names[1] == "notes.txt", names
        assert names[0].startswith("notes (conflicted copy from laptop ")
        assert read(mount.p(names[0])) == b"the laptop's deleted save"
        assert read(mount.p("notes.txt")) == b"the laptop's next save"
    assert "desktop" in {v["device"] for v in history(desktop, "notes.txt")}


def test_a_file_brought_back_while_open_here_and_then_deleted_here_keeps_its_last_save_in_the_trash(
        store_proxy, s3_volume):
    """The laptop holds notes.txt open; the desktop deletes it while the laptop's save waits
    to commit, so that save brings it back. Later the laptop saves it once more and deletes
    it before that save uploads: the file stays deleted and the save goes to its trash entry
    (seen in the hour soak: where the file was before the desktop's delete was still
    remembered, and the save brought the file back instead)."""
    desktop = s3_volume.mount("desktop", poll_interval=1)
    laptop = s3_volume.mount("laptop", poll_interval=1, endpoint=store_proxy.endpoint)
    write(laptop.p("notes.txt"), b"version 1")
    laptop.sync()
    wait_for(lambda: os.path.exists(desktop.p("notes.txt")), what="the desktop to see notes.txt")
    with open(laptop.p("notes.txt"), "rb"):  # held open on the laptop throughout
        store_proxy.inject(Fault(method="PUT", path="journal/", status=503))
        write(laptop.p("notes.txt"), b"the laptop's save")
        wait_for(lambda: laptop.control("status")["files_waiting"] == 0, what="the laptop's save to upload")
        os.unlink(desktop.p("notes.txt"))
        desktop.sync()
        wait_caught_up(laptop, desktop, what="the laptop to apply the desktop's delete")
        assert read(laptop.p("notes.txt")) == b"the laptop's save"  # a save beats a delete
        store_proxy.clear()
        laptop.sync()
        store_proxy.inject(Fault(method="PUT", path="(blocks|packs)/", status=503))
        write(laptop.p("notes.txt"), b"the laptop's last save")
        os.unlink(laptop.p("notes.txt"))
        wait_for(lambda: laptop.control("status")["ops_waiting"] == 0, timeout=30,
                 what="the laptop to commit the delete")
        store_proxy.clear()
        laptop.sync()
    wait_drained(laptop, timeout=60)
    wait_caught_up(desktop, laptop, what="the desktop to apply the laptop's changes")
    for mount in (laptop, desktop):
        assert os.listdir(mount.path) == []
    assert [item["path"] for item in trash(desktop)] == ["/notes.txt"]
    desktop.volume.cli.run("trash", "restore", desktop.p("notes.txt"))
    assert read(desktop.p("notes.txt")) == b"the laptop's last save"


def test_a_device_cut_off_for_minutes_rejoins_without_loss(store_proxy, s3_volume):
    laptop = s3_volume.mount("laptop", poll_interval=1)
    desktop = s3_volume.mount("desktop", poll_interval=1, endpoint=store_proxy.endpoint)
    write(laptop.p("shared.txt"), b"before the partition")
    write(laptop.p("old.txt"), b"deleted on the desktop while cut off")
    laptop.sync()
    wait_for(lambda: read(desktop.p("shared.txt")) == b"before the partition", what="the desktop to catch up")
    store_proxy.down()
    written: dict[str, bytes] = {}
    deadline, step = time.monotonic() + PARTITION_SECONDS, 0
    while time.monotonic() < deadline:
        for mount in (laptop, desktop):
            name = f"{mount.device}-{step}.bin"
            written[name] = os.urandom(10_000 + step * 1000)
            write(mount.p(name), written[name])
        step += 1
        time.sleep(5)
    write(laptop.p("shared.txt"), b"edited on the laptop")
    laptop.sync()
    write(desktop.p("shared.txt"), b"edited on the desktop")
    os.unlink(desktop.p("old.txt"))
    status = desktop.control("status")
    assert status["store_offline_since"] is not None and status["files_waiting"] == step + 1
    store_proxy.up()
    wait_drained(desktop, laptop)
    wait_caught_up(laptop, desktop, what="the laptop to apply the desktop's commits")
    for mount in (laptop, desktop):
        names = set(os.listdir(mount.path))
        copies = [n for n in names if n.startswith("shared (conflicted copy from desktop")]
        assert names == set(written) | {"shared.txt", *copies} and len(copies) == 1  # old.txt is gone
        assert read(mount.p("shared.txt")) == b"edited on the laptop"  # the laptop committed first
        assert read(mount.p(copies[0])) == b"edited on the desktop"
        for name, data in written.items():
            assert read(mount.p(name)) == data, name


def laptop_saves_before_desktop_uploads(store_proxy, s3_volume, desktop_edit) -> tuple:
    """notes.txt on both devices; the desktop makes `desktop_edit(path)` but cannot upload
    (503 on block PUTs) until it has applied the laptop's save of the same file."""
    laptop = s3_volume.mount("laptop", poll_interval=1)
    desktop = s3_volume.mount("desktop", poll_interval=1, endpoint=store_proxy.endpoint)
    write(laptop.p("notes.txt"), b"first")
    laptop.sync()
    wait_for(lambda: read(desktop.p("notes.txt")) == b"first", what="the desktop to catch up")
    store_proxy.inject(Fault(method="PUT", path="/(blocks|packs)/", status=503))  # the desktop reads, cannot upload
    desktop_edit(desktop.p("notes.txt"))
    write(laptop.p("notes.txt"), b"the laptop's longer edit")
    laptop.sync()
    wait_caught_up(desktop, laptop, what="the desktop to apply the laptop's save before its own uploads")
    store_proxy.clear()
    return laptop, desktop


def desktop_copies(mount) -> list[str]:
    return [n for n in os.listdir(mount.path) if n.startswith("notes (conflicted copy from desktop")]


def test_a_save_that_uploads_after_another_devices_save_arrived_becomes_a_conflicted_copy(store_proxy, s3_volume):
    laptop, desktop = laptop_saves_before_desktop_uploads(
        store_proxy, s3_volume, lambda path: write(path, b"the desktop's edit"))
    wait_drained(desktop)
    wait_for(lambda: laptop.control("status")["applied_seq"] >= desktop.control("status")["applied_seq"],
             timeout=30, what="the laptop to apply the desktop's commit")
    for mount in (laptop, desktop):
        copies = desktop_copies(mount)
        assert len(copies) == 1
        assert read(mount.p("notes.txt")) == b"the laptop's longer edit"
        assert read(mount.p(copies[0])) == b"the desktop's edit"


def test_a_file_held_open_while_its_save_became_a_conflicted_copy_goes_on_from_the_winning_save(
        store_proxy, s3_volume):
    """The program keeps the file open across the upload (an fsync: a file open for writing
    uploads only then or at its last close): what it reads and writes next is the file as it
    is now (the laptop's save), not the content that went to the copy."""
    held = []

    def edit_and_keep_open(path):
        held.append(os.open(path, os.O_RDWR))
        os.pwrite(held[0], b"the desktop's edit", 0)
        os.close(os.open(path, os.O_RDONLY))  # a close elsewhere does not upload while a writer is open

    laptop, desktop = laptop_saves_before_desktop_uploads(store_proxy, s3_volume, edit_and_keep_open)
    try:
        assert desktop_copies(desktop) == []
        os.fsync(held[0])
        assert len(desktop_copies(desktop)) == 1, "fsync uploaded the desktop's save as a conflicted copy"
        assert read(desktop.p("notes.txt")) == b"the laptop's longer edit"
        os.pwrite(held[0], b"!", len(b"the laptop's longer edit"))
    finally:
        os.close(held[0])
    wait_drained(desktop, timeout=60)
    wait_for(lambda: read(laptop.p("notes.txt")) == b"the laptop's longer edit!", timeout=30,
             what="the laptop to see the desktop's later write")
    for mount in (laptop, desktop):
        assert read(mount.p("notes.txt")) == b"the laptop's longer edit!"
        assert [read(mount.p(n)) for n in desktop_copies(mount)] == [b"the desktop's edit"]


def test_a_save_with_o_trunc_is_never_split_by_an_upload_that_loses_to_another_devices_save(
        store_proxy, s3_volume):
    """The laptop's earlier save of notes.txt is still waiting to upload (503) when it opens the
    file again with O_TRUNC. Before its write comes, the store answers again and the desktop's
    save has arrived: an upload of the emptied file would lose to it, and the write would then
    land on the desktop's bytes (a file nobody wrote; seen in the hour-long soak). A file open
    for writing uploads at its last close: the laptop's new save is whole, in a conflicted copy."""
    desktop = s3_volume.mount("desktop", poll_interval=1)
    laptop = s3_volume.mount("laptop", poll_interval=1, endpoint=store_proxy.endpoint)
    write(desktop.p("notes.txt"), b"first")
    desktop.sync()
    wait_for(lambda: read(laptop.p("notes.txt")) == b"first", what="the laptop to catch up")
    store_proxy.inject(Fault(method="PUT", path="/(blocks|packs)/", status=503))
    write(laptop.p("notes.txt"), b"the laptop's first save")
    write(desktop.p("notes.txt"), b"the desktop's much longer save of the notes")
    desktop.sync()
    wait_caught_up(laptop, desktop, what="the laptop to apply the desktop's save")
    fd = os.open(laptop.p("notes.txt"), os.O_WRONLY | os.O_TRUNC)
    try:
        store_proxy.clear()
        wait_for(lambda: laptop.control("status")["store_offline_since"] is None, timeout=30,
                 what="the store to answer again")
        time.sleep(3)  # the queued upload's retry comes within this (backoff starts at 1 s)
        os.write(fd, b"laptop 2")
    finally:
        os.close(fd)
    laptop.sync()
    wait_drained(laptop, timeout=60)
    for mount in (laptop, desktop):
        wait_for(lambda: len(copies_from(mount, "laptop")) == 1, timeout=30, what="the laptop's copy everywhere")
        assert read(mount.p("notes.txt")) == b"the desktop's much longer save of the notes"
        assert [read(mount.p(n)) for n in copies_from(mount, "laptop")] == [b"laptop 2"]


def copies_from(mount, device: str) -> list[str]:
    return [n for n in os.listdir(mount.path) if n.startswith(f"notes (conflicted copy from {device}")]


@pytest.mark.parametrize("method, status, words", [("PUT", 403, "refused our credentials"),
                                                   (None, 404, "does not exist")], ids=["read-only key", "no bucket"])
def test_a_store_that_refuses_us_needs_attention_and_is_not_hammered(proxied_volume, store_proxy, method, status,
                                                                     words):
    """A key that may no longer write, the bucket deleted: not "unreachable". Status says
    the store needs the user (exit 16), uploads stop retrying every few seconds, and a sync
    after the fix uploads at once."""
    laptop = proxied_volume.mount("laptop")
    refusing = store_proxy.inject(Fault(method=method, path="/(blocks|packs)/", status=status))
    store_proxy.inject(Fault(method=method, path="/(journal|probe)", status=status))
    write(laptop.p("essay.txt"), b"the draft")
    state = wait_for(lambda: (s := laptop.control("status"))["store_needs_attention"] and s, timeout=60,
                     what="the refusal in status")
    assert words in state["store_needs_attention"] and state["store_offline_since"] is None
    shown = proxied_volume.cli.run("status", str(laptop.path), check=False)
    assert shown.returncode == 16, shown.stdout + shown.stderr
    assert "needs attention" in shown.stdout.splitlines()[0] and words in shown.stdout.splitlines()[0]
    tries = refusing.hits
    time.sleep(8)  # a store that is down would have been retried 3 or 4 times by now
    assert refusing.hits - tries <= 1, f"{refusing.hits - tries} more uploads to a store that refuses us"
    assert read(laptop.p("essay.txt")) == b"the draft"
    store_proxy.clear()  # the user fixed it
    laptop.sync()
    state = laptop.control("status")
    assert state["store_needs_attention"] is None and state["files_waiting"] == 0
    assert proxied_volume.cli.run("status", str(laptop.path), check=False).returncode == 0
