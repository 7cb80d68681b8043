#!/usr/bin/env python3
"""Benchmark fusedrive beside a local directory and, with --anchors, JuiceFS and rclone
mount on the same local S3 server: the same workloads, interleaved target by target,
each repeated (--repeat, default 3), median reported. Not a test: it measures.

One command starts its own SeaweedFS on loopback, mounts every target, runs:
sequential write (to close, and until durable in the store), cold read (kernel and
drive caches dropped), warm read, 4 KiB random reads (cold), 2,000 small files
(create, stat, list, delete), a 10 x 100 tree (create, walk, rename of the top, walk again 2 s later, rm),
bytes uploaded for three edits of a 64 MiB file (measured by a counting proxy in
front of the server), sync latency between two fusedrive devices, and the RSS of
the fusedrive mount holding 100,000 files. Throughput data is random (incompressible); CPU
seconds of each mount process and of the S3 server are recorded per workload.

    .venv/bin/pip install -e '.[bench]'      # JuiceFS, rclone, py-spy
    .venv/bin/python scripts/bench.py --anchors [--markdown docs/benchmark.md]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fusedrive.services import control  # noqa: E402
from fusedrive.store import open_store  # noqa: E402
from fusedrive.testing.latency import LatencyProxy  # noqa: E402
from fusedrive.testing.faultproxy import FaultProxy  # noqa: E402
from fusedrive.testing.seaweed import ACCESS_KEY, SECRET_KEY, start_seaweed  # noqa: E402

MiB = 1024 * 1024
PASSPHRASE = "benchmark passphrase"
BIN = Path(sys.executable).parent
QUIET_SECONDS = 10  # an anchor's uploads are over when nothing was uploaded for this long


def drop_kernel_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        print("cannot drop the kernel's page cache (not root): cold reads are not cold", file=sys.stderr)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its waited-for children, in seconds."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pid_serving(mountpoint: Path, program: str) -> int | None:
    """The process serving a mount point, found by its command line (daemons fork away
    from us; JuiceFS's supervisor and worker both match: the worker is the younger)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            continue
        if command and program in os.path.basename(command[0]) and str(mountpoint) in command:
            found.append(int(proc.name))
    return max(found, default=None)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- targets ----------------------------------------------------------------------------


class Target:
    """A directory the workloads run in: its name, how to empty its caches, how to wait
    until a file is durable in the store, and the process that serves it."""

    name = "?"
    durable_fsync = True  # fsync puts the data where the target promises it (rclone: not the store)

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir(parents=True, exist_ok=True)

    def mount(self) -> None:
        pass

    def umount(self) -> None:
        pass

    def pid(self) -> int | None:
        return None

    def drop_caches(self) -> None:
        """Cold: nothing of the data cached by the kernel or by the drive."""
        self.umount()
        self._drop_own_cache()
        drop_kernel_caches()
        self.mount()

    def _drop_own_cache(self) -> None:
        pass

    def make_durable(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def settle(self, proxy: FaultProxy | None) -> None:
        """Wait until every change so far is in the store."""
        os.sync()


class LocalDir(Target):
    name = "local dir"

    def drop_caches(self) -> None:
        drop_kernel_caches()


class Fusedrive(Target):
    name = "fusedrive"

    def __init__(self, root: Path, url: str, env: dict, device: str = "bench") -> None:
        super().__init__(root)
        self.url, self.device = url, device
        self.env = {**os.environ, **env, "FUSEDRIVE_PASSPHRASE": PASSPHRASE}
        self.cache = root / "cache"
        self.extra: list[str] = []

    def cli(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "fusedrive.cli", *args], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def mount(self) -> None:
        self.cli("mount", self.url, str(self.mountpoint), "--cache-dir", str(self.cache), "--cache-size", "8G",
                 "--device-name", self.device, *self.extra)

    def umount(self) -> None:
        self.cli("umount", str(self.mountpoint), "--timeout", "3600")

    def pid(self) -> int | None:
        entry = control.read_registry(str(self.mountpoint))
        return entry["pid"] if entry else None

    def _drop_own_cache(self) -> None:
        shutil.rmtree(self.cache / "blocks", ignore_errors=True)

    def settle(self, proxy: FaultProxy | None) -> None:
        control.request(str(self.mountpoint), "sync", timeout=3600)


class FusedriveMirror(Fusedrive):
    """A `fusedrive mirror` device: its folder stands where a mount point would."""

    name = "fusedrive mirror"

    def mount(self) -> None:
        self.cli("mirror", self.url, str(self.mountpoint), "--cache-dir", str(self.cache), "--cache-size", "8G",
                 "--device-name", self.device, *self.extra)


class FusedriveReplicated(Fusedrive):
    """A fusedrive volume with a replica (another bucket of the same server): what copying
    each write to the replica costs the write path."""

    name = "fusedrive + replica"


class FusedriveShared(Fusedrive):
    """A fusedrive volume shared with people (issue 39): this device's person is its admin and
    another person a writer, so every entry is signed and checked, and a new device joins from
    the checkpoint this device (an admin's) signed, its roster checked."""

    name = "fusedrive shared"

    def share(self, work: Path) -> None:
        self.cli("id", "--name", "bench")
        other = {**self.env, "XDG_CONFIG_HOME": str(work / "other-person")}
        found = subprocess.run([sys.executable, "-m", "fusedrive.cli", "id", "--name", "other"], env=other,
                               check=True, capture_output=True, text=True)
        self.cli("members", "add", self.url, found.stdout.strip())


class JuiceFS(Target):
    name = "JuiceFS"

    def __init__(self, root: Path, endpoint: str, bucket: str) -> None:
        super().__init__(root)
        self.meta = f"sqlite3://{root}/meta.db"
        self.cache = root / "cache"
        subprocess.run([str(BIN / "juicefs"), "format", "--storage", "minio", "--bucket", f"{endpoint}/{bucket}",
                        "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, self.meta, "bench"],
                       check=True, capture_output=True)

    def mount(self) -> None:
        subprocess.run([str(BIN / "juicefs"), "mount", "-d", "--cache-dir", str(self.cache), "--log",
                        str(self.root / "juicefs.log"), self.meta, str(self.mountpoint)],
                       check=True, capture_output=True)

    def umount(self) -> None:
        subprocess.run([str(BIN / "juicefs"), "umount", str(self.mountpoint)], check=True, capture_output=True)

    def pid(self) -> int | None:
        return pid_serving(self.mountpoint, "juicefs")

    def _drop_own_cache(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)

    def settle(self, proxy: FaultProxy | None) -> None:
        wait_quiet(proxy)


class Rclone(Target):
    name = "rclone"
    durable_fsync = False

    def __init__(self, root: Path, endpoint: str, bucket: str, client) -> None:
        super().__init__(root)
        self.bucket, self.client = bucket, client
        self.cache = root / "cache"
        self.env = {**os.environ, "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
                    "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint, "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
                    "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY, "RCLONE_CONFIG": "/dev/null"}

    def mount(self) -> None:
        subprocess.run([str(BIN / "rclone"), "mount", f"bench:{self.bucket}", str(self.mountpoint),
                        "--vfs-cache-mode", "full", "--cache-dir", str(self.cache), "--daemon",
                        "--links",  # symlinks as .rclonelink objects: without it a real tree's links fail
                        "--log-file", str(self.root / "rclone.log")],
                       env=self.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: os.path.ismount(self.mountpoint), 30, "rclone to mount")

    def umount(self) -> None:
        pid = self.pid()
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=True, capture_output=True)
        if pid:
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), 600, "rclone to finish its uploads")

    def pid(self) -> int | None:
        return pid_serving(self.mountpoint, "rclone")

    def _drop_own_cache(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)

    def make_durable(self, path: Path) -> None:
        """rclone uploads after close (and a write-back delay): durable once the object is whole."""
        super().make_durable(path)
        key = str(path.relative_to(self.mountpoint))
        size = path.stat().st_size

        def stored() -> bool:
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"] == size
            except Exception:  # noqa: BLE001 - not there yet
                return False

        wait_until(stored, 3600, f"rclone to upload {key}")

    def settle(self, proxy: FaultProxy | None) -> None:
        wait_quiet(proxy)


def wait_quiet(proxy: FaultProxy) -> None:
    """Until nothing was uploaded for QUIET_SECONDS (an anchor gives no other signal)."""
    last, since = proxy.uploaded_bytes, time.monotonic()
    while time.monotonic() - since < QUIET_SECONDS:
        time.sleep(0.5)
        if proxy.uploaded_bytes != last:
            last, since = proxy.uploaded_bytes, time.monotonic()


# --- workloads: each returns {metric: value} --------------------------------------------


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def read_all(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(4 * MiB):
            pass


def sequential(t: Target, size_mib: int) -> dict[str, float]:
    """Write fresh random data (so nothing is deduplicated), then read it cold and warm."""
    path = t.mountpoint / "big.bin"
    if path.exists():
        path.unlink()
    chunks = [os.urandom(MiB) for _ in range(size_mib)]
    mb = size_mib * MiB / 1e6
    start = time.perf_counter()
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    closed = time.perf_counter() - start
    t.make_durable(path)
    durable = time.perf_counter() - start
    del chunks
    t.drop_caches()
    cold = timed(lambda: read_all(path))
    warm = timed(lambda: read_all(path))
    return {"seq write to close (MB/s)": mb / closed, "seq write, durable (MB/s)": mb / durable,
            "cold read (MB/s)": mb / cold, "warm read (MB/s)": mb / warm}


def random_reads(t: Target, count: int) -> dict[str, float]:
    """4 KiB reads at random offsets of the big file: first with the file in the target's
    own cache (only the kernel's page cache dropped), then from the store (every cache
    dropped). Throughput, and the p50 and p99 of one read."""
    path = t.mountpoint / "big.bin"
    results = {}
    for where, drop in (("in the drive's cache", drop_kernel_caches), ("from the store", t.drop_caches)):
        drop()
        size = path.stat().st_size
        rng = random.Random(7)
        offsets = [rng.randrange(0, size - 4096) & ~4095 for _ in range(count)]
        latencies = []
        fd = os.open(path, os.O_RDONLY)
        try:
            start = time.perf_counter()
            for offset in offsets:
                before = time.perf_counter()
                os.pread(fd, 4096, offset)
                latencies.append(time.perf_counter() - before)
            seconds = time.perf_counter() - start
        finally:
            os.close(fd)
        latencies.sort()
        results[f"4 KiB random reads, {where} (reads/s)"] = count / seconds
        results[f"4 KiB random reads, {where}, p50 (ms)"] = latencies[len(latencies) // 2] * 1000
        results[f"4 KiB random reads, {where}, p99 (ms)"] = latencies[int(len(latencies) * 0.99)] * 1000
    return results


def fsync_edits(t: Target, size_mib: int, edits: int = 30) -> dict[str, float]:
    """A small edit in place of a big file made durable: pwrite + fsync, as a database or
    an editor saving in place does. Median milliseconds. 16 random bytes, not 1: a 1-byte
    block has 256 possible contents and fusedrive's deduplication would skip most of their
    uploads. (rclone's fsync does not upload: not measured there.)"""
    if not t.durable_fsync:
        return {}
    path = t.mountpoint / "fsynced.bin"
    path.write_bytes(os.urandom(size_mib * MiB))
    t.make_durable(path)
    rng = random.Random(11)
    times = []
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(edits):
            offset = rng.randrange(size_mib * MiB)
            start = time.perf_counter()
            os.pwrite(fd, os.urandom(16), offset)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    path.unlink()
    return {f"16-byte edit in place of {size_mib} MiB, write + fsync (ms)": statistics.median(times) * 1000}


def first_writes(t: Target, size_mib: int, edits: int = 10) -> dict[str, float]:
    """Writes that change a few bytes of a big saved file: the first one after it was
    saved (a VM image written after a reboot, a tag rewritten in a media file), then edits
    made durable with open/close each time (a database opened per request), then one after
    the target's caches were dropped (a device that has none of the file: nothing of it
    should be read to change a byte). Milliseconds."""
    path = t.mountpoint / "first-write.img"
    path.write_bytes(os.urandom(size_mib * MiB))
    t.make_durable(path)

    def edit(offset: int, data: bytes, durable: bool) -> float:
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return (time.perf_counter() - start) * 1000

    rng = random.Random(5)
    results = {f"1-byte write into a saved {size_mib} MiB file, first open (ms)": edit(size_mib * MiB // 2, b"!", False)}
    if t.durable_fsync:
        times = [edit(rng.randrange(size_mib * MiB), os.urandom(16), True) for _ in range(edits)]
        results[f"16-byte edit + fsync of {size_mib} MiB, open/close each (ms)"] = statistics.median(times)
    t.make_durable(path)
    t.drop_caches()
    results["1-byte write + fsync into it, caches dropped (ms)"] = edit(size_mib * MiB // 3, b"?", t.durable_fsync)
    path.unlink()
    return results


def sqlite_commits(t: Target, transactions: int) -> dict[str, float]:
    """SQLite in WAL mode (synchronous=FULL: every commit fsyncs the log), one row per
    transaction, as an application database saves each change."""
    path = t.mountpoint / "app.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        start = time.perf_counter()
        for i in range(transactions):
            db.execute("BEGIN")
            db.execute("INSERT INTO notes (body) VALUES (?)", (f"note {i} " * 8,))
            db.execute("COMMIT")
        seconds = time.perf_counter() - start
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"SQLite WAL, one-row transactions (tx/s)": transactions / seconds}


def join(t: Target) -> dict[str, float]:
    """A new device of the volume (an empty cache dir) mounting it: its first pull — from the
    newest checkpoint on (in a volume shared with people, one an admin signed, its roster
    checked). After the other workloads, which wrote a few thousand entries."""
    if not isinstance(t, Fusedrive):
        return {}
    joiner = Fusedrive(t.root / "joiner", t.url, {}, device="joiner")
    joiner.env = t.env
    try:
        seconds = timed(joiner.mount)
        applied = control.request(str(joiner.mountpoint), "status", timeout=60)["applied_seq"]
    finally:
        joiner.umount()
        shutil.rmtree(joiner.root, ignore_errors=True)
    return {"new device joins: its mount (s)": seconds, "new device joins: journal entries": applied}


def real_tree(t: Target, source: Path) -> dict[str, float]:
    """rsync -a of a real tree (many small files, links, modes) into the target, then rm -rf
    of it: seconds."""
    if shutil.which("rsync") is None:
        print("rsync is not installed: the real-tree workload is skipped", file=sys.stderr)
        return {}
    top = t.mountpoint / "doc"
    copy_s = timed(lambda: subprocess.run(["rsync", "-a", f"{source}/", f"{top}/"], check=True))
    rm_s = timed(lambda: subprocess.run(["rm", "-rf", str(top)], check=True))
    return {f"rsync -a {source} (s)": copy_s, "rm -rf of it (s)": rm_s}


def small_files(t: Target, count: int) -> dict[str, float]:
    d = t.mountpoint / "small"
    d.mkdir()
    names = [d / f"f{i:05d}" for i in range(count)]
    payloads = [os.urandom(4096) for _ in names]  # each its own: deduplication would upload one block

    def create():
        for name, payload in zip(names, payloads):
            with open(name, "wb") as f:
                f.write(payload)

    create_s = timed(create)
    stat_s = timed(lambda: [os.stat(n) for n in names])
    list_s = timed(lambda: [entry.stat() for entry in os.scandir(d)])
    delete_s = timed(lambda: [os.unlink(n) for n in names])
    os.rmdir(d)
    return {"4 KiB file create (files/s)": count / create_s, "stat (files/s)": count / stat_s,
            "list + stat (entries/s)": count / list_s, "delete (files/s)": count / delete_s}


WALK_AGAIN_AFTER_S = 2


def tree(t: Target, dirs: int = 10, files: int = 100) -> dict[str, float]:
    top = t.mountpoint / "tree"

    payloads = [os.urandom(100) for _ in range(dirs * files)]  # each its own, as in small_files

    def create():
        for i in range(dirs):
            sub = top / f"d{i}"
            sub.mkdir(parents=True)
            for j in range(files):
                (sub / f"f{j}").write_bytes(payloads[i * files + j])

    def walk(top: Path = top):
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                os.lstat(os.path.join(dirpath, name))

    n = dirs * files
    create_s = timed(create)
    walk_s = timed(walk)
    rename_s = timed(lambda: os.rename(top, t.mountpoint / "tree-renamed"))
    time.sleep(WALK_AGAIN_AFTER_S)  # what `git status` or `make` does again a moment later
    walk_again_s = timed(lambda: walk(t.mountpoint / "tree-renamed"))
    rm_s = timed(lambda: remove_tree(t.mountpoint / "tree-renamed"))
    return {"tree create (files/s)": n / create_s, "tree walk (files/s)": n / walk_s,
            f"tree walk again, {WALK_AGAIN_AFTER_S} s later (files/s)": n / walk_again_s,
            "tree rename (ms)": rename_s * 1000, "tree rm -rf (files/s)": n / rm_s}


def remove_tree(top: Path) -> None:
    """rm -rf (shutil.rmtree refuses a folder rclone reports as a link just after its rename)."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(top)


def edits(t: Target, proxy: FaultProxy, size_mib: int) -> dict[str, float]:
    """Bytes uploaded for three edits of a random file, counted at the S3 server's door."""
    path = t.mountpoint / "edited.bin"
    content = bytearray(os.urandom(size_mib * MiB))
    path.write_bytes(content)
    t.settle(proxy)
    results = {}

    def measure(metric: str, edit) -> None:
        before = proxy.uploaded_bytes
        edit()
        t.settle(proxy)
        results[metric] = proxy.uploaded_bytes - before

    def in_place():
        with open(path, "r+b") as f:
            f.seek(len(content) // 2)
            f.write(b"!")

    def editor_save():
        middle = len(content) // 2
        content[middle:middle] = b"?"
        temp = t.mountpoint / ".edited.bin.tmp"
        temp.write_bytes(content)
        os.rename(temp, path)

    def append():
        with open(path, "ab") as f:
            f.write(os.urandom(1024))

    measure(f"uploaded: 1-byte edit in place of {size_mib} MiB (bytes)", in_place)
    measure("uploaded: editor save, 1 byte inserted (bytes)", editor_save)
    measure("uploaded: 1 KiB append (bytes)", append)
    path.unlink()
    t.settle(proxy)
    return results


def sync_latency(work: Path, url: str, env: dict, changes: int, hub_url: str,
                 writer: type[Fusedrive] = Fusedrive) -> dict[str, float]:
    """Milliseconds from close() on device A (a mount, or with `writer` a mirror) until
    device B (a mount) lists the file and reads its bytes."""
    devices = []
    for name, kind in (("a", writer), ("b", Fusedrive)):
        # one folder per volume and kind: the mount → mount run and the mirror → mount run each have theirs
        d = kind(work / f"sync-{name}-{kind.__name__}-{url.split('/')[2]}", url, env, device=f"sync-{name}")
        d.extra = ["--hub", hub_url]
        d.mount()
        devices.append(d)
    a, b = devices
    try:
        os.mkdir(a.mountpoint / "latency")
        a.settle(None)
        target = b.mountpoint / "latency"
        wait_until(target.is_dir, 30, "the folder to arrive")
        delays = []
        for i in range(changes):
            payload = os.urandom(1024)
            with open(a.mountpoint / "latency" / f"f{i}", "wb") as f:
                f.write(payload)
            start = time.perf_counter()
            wait_until(lambda: f"f{i}" in os.listdir(target), 60, "a change to arrive")
            assert (target / f"f{i}").read_bytes() == payload
            delays.append((time.perf_counter() - start) * 1000)
    finally:
        for d in devices:
            d.umount()
    delays.sort()
    source = "" if writer is Fusedrive else ", from a mirror's folder"
    return {f"sync latency with hub{source}, p50 (ms)": delays[len(delays) // 2],
            f"sync latency with hub{source}, p95 (ms)": delays[int(len(delays) * 0.95) - 1]}


def mirror_first_sync(work: Path, url: str, env: dict, total_mib: int, files: int) -> dict[str, float]:
    """A new mirror's first sync: `files` files of `total_mib` MiB in all, written into the
    volume by a mount, arrive in an empty folder (seconds until `fusedrive mirror` returns,
    which waits for the first sync)."""
    writer = Fusedrive(work / "first-sync-writer", url, env, device="first-sync-writer")
    writer.mount()
    size = total_mib * MiB // files
    try:
        for i in range(files):
            path = writer.mountpoint / "first-sync" / f"d{i % 20}" / f"f{i}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(size))
        writer.settle(None)
    finally:
        writer.umount()
    mirror = FusedriveMirror(work / "first-sync-mirror", url, env, device="first-sync-mirror")
    seconds = timed(mirror.mount)
    try:
        arrived = sum(1 for _ in (mirror.mountpoint / "first-sync").rglob("f*"))
        assert arrived == files, f"the first sync brought {arrived} of {files} files"
    finally:
        mirror.umount()
    return {f"mirror first sync of {total_mib} MiB in {files:,} files (MB/s)": total_mib * MiB / 1e6 / seconds,
            f"mirror first sync of {total_mib} MiB in {files:,} files (files/s)": files / seconds}


def failover_read(work: Path, server_env: dict, endpoint: str, size_mib: int) -> dict[str, float]:
    """A new device reading a file from the replica while the store is down: the volume's
    devices reach the store through a proxy that goes down, the replica (another bucket)
    directly. The first read waits out FAILOVER_SECONDS once: counted, as a user waits it."""
    proxy = FaultProxy(int(endpoint.rsplit(":", 1)[1]))
    env = {**server_env, "AWS_ENDPOINT_URL": proxy.endpoint}
    url, replica = "s3://fusedrive-failover/volume", ["s3://fusedrive-failover-replica/volume",
                                                       "--replica-endpoint-url", endpoint]
    writer = Fusedrive(work / "failover-writer", url, env, device="failover-writer")
    writer.cli("init", url)
    writer.cli("replica", "add", url, *replica)
    writer.mount()
    try:
        (writer.mountpoint / "big.bin").write_bytes(os.urandom(size_mib * MiB))
        writer.settle(None)
        wait_until(lambda: control.request(str(writer.mountpoint), "status")["replica_objects_behind"] == 0,
                   600, "the file to reach the replica")
    finally:
        writer.umount()
    proxy.down()
    reader = Fusedrive(work / "failover-reader", url, env, device="failover-reader")
    reader.extra = ["--replica-url", *replica]
    reader.mount()
    try:
        seconds = timed(lambda: read_all(reader.mountpoint / "big.bin"))
    finally:
        reader.umount()
    return {f"fresh device reading {size_mib} MiB from the replica, store down (MB/s)": size_mib * MiB / 1e6 / seconds}


def idle_mirror(work: Path, url: str, env: dict, count: int, seconds: float = 60) -> dict[str, float]:
    """CPU and RSS of a mirror with nothing to do, over a folder of `count` files (made in
    the folder before it starts: its first sync uploads them)."""
    mirror = FusedriveMirror(work / "idle-mirror", url, env, device="idle-mirror")
    for i in range(count):
        folder = mirror.mountpoint / "many" / f"d{i % 100}"
        if i < 100:
            folder.mkdir(parents=True)
        (folder / f"f{i}").write_bytes(b"%d" % i)
    mirror.mount()
    try:
        mirror.settle(None)
        pid = mirror.pid()
        before = cpu_seconds(pid)
        time.sleep(seconds)
        busy = cpu_seconds(pid) - before
        rss = rss_mib(pid)
    finally:
        mirror.umount()
    return {f"idle mirror of {count:,} files: CPU (% of one core)": busy / seconds * 100,
            f"idle mirror of {count:,} files: RSS (MiB)": rss}


@contextlib.contextmanager
def running_hub() -> Iterator[str]:
    """A `fusedrive hub` on a free port for as long as the block runs; its URL."""
    hub = subprocess.Popen([sys.executable, "-m", "fusedrive.cli", "hub", "--listen", "127.0.0.1:0"],
                           stdout=subprocess.PIPE, text=True)
    try:
        port = hub.stdout.readline().strip().rsplit(":", 1)[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        hub.kill()


def raw_get(store_url: str, endpoint: str, env: dict, size_mib: int, threads: int = 8) -> dict[str, float]:
    """The limit a fresh device's read is measured against: the same number of bytes as the
    big file, as 1 MiB objects (fusedrive's average block), fetched by `threads` threads
    through the same S3 client library fusedrive uses, nothing done with them."""
    os.environ.update(env)
    store = open_store(store_url, endpoint)
    keys = [f"raw/{i:05d}" for i in range(size_mib)]
    if next(iter(store.list("raw/")), None) is None:
        payload = os.urandom(MiB)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda key: store.put(key, payload), keys))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        seconds = timed(lambda: list(pool.map(store.get, keys)))
    return {"limit: raw S3 GET of as many 1 MiB objects, 8 threads (MB/s)": size_mib * MiB / 1e6 / seconds}


def rss_with_files(t: Target, count: int) -> dict[str, float]:
    """RSS of the mount after creating `count` empty files in 100 folders and stat'ing them all."""
    top = t.mountpoint / "many"
    for i in range(count):
        folder = top / f"d{i % 100}"
        if i < 100:
            folder.mkdir(parents=True)
        os.close(os.open(folder / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            os.lstat(os.path.join(dirpath, name))
    return {f"mount RSS with {count:,} files (MiB)": rss_mib(t.pid())}


# --- running and reporting --------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.cpu: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        self.metrics: list[str] = []

    def run(self, workload: str, t: Target, server_pid: int, fn, *args) -> None:
        print(f"  {t.name}: {workload} ...", file=sys.stderr, flush=True)
        mount_before, server_before = cpu_seconds(t.pid()), cpu_seconds(server_pid)
        pid_before = t.pid()
        try:
            outcome = fn(t, *args)
        except (OSError, subprocess.CalledProcessError) as exc:  # one target failing a workload: say so, go on
            print(f"  {t.name}: {workload} failed: {exc}", file=sys.stderr, flush=True)
            return
        # a remount (cold read) starts a new process: count only the one serving now
        mount_cpu = cpu_seconds(t.pid()) - (mount_before if t.pid() == pid_before else 0)
        self.cpu[(workload, t.name)].append((mount_cpu, cpu_seconds(server_pid) - server_before))
        self.add(t.name, outcome)

    def add(self, target: str, outcome: dict[str, float]) -> None:
        for metric, value in outcome.items():
            if metric not in self.metrics:
                self.metrics.append(metric)
            self.values[(metric, target)].append(value)

    def table(self, targets: list[str], title: str) -> str:
        """Markdown: the median of each metric per target, and each anchor's ratio to fusedrive."""
        lines = [title, "", "| workload | " + " | ".join(targets) + " |", "|---|" + "---:|" * len(targets)]
        for metric in self.metrics:
            ours = self.median(metric, "fusedrive")
            cells = []
            for target in targets:
                value = self.median(metric, target)
                cell = "—" if value is None else _number(value)
                if value is not None and ours and target != "fusedrive":
                    cell += f" ({value / ours:.2f}×)"
                cells.append(cell)
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines += ["", "CPU seconds per run, mount process + S3 server (median):", "",
                  "| workload | " + " | ".join(targets) + " |", "|---|" + "---:|" * len(targets)]
        for workload in dict.fromkeys(w for w, _ in self.cpu):
            cells = []
            for target in targets:
                runs = self.cpu.get((workload, target))
                if not runs:
                    cells.append("—")
                    continue
                cells.append(f"{statistics.median(m for m, _ in runs):.1f} + {statistics.median(s for _, s in runs):.1f}")
            lines.append(f"| {workload} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def median(self, metric: str, target: str) -> float | None:
        values = self.values.get((metric, target))
        return statistics.median(values) if values else None


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


WORKLOADS = ["sequential write and reads", "random reads", "fsync", "first writes", "sqlite", "small files", "tree", "real tree",
             "edits", "join", "sync", "rss", "mirror"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", action="store_true", help="also measure JuiceFS and rclone mount")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each workload (median reported)")
    parser.add_argument("--size-mib", type=int, default=512, help="size of the sequential file")
    parser.add_argument("--rtt-ms", type=float, default=0, help="put the store this many ms of round trip away "
                        "(every target reaches it through one delaying relay)")
    parser.add_argument("--transactions", type=int, default=1000, help="SQLite one-row transactions")
    parser.add_argument("--real-tree", type=Path, default=Path("/usr/share/doc"), help="tree copied with rsync -a")
    parser.add_argument("--files", type=int, default=2000, help="number of 4 KiB files")
    parser.add_argument("--random-reads", type=int, default=2000, help="number of 4 KiB random reads")
    parser.add_argument("--edit-mib", type=int, default=64, help="size of the edited file")
    parser.add_argument("--first-write-mib", type=int, default=1024, help="size of the file the first writes change")
    parser.add_argument("--sync-changes", type=int, default=100, help="changes timed between two devices (0: skip)")
    parser.add_argument("--rss-files", type=int, default=100_000, help="files for the RSS measure (0: skip)")
    parser.add_argument("--mirror-mib", type=int, default=1024, help="MiB a new mirror's first sync brings "
                        "(in --files files)")
    parser.add_argument("--replica", action="store_true", help="also measure a fusedrive volume with a replica "
                        "(another bucket on the same server)")
    parser.add_argument("--shared", action="store_true", help="also measure a fusedrive volume shared with people "
                        "(signed entries)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--only", action="append", choices=WORKLOADS,
                        help="run only this workload group (repeatable; default: all; random reads read the sequential file)")
    args = parser.parse_args()
    only = set(args.only or WORKLOADS)

    work = Path(tempfile.mkdtemp(prefix="fdbench-"))
    os.environ.update(HOME=str(work / "home"), XDG_RUNTIME_DIR=str(work / "run"))
    (work / "run").mkdir(mode=0o700)
    server = start_seaweed(work / "seaweed")
    # Every target reaches the server through the same relay (a far store with --rtt-ms);
    # the edit targets through the counting proxy in front of it.
    far = LatencyProxy(int(server.endpoint.rsplit(":", 1)[1]), args.rtt_ms) if args.rtt_ms else None
    endpoint = far.endpoint if far else server.endpoint
    env = {**server.env, "AWS_ENDPOINT_URL": endpoint}
    proxy = FaultProxy(int(endpoint.rsplit(":", 1)[1]))
    client = server.client()
    targets: list[Target] = []
    edit_targets: list[Target] = []
    try:
        for bucket in ("fusedrive", "fusedrive-edits", "juicefs", "juicefs-edits", "rclone", "rclone-edits"):
            client.create_bucket(Bucket=bucket)
        drive = Fusedrive(work / "fusedrive", "s3://fusedrive/volume", env)
        drive.cli("init", drive.url)
        edited_drive = Fusedrive(work / "fusedrive-edits", "s3://fusedrive-edits/volume",
                                 {**server.env, "AWS_ENDPOINT_URL": proxy.endpoint})
        edited_drive.cli("init", edited_drive.url)
        targets += [LocalDir(work / "local"), drive]
        if args.replica:
            for bucket in ("fusedrive-replicated", "fusedrive-replica"):
                client.create_bucket(Bucket=bucket)
            replicated = FusedriveReplicated(work / "fusedrive-replicated", "s3://fusedrive-replicated/volume", env)
            replicated.cli("init", replicated.url)
            replicated.cli("replica", "add", replicated.url, "s3://fusedrive-replica/volume")
            targets.append(replicated)
        if args.shared:
            client.create_bucket(Bucket="fusedrive-shared")
            shared = FusedriveShared(work / "fusedrive-shared", "s3://fusedrive-shared/volume", env)
            shared.cli("init", shared.url)
            shared.share(work)
            targets.append(shared)
        edit_targets.append(edited_drive)
        if args.anchors:
            targets += [JuiceFS(work / "juicefs", endpoint, "juicefs"),
                        Rclone(work / "rclone", endpoint, "rclone", client)]
            edit_targets += [JuiceFS(work / "juicefs-edits", proxy.endpoint, "juicefs-edits"),
                             Rclone(work / "rclone-edits", proxy.endpoint, "rclone-edits", client)]
        for t in targets + edit_targets:
            t.mount()
        server_pid = server.process.pid
        results = Results()
        runs = {"sequential write and reads": (targets, sequential, [args.size_mib]),
                "random reads": (targets, random_reads, [args.random_reads]),
                "fsync": (targets, fsync_edits, [args.edit_mib]),
                "first writes": (targets, first_writes, [args.first_write_mib]),
                "sqlite": (targets, sqlite_commits, [args.transactions]),
                "small files": (targets, small_files, [args.files]),
                "tree": (targets, tree, []),
                "real tree": (targets, real_tree, [args.real_tree]),
                "edits": (edit_targets, edits, [proxy, args.edit_mib]),
                "join": (targets, join, [])}
        for rep in range(1, args.repeat + 1):
            print(f"repetition {rep} of {args.repeat}", file=sys.stderr)
            for workload, (on, function, extra) in runs.items():
                if workload in only:
                    for t in on:
                        results.run(workload, t, server_pid, function, *extra)
                if workload == "sequential write and reads" and workload in only:
                    results.add("fusedrive", raw_get("s3://fusedrive/raw-get", endpoint, env, args.size_mib))
        if args.sync_changes and "sync" in only:
            print("sync latency between two fusedrive devices (hub) ...", file=sys.stderr)
            with running_hub() as hub_url:
                results.add("fusedrive", sync_latency(work, "s3://fusedrive/volume", env, args.sync_changes, hub_url))
        if "mirror" in only:  # fusedrive only: the anchors have no such mode
            print("mirror: first sync, change latency, idle cost ...", file=sys.stderr)
            client.create_bucket(Bucket="fusedrive-mirror")
            mirror_url = "s3://fusedrive-mirror/volume"
            drive.cli("init", mirror_url)
            results.add("fusedrive", mirror_first_sync(work, mirror_url, env, args.mirror_mib, args.files))
            if args.sync_changes:
                with running_hub() as hub_url:
                    results.add("fusedrive", sync_latency(work, mirror_url, env, args.sync_changes, hub_url,
                                                          FusedriveMirror))
            if args.rss_files:
                results.add("fusedrive", idle_mirror(work, mirror_url, env, args.rss_files))
        if args.replica and "sequential write and reads" in only:
            print("failover: a new device reading from the replica, the store down ...", file=sys.stderr)
            for bucket in ("fusedrive-failover", "fusedrive-failover-replica"):
                client.create_bucket(Bucket=bucket)
            results.add("fusedrive", failover_read(work, server.env, endpoint, args.size_mib))
        if args.rss_files and "rss" in only:  # fusedrive only: creating 100,000 files takes minutes per target
            results.run("RSS with many files", drive, server_pid, rss_with_files, args.rss_files)
    finally:
        for t in targets + edit_targets:
            try:
                t.umount()
            except (subprocess.CalledProcessError, RuntimeError) as exc:
                print(f"unmounting {t.name}: {exc}", file=sys.stderr)
                subprocess.run(["fusermount3", "-u", "-z", str(t.mountpoint)], check=False)
        proxy.down()
        if far:
            far.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    title = (f"fusedrive benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
             f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, SeaweedFS on loopback"
             f"{f', {args.rtt_ms:g} ms round trip added' if args.rtt_ms else ''}; "
             f"median of {args.repeat}; (×) = that target's figure / fusedrive's")
    table = results.table([t.name for t in targets], title)
    print("\n" + table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
