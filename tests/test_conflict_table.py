"""The README's conflict table, one test per row, on the real sync engine in this process
(tests/engines.py: in-memory store, no FUSE, no threads of ours beyond the engine's own).
Every test ends with the devices agreeing on the whole tree."""

from __future__ import annotations

import errno
import threading

import pytest
import trio

from engines import Device, on_devices, tree
from fusedrive.errors import FusedriveError, IntegrityError

pytestmark = pytest.mark.inprocess


def copies(device: Device, path: str = "/") -> list[str]:
    return [n for n in device.names(path) if "conflicted copy" in n]


async def agree(*all_devices: Device) -> dict:
    """Every device syncs and pulls until all hold the same tree; that tree."""
    for device in all_devices:
        device.cut_off(False)
        await device.sync()
    for device in all_devices:
        await device.pull()
    trees = [await tree(device) for device in all_devices]
    assert all(t == trees[0] for t in trees), "the devices do not agree"
    return trees[0]


@on_devices("laptop", "desktop")
async def test_two_devices_save_the_same_file_the_second_becomes_a_conflicted_copy(laptop, desktop):
    await laptop.save("/notes.txt", b"v0")
    await agree(laptop, desktop)
    desktop.cut_off()
    await laptop.save("/notes.txt", b"laptop's")
    await desktop.save("/notes.txt", b"desktop's")
    await laptop.sync()
    final = await agree(desktop, laptop)
    assert final["/notes.txt"] == b"laptop's"  # the first commit wins the name
    [copy] = copies(laptop)
    assert copy.startswith("notes (conflicted copy from desktop ") and copy.endswith(").txt")
    assert final[f"/{copy}"] == b"desktop's"


@on_devices("laptop", "desktop")
async def test_two_devices_create_the_same_name_the_second_becomes_a_conflicted_copy(laptop, desktop):
    desktop.cut_off()
    await laptop.save("/todo.txt", b"laptop's list")
    await desktop.save("/todo.txt", b"desktop's list")
    await laptop.sync()
    final = await agree(desktop, laptop)
    [copy] = copies(laptop)
    assert final["/todo.txt"] == b"laptop's list" and final[f"/{copy}"] == b"desktop's list"


@on_devices("laptop", "desktop")
async def test_a_save_by_rename_over_a_file_changed_elsewhere_does_not_replace_it(laptop, desktop):
    await laptop.save("/essay.txt", b"draft")
    await agree(laptop, desktop)
    desktop.cut_off()
    await laptop.save("/essay.txt", b"laptop's edit")
    await desktop.save_by_rename("/essay.txt", b"desktop's edit")
    await laptop.sync()
    final = await agree(desktop, laptop)
    assert final["/essay.txt"] == b"laptop's edit"
    [copy] = copies(laptop)
    assert final[f"/{copy}"] == b"desktop's edit"


@on_devices("laptop", "desktop")
async def test_a_save_and_a_delete_on_two_devices_the_file_comes_back_with_the_save(laptop, desktop):
    await laptop.save("/plan.txt", b"v1")
    await agree(laptop, desktop)
    desktop.cut_off()
    laptop.delete("/plan.txt")
    await desktop.save("/plan.txt", b"v2 saved while deleted elsewhere")
    await laptop.sync()
    final = await agree(desktop, laptop)
    assert final["/plan.txt"] == b"v2 saved while deleted elsewhere" and not copies(laptop)


@on_devices("laptop", "desktop")
async def test_a_delete_of_a_file_saved_first_elsewhere_is_dropped(laptop, desktop):
    await laptop.save("/plan.txt", b"v1")
    await agree(laptop, desktop)
    desktop.cut_off()
    await laptop.save("/plan.txt", b"v2")
    await laptop.sync()
    desktop.delete("/plan.txt")  # of the v1 it saw
    final = await agree(desktop, laptop)
    assert final["/plan.txt"] == b"v2"


@on_devices("laptop", "desktop")
async def test_a_file_deleted_elsewhere_while_open_and_written_here_comes_back_with_the_write(laptop, desktop):
    await laptop.save("/log.txt", b"start")
    await agree(laptop, desktop)
    handle = await desktop.open_for_writing("/log.txt")
    laptop.delete("/log.txt")
    await laptop.sync()
    await desktop.pull()
    assert desktop.lookup("/log.txt") is None  # gone here too, while still open
    await desktop.write(handle, b"written after the delete")
    desktop.close(handle)
    final = await agree(desktop, laptop)
    assert final["/log.txt"] == b"written after the delete"


@on_devices("laptop", "desktop")
async def test_a_rename_and_a_save_on_two_devices_both_apply(laptop, desktop):
    await laptop.save("/draft.txt", b"v1")
    await agree(laptop, desktop)
    desktop.cut_off()
    laptop.rename("/draft.txt", "/final.txt")
    await desktop.save("/draft.txt", b"v2")
    await laptop.sync()
    final = await agree(desktop, laptop)
    assert final["/final.txt"] == b"v2" and "/draft.txt" not in final


@pytest.mark.parametrize("other", ["delete", "rename over"])
@pytest.mark.parametrize("first", ["rename", "other"])
@on_devices("laptop", "desktop")
async def test_a_renamed_file_stays_under_its_new_name_whichever_commits_first(laptop, desktop, first, other):
    await laptop.save("/a.txt", b"keep me")
    await laptop.save("/b.txt", b"b")
    await agree(laptop, desktop)
    laptop.cut_off()
    desktop.cut_off()
    laptop.rename("/a.txt", "/kept.txt")
    if other == "delete":
        desktop.delete("/a.txt")
    else:
        desktop.rename("/b.txt", "/a.txt")
    order = (laptop, desktop) if first == "rename" else (desktop, laptop)
    final = await agree(*order)
    assert final["/kept.txt"] == b"keep me"


@on_devices("laptop", "desktop")
async def test_a_save_deleted_before_it_uploaded_then_a_new_file_of_that_name_is_a_new_file(laptop, desktop):
    await laptop.save("/report.txt", b"v1")
    await agree(laptop, desktop)
    laptop.cut_off()
    await laptop.save("/report.txt", b"v2, never uploaded before the delete")
    laptop.delete("/report.txt")
    await laptop.save("/report.txt", b"a new report")
    final = await agree(laptop, desktop)
    assert final["/report.txt"] == b"a new report" and not copies(laptop)
    old = laptop.lookup("/report.txt")
    trashed = laptop.drive.replica.db.execute(
        "SELECT fid, manifest FROM trash WHERE name=?", (b"report.txt",)).fetchall()
    assert [fid for fid, _ in trashed] != [old.fid] and trashed, "the deleted save is in the trash"


@on_devices("laptop", "desktop")
async def test_a_save_deleted_before_it_uploaded_while_another_device_saved_becomes_a_conflicted_copy(laptop, desktop):
    await laptop.save("/report.txt", b"v1")
    await agree(laptop, desktop)
    laptop.cut_off()
    await laptop.save("/report.txt", b"laptop's last save")
    laptop.delete("/report.txt")
    await desktop.save("/report.txt", b"desktop's save")
    await desktop.sync()
    final = await agree(laptop, desktop)
    assert final["/report.txt"] == b"desktop's save"
    [copy] = copies(laptop)
    assert final[f"/{copy}"] == b"laptop's last save"


@on_devices("laptop", "desktop")
async def test_a_file_created_in_a_directory_deleted_elsewhere_brings_the_directory_back(laptop, desktop):
    laptop.mkdir("/project")
    await agree(laptop, desktop)
    desktop.cut_off()
    laptop.delete("/project")
    await desktop.save("/project/new.txt", b"made in a folder deleted elsewhere")
    await laptop.sync()
    final = await agree(desktop, laptop)
    assert final["/project"] is None and final["/project/new.txt"] == b"made in a folder deleted elsewhere"


@on_devices("laptop", "desktop")
async def test_a_rename_within_a_directory_deleted_elsewhere_with_the_file_brings_both_back(laptop, desktop):
    """The stalled device of issue 40 (fixture stalled-rebase): the revival of the renamed
    file and of the folder it is renamed into both recreated the folder, so every rebase
    failed on a UNIQUE constraint and nothing after that entry was ever applied."""
    laptop.mkdir("/a")
    await laptop.save("/a/f2.doc", b"the report")
    await agree(laptop, desktop)
    desktop.cut_off()
    laptop.delete("/a/f2.doc")
    laptop.delete("/a")
    desktop.rename("/a/f2.doc", "/a/f1.txt")
    await laptop.sync()
    final = await agree(desktop, laptop)
    assert final["/a/f1.txt"] == b"the report" and "/a/f2.doc" not in final
    assert desktop.drive.replica.pending_count() == 0, "the rename is committed"


@on_devices("laptop", "desktop")
async def test_removing_a_directory_that_gained_entries_elsewhere_is_dropped(laptop, desktop):
    laptop.mkdir("/photos")
    await agree(laptop, desktop)
    desktop.cut_off()
    await laptop.save("/photos/beach.jpg", b"jpeg")
    await laptop.sync()
    desktop.delete("/photos")  # empty here
    final = await agree(desktop, laptop)
    assert final["/photos/beach.jpg"] == b"jpeg"


@on_devices("laptop", "desktop")
async def test_crossed_directory_renames_that_would_form_a_cycle_the_later_is_dropped(laptop, desktop):
    laptop.mkdir("/a")
    laptop.mkdir("/b")
    await agree(laptop, desktop)
    desktop.cut_off()
    laptop.rename("/a", "/b/a")
    desktop.rename("/b", "/a/b")
    await laptop.sync()
    final = await agree(desktop, laptop)
    assert "/b/a" in final and "/a/b" not in final and "/b" in final


@on_devices("laptop")
async def test_the_namespace_refuses_what_posix_refuses(laptop):
    """The engine's own checks, for every front end (the mount's errnos are tested mounted)."""
    laptop.mkdir("/d")
    await laptop.save("/d/f.txt", b"x")
    for action, code in [(lambda: laptop.mkdir("/d"), errno.EEXIST),
                         (lambda: laptop.delete("/missing"), errno.ENOENT),
                         (lambda: laptop.namespace.remove(laptop.lookup("/").ino, b"d", want_dir=True),
                          errno.ENOTEMPTY),
                         (lambda: laptop.rename("/d", "/d/inside"), errno.EINVAL),
                         (lambda: laptop.mkdir("/" + "n" * 256), errno.ENAMETOOLONG)]:
        with pytest.raises(OSError) as raised:
            action()
        assert raised.value.errno == code


@on_devices("laptop", "desktop")
async def test_a_file_whose_entry_says_more_bytes_than_its_content_covers_is_eio_not_a_crash(laptop, desktop):
    """A bad entry (a size its manifest does not cover, as a bug once wrote) must cost the
    file's readers an EIO, never the mount: every device applying it used to crash."""
    await laptop.save("/notes.txt", b"twelve bytes")
    await laptop.sync()
    node = laptop.lookup("/notes.txt")
    laptop.drive.replica.record({"op": "update", "fid": node.fid, "base": node.version, "manifest": node.extents(),
                                 "size": 200_000, "mtime_ns": node.mtime_ns, "t": 1, "device": "laptop"})
    await laptop.sync()
    await desktop.pull()
    with pytest.raises(IntegrityError, match="covers only 12"):
        await desktop.read("/notes.txt")
    assert any("notes.txt" in problem for problem in desktop.drive.problems.recent)


@on_devices("laptop", "desktop")
async def test_a_save_moved_to_a_conflicted_copy_while_it_uploads_is_not_also_recorded_for_the_file(
        laptop, desktop):
    """After a restart, the laptop uploads a save of a file it has since deleted; while the
    upload runs, the desktop's save of that file arrives and brings it back, so the laptop's
    save moves to a conflicted copy. The upload in flight must not then record that content
    for the file too (it did, with the desktop's size: every device crashed reading it)."""
    await laptop.save("/report.txt", b"v1")
    await agree(laptop, desktop)
    laptop.cut_off()
    await laptop.save("/report.txt", b"laptop's last save")
    await laptop.restart()
    laptop.delete("/report.txt")
    entered, go = threading.Event(), threading.Event()
    stored = laptop.store.put

    def put_when_let(key: str, data: bytes) -> None:
        if key.startswith(("blocks/", "packs/")):
            entered.set()
            go.wait(30)
        stored(key, data)

    laptop.store.put = put_when_let
    laptop.cut_off(False)
    laptop.drive.health.retry_now()
    assert await trio.to_thread.run_sync(entered.wait, 30), "the laptop's upload started"
    await desktop.save("/report.txt", b"desktop's save")
    await desktop.sync()
    await laptop.pull()
    go.set()
    final = await agree(laptop, desktop)
    assert final["/report.txt"] == b"desktop's save"
    [copy] = copies(laptop)
    assert final[f"/{copy}"] == b"laptop's last save"


@on_devices("laptop")
async def test_an_explicit_mtime_of_unsaved_content_survives_a_restart(laptop):
    """`touch -d` (or a mirror handing over a file with its mtime) on content not uploaded
    yet, then the process is killed: the mtime comes back with the content (it came back as
    the staged file's own, and a mirror, whose files' mtimes say whether they changed,
    fetched the file again)."""
    laptop.cut_off()
    node = await laptop.open_for_writing("/notes.txt")
    await laptop.write(node, b"offline edit")
    laptop.drive.files.set_mtime(node, 1_600_000_000_123_456_789)
    laptop.close(node)
    await laptop.restart()
    node = laptop.lookup("/notes.txt")
    assert laptop.drive.files.size_and_mtime(node) == (12, 1_600_000_000_123_456_789)
    assert await laptop.read("/notes.txt") == b"offline edit"


@on_devices("laptop", "desktop")
async def test_a_commit_whose_answer_was_lost_is_in_the_journal_once_and_the_sync_returns(laptop, desktop):
    """The append landed, the device was told it failed: the next try recognises its own
    entry — and tells whoever waits (a sync, an fsync), who waited forever before."""
    from fusedrive.engine.journal import Journal

    await laptop.save("/x.txt", b"one")
    laptop.store.answers_to_lose = 1
    with trio.fail_after(10):
        await laptop.sync()
    await desktop.pull()
    assert await desktop.read("/x.txt") == b"one"
    entries = [e for e in Journal(laptop.drive.volume).entries_after(0) if e.device == "laptop"]
    assert len(entries) == 1


@on_devices("laptop")
async def test_after_an_outage_the_store_is_asked_again_whether_it_holds_the_volume(laptop):
    """A device that committed before an outage does not take the store that answers after
    it for the same one: emptied meanwhile, it gets nothing appended."""
    from fusedrive.errors import StoreRefused

    await laptop.save("/before.txt", b"before")
    await laptop.sync()
    laptop.cut_off()
    with pytest.raises(FusedriveError):
        await laptop.pull()  # it sees the store fail (no commit in flight to look for after)
    with laptop.store.objects.lock:
        laptop.store.objects.data.clear()  # emptied while it could not see
    laptop.cut_off(False)
    await laptop.save("/after.txt", b"saved after the outage")
    with pytest.raises(StoreRefused, match="no longer holds this volume"):
        await laptop.sync()
    assert not [key for key in laptop.store.objects.data if key.startswith("journal/")]


def copy_of_the_store(device: Device) -> dict:
    """What a backup of the bucket holds now."""
    with device.store.objects.lock:
        return dict(device.store.objects.data)


def put_back_the_store(device: Device, copy: dict) -> None:
    """The bucket restored from `copy`: everything written since is gone."""
    with device.store.objects.lock:
        device.store.objects.data.clear()
        device.store.objects.data.update(copy)


async def rolled_back(laptop: Device, desktop: Device, *saves: tuple[str, bytes]) -> None:
    """Both devices agree on a file; the bucket is copied; the laptop makes `saves` (each
    synced: an entry each); the bucket is restored from the copy, losing them."""
    await laptop.save("/common.txt", b"both have it")
    await agree(laptop, desktop)
    backup = copy_of_the_store(laptop)
    for path, data in saves:
        await laptop.save(path, data)
        await laptop.sync()
    put_back_the_store(laptop, backup)


def one_history(device: Device) -> None:
    """The store's journal applies from the first entry (a new device could join) and this
    device's replica is that replay, its queue empty."""
    from fusedrive.engine.checkpoints import replay_to_head
    from fusedrive.engine.replica import Replica
    from fusedrive.tools.fsck import snapshot

    replayed = Replica(":memory:")
    replay_to_head(device.drive.volume, replayed)
    assert device.drive.replica.pending_count() == 0
    assert snapshot(replayed) == snapshot(device.drive.replica), "the replica is not the store's history"


@on_devices("laptop", "desktop")
async def test_a_journal_forked_by_a_rollback_the_lost_changes_are_committed_again(laptop, desktop):
    """The store goes back to before the laptop's entry, and the desktop (which never saw
    it) commits at that seq: the journal forked. The laptop must not build on its lost entry
    (a history no device could apply) nor stop for good: it takes the store's history and
    commits its lost change again on top, with what it saved meanwhile, and says so once."""
    await rolled_back(laptop, desktop, ("/lost.txt", b"the laptop's, lost with the rollback"))
    await desktop.save("/desktop.txt", b"the desktop's, at the same seq")
    await desktop.sync()
    laptop.cut_off()
    with pytest.raises(FusedriveError):
        await laptop.pull()
    laptop.cut_off(False)
    await laptop.save("/after.txt", b"saved after")
    await laptop.sync()
    final = await agree(laptop, desktop)
    assert final["/lost.txt"] == b"the laptop's, lost with the rollback"
    assert final["/desktop.txt"] == b"the desktop's, at the same seq" and final["/after.txt"] == b"saved after"
    assert any("forked" in message for message in laptop.drive.problems.recent), "the user was not told"
    one_history(laptop)
    one_history(desktop)


@on_devices("laptop", "desktop")
async def test_entries_lost_by_a_rollback_are_never_put_back_on_top_of_another_devices_entry(laptop, desktop):
    """The laptop commits two entries, the store goes back to before both, and the desktop
    (which never saw them) commits at the first one's seq. The laptop's next pull finds its
    second entry gone and would put it back — on top of the desktop's entry, a history no
    device made (its changes name the laptop's lost file: every device then failed to apply
    it, 'unknown file id', found by the simulation with --rollbacks). It sees the fork and
    commits both changes again as new entries instead."""
    from fusedrive.engine.journal import Journal

    await rolled_back(laptop, desktop, ("/lost.txt", b"the laptop's first, lost with the rollback"),
                      ("/lost.txt", b"the laptop's second, lost with the rollback"))
    await desktop.save("/desktop.txt", b"the desktop's, at the first one's seq")
    await desktop.sync()
    await laptop.pull()
    await laptop.sync()
    entries = list(Journal(laptop.drive.volume).entries_after(0))
    assert [e.device for e in entries[-2:]] == ["desktop", "laptop"], \
        "the lost entries were not committed again after the desktop's"
    final = await agree(laptop, desktop)
    assert final["/lost.txt"] == b"the laptop's second, lost with the rollback"
    assert final["/desktop.txt"] == b"the desktop's, at the first one's seq"
    one_history(laptop)


@on_devices("laptop", "desktop")
async def test_a_file_changed_in_both_histories_of_a_fork_keeps_both(laptop, desktop):
    """The laptop's edit is lost with the rollback; the desktop edits the same file after it:
    the laptop's edit, committed again, lost to a save it never saw — a conflicted copy, as
    for any two devices saving one file at once; nothing is lost."""
    await rolled_back(laptop, desktop, ("/common.txt", b"the laptop's edit, lost with the rollback"))
    await desktop.save("/common.txt", b"the desktop's edit, after the rollback")
    await desktop.sync()
    await laptop.pull()
    final = await agree(laptop, desktop)
    assert final["/common.txt"] == b"the desktop's edit, after the rollback"
    [copy] = copies(laptop)
    assert final[f"/{copy}"] == b"the laptop's edit, lost with the rollback"
    one_history(laptop)


@on_devices("laptop", "desktop")
async def test_a_commit_made_after_a_rollback_before_the_device_noticed_leaves_no_gap(laptop, desktop):
    """The store goes back to before two of the laptop's entries; the laptop, which had just
    checked the store, commits a third at its own head — a gap under it that every other
    device was refused at ('Journal entry N is missing') and that no pull of the laptop's
    saw (it looked only at its last entry). Its next pull checks the entries it applied
    last, finds them gone, and puts them back: the desktop gets all three saves."""
    await rolled_back(laptop, desktop, ("/one.txt", b"first, lost with the rollback"),
                      ("/two.txt", b"second, lost with the rollback"))
    await laptop.save("/three.txt", b"third, committed at the laptop's head")
    await laptop.sync()
    await laptop.pull()
    await desktop.pull()
    assert [await desktop.read(f"/{name}.txt") for name in ("one", "two", "three")] == [
        b"first, lost with the rollback", b"second, lost with the rollback", b"third, committed at the laptop's head"]


@on_devices("laptop", "desktop")
async def test_blocks_lost_with_a_rollback_come_back_from_whichever_device_has_them(laptop, desktop):
    """The store goes back to before the laptop's save. The desktop, which applied the entry
    but never read the file, notices first and puts the entry back — without its blocks, which
    only the laptop has. The laptop's own entries are back by the time it looks, so it would
    never notice: the put-back leaves a mark every device's journal listing shows, and the
    laptop puts back the blocks it has. The desktop reads the file exactly."""
    import os as _os

    await laptop.save("/common.txt", b"both have it")
    await agree(laptop, desktop)
    backup = copy_of_the_store(laptop)
    content = _os.urandom(300_000)  # blocks of their own (not carried in the entry)
    await laptop.save("/photo.jpg", content)
    await laptop.sync()
    await desktop.pull()
    put_back_the_store(laptop, backup)  # the store restored from the older copy
    await desktop.pull()  # puts the laptop's entry back, not its blocks
    await laptop.pull()
    assert await desktop.read("/photo.jpg") == content


@on_devices("laptop", "desktop")
async def test_an_entry_that_follows_another_history_is_never_applied(laptop, desktop):
    """The store goes back to before the laptop's entry; the laptop, before it notices,
    appends its next entry at its own head (leaving a gap); the desktop, which never saw the
    lost entry, fills the gap with its own. The laptop's entry now follows an entry no
    reader of the store has: each entry names the one before it as its writer applied it
    (`prev`), so every reader skips it as dead instead of applying a history no device made
    (found by the simulation with --rollbacks: 'unknown file id' where an entry changed a
    file of the lost one). The laptop finds its history forked and commits both its lost
    changes again: nothing is lost."""
    await desktop.save("/desktop.txt", b"the desktop has committed: it checked the store")
    await desktop.sync()
    await rolled_back(laptop, desktop, ("/one.txt", b"lost with the rollback"))
    await laptop.save("/one.txt", b"an edit of a file the store no longer has")
    await laptop.sync()  # at its own head: a gap under it
    await desktop.save("/x.txt", b"the desktop's, in the gap")
    await desktop.sync()
    await desktop.save("/y.txt", b"the desktop's next")
    await desktop.sync()
    assert desktop.lookup("/one.txt") is None, "the desktop applied the laptop's entry on top of its own"
    await laptop.pull()  # finds its history forked: its lost changes are queued again
    final = await agree(laptop, desktop)
    assert final["/one.txt"] == b"an edit of a file the store no longer has"
    assert final["/x.txt"] == b"the desktop's, in the gap" and final["/y.txt"] == b"the desktop's next"
    one_history(laptop)
    one_history(desktop)
