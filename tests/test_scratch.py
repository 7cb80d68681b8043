"""What programs make and throw away — lock files, swap files, a repository's internals —
never becomes a conflicted copy and never fills the trash or the history (engine/scratch.py), on the real engine in this process. Every test ends
with the devices agreeing on the whole tree, trash and history included."""

from __future__ import annotations

import pytest

from engines import Device
from fusedrive.engine import history
from fusedrive.engine.checkpoints import dump_state
from test_conflict_table import agree, copies, on_devices

pytestmark = pytest.mark.inprocess


def trash(device: Device) -> list[str]:
    return sorted(item.path for item in history.trash_items(device.drive.replica))


def versions_of_deleted(device: Device) -> int:
    """Versions kept of files that have no name, are not in the trash and whose history goes
    on in no other file: kept for nobody."""
    return device.drive.replica.db.execute(
        "SELECT count(*) FROM versions WHERE fid NOT IN (SELECT fid FROM trash) AND fid NOT IN "
        "(SELECT i.fid FROM inodes i JOIN dentries d ON d.ino = i.ino) AND fid NOT IN "
        "(SELECT predecessor FROM lineage)").fetchone()[0]


async def same_state(*devices: Device) -> None:
    """The devices agree on the tree, the trash and every version (what fsck compares)."""
    await agree(*devices)
    states = [{k: sorted(map(str, v)) if isinstance(v, list) else v for k, v in dump_state(d.drive.replica).items()
               if k in ("trash", "versions", "departed", "dentries")} for d in devices]
    assert all(s == states[0] for s in states), "the devices differ in trash or history"


@on_devices("laptop", "desktop")
async def test_two_devices_lock_one_document_at_once_and_no_lock_or_copy_stays(laptop, desktop):
    await laptop.save("/report.odt", b"the report")
    await agree(laptop, desktop)
    desktop.cut_off()
    await laptop.save("/.~lock.report.odt#", b"laptop,alice")
    await desktop.save("/.~lock.report.odt#", b"desktop,bob")
    await laptop.sync()
    await agree(desktop, laptop)
    assert not copies(laptop) and not copies(desktop), "a lock never becomes a conflicted copy"
    laptop.delete("/.~lock.report.odt#")  # each program removes its lock by name, as it closes
    await laptop.sync()
    await desktop.pull()
    if desktop.lookup("/.~lock.report.odt#") is not None:
        desktop.delete("/.~lock.report.odt#")
    final = await agree(laptop, desktop)
    assert sorted(final) == ["/", "/report.odt"] and not copies(laptop)
    assert trash(laptop) == [] and trash(desktop) == []
    assert laptop.drive.status()["conflicted_copies"] == 0
    await same_state(laptop, desktop)


@on_devices("laptop", "desktop")
async def test_a_lock_saved_on_two_devices_at_once_keeps_the_later_save_without_a_copy(laptop, desktop):
    await laptop.save("/~$budget.xlsx", b"alice")
    await agree(laptop, desktop)
    desktop.cut_off()
    await laptop.save("/~$budget.xlsx", b"alice again")
    await desktop.save("/~$budget.xlsx", b"bob")
    await laptop.sync()
    final = await agree(desktop, laptop)
    assert final["/~$budget.xlsx"] == b"bob" and not copies(laptop)


@on_devices("laptop", "desktop")
async def test_locks_swap_files_and_repository_internals_leave_no_trash_or_history(laptop, desktop):
    for path in ("/.~lock.notes.odt#", "/.notes.txt.swp", "/~$plan.docx", "/.#notes.txt"):
        await laptop.save(path, b"lock")
        await laptop.save(path, b"lock, again")
    laptop.mkdir("/project")
    laptop.mkdir("/project/.git")
    laptop.mkdir("/project/.git/refs")
    for path in ("/project/.git/index.lock", "/project/.git/refs/HEAD.lock", "/project/.git/tjNxMOO"):
        await laptop.save(path, b"git's")
    await laptop.save("/notes.txt", b"kept")
    await laptop.sync()
    await agree(laptop, desktop)
    for path in ("/.~lock.notes.odt#", "/.notes.txt.swp", "/~$plan.docx", "/.#notes.txt",
                 "/project/.git/index.lock", "/project/.git/refs/HEAD.lock", "/project/.git/tjNxMOO",
                 "/notes.txt"):
        laptop.delete(path)
    await laptop.sync()
    await desktop.pull()
    assert trash(laptop) == trash(desktop) == ["/notes.txt"], "only what the user deleted is in the trash"
    assert versions_of_deleted(laptop) == 0
    await same_state(laptop, desktop)


@on_devices("laptop", "desktop")
async def test_a_file_made_and_deleted_at_once_is_still_the_users_and_goes_to_the_trash(laptop, desktop):
    """Living briefly does not make a file scratch: a document made and deleted a moment
    later, before it ever uploaded, can be restored — and so can one another device made."""
    laptop.cut_off()
    await laptop.save("/draft.txt", b"a draft deleted a moment later")
    laptop.delete("/draft.txt")
    await desktop.save("/from-the-desktop.txt", b"theirs")
    await agree(desktop, laptop)
    laptop.delete("/from-the-desktop.txt")
    await agree(laptop, desktop)
    assert trash(laptop) == trash(desktop) == ["/draft.txt", "/from-the-desktop.txt"]
    await same_state(laptop, desktop)


@on_devices("laptop", "desktop")
async def test_a_repositorys_files_replaced_by_rename_keep_no_history(laptop, desktop):
    """git writes index.lock and renames it over index at every command: the old index is
    no version of anything a user would restore."""
    laptop.mkdir("/.git")
    for number in range(5):
        await laptop.save("/.git/index.lock", f"index {number}".encode())
        laptop.rename("/.git/index.lock", "/.git/index")
    await laptop.save_by_rename("/essay.txt", b"draft 1")
    await laptop.save_by_rename("/essay.txt", b"draft 2")
    await agree(laptop, desktop)
    replica = desktop.drive.replica
    index = desktop.lookup("/.git/index")
    assert history.versions(replica, index.fid) == history.versions(replica, index.fid)[-1:]
    assert len(history.versions(replica, desktop.lookup("/essay.txt").fid)) == 2, "a document keeps its history"
    assert versions_of_deleted(desktop) == 0 and trash(desktop) == []
    await same_state(laptop, desktop)
