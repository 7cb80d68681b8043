"""History follows the path the user sees, whichever way a program saves: writing the file
in place, writing a temporary file and renaming it over (gedit, LibreOffice, atomic-write
libraries), or renaming the original to a backup, writing a new file and deleting the
backup (vim). The trash holds only what the user deleted."""

from __future__ import annotations

import json
import os

import pytest

from test_gc import expire_everything_old, gc
from test_history import history, subprocess_bytes
from test_posix import read, write
from test_sync import wait_for


def save_in_place(directory: str, name: str, data: bytes) -> None:
    write(os.path.join(directory, name), data)


def save_by_rename(directory: str, name: str, data: bytes) -> None:
    temporary = os.path.join(directory, f".{name}.tmp")
    write(temporary, data)
    os.rename(temporary, os.path.join(directory, name))


def save_like_vim(directory: str, name: str, data: bytes) -> None:
    path, backup = os.path.join(directory, name), os.path.join(directory, name + "~")
    if os.path.exists(path):
        os.rename(path, backup)
    write(path, data)
    if os.path.exists(backup):
        os.unlink(backup)


STYLES = {"in place": save_in_place, "rename over": save_by_rename, "vim": save_like_vim}


def trash_paths(mount) -> list[str]:
    return [item["path"] for item in json.loads(mount.volume.cli.run("trash", "list", str(mount.path),
                                                                      "--json").stdout)]


@pytest.mark.parametrize("style", STYLES)
def test_every_save_is_a_version_of_the_path_on_every_device(s3_volume, style):
    laptop = s3_volume.mount("laptop")
    drafts = [f"draft {i}\n".encode() * (i + 1) for i in range(1, 4)]
    for draft in drafts:
        STYLES[style](str(laptop.path), "essay.txt", draft)
        laptop.sync()
    found = history(laptop, "essay.txt")
    assert [v["size"] for v in found] == [len(d) for d in drafts]
    for version, draft in zip(found, drafts):
        assert subprocess_bytes(s3_volume, "cat", laptop.p("essay.txt"), "--version", str(version["number"])) == draft
    labels = sorted(os.listdir(laptop.p(".fusedrive", "history", "essay.txt")))
    assert len(labels) == 3
    assert read(laptop.p(".fusedrive", "history", "essay.txt", labels[0])) == drafts[0]
    assert trash_paths(laptop) == [], "nothing was deleted by the user"

    desktop = s3_volume.mount("desktop")  # a device that joins later sees the same history
    assert [v["number"] for v in history(desktop, "essay.txt")] == [v["number"] for v in found]
    offline = json.loads(s3_volume.cli.run("history", "essay.txt", "--volume", s3_volume.url, "--json").stdout)
    assert [v["size"] for v in offline] == [len(d) for d in drafts]


def test_restoring_an_old_version_after_saves_by_rename_keeps_the_history_going(volume):
    laptop = volume.mount("laptop")
    drafts = [b"first", b"second", b"third"]
    for draft in drafts:
        save_by_rename(str(laptop.path), "notes.txt", draft)
    numbers = [v["number"] for v in history(laptop, "notes.txt")]
    assert len(numbers) == 3
    volume.cli.run("restore", laptop.p("notes.txt"), "--version", str(numbers[0]))
    assert read(laptop.p("notes.txt")) == b"first"
    save_by_rename(str(laptop.path), "notes.txt", b"fourth")
    after = history(laptop, "notes.txt")
    assert len(after) == 5 and [v["number"] for v in after][:3] == numbers
    assert subprocess_bytes(volume, "cat", laptop.p("notes.txt"), "--version", str(after[3]["number"])) == b"first"


def test_the_trash_holds_what_the_user_deleted_not_the_saves_replaced(volume):
    laptop = volume.mount("laptop")
    for draft in (b"one", b"two", b"three"):
        save_by_rename(str(laptop.path), "report.txt", draft)
        save_like_vim(str(laptop.path), "plan.txt", draft)
    os.unlink(laptop.p("report.txt"))
    laptop.sync()
    assert trash_paths(laptop) == ["/report.txt"]
    volume.cli.run("trash", "restore", laptop.p("report.txt"))
    assert read(laptop.p("report.txt")) == b"three"
    restored = history(laptop, "report.txt")  # its path's three saves, and the restore (a version too)
    assert [v["size"] for v in restored] == [3, 3, 5, 5]


def test_a_save_by_rename_over_a_file_another_device_changed_loses_nothing(s3_volume):
    laptop, desktop = s3_volume.mount("laptop"), s3_volume.mount("desktop")
    save_in_place(str(laptop.path), "shared.txt", b"v1")
    laptop.sync()
    wait_for(lambda: os.path.exists(desktop.p("shared.txt")), timeout=30, what="the desktop to see the file")
    assert read(desktop.p("shared.txt")) == b"v1"
    desktop.control("pause")
    save_by_rename(str(desktop.path), "shared.txt", b"desktop's save")
    save_in_place(str(laptop.path), "shared.txt", b"laptop's save")
    laptop.sync()
    desktop.control("resume")
    desktop.sync()
    wait_for(lambda: any("conflicted copy" in n for n in os.listdir(laptop.path)), timeout=30,
             what="the laptop to see the conflicted copy")
    names = sorted(os.listdir(laptop.path))
    copies = [n for n in names if "conflicted copy" in n]
    assert len(copies) == 1 and read(laptop.p("shared.txt")) == b"laptop's save"
    assert read(laptop.p(copies[0])) == b"desktop's save"


def test_gc_thins_a_paths_history_like_any_other(s3_volume):
    laptop = s3_volume.mount("laptop")
    drafts = [os.urandom(50_000) for _ in range(4)]
    for draft in drafts:
        save_by_rename(str(laptop.path), "thesis.txt", draft)
        laptop.sync()
    assert gc(s3_volume, "--grace", "0")["versions_pruned"] == 0, "the default policy keeps them all for now"
    expire_everything_old(s3_volume)
    s3_volume.cli.run("config", s3_volume.url, "--max-versions", "1")
    report = gc(s3_volume, "--grace", "0")
    assert report["versions_pruned"] == 3 and report["trash_purged"] == 0
    wait_for(lambda: len(history(laptop, "thesis.txt")) == 1, timeout=30, what="the laptop to apply the prune")
    remaining = history(laptop, "thesis.txt")
    assert [v["size"] for v in remaining] == [len(drafts[-1])]
    assert read(laptop.p("thesis.txt")) == drafts[-1]
    verify = s3_volume.cli.run("fsck", s3_volume.url, "--verify-blocks", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
