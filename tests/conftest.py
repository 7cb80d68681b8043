"""Fixtures: a real SeaweedFS S3 server on loopback, volumes on it and on file://,
and real FUSE mounts through the `fusedrive` CLI, always unmounted in teardown.

Every mount fixture runs `fusedrive fsck` at the end and fails the test if it
finds anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from fusedrive.testing.seaweed import start_seaweed

PASSPHRASE = "correct horse battery staple"
BUCKET = "fusedrive-tests"
CLI_TIMEOUT = 120
UMOUNT_TIMEOUT = 120


# The files that take minutes, started first: `--dist loadfile` hands files to workers in
# collection order, and one of these collected last ran on while the other workers idled.
LONGEST_FIRST = ["test_simulation.py", "test_chaos.py", "test_store_faults.py", "test_mirror.py", "test_sync_random.py",
                 "test_crash.py", "test_hub.py"]


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = Path(str(item.fspath)).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # (stable: the order within a file, and among the rest, stays)


@pytest.fixture(scope="session", autouse=True)
def isolated_home():
    """HOME, XDG dirs and a short runtime dir of the session's own: tests never touch the user's."""
    root = Path(tempfile.mkdtemp(prefix="fdt-"))
    saved = dict(os.environ)
    os.environ.update({
        "HOME": str(root / "home"), "XDG_RUNTIME_DIR": str(root / "run"),
        "XDG_CACHE_HOME": str(root / "home/.cache"), "XDG_DATA_HOME": str(root / "home/.local/share"),
        "XDG_CONFIG_HOME": str(root / "home/.config"), "XDG_STATE_HOME": str(root / "home/.local/state"),
    })
    for var in ("FUSEDRIVE_PASSPHRASE", "AWS_PROFILE"):
        os.environ.pop(var, None)
    (root / "run").mkdir(mode=0o700)
    yield root
    os.environ.clear()
    os.environ.update(saved)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweed(isolated_home):
    server = start_seaweed(isolated_home / "seaweed")
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


class Cli:
    """Runs the real `fusedrive` command with a test environment."""

    def __init__(self, env: dict) -> None:
        self.env = env

    def run(self, *args: str, passphrase: str | None = PASSPHRASE, check: bool = True,
            timeout: float = CLI_TIMEOUT, endpoint: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """`endpoint`: reach the S3 server there instead (through a fault proxy); `env`: more
        environment (FUSEDRIVE_CRASH_AT for a mount)."""
        env = {**os.environ, **self.env, **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {}), **(env or {})}
        if passphrase is not None:
            env["FUSEDRIVE_PASSPHRASE"] = passphrase
        result = subprocess.run([sys.executable, "-m", "fusedrive.cli", *args], env=env, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"fusedrive {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result


class Volume:
    """One volume under test: its URL, a way to list what is stored, and mounts of it."""

    def __init__(self, url: str, cli: Cli, root: Path, objects) -> None:
        """`objects` = (list, read, write, delete) of raw objects, bypassing fusedrive."""
        self.url, self.cli, self.root = url, cli, root
        self.list_objects, self.read_object, self.write_object, self.delete_object = objects
        self.mounts: list[Mount] = []

    @contextlib.contextmanager
    def opened(self):
        """The volume opened in this process (with its store credentials), for reaching
        the journal and blocks directly."""
        from fusedrive.store import open_store
        from fusedrive.store.volume import open_volume

        saved = dict(os.environ)
        os.environ.update(self.cli.env)
        try:
            yield open_volume(open_store(self.url), PASSPHRASE)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def stored_bytes(self, prefix: str = "") -> int:
        return sum(size for _key, size in self.list_objects(prefix))

    def mount(self, name: str = "dev1", cache_dir: Path | None = None, **options) -> "Mount":
        mount = Mount(self, self.root / f"mnt-{name}-{uuid.uuid4().hex[:6]}", cache_dir or self.root / f"cache-{name}",
                      name)
        mount.start(**options)
        self.mounts.append(mount)
        return mount

    def mirror(self, name: str = "dev1", cache_dir: Path | None = None, folder: Path | None = None,
               **options) -> "Mirror":
        """A device that keeps a local folder in sync (`fusedrive mirror`), torn down as a mount is."""
        mirror = Mirror(self, folder or self.root / f"folder-{name}-{uuid.uuid4().hex[:6]}",
                        cache_dir or self.root / f"cache-{name}", name)
        mirror.start(**options)
        self.mounts.append(mirror)
        return mirror

    def fsck(self, *extra: str) -> subprocess.CompletedProcess:
        return self.cli.run("fsck", self.url, *extra, check=False)


class Mount:
    def __init__(self, volume: Volume, path: Path, cache_dir: Path, device: str) -> None:
        self.volume, self.path, self.cache_dir, self.device = volume, path, cache_dir, device

    def start(self, cache_size: str = "2G", poll_interval: float = 2.0, hub: str | None = None,
              args: tuple[str, ...] = (), endpoint: str | None = None, env: dict | None = None,
              passphrase: str | None = PASSPHRASE) -> None:
        """`args`: more `fusedrive mount` options; `endpoint`: this device's way to the S3 server;
        `env`: more environment for the mount process; `passphrase`: None for a member who
        opens the volume with their identity."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.volume.cli.run("mount", self.volume.url, str(self.path), "--cache-dir", str(self.cache_dir),
                            "--device-name", self.device, "--cache-size", cache_size,
                            "--poll-interval", str(poll_interval), *(["--hub", hub] if hub else []), *args,
                            endpoint=endpoint, env=env, passphrase=passphrase)

    def p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def control(self, command: str) -> dict:
        from fusedrive.services import control

        return control.request(str(self.path), command, timeout=CLI_TIMEOUT)

    def sync(self) -> None:
        self.control("sync")

    def check_invariants(self) -> None:
        """A running mount's per-file state must agree with itself (Drive.check_invariants)."""
        from fusedrive.services import control

        entry = control.read_registry(str(self.path))
        if entry is None or control.has_exited(entry["pid"]):
            return  # killed by the test, or already gone: nothing running to ask
        problems = self.control("check")["problems"]
        assert not problems, f"{self.device}: the per-file state does not hold: {problems}"

    def fsck_clean(self) -> None:
        """fsck of the volume and of this device's live replica must find nothing."""
        result = self.volume.cli.run("fsck", self.volume.url, "--cache-dir", str(self.cache_dir), check=False)
        assert result.returncode == 0, f"fsck found problems:\n{result.stdout}{result.stderr}"

    def umount(self) -> None:
        """umount waits up to --timeout for the queue, then up to its exit grace (30 s) for the
        process: the CLI is given both, and a minute to start and ask."""
        self.volume.cli.run("umount", str(self.path), "--timeout", str(UMOUNT_TIMEOUT), timeout=UMOUNT_TIMEOUT + 90)
        self.volume.mounts.remove(self)

    def force_unmount(self) -> None:
        """Teardown of last resort: never leave a mount behind, even after a failed test."""
        from fusedrive.services import control

        entry = control.read_registry(str(self.path))
        for command in (["fusermount3", "-u", str(self.path)], ["fusermount3", "-u", "-z", str(self.path)]):
            if not os.path.ismount(self.path):
                break
            subprocess.run(command, capture_output=True, timeout=30)
        if entry and not control.wait_for_exit(entry["pid"], 60):
            os.kill(entry["pid"], signal.SIGKILL)


class Mirror(Mount):
    """A `fusedrive mirror` of the volume: its folder is `path`; everything a test does to a
    mount's path it can do here (the files are real files on the local disk)."""

    def start(self, cache_size: str = "2G", poll_interval: float = 2.0, hub: str | None = None,
              args: tuple[str, ...] = (), endpoint: str | None = None, env: dict | None = None,
              passphrase: str | None = PASSPHRASE) -> None:
        self.volume.cli.run("mirror", self.volume.url, str(self.path), "--cache-dir", str(self.cache_dir),
                            "--device-name", self.device, "--cache-size", cache_size,
                            "--poll-interval", str(poll_interval), *(["--hub", hub] if hub else []), *args,
                            endpoint=endpoint, env=env, passphrase=passphrase)

    def pid(self) -> int | None:
        from fusedrive.services import control

        entry = control.read_registry(str(self.path))
        return None if entry is None or control.has_exited(entry["pid"]) else entry["pid"]

    def kill(self) -> None:
        """kill -9: nothing is drained, nothing said goodbye."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            from fusedrive.services import control

            control.wait_for_exit(pid, 30)

    def force_unmount(self) -> None:
        from fusedrive.services import control

        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not control.wait_for_exit(pid, 60):
                os.kill(pid, signal.SIGKILL)


def _new_volume(kind: str, root: Path, request, endpoint: str | None = None) -> Volume:
    """`endpoint`: where the mounts reach the S3 server (default: directly)."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "s3":
        server = request.getfixturevalue("seaweed")
        prefix = f"vol-{uuid.uuid4().hex[:12]}"
        client = server.client()

        def list_objects(sub: str = ""):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/{sub}"):
                for item in page.get("Contents", []):
                    yield item["Key"][len(prefix) + 1:], item["Size"]

        def read_object(key: str) -> bytes:
            return client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()

        def write_object(key: str, data: bytes) -> None:
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=data)

        def delete_object(key: str) -> None:
            client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{key}")

        objects = (list_objects, read_object, write_object, delete_object)
        env = dict(server.env, **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {}))
        volume = Volume(f"s3://{BUCKET}/{prefix}", Cli(env), root, objects)
    else:
        directory = root / "volume"

        def list_objects(sub: str = ""):
            for dirpath, _dirs, files in os.walk(directory):
                for name in files:
                    key = os.path.relpath(os.path.join(dirpath, name), directory)
                    if key.startswith(sub) and not key.startswith(".tmp"):
                        yield key, os.path.getsize(os.path.join(dirpath, name))

        def read_object(key: str) -> bytes:
            return (directory / key).read_bytes()

        def write_object(key: str, data: bytes) -> None:
            (directory / key).write_bytes(data)

        def delete_object(key: str) -> None:
            (directory / key).unlink()

        objects = (list_objects, read_object, write_object, delete_object)
        volume = Volume(directory.as_uri(), Cli({}), root, objects)
    volume.cli.run("init", volume.url)
    return volume


def _teardown(volume: Volume) -> None:
    """Check each running device's per-file state, unmount every device whatever happens,
    then fsck each cleanly unmounted one."""
    failures, unmounted = [], []
    for mount in list(volume.mounts):
        try:
            mount.check_invariants()
            mount.umount()
            unmounted.append(mount)
        except Exception as exc:  # noqa: BLE001 - unmount no matter what, then report
            failures.append(str(exc))
            mount.force_unmount()
    assert not failures, failures
    for mount in unmounted:
        mount.fsck_clean()


STORES = ["file", "s3"]


@pytest.fixture(params=STORES)
def volume(request, tmp_path):
    """A fresh, empty volume on each store; every mount of it is unmounted and fsck'ed after."""
    vol = _new_volume(request.param, tmp_path, request)
    yield vol
    _teardown(vol)


@pytest.fixture
def s3_volume(request, tmp_path):
    """A fresh volume on the S3 server (for the multi-device tests)."""
    vol = _new_volume("s3", tmp_path, request)
    yield vol
    _teardown(vol)


@pytest.fixture
def store_proxy(seaweed):
    """A proxy between the mounts and the S3 server that tests can take down and bring back."""
    from fusedrive.testing.faultproxy import FaultProxy

    proxy = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    yield proxy
    proxy.down()


@pytest.fixture
def proxied_volume(request, tmp_path, store_proxy):
    """A fresh S3 volume whose mounts reach the store through `store_proxy`."""
    vol = _new_volume("s3", tmp_path, request, endpoint=store_proxy.endpoint)
    yield vol
    store_proxy.clear()  # so the mounts can drain and unmount
    store_proxy.up()
    _teardown(vol)


@pytest.fixture(scope="module", params=STORES)
def shared_volume(request, tmp_path_factory):
    vol = _new_volume(request.param, tmp_path_factory.mktemp("shared"), request)
    yield vol
    _teardown(vol)


@pytest.fixture(scope="module")
def shared_mount(shared_volume):
    """One mount shared by a module's tests (each test works in its own directory)."""
    return shared_volume.mount()


@pytest.fixture
def work(shared_mount, request):
    """A fresh directory in the shared mount; after the test, upload everything and fsck."""
    directory = shared_mount.p(request.node.name.replace("/", "_")[:200])
    os.mkdir(directory)
    yield directory
    shared_mount.sync()
    shared_mount.check_invariants()
    shared_mount.fsck_clean()


@pytest.fixture
def hub():
    """A `fusedrive hub` process on a free port, killed after the test."""
    from test_hub import HubProcess, free_port

    process = HubProcess(free_port())
    process.start()
    yield process
    process.stop()


class EventStream:
    """`fusedrive events --json` running against a mount, collecting what it prints."""

    def __init__(self, mount) -> None:
        env = dict(os.environ, **mount.volume.cli.env)
        self.process = subprocess.Popen([sys.executable, "-m", "fusedrive.cli", "events", str(mount.path), "--json"],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        ready = self.process.stderr.readline()
        assert ready.startswith("Listening for events"), ready
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def of_kind(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def event_streams():
    streams = []
    yield lambda mount: streams.append(EventStream(mount)) or streams[-1]
    for stream in streams:
        stream.stop()
