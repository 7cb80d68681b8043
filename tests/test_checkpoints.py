"""A device that joins a long-lived volume starts from the newest checkpoint."""

from __future__ import annotations

import os
import stat
import time
import uuid

from test_sync import wait_for
from treeutil import describe

from fusedrive.engine.checkpoints import CHECKPOINT_EVERY


def append_entries(volume, count: int) -> None:
    """Commit `count` small entries straight through the journal (another device's history)."""
    from fusedrive.engine.journal import Entry, Journal

    with volume.opened() as vol:
        journal = Journal(vol)
        seq = journal.seqs_after(0)[-1]
        for i in range(count):
            seq += 1
            op = {"op": "mknod", "fid": str(uuid.uuid4()), "parent": "root", "name": f"old-{i:05d}",
                  "mode": stat.S_IFREG | 0o644, "uid": 0, "gid": 0, "rdev": 0, "t": time.time_ns()}
            assert journal.append(Entry(seq=seq, device="history", ops=[op]))


def test_new_device_starts_from_the_newest_checkpoint(volume):
    append_entries(volume, CHECKPOINT_EVERY + 50)
    first = volume.mount("old-timer")
    with open(first.p("new.txt"), "wb") as f:
        f.write(b"after the history")
    first.sync()
    # written right after the commit that passes 1,000 entries (sync does not wait for it)
    status = wait_for(lambda: (s := first.control("status"))["checkpoint_seq"] >= CHECKPOINT_EVERY and s,
                      what="a checkpoint after 1,000 entries")
    assert any(key.startswith("checkpoints/") for key, _ in volume.list_objects("checkpoints/"))
    expected = describe(first.path)
    first.umount()

    joiner = volume.mount("new-laptop")
    assert joiner.control("status")["checkpoint_seq"] == status["checkpoint_seq"]
    assert describe(joiner.path) == expected
    assert len(os.listdir(joiner.path)) == CHECKPOINT_EVERY + 51
