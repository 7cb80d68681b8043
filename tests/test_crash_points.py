"""The mount killed at each named step of the upload and commit path (crashpoints.py)
while another device changes, deletes, renames and creates the same names: the next
mount from the same cache dir loses nothing that was closed, and fsck is clean.

Each test: the laptop, with FUSEDRIVE_CRASH_AT set, saves files while the store does not
answer it; the desktop then changes, deletes and renames those files and creates a file
under a name the laptop created too (or, "alone", does nothing of the kind); the store
answers the laptop again, which goes on
until it dies at the step; it mounts again from its cache dir; both devices end equal
and every save of both is live, a conflicted copy, in history or in the trash.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from fusedrive.engine.checkpoints import CHECKPOINT_EVERY
from fusedrive.crashpoints import STEPS
from oracle import assert_nothing_lost
from test_checkpoints import append_entries
from test_posix import write
from test_store_faults import wait_caught_up, wait_drained
from test_sync import same_everywhere, wait_for

NAMES = ("changed.txt", "deleted.txt", "renamed.txt", "untouched.txt")


def mount_died(mount) -> bool:
    from fusedrive.services import control

    entry = control.read_registry(str(mount.path))
    return entry is None or control.has_exited(entry["pid"])


@pytest.mark.parametrize("others", ["desktop-changes", "alone"])
@pytest.mark.parametrize("step", STEPS)
def test_a_kill_at_each_step_loses_no_closed_save(store_proxy, s3_volume, step, others):
    desktop = s3_volume.mount("desktop", poll_interval=1)
    laptop = s3_volume.mount("laptop", poll_interval=1, endpoint=store_proxy.endpoint)
    saves = {}
    for name in NAMES:
        saves[f"laptop's first {name}"] = f"first {name}".encode()
        write(laptop.p(name), saves[f"laptop's first {name}"])
    laptop.sync()
    wait_caught_up(desktop, laptop, what="the desktop to see the laptop's files")
    laptop.umount()
    if step == "checkpoint":  # the laptop's next commit passes a checkpoint
        append_entries(s3_volume, CHECKPOINT_EVERY)
    laptop.start(poll_interval=1, endpoint=store_proxy.endpoint, env={"FUSEDRIVE_CRASH_AT": step})
    s3_volume.mounts.append(laptop)

    store_proxy.down()
    for name in (*NAMES, "created.txt"):
        data = f"the laptop's offline save of {name}, {os.urandom(8).hex()}".encode()
        try:
            write(laptop.p(name), data)
        except OSError:
            break  # died at `staged`: later saves never returned
        saves[f"laptop's offline {name}"] = data
    if others == "desktop-changes":
        saves["desktop's changed.txt"] = b"the desktop's save of changed.txt"
        write(desktop.p("changed.txt"), saves["desktop's changed.txt"])
        os.unlink(desktop.p("deleted.txt"))
        os.rename(desktop.p("renamed.txt"), desktop.p("renamed-on-desktop.txt"))
        saves["desktop's created.txt"] = b"the desktop's created.txt"
        write(desktop.p("created.txt"), saves["desktop's created.txt"])
        desktop.sync()
    elif step == "rebase":  # a rebase needs something from another device to apply
        write(desktop.p("elsewhere.txt"), b"the desktop's unrelated file")
        desktop.sync()
    store_proxy.up()
    wait_for(lambda: mount_died(laptop), timeout=60, what=f"the laptop to die at {step}")
    subprocess.run(["fusermount3", "-u", "-z", str(laptop.path)], capture_output=True, timeout=30)
    s3_volume.mounts.remove(laptop)

    laptop = s3_volume.mount("laptop", cache_dir=laptop.cache_dir, poll_interval=1, endpoint=store_proxy.endpoint)
    laptop.sync()
    wait_drained(laptop, timeout=60)
    wait_caught_up(desktop, laptop, what="the desktop to apply all of the laptop's changes")
    same_everywhere(laptop, desktop)
    if others == "desktop-changes":
        assert not os.path.exists(desktop.p("renamed.txt"))  # the desktop's rename stands; the save follows it
    assert_nothing_lost(desktop, saves)
