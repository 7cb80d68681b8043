"""What a new user's first day finds: typos, mistakes and odd setups get one sentence and
a documented exit code, never a hang, a traceback or a dead mount (issue: hardening)."""

from __future__ import annotations

import os

import pytest

from test_cli import expect_failure
from test_posix import read, write


MISSING_PATH_COMMANDS = [
    ("share", "{missing}"),
    ("history", "{missing}"),
    ("restore", "{missing}", "--version", "1"),
    ("cat", "{missing}", "--version", "1"),
    ("trash", "restore", "{missing}"),
]


@pytest.mark.parametrize("command", MISSING_PATH_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_control_command_on_a_missing_path_answers_at_once_and_the_mount_keeps_working(s3_volume, command):
    """`fusedrive share ~/FuseDrive/no-such-file.txt` hung the whole mount: the mount stat'ed
    a path inside itself from the thread that must answer that stat."""
    laptop = s3_volume.mount("laptop")
    write(laptop.p("real.txt"), b"here")
    missing = laptop.p("no-such-file.txt")
    args = [part.format(missing=missing) for part in command]
    result = s3_volume.cli.run(*args, check=False, timeout=30)
    assert result.returncode in (2, 64), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "no-such-file.txt" in result.stderr
    assert "does not exist" in result.stderr or "not in the trash" in result.stderr
    assert read(laptop.p("real.txt")) == b"here"  # the mount still answers
    assert laptop.control("status")["files_waiting"] in (0, 1)


def test_share_of_a_missing_file_is_a_usage_error(s3_volume):
    laptop = s3_volume.mount("laptop")
    expect_failure(s3_volume.cli.run("share", laptop.p("typo.txt"), check=False, timeout=30), 64,
                   "does not exist")
    assert os.listdir(laptop.path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs, like a USB disk, that the test can fill or make read-only."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    disk = tmp_path / "usb"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def usb_volume(small_disk, tmp_path, request):
    from conftest import Cli, Volume, _teardown

    directory = small_disk / "volume"
    volume = Volume(directory.as_uri(), Cli({}), tmp_path, (None, None, None, None))
    volume.cli.run("init", volume.url)
    yield volume
    _teardown(volume)


def wait_store_error(mount, words: str) -> dict:
    from test_sync import wait_for

    return wait_for(lambda: (s := mount.control("status"))["store_offline_since"] and words in (s["store_error"] or "")
                    and s, timeout=60, what=f"status to say {words!r}")


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_file_volume_on_a_disk_that_fills_up_or_turns_read_only_queues_work_and_stays_mounted(
        usb_volume, small_disk, fault):
    import subprocess

    from test_store_faults import wait_drained

    laptop = usb_volume.mount("laptop")
    write(laptop.p("before.txt"), b"safe on the disk")
    laptop.sync()
    filler = small_disk / "filler"
    if fault == "full":
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
            except OSError:
                pass
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    data = os.urandom(3_000_000)
    write(laptop.p("during.bin"), data)
    os.mkdir(laptop.p("new-folder"))  # a commit of its own
    status = wait_store_error(laptop, "the disk is full" if fault == "full" else "the disk is read-only")
    assert status["files_waiting"] + status["ops_waiting"] > 0
    assert os.path.ismount(laptop.path)
    assert read(laptop.p("during.bin")) == data and read(laptop.p("before.txt")) == b"safe on the disk"
    verdict = usb_volume.cli.run("status", str(laptop.path), check=False)
    assert verdict.returncode == 1 and "unreachable" in verdict.stdout
    if fault == "full":
        filler.unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    laptop.sync()
    wait_drained(laptop, timeout=60)
    fresh = usb_volume.mount("fresh")
    assert read(fresh.p("during.bin")) == data
    assert os.path.isdir(fresh.p("new-folder"))


def test_status_lists_conflicted_copies_until_the_user_deals_with_them(s3_volume):
    import json

    desktop = s3_volume.mount("desktop", poll_interval=0.5)
    laptop = s3_volume.mount("laptop", poll_interval=0.5)
    write(laptop.p("plan.txt"), b"v1")
    laptop.sync()
    from test_store_faults import wait_caught_up

    wait_caught_up(desktop, laptop, what="the desktop to see plan.txt")
    laptop.control("pause")
    write(laptop.p("plan.txt"), b"the laptop's edit")
    write(desktop.p("plan.txt"), b"the desktop's edit")
    desktop.sync()
    wait_caught_up(laptop, desktop, what="the laptop to see the desktop's edit")
    laptop.control("resume")
    laptop.sync()
    [entry] = json.loads(s3_volume.cli.run("status", str(laptop.path), "--json").stdout)
    assert entry["conflicted_copies"] == 1
    [copy] = entry["conflicted_copy_paths"]
    assert copy.startswith("/plan (conflicted copy from laptop ")
    text = s3_volume.cli.run("status", str(laptop.path)).stdout
    assert "1 conflicted copy to look at" in text and copy in text
    os.unlink(laptop.p(copy.lstrip("/")))
    [entry] = json.loads(s3_volume.cli.run("status", str(laptop.path), "--json").stdout)
    assert entry["conflicted_copies"] == 0


def test_status_and_du_of_a_file_volume_say_where_the_data_is(tmp_path, request):
    from conftest import _new_volume, _teardown

    volume = _new_volume("file", tmp_path, request)
    try:
        laptop = volume.mount("laptop")
        write(laptop.p("a.txt"), b"a")
        laptop.sync()
        text = volume.cli.run("status", str(laptop.path)).stdout
        assert f"All changes are in the volume directory {tmp_path / 'volume'} (a local disk, not the cloud)." in text
        assert "the cloud." not in text.replace("not the cloud", "")
        du = volume.cli.run("du", volume.url).stdout
        assert "the volume directory's blocks" in du and "bucket" not in du
    finally:
        _teardown(volume)


BAD_OPTIONS = [
    ("mount", "file:///x", "{mnt}", "--cache-size", "-5"),
    ("mount", "file:///x", "{mnt}", "--cache-size", "-5G"),
    ("mount", "file:///x", "{mnt}", "--cache-size", "abc"),
    ("mount", "file:///x", "{mnt}", "--cache-size", "0"),
    ("mount", "file:///x", "{mnt}", "--io-timeout", "-1"),
    ("mount", "file:///x", "{mnt}", "--poll-interval", "-1"),
    ("mount", "file:///x", "{mnt}", "--metrics", "127.0.0.1:99999"),
    ("mount", "file:///x", "{mnt}", "--hub", "notaurl"),
    ("hub", "--listen", "127.0.0.1:99999"),
    ("umount", "{mnt}", "--timeout", "-3"),
]


@pytest.mark.parametrize("args", BAD_OPTIONS, ids=lambda a: " ".join(a[-2:]))
def test_bad_option_values_are_refused_at_once_in_one_sentence(tmp_path, args):
    from conftest import Cli

    result = Cli({}).run(*[a.format(mnt=tmp_path / "mnt") for a in args], check=False, timeout=20)
    expect_failure(result, 64, repr(args[-1]) if args[-2] == "--cache-size" else args[-1])  # as typed
    assert "expected one argument" not in result.stderr
    assert not (tmp_path / "mnt").exists()


def test_a_volume_that_is_not_there_is_said_so_before_any_passphrase_is_asked(tmp_path):
    from conftest import Cli

    result = Cli({}).run("mount", (tmp_path / "nothing-here").as_uri(), str(tmp_path / "mnt"), passphrase=None,
                         check=False, timeout=60)
    expect_failure(result, 3, "No fusedrive volume")


def test_local_mistakes_are_one_sentence_never_a_traceback(tmp_path, volume):
    import subprocess

    cli = volume.cli
    expect_failure(cli.run("mount", volume.url, str(tmp_path / "m1"), "--cache-dir", "/etc/passwd", check=False),
                   12, "not a directory")
    expect_failure(cli.run("mount", volume.url, str(tmp_path / "m2"), "--cache-dir", "/proc/self/nowhere",
                           check=False), 12, "/proc/self/nowhere")
    home_like = tmp_path / "home-like"
    home_like.mkdir()
    (home_like / "thesis.odt").write_bytes(b"precious")
    expect_failure(cli.run("mount", volume.url, str(tmp_path / "m3"), "--cache-dir", str(home_like), check=False),
                   12, "not a fusedrive cache")
    assert os.listdir(home_like) == ["thesis.odt"]
    if os.geteuid() == 0:
        readonly = tmp_path / "ro"
        readonly.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(readonly)], check=True)
        try:
            expect_failure(cli.run("init", (readonly / "vol").as_uri(), check=False), 14, "Read-only file system")
        finally:
            subprocess.run(["umount", "-l", str(readonly)], capture_output=True)
    laptop = volume.mount("laptop")
    piped = subprocess.run(f"{cli_command()} status {laptop.path} | head -1", shell=True, capture_output=True,
                           text=True, timeout=60, env={**os.environ, **cli.env})
    assert piped.stdout.startswith(str(laptop.path)) and "Traceback" not in piped.stderr, piped.stderr


def cli_command() -> str:
    import shlex
    import sys

    return f"{shlex.quote(sys.executable)} -m fusedrive.cli"


def test_a_missing_mount_point_is_created_and_a_cache_bigger_than_the_disk_is_said(volume, tmp_path):
    mountpoint = tmp_path / "not" / "there" / "yet"
    mounted = volume.cli.run("mount", volume.url, str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
                             "--cache-size", "900T")
    try:
        assert "The cache may grow to 900.0 TiB (--cache-size) but its disk has room for" in mounted.stderr
        assert os.path.ismount(mountpoint)
        write(str(mountpoint / "a.txt"), b"a")
    finally:
        volume.cli.run("umount", str(mountpoint))


def test_the_cache_dir_is_owner_only_and_other_users_read_nothing(volume, tmp_path):
    import stat
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    (cache / "volume-id").write_text("left by an older version\n")  # an existing, world-readable cache
    os.chmod(cache / "volume-id", 0o644)
    os.chmod(tmp_path, 0o755)
    with volume.opened() as opened:
        (cache / "volume-id").write_text(opened.volume_id + "\n")
    laptop = volume.mount("laptop", cache_dir=cache)
    write(laptop.p("secret.txt"), b"for my eyes only " * 1000)
    os.chmod(laptop.p("secret.txt"), 0o600)
    laptop.sync()
    for root, dirs, files in os.walk(cache):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            mode = stat.S_IMODE(os.lstat(name).st_mode)
            assert mode & 0o077 == 0, f"{name} is {oct(mode)}"
    for target in ("replica.sqlite3", "blocks"):
        other = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                                str(cache / target)], capture_output=True, timeout=30)
        assert other.returncode != 0 and b"Permission denied" in other.stderr


def test_a_hanging_store_shows_in_status_within_seconds_and_the_mount_keeps_answering(proxied_volume, store_proxy):
    import json
    import threading
    import time

    laptop = proxied_volume.mount("laptop", args=("--io-timeout", "30"))
    write(laptop.p("cached.txt"), b"in the cache")
    laptop.sync()
    store_proxy.blackhole()
    time.sleep(1.2)  # past the open's freshness window: the next open asks the store
    opener = threading.Thread(target=lambda: read(laptop.p("cached.txt")), daemon=True)
    started = time.monotonic()
    opener.start()
    seen = None
    while time.monotonic() - started < 8 and seen is None:
        [entry] = json.loads(proxied_volume.cli.run("status", str(laptop.path), "--json", check=False).stdout)
        if entry["store_offline_since"] is not None:
            seen = entry
        time.sleep(0.3)
    assert seen is not None, "status still said the store answers"
    assert "not answered" in seen["store_error"] or "did not answer" in seen["store_error"]
    assert "not answered since" in seen["verdict"]
    opener.join(timeout=15)
    assert not opener.is_alive(), "the open must give up on the store and serve the cache"
    assert read(laptop.p("cached.txt")) == b"in the cache"
    store_proxy.up()


def test_a_cache_dir_deleted_while_mounted_stops_commits_and_status_says_so(s3_volume):
    import shutil
    import time

    desktop = s3_volume.mount("desktop", poll_interval=0.5)
    laptop = s3_volume.mount("laptop", poll_interval=0.5)
    write(laptop.p("before.txt"), b"uploaded before")
    laptop.sync()
    shutil.rmtree(laptop.cache_dir)
    try:
        write(laptop.p("after.txt"), b"written after the cache dir went")
    except OSError:
        pass  # ENOENT from the staging file: fine, as long as nothing half made is committed
    time.sleep(3)
    assert not os.path.exists(desktop.p("after.txt")), "a half-made file reached another device"
    status = s3_volume.cli.run("status", str(laptop.path), check=False)
    assert status.returncode == 12, status.stdout + status.stderr
    assert "was deleted while mounted" in status.stdout
    result = s3_volume.cli.run("umount", str(laptop.path), "--no-wait", check=False, timeout=60)
    assert result.returncode == 1 and not os.path.ismount(laptop.path), result.stderr
    s3_volume.mounts.remove(laptop)
    assert read(desktop.p("before.txt")) == b"uploaded before"


def test_version_foreground_messages_log_file_fsname_and_dot_entries(volume, tmp_path):
    import subprocess
    import sys

    version = volume.cli.run("--version", passphrase=None)
    assert version.stdout.startswith("fusedrive 0.")
    mountpoint = tmp_path / "fg"
    env = {**os.environ, **volume.cli.env, "FUSEDRIVE_PASSPHRASE": "correct horse battery staple"}
    process = subprocess.Popen([sys.executable, "-m", "fusedrive.cli", "mount", volume.url, str(mountpoint),
                                "--foreground", "-q", "--cache-dir", str(tmp_path / "cache")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = process.stdout.readline()
        assert first.startswith(f"Mounted {volume.url} at {mountpoint}"), first + process.stderr.read()
        [line] = [m for m in open("/proc/mounts").read().splitlines() if f" {mountpoint} " in m]
        assert line.split()[0] == volume.url  # the source names the volume
        listing = subprocess.run(["ls", "-a", str(mountpoint)], capture_output=True, text=True).stdout.split()
        assert listing[:2] == [".", ".."]
        write(str(mountpoint / "a.txt"), b"a")
        volume.cli.run("umount", str(mountpoint))
        assert process.wait(timeout=60) == 0
        assert process.stdout.read().strip().endswith(f"Unmounted {mountpoint}.")
    finally:
        if process.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
            process.kill()
    log_file = tmp_path / "logs" / "drive.log"
    background = volume.cli.run("mount", volume.url, str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
                                "--log-file", str(log_file), "-v")
    try:
        assert str(log_file) in background.stdout
        assert "DEBUG" in log_file.read_text() or "INFO" in log_file.read_text()
    finally:
        volume.cli.run("umount", str(mountpoint))


def test_long_volume_commands_show_progress_on_a_terminal(volume):
    import shlex
    import subprocess

    laptop = volume.mount("laptop")
    for i in range(30):
        write(laptop.p(f"f{i}.txt"), b"x" * i)
    laptop.sync()
    env = {**os.environ, **volume.cli.env, "FUSEDRIVE_PASSPHRASE": "correct horse battery staple"}
    for command in ("du", "gc --dry-run", "fsck --verify-blocks"):
        # `script` gives the command a terminal, as a user has (in a pipe the bars stay off)
        line = f"stty cols 100 rows 30; {cli_command()} {command} {shlex.quote(volume.url)}"
        shown = subprocess.run(["script", "-qec", line, "/dev/null"], capture_output=True, text=True, timeout=120,
                               env=env)
        assert shown.returncode == 0, shown.stdout
        assert "journal" in shown.stdout and "%|" in shown.stdout, f"{command}: {shown.stdout[-500:]}"
        piped = volume.cli.run(*command.split(), volume.url)
        assert "%|" not in piped.stdout + piped.stderr


def test_st_blocks_of_a_sparse_file_counts_what_is_stored(volume):
    laptop = volume.mount("laptop")
    path = laptop.p("sparse.img")
    with open(path, "wb") as f:
        f.truncate(100 << 20)
        f.seek(50 << 20)
        f.write(b"x" * 4096)
    assert os.stat(path).st_blocks * 512 < 1 << 20  # staged: sparse on the cache disk too
    laptop.sync()
    fresh = volume.mount("fresh")
    st = os.stat(fresh.p("sparse.img"))
    assert st.st_size == 100 << 20 and st.st_blocks * 512 < 2 << 20, st.st_blocks
