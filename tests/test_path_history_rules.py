"""The path-history rules on engines in process: saves by rename and vim's saves are
versions of the path on every device; the trash holds only deletes; entries written
before format 3 keep the rules they were written under."""

from __future__ import annotations

import stat
import time

import pytest

from engines import Device
from fusedrive.engine import history
from fusedrive.engine.replica import Replica
from fusedrive.engine.tree import ROOT_FID, ROOT_INO
from test_conflict_table import agree, on_devices

pytestmark = pytest.mark.inprocess


def path_history(device: Device, path: str) -> list[int]:
    return [v.size for v in history.versions(device.drive.replica, device.lookup(path).fid)]


def trash(device: Device) -> list[bytes]:
    return [name for (name,) in device.drive.replica.db.execute("SELECT name FROM trash ORDER BY name")]


@on_devices("laptop", "desktop")
async def test_saves_by_rename_and_like_vim_are_versions_of_the_path_everywhere(laptop, desktop):
    for draft in (b"1", b"22", b"333"):
        await laptop.save_by_rename("/essay.txt", draft)
        if laptop.lookup("/notes.txt") is not None:
            laptop.rename("/notes.txt", "/notes.txt~")
        await laptop.save("/notes.txt", draft)
        if laptop.lookup("/notes.txt~") is not None:
            laptop.delete("/notes.txt~")
        await laptop.sync()
    await agree(laptop, desktop)
    for device in (laptop, desktop):
        assert path_history(device, "/essay.txt") == [1, 2, 3]
        assert path_history(device, "/notes.txt") == [1, 2, 3]
        assert trash(device) == []
    numbers = [v.number for v in history.versions(desktop.drive.replica, desktop.lookup("/essay.txt").fid)]
    assert numbers == sorted(set(numbers))


@on_devices("laptop")
async def test_a_file_deleted_by_the_user_goes_to_the_trash_even_with_a_history(laptop):
    for draft in (b"1", b"22"):
        await laptop.save_by_rename("/report.txt", draft)
    laptop.delete("/report.txt")
    await laptop.sync()
    assert trash(laptop) == [b"report.txt"]


def test_entries_written_before_format_3_keep_their_rules(tmp_path):
    """A rename over a file, from an entry of format 2, still sends the replaced file to the
    trash: a replica built then and a replay now agree."""
    replica = Replica(str(tmp_path / "r.sqlite3"))
    t = time.time_ns()
    replica.apply_remote(1, [{"op": "mkroot", "mode": stat.S_IFDIR | 0o755, "uid": 0, "gid": 0, "t": t}], 2)
    files = [{"op": "mknod", "fid": fid, "parent": ROOT_FID, "name": name, "mode": stat.S_IFREG | 0o644,
              "uid": 0, "gid": 0, "rdev": 0, "t": t} for fid, name in (("old", "a.txt"), ("new", ".a.tmp"))]
    rename = {"op": "rename", "parent": ROOT_FID, "name": ".a.tmp", "newparent": ROOT_FID, "newname": "a.txt",
              "fid": "new", "replaces": ["old", 0], "t": t}
    replica.apply_remote(2, [*files, rename], 2)
    assert replica.in_trash("old") and replica.successor_of("old") is None
    replica.apply_remote(3, [dict(files[0], fid="old2", name=".b"), dict(files[1], fid="new2", name=".b.tmp"),
                             dict(rename, name=".b.tmp", newname=".b", fid="new2", replaces=["old2", 0])], 3)
    assert not replica.in_trash("old2") and replica.successor_of("old2") == "new2"
    assert replica.lookup(ROOT_INO, b"a.txt") == replica.ino_of("new")
