"""What rclone mount and JuiceFS users expect of a mount: --allow-other, --read-only,
--uid/--gid/--umask, `-o` options as in /etc/fstab, and `mount -t fuse.fusedrive` (with an
fstab line) through the mount helper."""

from __future__ import annotations

import errno
import os

import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import PASSPHRASE
from fusedrive.services import control
from test_posix import read, write


def as_nobody(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root (other users, /sbin)")


def test_allow_other_lets_other_users_in_and_without_it_they_get_eacces(volume, root_only, tmp_path):
    let_nobody_reach(tmp_path)
    private = volume.mount("private")
    write(private.p("shared.txt"), b"for everyone")
    os.chmod(private.p("shared.txt"), 0o644)
    private.sync()
    refused = as_nobody("cat", private.p("shared.txt"))
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    open_mount = volume.mount("open", args=("--allow-other",))
    allowed = as_nobody("cat", open_mount.p("shared.txt"))
    assert allowed.returncode == 0 and allowed.stdout == "for everyone", allowed.stderr


def let_nobody_reach(path: Path) -> None:
    for folder in (path, *path.parents):  # pytest's folders are root's alone: let nobody pass
        if folder == Path(tempfile.gettempdir()):
            break
        os.chmod(folder, os.stat(folder).st_mode | 0o711)


def as_nobody_connects(socket_path: Path) -> bool:
    """Whether another local user can reach a mount's control socket (trash, history, restore)."""
    import socket

    pid = os.fork()
    if pid == 0:  # the child becomes nobody and tries; nothing of pytest runs in it
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(socket_path))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_every_fusedrive_view_is_no_more_visible_to_another_user_than_the_live_file(s3_volume, root_only, tmp_path):
    """With --allow-other, the history of a 0600 file, of a file in a 0700 folder and of a
    conflicted copy of a 0600 file is its owner's alone, as the live files are; what everyone
    may read stays readable in history too; nobody else reaches the control socket (trash,
    restore, history through the CLI)."""
    from test_store_faults import wait_caught_up

    let_nobody_reach(tmp_path)
    desktop = s3_volume.mount("desktop", poll_interval=0.5, args=("--allow-other",))
    laptop = s3_volume.mount("laptop", poll_interval=0.5)
    for text in (b"secret v1", b"secret v2"):
        write(desktop.p("secret.txt"), text)
        desktop.sync()
    os.chmod(desktop.p("secret.txt"), 0o600)
    os.mkdir(desktop.p("private"), 0o700)
    write(desktop.p("private", "p.txt"), b"private data")
    os.chmod(desktop.p("private", "p.txt"), 0o644)
    write(desktop.p("shared.txt"), b"for everyone")
    os.chmod(desktop.p("shared.txt"), 0o644)
    desktop.sync()
    wait_caught_up(laptop, desktop, what="the laptop to see the files")
    laptop.control("pause")
    write(laptop.p("secret.txt"), b"the laptop's secret")
    write(desktop.p("secret.txt"), b"the desktop's secret")
    desktop.sync()
    wait_caught_up(laptop, desktop, what="the laptop to see the desktop's edit")
    laptop.control("resume")
    laptop.sync()
    wait_caught_up(desktop, laptop, what="the desktop to see the conflicted copy")
    [copy] = [n for n in os.listdir(desktop.path) if n.startswith("secret (conflicted copy")]

    history = Path(desktop.p(".fusedrive", "history"))
    versions = {name: sorted((history / name).iterdir()) for name in ("secret.txt", "shared.txt", copy)}
    private_versions = sorted((history / "private" / "p.txt").iterdir())
    assert len(versions["secret.txt"]) >= 2 and versions[copy] and private_versions
    assert stat.S_IMODE(os.stat(desktop.p(copy)).st_mode) == 0o600, "a conflicted copy keeps the file's mode"

    folders = [history / "secret.txt", history / copy, history / "private"]
    files = [*versions["secret.txt"], *versions[copy], *private_versions, desktop.p("secret.txt"), desktop.p(copy)]
    for program, path in [("ls", p) for p in folders] + [("cat", p) for p in files]:
        result = as_nobody(program, str(path))
        assert result.returncode != 0 and "Permission denied" in result.stderr, f"{program} {path}: {result.stdout!r}"
    allowed = as_nobody("cat", *map(str, versions["shared.txt"]))
    assert allowed.returncode == 0 and allowed.stdout == "for everyone", allowed.stderr
    assert as_nobody("ls", desktop.p(".fusedrive")).stdout.split() == ["history"]
    for path in versions["secret.txt"]:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o400, "a version is read-only, as private as the file"
    assert read(str(versions["secret.txt"][1])) == b"secret v2", "its owner still reads it"
    assert not as_nobody_connects(control.socket_path(str(desktop.path)))


def test_read_only_uid_gid_and_umask_as_options_and_as_o_options(volume, tmp_path):
    writer = volume.mount("writer")
    write(writer.p("doc.txt"), b"the text")
    os.chmod(writer.p("doc.txt"), 0o666)
    writer.sync()
    for args in (("--read-only", "--uid", "1234", "--gid", "5678", "--umask", "027"),
                 ("-o", "ro,uid=1234,gid=5678,umask=027,_netdev,nofail")):
        reader = volume.mount("reader", cache_dir=tmp_path / f"cache-{len(args)}", args=args)
        st = os.stat(reader.p("doc.txt"))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
        assert read(reader.p("doc.txt")) == b"the text"
        with pytest.raises(OSError) as caught:
            write(reader.p("new.txt"), b"x")
        assert caught.value.errno == errno.EROFS
        reader.umount()


def test_an_unknown_o_option_is_a_usage_error(volume, tmp_path):
    result = volume.cli.run("mount", volume.url, str(tmp_path / "m"), "-o", "allow_other,frobnicate=3", check=False)
    assert result.returncode == 64 and "frobnicate" in result.stderr


def test_mount_t_fuse_fusedrive_and_an_fstab_line_mount_and_unmount_for_real(volume, root_only, tmp_path):
    helper = Path("/sbin/mount.fuse.fusedrive")
    installed = not helper.exists()
    if installed:
        helper.symlink_to(Path(sys.executable).parent / "mount.fuse.fusedrive")  # this venv's
    key = tmp_path / "key"
    key.write_text(PASSPHRASE + "\n")
    env = {**os.environ, **volume.cli.env}
    env.pop("FUSEDRIVE_PASSPHRASE", None)
    mountpoint = tmp_path / "drive"
    mountpoint.mkdir()
    options = f"key_file={key},cache_dir={tmp_path / 'cache'},device_name=fstab,_netdev"
    try:
        mounted = subprocess.run(["mount", "-t", "fuse.fusedrive", volume.url, str(mountpoint), "-o", options],
                                 capture_output=True, text=True, timeout=120, env=env)
        assert mounted.returncode == 0, mounted.stdout + mounted.stderr
        assert os.path.ismount(mountpoint)
        write(str(mountpoint / "via-mount.txt"), b"mounted by mount(8)")
        pid = control.read_registry(str(mountpoint))["pid"]
        assert subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=60).returncode == 0
        assert control.wait_for_exit(pid, 60), "the mount process uploads what waits and exits"
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{volume.url} {mountpoint} fuse.fusedrive {options} 0 0\n")
        mounted = subprocess.run(["mount", "-T", str(fstab), str(mountpoint)], capture_output=True, text=True,
                                 timeout=120, env=env)
        assert mounted.returncode == 0, mounted.stdout + mounted.stderr
        assert read(str(mountpoint / "via-mount.txt")) == b"mounted by mount(8)"
        pid = control.read_registry(str(mountpoint))["pid"]
        assert subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=60).returncode == 0
        assert control.wait_for_exit(pid, 60)
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        if installed:
            helper.unlink()
    fsck = volume.cli.run("fsck", volume.url, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_a_file_read_through_asks_the_mount_a_request_per_mib_not_per_128_kib(volume, root_only):
    """Reading a file from start to end (a copy, a video) goes a block at a time: the kernel
    reads ahead 1 MiB on this mount, not its 128 KiB default, so it asks the mount an
    eighth as often. Counted as the mount process's read calls: the requests it takes from
    /dev/fuse and its cache reads answering them."""
    drive = volume.mount("reader")
    data = os.urandom(32 << 20)
    write(drive.p("film.bin"), data)
    drive.sync()
    st = os.stat(drive.path)
    with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb") as knob:
        assert knob.read().strip() == "1024"
    pid = control.read_registry(str(drive.path))["pid"]
    fd = os.open(drive.p("film.bin"), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel's pages go, the drive's cache stays
        before = _reads_of_dev_fuse(pid)
        read_back = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        requests = _reads_of_dev_fuse(pid) - before
    finally:
        os.close(fd)
    assert read_back == data
    assert requests < 256, requests  # 128 KiB at a time: 256 from /dev/fuse alone
    drive.fsck_clean()


def test_names_walked_again_seconds_later_are_answered_by_the_kernel(volume):
    """`git status`, `make`, an IDE walk the same files again and again: the kernel keeps
    names and attributes (every change it did not make is invalidated explicitly, see
    test_sync), so a walk a few seconds after the last asks the mount nothing per file."""
    drive = volume.mount("walker")
    os.mkdir(drive.p("src"))
    names = [drive.p(f"src/f{i:03d}.c") for i in range(500)]
    for name in names:
        write(name, b"int x;")
    drive.sync()
    pid = control.read_registry(str(drive.path))["pid"]
    assert all(os.lstat(name).st_size == 6 for name in names)
    time.sleep(2)  # past the one second the kernel used to keep them
    before = _reads_of_dev_fuse(pid)
    assert all(os.lstat(name).st_size == 6 for name in names)
    requests = _reads_of_dev_fuse(pid) - before
    assert requests < 50, requests  # a LOOKUP per name: 500
    drive.fsck_clean()


def _reads_of_dev_fuse(pid: int) -> int:
    """read(2) calls of the mount process so far: one per request it took from the kernel,
    and the reads of its cache files that answer them (a few per request)."""
    with open(f"/proc/{pid}/io") as counters:
        return int(dict(line.split(": ") for line in counters.read().splitlines())["syscr"])


@pytest.mark.inprocess
def test_a_user_who_may_not_open_dev_fuse_is_told_so_with_exit_11(monkeypatch):
    """libfuse fails with a bare RuntimeError (and its reason on stderr) when neither this
    user nor fusermount3 may open /dev/fuse: one sentence and exit 11, as the README says,
    not an internal error. (A real second user cannot run this venv's python here.)"""
    import pyfuse3

    from fusedrive.errors import FuseUnavailable
    from fusedrive.fuse import mounting

    def refused(*args):
        raise RuntimeError("fuse_session_mount failed")

    monkeypatch.setattr(pyfuse3, "init", refused)
    monkeypatch.setattr(os, "access", lambda path, mode: path != "/dev/fuse")
    with pytest.raises(FuseUnavailable) as caught:
        mounting.attach(None, "/mnt/drive", set())
    assert caught.value.exit_code == 11 and "cannot open /dev/fuse" in str(caught.value)
