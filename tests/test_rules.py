"""The conflict rules in process: a replica with queued operations rebased onto other
devices' entries, no mount and no store (fast)."""

from __future__ import annotations

import pytest

import stat
import time

from fusedrive.engine.journal import Entry
from fusedrive.engine.rebase import Revalidator
from fusedrive.engine.replica import Replica
from fusedrive.engine.tree import ROOT_FID, ROOT_INO

pytestmark = pytest.mark.inprocess


def now() -> int:
    return time.time_ns()


def new_replica(tmp_path, name: str) -> Replica:
    replica = Replica(str(tmp_path / f"{name}.sqlite3"))
    replica.apply_remote(1, [{"op": "mkroot", "mode": stat.S_IFDIR | 0o755, "uid": 0, "gid": 0, "t": now()}])
    return replica


def mknod(fid: str, name: str, parent: str = ROOT_FID) -> dict:
    return {"op": "mknod", "fid": fid, "parent": parent, "name": name, "mode": stat.S_IFREG | 0o644, "uid": 0,
            "gid": 0, "rdev": 0, "t": now()}


def names(replica: Replica, parent: int = ROOT_INO) -> list[str]:
    return [name.decode() for name, _ino in replica.children(parent)]


def test_a_queued_link_that_another_device_made_too_is_dropped_not_a_crash(tmp_path):
    replica = new_replica(tmp_path, "laptop")
    replica.apply_remote(2, [mknod("f", "f.txt")])
    link = {"op": "link", "fid": "f", "parent": ROOT_FID, "name": "same.txt", "t": now()}
    replica.record(link)
    replica.rebase([Entry(3, "desktop", [dict(link)])], Revalidator("laptop"))
    assert names(replica) == ["f.txt", "same.txt"]
    [(_id, ops)] = replica.pending_ops(10)
    assert ops == []  # nothing left to commit: the desktop's entry made the link


def test_queued_creates_under_names_another_device_took_become_conflicted_copies(tmp_path):
    replica = new_replica(tmp_path, "laptop")
    replica.record(mknod("dir-laptop", "d") | {"mode": stat.S_IFDIR | 0o755})
    replica.record(mknod("note-laptop", "note.txt", parent="dir-laptop"))
    replica.record(mknod("top-laptop", "top.txt"))
    theirs = [mknod("dir-desktop", "d") | {"mode": stat.S_IFDIR | 0o755},
              mknod("note-desktop", "note.txt", parent="dir-desktop"), mknod("top-desktop", "top.txt")]
    rules = Revalidator("laptop")
    replica.rebase([Entry(2, "desktop", theirs)], rules)
    top = names(replica)
    assert top[0] == "d" and top[1].startswith("d (conflicted copy from laptop ")
    assert top[2].startswith("top (conflicted copy from laptop ") and top[3] == "top.txt"
    assert len(rules.conflicts) == 2
    laptop_dir = replica.ino_of("dir-laptop")
    assert names(replica, laptop_dir) == ["note.txt"]  # the laptop's note stays in the laptop's folder


def test_a_replica_written_by_an_older_build_keeps_its_queue_and_undo_log(tmp_path):
    """Older builds logged undo rows through persistent triggers that read an `undo_flag`
    table, into an AUTOINCREMENT table. Opened by this build, the queued ops are still
    taken back and replayed by a rebase, and nothing of the old scheme is left."""
    path = tmp_path / "laptop.sqlite3"
    replica = new_replica(tmp_path, "laptop")
    replica.record(mknod("top-laptop", "top.txt"))
    logged = replica.db.execute("SELECT id, pending_id, sql FROM undo ORDER BY id").fetchall()
    assert logged
    replica.db.executescript(
        "ALTER TABLE undo RENAME TO undo_new;"
        "CREATE TABLE undo(id INTEGER PRIMARY KEY AUTOINCREMENT, pending_id INTEGER NOT NULL, sql TEXT NOT NULL);"
        "INSERT INTO undo SELECT * FROM undo_new; DROP TABLE undo_new;"
        "CREATE TABLE undo_flag(pending_id INTEGER NOT NULL); INSERT INTO undo_flag VALUES(0);"
        "CREATE TRIGGER undo_dentries_insert AFTER INSERT ON dentries WHEN (SELECT pending_id FROM undo_flag) > 0 "
        "BEGIN INSERT INTO undo(pending_id, sql) VALUES((SELECT pending_id FROM undo_flag), "
        "'DELETE FROM dentries WHERE rowid=' || NEW.rowid); END;"
        "PRAGMA user_version = 0;")  # (what a replica of an older build says: its schema needs bringing up)
    replica.close()

    replica = Replica(str(path))
    schema = dict(replica.db.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'trigger')"))
    assert "undo_flag" not in schema and "undo_dentries_insert" not in schema
    assert "AUTOINCREMENT" not in schema["undo"]
    assert replica.db.execute("SELECT id, pending_id, sql FROM undo ORDER BY id").fetchall() == logged
    replica.record(mknod("note-laptop", "note.txt"))
    replica.rebase([Entry(2, "desktop", [mknod("top-desktop", "top.txt"), mknod("note-desktop", "note.txt")])],
                   Revalidator("laptop"))
    top = names(replica)
    assert top[0].startswith("note (conflicted copy from laptop ") and top[1] == "note.txt"
    assert top[2].startswith("top (conflicted copy from laptop ") and top[3] == "top.txt"
