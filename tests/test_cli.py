"""The command line: the embedded default drive, --help, and one clear sentence
with a distinct exit code for each kind of bad input."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import BUCKET, PASSPHRASE, Cli

from fusedrive.errors import StoreUnsupported
from fusedrive.store import NotFound
from fusedrive.store.volume import probe_conditional_writes


def run_plain(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return Cli({}).run(*args, check=False, **kwargs)


@pytest.mark.parametrize("command", ["", "init", "mount", "umount", "status", "fsck"])
def test_help_everywhere(command):
    result = run_plain(*([command] if command else []), "--help", passphrase=None)
    assert result.returncode == 0
    assert "usage: fusedrive" in result.stdout


def test_default_drive_needs_no_account_and_no_passphrase(tmp_path, isolated_home):
    mountpoint = tmp_path / "FuseDrive"
    mountpoint.mkdir()
    result = run_plain("mount", str(mountpoint), passphrase=None)
    assert result.returncode == 0, result.stderr
    try:
        (mountpoint / "hello.txt").write_text("hi")
        key = Path(os.environ["XDG_CONFIG_HOME"]) / "fusedrive" / "default.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        status = run_plain("status", str(mountpoint), passphrase=None)
        assert status.returncode in (0, 1) and str(mountpoint) in status.stdout
    finally:
        assert run_plain("umount", str(mountpoint), passphrase=None).returncode == 0
    # second time: the same volume and key, the file is still there
    assert run_plain("mount", str(mountpoint), passphrase=None).returncode == 0
    try:
        assert (mountpoint / "hello.txt").read_text() == "hi"
    finally:
        run_plain("umount", str(mountpoint), passphrase=None)
    default_url = (Path(os.environ["XDG_DATA_HOME"]) / "fusedrive" / "default-volume").as_uri()
    fsck = run_plain("fsck", default_url, "--key-file", str(key), passphrase=None)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_mount_py_is_fusedrive_mount(volume, tmp_path):
    mountpoint = tmp_path / "via-mount-py"
    mountpoint.mkdir()
    env = dict(os.environ, **volume.cli.env, FUSEDRIVE_PASSPHRASE="correct horse battery staple")
    script = Path(__file__).parent.parent / "mount.py"
    result = subprocess.run([sys.executable, str(script), volume.url, str(mountpoint), "--cache-dir",
                             str(tmp_path / "c")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    try:
        (mountpoint / "x").write_bytes(b"x")
    finally:
        volume.cli.run("umount", str(mountpoint))


def expect_failure(result: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_init_refuses_to_overwrite(volume):
    expect_failure(volume.cli.run("init", volume.url, check=False), 4, "already a fusedrive volume")


@pytest.mark.parametrize("url", ["s3:/no-bucket", "http://example/x", "file://relative/dir", "bucket/prefix"])
def test_malformed_volume_url(url):
    expect_failure(run_plain("init", url), 64, "Malformed volume URL")


def test_no_volume_there(tmp_path):
    expect_failure(run_plain("fsck", (tmp_path / "nothing").as_uri()), 3, "No fusedrive volume at")


def test_mountpoint_problems(volume, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "file").write_text("x")
    expect_failure(volume.cli.run("mount", volume.url, str(full), check=False), 9, "is not empty")
    (tmp_path / "a-file").write_text("x")
    expect_failure(volume.cli.run("mount", volume.url, str(tmp_path / "a-file"), check=False), 9,
                   "is not a directory")
    mount = volume.mount()
    expect_failure(volume.cli.run("mount", volume.url, str(mount.path), check=False), 9, "already a mount point")
    other = tmp_path / "other"
    other.mkdir()
    expect_failure(volume.cli.run("mount", volume.url, str(other), "--cache-dir", str(mount.cache_dir), check=False),
                   12, "is in use by another mount")


@pytest.mark.parametrize("name", ["", "home/laptop", "x" * 65, "tab\there"])
def test_invalid_device_names(volume, tmp_path, name):
    expect_failure(volume.cli.run("mount", volume.url, str(tmp_path), "--device-name", name, check=False), 64,
                   "Invalid device name")
    assert not os.path.ismount(tmp_path)


def needs_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root to {why}")


def test_cache_dir_on_a_full_disk(volume, tmp_path):
    needs_root("mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        with open(disk / "filler", "wb") as filler:
            with pytest.raises(OSError):
                filler.write(bytes(16 << 20))
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        result = volume.cli.run("mount", volume.url, str(mountpoint), "--cache-dir", str(disk / "cache"), check=False)
        expect_failure(result, 12, f"The cache dir {disk / 'cache'} is on a full disk")
        assert not os.path.ismount(mountpoint)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_missing_dev_fuse(volume, tmp_path):
    needs_root("hide /dev/fuse in a private mount namespace")
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    env = {**os.environ, **volume.cli.env, "FUSEDRIVE_PASSPHRASE": PASSPHRASE}
    hide_dev = 'mount -t tmpfs tmpfs /dev && exec "$@"'
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide_dev, "sh",
                             sys.executable, "-m", "fusedrive.cli", "mount", volume.url, str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=120)
    expect_failure(result, 11, "/dev/fuse is missing")


def test_umount_of_something_else(tmp_path):
    expect_failure(run_plain("umount", str(tmp_path)), 9, "is not a fusedrive mount")


def test_missing_bucket_and_bad_credentials(seaweed):
    cli = Cli(seaweed.env)
    expect_failure(cli.run("init", "s3://no-such-bucket-here/x", check=False), 16, "does not exist")
    wrong = Cli(dict(seaweed.env, AWS_SECRET_ACCESS_KEY="wrong"))
    expect_failure(wrong.run("init", f"s3://{BUCKET}/creds", check=False), 16, "refused our credentials")
    anonymous = {k: v for k, v in seaweed.env.items() if not k.startswith("AWS_SECRET") and not k.startswith("AWS_ACCESS")}
    no_creds = Cli(anonymous)
    no_creds.env = dict(anonymous, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                        AWS_CONFIG_FILE="/nonexistent", AWS_EC2_METADATA_DISABLED="true")
    expect_failure(no_creds.run("init", f"s3://{BUCKET}/nocreds", check=False), 16, "No S3 credentials")


def test_unreachable_store():
    cli = Cli({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "2"})
    expect_failure(cli.run("init", "s3://bucket/x", check=False, timeout=120), 6, "Cannot reach the store")


def test_no_passphrase_in_a_script(volume, tmp_path):
    expect_failure(volume.cli.run("fsck", volume.url, passphrase=None, check=False), 64, "No passphrase")


class IgnoresConditions:
    """A store that accepts every write: what a store without If-None-Match support does."""

    url = "memory://careless"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def get(self, key):
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key]

    def put_if_absent(self, key, data):
        with self.lock:
            self.objects[key] = data
        return True

    def delete(self, key):
        self.objects.pop(key, None)


def test_probe_refuses_a_store_without_conditional_writes():
    with pytest.raises(StoreUnsupported, match="does not enforce conditional writes"):
        probe_conditional_writes(IgnoresConditions())


@pytest.mark.inprocess
def test_the_cache_size_check_counts_a_cache_that_a_running_mount_empties_meanwhile(tmp_path, monkeypatch):
    """`fusedrive mount` weighs the cache after the mount has started, while it evicts:
    files and folders that go meanwhile count as gone, never a failed command."""
    from fusedrive.services import process

    blocks = tmp_path / "blocks"
    for folder in ("04", "05"):
        (blocks / folder / "ab").mkdir(parents=True)
        (blocks / folder / "ab" / "value.val").write_bytes(b"x" * 1000)
    real_lstat, real_scandir = os.lstat, os.scandir

    def evicting_lstat(path, *args, **kwargs):
        if "04" in str(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_lstat(path, *args, **kwargs)

    def evicting_scandir(path="."):
        if str(path).endswith("05"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_scandir(path)

    monkeypatch.setattr(process.os, "lstat", evicting_lstat)
    monkeypatch.setattr(process.os, "scandir", evicting_scandir)
    assert process.bytes_under(blocks) == 0
    assert process.cache_size_warning(tmp_path, 1) is None  # what `fusedrive mount` asks after mounting
    monkeypatch.undo()
    assert process.bytes_under(blocks) == 2000


@pytest.mark.inprocess
def test_a_mount_and_a_mirror_on_one_machine_are_two_devices_by_default():
    """Their conflicted copies would both say "from HOST" otherwise."""
    import socket

    from fusedrive.cli import build_parser

    parser = build_parser()
    mount = parser.parse_args(["mount", "file:///v", "/mnt/d"])
    mirror = parser.parse_args(["mirror", "file:///v", "/home/me/Drive"])
    assert mount.device_name == socket.gethostname() and mirror.device_name == f"{socket.gethostname()}-mirror"
