"""Going back in time: versions, restore, old versions in the mount, and the trash."""

from __future__ import annotations

import errno
import json
import os

import pytest

from test_posix import read, write


def history(mount, path, *extra):
    return json.loads(mount.volume.cli.run("history", mount.p(path), "--json", *extra).stdout)


def test_five_versions_listed_restored_and_read_back(volume):
    laptop = volume.mount("laptop")
    contents = [os.urandom(100_000 + i) for i in range(5)]
    for data in contents:
        write(laptop.p("essay.txt"), data)
        laptop.sync()
    versions = history(laptop, "essay.txt")
    assert [v["number"] for v in versions] == [1, 2, 3, 4, 5]
    assert [v["size"] for v in versions] == [len(d) for d in contents]
    assert {v["device"] for v in versions} == {"laptop"}

    assert subprocess_bytes(volume, "cat", laptop.p("essay.txt"), "--version", "2") == contents[1]

    stored_before = volume.stored_bytes("blocks/")
    volume.cli.run("restore", laptop.p("essay.txt"), "--version", "2")
    assert read(laptop.p("essay.txt")) == contents[1]
    laptop.sync()
    assert volume.stored_bytes("blocks/") == stored_before, "a restore copies no block"
    assert [v["number"] for v in history(laptop, "essay.txt")] == [1, 2, 3, 4, 5, 6]

    volume.cli.run("restore", laptop.p("essay.txt"), "--version", "4", "--to", laptop.p("essay-v4.txt"))
    assert read(laptop.p("essay-v4.txt")) == contents[3]
    assert read(laptop.p("essay.txt")) == contents[1]

    fresh = volume.mount("desktop")  # history is in the volume, not on one device
    assert [v["number"] for v in history(fresh, "essay.txt")] == [1, 2, 3, 4, 5, 6]
    offline = json.loads(volume.cli.run("history", "essay.txt", "--volume", volume.url, "--json").stdout)
    assert [v["size"] for v in offline] == [len(d) for d in contents] + [len(contents[1])]
    assert subprocess_bytes(volume, "cat", "essay.txt", "--version", "3", "--volume", volume.url) == contents[2]


def subprocess_bytes(volume, *args) -> bytes:
    import subprocess
    import sys

    env = dict(os.environ, **volume.cli.env, FUSEDRIVE_PASSPHRASE="correct horse battery staple")
    result = subprocess.run([sys.executable, "-m", "fusedrive.cli", *args], env=env, capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_restore_of_a_missing_version_is_a_clear_error(volume):
    laptop = volume.mount("laptop")
    write(laptop.p("a.txt"), b"one")
    result = volume.cli.run("restore", laptop.p("a.txt"), "--version", "7", check=False)
    assert result.returncode != 0
    assert "There is no version 7" in result.stderr


def trash(mount):
    return json.loads(mount.volume.cli.run("trash", "list", str(mount.path), "--json").stdout)


def test_deleted_file_and_folder_come_back_from_the_trash(volume):
    laptop = volume.mount("laptop")
    os.makedirs(laptop.p("project/src"))
    files = {"project/README": b"readme", "project/src/main.py": os.urandom(300_000), "notes.txt": b"notes"}
    for path, data in files.items():
        write(laptop.p(path), data)
    laptop.sync()
    os.unlink(laptop.p("notes.txt"))
    for path in ("project/src/main.py", "project/README"):
        os.unlink(laptop.p(path))
    os.rmdir(laptop.p("project/src"))
    os.rmdir(laptop.p("project"))
    listed = trash(laptop)
    assert [(i["path"], i["is_dir"]) for i in listed] == [("/notes.txt", False), ("/project", True)]
    assert listed[1]["inside"] == 3

    volume.cli.run("trash", "restore", laptop.p("notes.txt"))
    volume.cli.run("trash", "restore", laptop.p("project"))
    for path, data in files.items():
        assert read(laptop.p(path)) == data
    assert trash(laptop) == []

    write(laptop.p("notes.txt"), b"newer notes")
    laptop.sync()
    os.unlink(laptop.p("notes.txt"))
    write(laptop.p("notes.txt"), b"a new file under the same name")
    restored = volume.cli.run("trash", "restore", laptop.p("notes.txt")).stdout
    assert "conflicted copy" in restored
    copies = [n for n in os.listdir(laptop.path) if n.startswith("notes (conflicted copy")]
    assert len(copies) == 1 and read(laptop.p(copies[0])) == b"newer notes"
    assert read(laptop.p("notes.txt")) == b"a new file under the same name"


def test_empty_trash_is_for_good(volume):
    laptop = volume.mount("laptop")
    write(laptop.p("old.bin"), os.urandom(50_000))
    os.unlink(laptop.p("old.bin"))
    assert len(trash(laptop)) == 1
    out = volume.cli.run("trash", "empty", str(laptop.path)).stdout
    assert "1 items are gone for good" in out
    assert trash(laptop) == []
    result = volume.cli.run("trash", "restore", laptop.p("old.bin"), check=False)
    assert result.returncode != 0 and "not in the trash" in result.stderr


@pytest.mark.parametrize("what", ["read", "write"])
def test_old_versions_are_browsable_read_only_in_the_mount(volume, what):
    laptop = volume.mount("laptop")
    os.mkdir(laptop.p("docs"))
    for data in (b"first draft", b"second draft", b"final"):
        write(laptop.p("docs/plan.md"), data)
        laptop.sync()
    folder = laptop.p(".fusedrive/history/docs/plan.md")
    names = sorted(os.listdir(folder), key=lambda n: int(n.split()[0][1:]))
    assert len(names) == 3 and names[0].startswith("v1 ") and names[0].endswith(".md")
    if what == "read":
        assert [read(os.path.join(folder, n)) for n in names] == [b"first draft", b"second draft", b"final"]
        assert ".fusedrive" not in os.listdir(laptop.path), "hidden from listings"
        os.makedirs(laptop.p("docs/.fusedrive"))  # only the root's name is taken
        write(laptop.p("docs/.fusedrive/inner.txt"), b"inner")
        laptop.sync()
        assert len(os.listdir(laptop.p(".fusedrive/history/docs/.fusedrive/inner.txt"))) == 1
    else:
        with pytest.raises(OSError) as caught:
            open(os.path.join(folder, names[0]), "wb")
        assert caught.value.errno == errno.EROFS
        with pytest.raises(OSError) as caught:
            os.unlink(os.path.join(folder, names[0]))
        assert caught.value.errno == errno.EROFS
        with pytest.raises(OSError) as caught:
            os.mkdir(laptop.p(".fusedrive"))
        assert caught.value.errno == errno.EEXIST


def test_trash_restore_of_a_name_that_is_a_symlink_now_restores_the_deleted_file(volume):
    laptop = volume.mount("laptop")
    write(laptop.p("notes.txt"), b"the deleted notes")
    write(laptop.p("elsewhere.txt"), b"another file")
    os.unlink(laptop.p("notes.txt"))
    os.symlink("elsewhere.txt", laptop.p("notes.txt"))
    restored = volume.cli.run("trash", "restore", laptop.p("notes.txt")).stdout
    assert "conflicted copy" in restored  # the name is the symlink's now
    [copy] = [n for n in os.listdir(laptop.path) if n.startswith("notes (conflicted copy")]
    assert read(laptop.p(copy)) == b"the deleted notes"
    assert os.readlink(laptop.p("notes.txt")) == "elsewhere.txt"


def test_a_folder_in_which_a_file_was_replaced_by_rename_comes_back_from_the_trash(volume):
    """Editors, git and pip save by renaming a new file over the old one: the folder holds
    such a replaced file in the trash beside the live one of the same name."""
    laptop = volume.mount("laptop")
    os.mkdir(laptop.p("d"))
    write(laptop.p("d/x"), b"a")
    write(laptop.p("d/x.tmp"), b"b")
    os.rename(laptop.p("d/x.tmp"), laptop.p("d/x"))
    write(laptop.p("d/y"), b"y")
    laptop.sync()
    for name in ("x", "y"):
        os.unlink(laptop.p("d", name))
    os.rmdir(laptop.p("d"))
    result = volume.cli.run("trash", "restore", laptop.p("d"), check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(laptop.p("d"))) == ["x", "y"]
    assert read(laptop.p("d/x")) == b"b" and read(laptop.p("d/y")) == b"y"


def test_items_deleted_under_one_name_are_told_apart_and_each_can_be_restored(volume):
    laptop = volume.mount("laptop")
    for text in (b"first", b"second"):
        write(laptop.p("a.txt"), text)
        laptop.sync()
        os.unlink(laptop.p("a.txt"))
    listing = volume.cli.run("trash", "list", str(laptop.path)).stdout.splitlines()
    ids = [line.rsplit("id ", 1)[1].rstrip(")") for line in listing]
    assert len(ids) == 2 and ids[0] != ids[1]
    older = min(trash(laptop), key=lambda item: item["deleted"])["id"][:8]
    volume.cli.run("trash", "restore", laptop.p("a.txt"), "--id", older)
    assert read(laptop.p("a.txt")) == b"first"
    volume.cli.run("trash", "restore", laptop.p("a.txt"))
    [copy] = [n for n in os.listdir(laptop.path) if n.startswith("a (conflicted copy")]
    assert read(laptop.p(copy)) == b"second"
