"""`fusedrive mirror`: a real folder kept equal to the volume, with real inotify and real
processes — a mirror beside a mount of one SeaweedFS volume, and two mirrors. Every
device is stopped (uploading what waits) and fsck'ed in the volume fixture's teardown."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time

import pytest

from fusedrive.testing.faultproxy import Fault
from test_sync import held, wait_for

POLL = 0.3
SETTLE_SECONDS = 60


def view(root, ignored: tuple[str, ...] = ()) -> dict:
    """What a user compares between two copies of a tree: path → (kind, permissions,
    content digest or link target, a file's mtime)."""
    tree = {}
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in dirs + files:
            full = os.path.join(directory, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            if rel in ignored:
                continue
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                tree[rel] = ("file", stat.S_IMODE(st.st_mode), digest, st.st_mtime_ns)
    return tree


def converged(*devices, timeout: float = SETTLE_SECONDS, ignored: tuple[str, ...] = ()) -> dict:
    """Wait until every device shows the same tree (but for the `ignored` paths); return it."""
    last: list = []

    def same():
        trees = [view(d.path, ignored) for d in devices]
        last[:] = trees
        return (trees[0],) if all(t == trees[0] for t in trees[1:]) else None  # (an empty tree is an answer)
    try:
        return wait_for(same, timeout=timeout, what="the same tree on every device")[0]
    except AssertionError:
        differences = {path: [tree.get(path) for tree in last] for path in set().union(*last)
                       if any(tree.get(path) != last[0].get(path) for tree in last)}
        raise AssertionError(f"the devices still differ after {timeout} s: {differences}") from None


def write(path, data: bytes, mode: str = "wb") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def mirror_and_mount(s3_volume):
    return s3_volume.mirror("mirror", poll_interval=POLL), s3_volume.mount("mount", poll_interval=POLL)


def test_every_kind_of_change_in_the_folder_arrives_in_the_mount(mirror_and_mount):
    mirror, mount = mirror_and_mount
    write(mirror.p("notes.txt"), b"first")
    write(mirror.p("docs/deep/report.txt"), b"report v1")
    os.symlink("notes.txt", mirror.p("shortcut"))
    write(mirror.p("script.sh"), b"#!/bin/sh\necho hi\n")
    os.chmod(mirror.p("script.sh"), 0o755)
    write(mirror.p("log.txt"), b"line 1\n")
    os.mkdir(mirror.p("empty"))
    converged(mirror, mount)

    write(mirror.p("log.txt"), b"line 2\n", "ab")  # append
    with open(mirror.p("notes.txt"), "r+b") as f:  # edit in place
        f.seek(2)
        f.write(b"RS")
    write(mirror.p(".report.txt.swp"), b"editor swap: never synced")
    write(mirror.p("docs/deep/report.txt.new"), b"report v2")  # an editor's save: a new file renamed over
    os.rename(mirror.p("docs/deep/report.txt.new"), mirror.p("docs/deep/report.txt"))
    os.rename(mirror.p("docs/deep"), mirror.p("docs/moved"))  # a folder renamed
    os.rename(mirror.p("script.sh"), mirror.p("run.sh"))  # a file renamed
    os.chmod(mirror.p("run.sh"), 0o700)
    os.rmdir(mirror.p("empty"))
    os.utime(mirror.p("log.txt"), ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))  # touch -m
    tree = converged(mirror, mount, ignored=(".report.txt.swp",))
    assert os.stat(mount.p("log.txt")).st_mtime_ns == 1_600_000_000_000_000_000
    assert read(mount.p("notes.txt")) == b"fiRSt"
    assert read(mount.p("log.txt")) == b"line 1\nline 2\n"
    assert read(mount.p("docs/moved/report.txt")) == b"report v2"
    assert tree["shortcut"] == ("link", "notes.txt")
    assert tree["run.sh"][1] == 0o700
    assert ".report.txt.swp" not in os.listdir(mount.path) and "empty" not in tree
    # The editor's save and the renames kept the file's history on its path.
    history = mount.volume.cli.run("history", mount.p("docs/moved/report.txt"), "--json").stdout
    assert history.count('"number"') == 2

    os.unlink(mirror.p("notes.txt"))
    os.unlink(mirror.p("shortcut"))
    converged(mirror, mount, ignored=(".report.txt.swp",))
    assert not os.path.lexists(mount.p("notes.txt"))


def test_every_kind_of_change_in_the_mount_arrives_in_the_folder(mirror_and_mount):
    mirror, mount = mirror_and_mount
    write(mount.p("a.txt"), b"one")
    write(mount.p("dir/sub/b.txt"), b"two")
    os.symlink("../a.txt", mount.p("dir/link"))
    converged(mirror, mount)
    write(mount.p("a.txt"), b"one and more", "ab")
    os.rename(mount.p("dir"), mount.p("renamed"))
    os.chmod(mount.p("renamed/sub/b.txt"), 0o600)
    before = os.stat(mirror.p("dir/sub/b.txt")).st_ino
    tree = converged(mirror, mount)
    assert read(mirror.p("a.txt")) == b"oneone and more"
    assert tree["renamed/link"] == ("link", "../a.txt")
    # Another device's rename is a rename here too, not a new download.
    assert os.stat(mirror.p("renamed/sub/b.txt")).st_ino == before
    os.unlink(mount.p("a.txt"))
    subprocess.run(["rm", "-rf", mount.p("renamed")], check=True)
    assert converged(mirror, mount) == {}
    leftovers = [n for n in os.listdir(mirror.path) if n.startswith(".fusedrive-")]
    assert not leftovers


def test_simultaneous_edits_in_two_mirrors_give_conflicted_copies_on_both(s3_volume):
    laptop, desktop = s3_volume.mirror("laptop", poll_interval=POLL), s3_volume.mirror("desktop", poll_interval=POLL)
    write(laptop.p("plan.txt"), b"original")
    converged(laptop, desktop)
    with held(desktop):
        write(desktop.p("plan.txt"), b"edited on the desktop")
        write(laptop.p("plan.txt"), b"edited on the laptop")
        wait_for(lambda: desktop.control("status")["files_waiting"] or desktop.control("status")["ops_waiting"],
                 what="the desktop's edit taken")
        laptop.sync()
    tree = converged(laptop, desktop)
    copies = [name for name in tree if "(conflicted copy from desktop" in name]
    assert len(copies) == 1 and copies[0].startswith("plan (conflicted copy from desktop ")
    for device in (laptop, desktop):
        assert read(device.p("plan.txt")) == b"edited on the laptop"
        assert read(device.p(copies[0])) == b"edited on the desktop"


def test_a_file_edited_in_the_folder_and_deleted_elsewhere_comes_back_with_the_edit(mirror_and_mount):
    mirror, mount = mirror_and_mount
    write(mirror.p("draft.txt"), b"first draft")
    converged(mirror, mount)
    with held(mirror):
        write(mirror.p("draft.txt"), b"second draft, edited here")
        mirror.control("settle")  # taken; its commit is held back
        os.unlink(mount.p("draft.txt"))
        mount.sync()
    tree = converged(mirror, mount)
    assert read(mount.p("draft.txt")) == b"second draft, edited here", "a change beats a delete"
    assert "draft.txt" in tree


def test_changes_made_while_the_mirror_was_stopped_sync_at_start(mirror_and_mount):
    mirror, mount = mirror_and_mount
    write(mirror.p("keep.txt"), b"kept")
    write(mirror.p("edit.txt"), b"before")
    write(mirror.p("gone.txt"), b"to delete")
    write(mirror.p("theirs.txt"), b"theirs before")
    converged(mirror, mount)
    mirror.umount()
    write(mirror.p("edit.txt"), b"edited while stopped")
    os.unlink(mirror.p("gone.txt"))
    write(mirror.p("new/file.txt"), b"made while stopped")
    write(mount.p("theirs.txt"), b"changed on the other device")
    write(mount.p("remote-new.txt"), b"new on the other device")
    mirror.start(poll_interval=POLL)
    mirror.volume.mounts.append(mirror)
    tree = converged(mirror, mount)
    assert read(mount.p("edit.txt")) == b"edited while stopped"
    assert read(mirror.p("theirs.txt")) == b"changed on the other device"
    assert "gone.txt" not in tree and "new/file.txt" in tree and "remote-new.txt" in tree
    assert not [name for name in tree if "conflicted copy" in name]


def test_a_first_sync_merges_a_folder_that_has_files_with_the_volume(s3_volume, tmp_path):
    mount = s3_volume.mount("mount", poll_interval=POLL)
    write(mount.p("same.txt"), b"identical")
    write(mount.p("differs.txt"), b"the volume's")
    write(mount.p("only-remote.txt"), b"remote")
    mount.sync()
    folder = tmp_path / "existing"
    write(str(folder / "same.txt"), b"identical")
    write(str(folder / "differs.txt"), b"the folder's")
    write(str(folder / "only-local.txt"), b"local")
    mirror = s3_volume.mirror("mirror", folder=folder, poll_interval=POLL)
    tree = converged(mirror, mount)
    copies = [name for name in tree if "conflicted copy" in name]
    assert len(copies) == 1 and read(mirror.p(copies[0])) == b"the folder's"
    assert read(mirror.p("differs.txt")) == b"the volume's"
    assert {"same.txt", "only-remote.txt", "only-local.txt"} <= set(tree)
    assert mirror.control("status")["conflicted_copies"] == 1, "status names the copy to look at"


def test_ignore_rules_keep_names_out_of_the_volume(mirror_and_mount):
    mirror, mount = mirror_and_mount
    write(mirror.p(".fusedriveignore"), b"*.log\nbuild/\n")
    converged(mirror, mount)
    write(mirror.p("build/output.o"), b"object")
    write(mirror.p("debug.log"), b"noise")
    write(mirror.p("notes.txt~"), b"backup")
    write(mirror.p("real.txt"), b"synced")
    wait_for(lambda: os.path.exists(mount.p("real.txt")), what="real.txt in the mount")
    mirror.sync()
    mount.sync()
    assert sorted(os.listdir(mount.path)) == [".fusedriveignore", "real.txt"]


def test_status_counts_folder_changes_and_umount_uploads_them_first(mirror_and_mount):
    mirror, mount = mirror_and_mount
    with held(mirror):
        write(mirror.p("a.txt"), b"a" * 1000)
        mirror.control("settle")
        status = mirror.volume.cli.run("status", str(mirror.path), check=False)
        assert status.returncode == 1 and "waiting to be committed" in status.stdout, status.stdout
        assert "folder      " + str(mirror.path) + ", mirrored" in status.stdout
    mirror.umount()  # takes the change and uploads it before stopping
    wait_for(lambda: os.path.exists(mount.p("a.txt")), what="a.txt in the mount")
    assert read(mount.p("a.txt")) == b"a" * 1000
    gone = mirror.volume.cli.run("status", str(mirror.path), check=False)
    assert gone.returncode != 0 and "not a fusedrive mount" in gone.stderr


def test_restore_of_an_old_version_reaches_the_folder(mirror_and_mount):
    mirror, mount = mirror_and_mount
    write(mirror.p("doc.txt"), b"version one")
    converged(mirror, mount)
    write(mirror.p("doc.txt"), b"version two")
    converged(mirror, mount)
    mirror.volume.cli.run("restore", mirror.p("doc.txt"), "--version", "1")
    converged(mirror, mount)
    assert read(mirror.p("doc.txt")) == b"version one"


def test_kill_during_a_large_download_then_restart(proxied_volume, store_proxy):
    mount = proxied_volume.mount("mount", poll_interval=POLL)
    big = os.urandom(110 << 20)  # 110 MiB: the mirror is killed while it comes
    write(mount.p("big.bin"), big)
    mount.sync()
    store_proxy.inject(Fault(method="GET", path="/blocks/", delay=0.3))  # so the kill finds it under way
    mirror = proxied_volume.mirror("mirror", poll_interval=POLL, args=("--no-wait",))
    wait_for(lambda: any(n.startswith(b".fusedrive-") for n in os.listdir(os.fsencode(mirror.path))), timeout=60,
             what="the download under way")
    mirror.kill()
    store_proxy.clear()
    mirror.start(poll_interval=POLL)
    converged(mirror, mount, timeout=180)
    assert read(mirror.p("big.bin")) == big
    assert os.listdir(mirror.path) == ["big.bin"]


def test_kill_during_a_burst_of_local_changes_loses_and_duplicates_nothing(mirror_and_mount):
    mirror, mount = mirror_and_mount
    written = {}
    for i in range(300):
        data = f"file {i}\n".encode() * (i + 1)
        write(mirror.p(f"burst/{i // 50}/f{i}.txt"), data)
        written[f"burst/{i // 50}/f{i}.txt"] = data
    time.sleep(0.7)  # some taken, some not
    mirror.kill()
    mirror.start(poll_interval=POLL)
    tree = converged(mirror, mount, timeout=120)
    files = {path for path, entry in tree.items() if entry[0] == "file"}
    assert files == set(written), "nothing lost, nothing duplicated"
    for path, data in written.items():
        assert read(mount.p(path)) == data


def test_two_thousand_files_and_a_large_one_both_ways(s3_volume):
    first = s3_volume.mirror("first", poll_interval=POLL)
    for i in range(2000):
        write(first.p(f"many/{i % 20}/file-{i}.txt"), f"content {i}".encode())
    big = os.urandom(1 << 20) * 100
    write(first.p("large.bin"), big)
    first.sync()
    second = s3_volume.mirror("second", poll_interval=POLL)  # its first sync: everything downloads
    tree = converged(first, second, timeout=240)
    assert sum(1 for entry in tree.values() if entry[0] == "file") == 2001
    assert read(second.p("large.bin")) == big


def test_store_down_while_both_sides_change_then_everything_converges(proxied_volume, store_proxy):
    mirror = proxied_volume.mirror("mirror", poll_interval=POLL, args=("--io-timeout", "5"))
    mount = proxied_volume.mount("mount", poll_interval=POLL, args=("--io-timeout", "5"))
    write(mirror.p("shared.txt"), b"before")
    converged(mirror, mount)
    store_proxy.down()
    outage_ends = time.monotonic() + 60  # a minute: uploads, commits and polls fail and retry many times over
    write(mirror.p("from-mirror.txt"), b"made offline in the folder")
    write(mount.p("from-mount.txt"), b"made offline in the mount")
    os.unlink(mirror.p("shared.txt"))
    wait_for(lambda: (s := mirror.volume.cli.run("status", str(mirror.path), check=False)).returncode == 1
             and "store unreachable since" in s.stdout, timeout=30, what="the mirror's status: pending, store away")
    time.sleep(max(0.0, outage_ends - time.monotonic()))
    store_proxy.up()
    tree = converged(mirror, mount, timeout=120)
    assert {"from-mirror.txt", "from-mount.txt"} <= set(tree) and "shared.txt" not in tree


def test_with_the_hub_changes_arrive_without_waiting_for_a_poll_and_are_events(s3_volume, hub, event_streams):
    url = f"http://127.0.0.1:{hub.port}"
    slow_poll = 60  # the poll would take this long: only the hub can bring a change sooner
    mirror = s3_volume.mirror("mirror", poll_interval=slow_poll, hub=url)
    mount = s3_volume.mount("mount", poll_interval=slow_poll, hub=url)
    wait_for(lambda: mirror.control("status")["hub"] == "connected", what="the mirror on the hub")
    wait_for(lambda: mount.control("status")["hub"] == "connected", what="the mount on the hub")
    stream = event_streams(mirror)
    write(mount.p("from-mount.txt"), b"over the hub")
    wait_for(lambda: os.path.exists(mirror.p("from-mount.txt")), timeout=slow_poll / 3, what="the file in the folder")
    assert read(mirror.p("from-mount.txt")) == b"over the hub"
    wait_for(lambda: stream.of_kind("remote-change"), what="the remote-change event")
    assert [(e["path"], e["device"]) for e in stream.of_kind("remote-change")] == [("/from-mount.txt", "mount")]
    write(mirror.p("from-mirror.txt"), b"the other way")
    wait_for(lambda: os.path.exists(mount.p("from-mirror.txt")), timeout=slow_poll / 3, what="the file in the mount")


def test_a_file_deleted_in_the_folder_is_in_the_trash_and_comes_back_from_it(s3_volume):
    mirror = s3_volume.mirror("mirror", poll_interval=POLL)
    write(mirror.p("docs/letter.txt"), b"dear reader")
    mirror.sync()
    os.unlink(mirror.p("docs/letter.txt"))
    mirror.sync()
    listing = mirror.volume.cli.run("trash", "list", str(mirror.path), "--json").stdout
    assert '"/docs/letter.txt"' in listing
    mirror.volume.cli.run("trash", "restore", mirror.p("docs/letter.txt"))
    wait_for(lambda: os.path.exists(mirror.p("docs/letter.txt")), what="the restored file in the folder")
    assert read(mirror.p("docs/letter.txt")) == b"dear reader"


def test_a_folder_that_cannot_be_mirrored_is_one_sentence_and_exit_9(s3_volume, tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    refused = s3_volume.cli.run("mirror", s3_volume.url, str(not_a_folder), "--cache-dir", str(tmp_path / "c1"),
                                check=False)
    assert refused.returncode == 9 and "is not a directory" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    mirror = s3_volume.mirror("mirror", poll_interval=POLL)
    again = s3_volume.cli.run("mirror", s3_volume.url, str(mirror.path), "--cache-dir", str(tmp_path / "c2"),
                              check=False)
    assert again.returncode == 9 and "already served by fusedrive" in again.stderr
    mount = s3_volume.mount("mount", poll_interval=POLL)
    into_a_mount = s3_volume.cli.run("mirror", s3_volume.url, str(mount.path), "--cache-dir", str(tmp_path / "c3"),
                                     check=False)
    assert into_a_mount.returncode == 9 and "FUSE mount" in into_a_mount.stderr
    mirror_folder = s3_volume.cli.run("mount", s3_volume.url, str(mirror.path), "--cache-dir", str(tmp_path / "c4"),
                                      check=False)
    assert mirror_folder.returncode == 9 and "already served by fusedrive" in mirror_folder.stderr


def test_a_mirror_killed_offline_keeps_its_files_as_they_are_and_uploads_them_later(proxied_volume, store_proxy):
    mirror = proxied_volume.mirror("mirror", poll_interval=POLL, args=("--io-timeout", "5"))
    mount = proxied_volume.mount("mount", poll_interval=POLL, args=("--io-timeout", "5"))
    store_proxy.down()
    write(mirror.p("offline.txt"), b"written on the train")
    mirror.control("settle")
    before = os.stat(mirror.p("offline.txt"))
    mirror.kill()
    mirror.start(poll_interval=POLL, args=("--io-timeout", "5", "--no-wait"))  # still offline
    mirror.control("settle")
    after = os.stat(mirror.p("offline.txt"))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "not fetched again over itself"
    store_proxy.up()
    converged(mirror, mount, timeout=90)
    assert read(mount.p("offline.txt")) == b"written on the train"


def test_moves_made_while_the_mirror_was_stopped_are_renames_with_their_history(mirror_and_mount):
    """A file renamed, a folder of 100 files renamed and a file moved between folders while
    the mirror was not running: the start-up scan finds them by inode (and size and mtime)
    and commits renames — history goes on, nothing goes to the trash, nothing is uploaded
    again."""
    import json

    mirror, mount = mirror_and_mount
    write(mirror.p("essay.txt"), b"draft one")
    converged(mirror, mount)
    write(mirror.p("essay.txt"), b"draft two, longer")
    for i in range(100):
        write(mirror.p(f"photos/img{i:03}.jpg"), os.urandom(200) + bytes([i]))
    write(mirror.p("docs/plan.txt"), b"the plan")
    converged(mirror, mount)
    mirror.umount()
    os.rename(mirror.p("essay.txt"), mirror.p("final essay.txt"))
    os.rename(mirror.p("photos"), mirror.p("album"))
    os.makedirs(mirror.p("archive"))
    os.rename(mirror.p("docs/plan.txt"), mirror.p("archive/plan.txt"))
    uploaded_before = mirror.volume.stored_bytes("blocks") + mirror.volume.stored_bytes("packs")
    mirror.start(poll_interval=POLL)
    mirror.volume.mounts.append(mirror)
    tree = converged(mirror, mount)
    assert "final essay.txt" in tree and "album/img099.jpg" in tree and "archive/plan.txt" in tree
    assert "essay.txt" not in tree and "photos" not in tree and "docs/plan.txt" not in tree
    trash = json.loads(mount.volume.cli.run("trash", "list", str(mount.path), "--json").stdout)
    assert trash == [], [item["path"] for item in trash]
    history = json.loads(mount.volume.cli.run("history", mount.p("final essay.txt"), "--json").stdout)
    assert len(history) == 2, "the renamed file's history goes on"
    assert mirror.volume.stored_bytes("blocks") + mirror.volume.stored_bytes("packs") == uploaded_before


def test_sparse_files_stay_sparse_both_ways(mirror_and_mount):
    """A VM image or a database with holes: 256 MiB with a few hundred KiB written takes a
    few hundred KiB in the folder and in the volume, whichever side made it."""
    mirror, mount = mirror_and_mount
    size, pieces = 256 << 20, {0: os.urandom(4096), 100 << 20: os.urandom(300_000), (256 << 20) - 5: b"tail!"}
    for device, name in ((mount, "from-the-mount.img"), (mirror, "from-the-folder.img")):
        with open(device.p(name), "wb") as f:
            f.truncate(size)
            for offset, data in pieces.items():
                f.seek(offset)
                f.write(data)
    tree = converged(mirror, mount)
    assert {"from-the-mount.img", "from-the-folder.img"} <= set(tree)
    for device in (mirror, mount):
        for name in ("from-the-mount.img", "from-the-folder.img"):
            st = os.stat(device.p(name))
            assert st.st_size == size and st.st_blocks * 512 < 4 << 20, f"{name} in {device.device}: not sparse"
            with open(device.p(name), "rb") as f:
                for offset, data in pieces.items():
                    f.seek(offset)
                    assert f.read(len(data)) == data
    assert mount.volume.stored_bytes() < 16 << 20, "the holes were stored"
