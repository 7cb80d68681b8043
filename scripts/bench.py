#!/usr/bin/env python3
"""Benchmark fusedrive beside a local directory, the same workloads in the same run.

Starts its own SeaweedFS on loopback (or uses a file:// volume with --store file),
mounts fusedrive, and prints one table: each workload on the local directory and
on fusedrive, with the ratio. Not a test: it asserts nothing, it measures.

    .venv/bin/python scripts/bench.py [--store s3|file] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fusedrive import control  # noqa: E402
from fusedrive.testing.seaweed import start_seaweed  # noqa: E402

MiB = 1024 * 1024
PASSPHRASE = "benchmark passphrase"


def drop_kernel_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


class Fusedrive:
    def __init__(self, root: Path, url: str, env: dict) -> None:
        self.root, self.url, self.env = root, url, dict(os.environ, **env, FUSEDRIVE_PASSPHRASE=PASSPHRASE)
        self.mountpoint, self.cache = root / "mnt", root / "cache"
        self.mountpoint.mkdir(parents=True)

    def cli(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "fusedrive.cli", *args], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def mount(self) -> None:
        self.cli("mount", self.url, str(self.mountpoint), "--cache-dir", str(self.cache), "--cache-size", "8G")

    def umount(self) -> None:
        self.cli("umount", str(self.mountpoint))

    def sync(self) -> None:
        control.request(str(self.mountpoint), "sync", timeout=3600)

    def uploaded(self) -> int:
        return control.request(str(self.mountpoint), "status")["bytes_uploaded"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def seq_write(directory: Path, data: list[bytes]) -> tuple[float, float]:
    """Seconds until close() returns, and until fsync() returns."""
    path = directory / "big.bin"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for piece in data:
            f.write(piece)
    closed = time.perf_counter() - start
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return closed, time.perf_counter() - start


def read_all(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(4 * MiB):
            pass


def small_files(directory: Path, count: int) -> tuple[float, float, float]:
    """Files per second for create (4 KiB each), stat, and delete."""
    d = directory / "small"
    d.mkdir()
    payload = os.urandom(4096)
    names = [d / f"f{i:05d}" for i in range(count)]

    def create():
        for name in names:
            with open(name, "wb") as f:
                f.write(payload)

    def stat():
        for name in names:
            os.stat(name)

    def delete():
        for name in names:
            os.unlink(name)

    return tuple(count / timed(step) for step in (create, stat, delete))


def sync_latency(work: Path, url: str, env: dict, changes: int, hub_url: str | None) -> tuple[float, float]:
    """p50 and p95 milliseconds from close() on device A until device B lists the file and
    reads its bytes. B learns of it from its journal tail (polling every 2 s, or the hub)."""
    tag = "hub" if hub_url else "poll"
    devices = []
    for name in ("a", "b"):
        d = Fusedrive(work / f"sync-{tag}-{name}", url, env)
        extra = ["--hub", hub_url] if hub_url else []
        d.cli("mount", url, str(d.mountpoint), "--cache-dir", str(d.cache), "--device-name", f"{tag}-{name}", *extra)
        devices.append(d)
    a, b = devices
    os.mkdir(a.mountpoint / f"latency-{tag}")
    a.sync()
    target = b.mountpoint / f"latency-{tag}"
    while not target.is_dir():
        time.sleep(0.05)
    delays = []
    try:
        for i in range(changes):
            payload = os.urandom(1024)
            with open(a.mountpoint / f"latency-{tag}" / f"f{i}", "wb") as f:
                f.write(payload)
            start = time.perf_counter()
            while f"f{i}" not in os.listdir(target):
                time.sleep(0.005)
            assert (target / f"f{i}").read_bytes() == payload
            delays.append((time.perf_counter() - start) * 1000)
    finally:
        for d in devices:
            d.umount()
    delays.sort()
    return delays[len(delays) // 2], delays[int(len(delays) * 0.95) - 1]


def join_seconds(work: Path, url: str, env: dict, entries: int) -> float:
    """Seconds for a new device to mount a volume with `entries` journal entries and a checkpoint."""
    import stat as stat_module
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from fusedrive.journal import Entry, Journal
    from fusedrive.store import open_store
    from fusedrive.volume import open_volume

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        journal = Journal(open_volume(open_store(url), PASSPHRASE))
        first = journal.seqs_after(0)[-1] + 1

        def append(seq: int) -> None:
            op = {"op": "mknod", "fid": str(uuid.uuid4()), "parent": "root", "name": f"history-{seq:06d}",
                  "mode": stat_module.S_IFREG | 0o644, "uid": 0, "gid": 0, "rdev": 0, "t": time.time_ns()}
            journal.append(Entry(seq=seq, device="history", ops=[op]))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(append, range(first, first + entries)))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    veteran = Fusedrive(work / "join-veteran", url, env)
    veteran.mount()
    (veteran.mountpoint / "after-history").write_bytes(b"x")
    veteran.sync()
    deadline = time.monotonic() + 300
    while control.request(str(veteran.mountpoint), "status")["checkpoint_seq"] < entries and time.monotonic() < deadline:
        time.sleep(0.2)
    veteran.umount()
    newcomer = Fusedrive(work / "join-newcomer", url, env)
    seconds = timed(newcomer.mount)
    newcomer.umount()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["s3", "file"], default="s3")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the sequential file")
    parser.add_argument("--files", type=int, default=2000, help="number of 4 KiB files")
    parser.add_argument("--edit-mib", type=int, default=64, help="size of the file edited in place")
    parser.add_argument("--sync-changes", type=int, default=100, help="changes timed between two devices (0: skip)")
    parser.add_argument("--join-entries", type=int, default=20000,
                        help="journal entries before a new device joins (0: skip)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fdbench-"))
    os.environ.update(HOME=str(work / "home"), XDG_RUNTIME_DIR=str(work / "run"))
    (work / "run").mkdir(mode=0o700)
    server = None
    try:
        env = {}
        if args.store == "s3":
            server = start_seaweed(work / "seaweed")
            server.client().create_bucket(Bucket="bench")
            env, url = server.env, "s3://bench/volume"
        else:
            url = (work / "volume").as_uri()
        drive = Fusedrive(work, url, env)
        drive.cli("init", url)
        drive.mount()
        local = work / "local"
        local.mkdir()
        print(f"generating {args.size_mib} MiB of random data ...", file=sys.stderr)
        data = [os.urandom(MiB) for _ in range(args.size_mib)]
        size_mb = args.size_mib * MiB / 1e6
        rows = []

        for name, target in (("local", local), ("fusedrive", drive.mountpoint)):
            print(f"{name}: sequential write ...", file=sys.stderr)
            closed, durable = seq_write(target, data)
            rows.append(("seq write to close (MB/s)", name, size_mb / closed))
            rows.append(("seq write to fsync (MB/s)", name, size_mb / durable))
        del data

        print("cold and warm reads ...", file=sys.stderr)
        drop_kernel_caches()
        rows.append(("cold read (MB/s)", "local", size_mb / timed(lambda: read_all(local / "big.bin"))))
        rows.append(("warm read (MB/s)", "local", size_mb / timed(lambda: read_all(local / "big.bin"))))
        drive.umount()
        shutil.rmtree(drive.cache)
        drop_kernel_caches()
        drive.mount()
        rows.append(("cold read (MB/s)", "fusedrive", size_mb / timed(lambda: read_all(drive.mountpoint / "big.bin"))))
        rows.append(("warm read (MB/s)", "fusedrive", size_mb / timed(lambda: read_all(drive.mountpoint / "big.bin"))))

        for name, target in (("local", local), ("fusedrive", drive.mountpoint)):
            print(f"{name}: {args.files} small files ...", file=sys.stderr)
            create, stat, delete = small_files(target, args.files)
            rows += [("4 KiB file create (files/s)", name, create), ("stat (files/s)", name, stat),
                     ("delete (files/s)", name, delete)]

        print("1-byte in-place edit ...", file=sys.stderr)
        edited = drive.mountpoint / "edit.bin"
        edited.write_bytes(os.urandom(args.edit_mib * MiB))
        drive.sync()
        before = drive.uploaded()
        with open(edited, "r+b") as f:
            f.seek(args.edit_mib * MiB // 2)
            f.write(b"!")
        drive.sync()
        rows.append((f"bytes uploaded, 1-byte edit of {args.edit_mib} MiB", "fusedrive", drive.uploaded() - before))
        drive.umount()

        if args.sync_changes:
            print(f"sync latency over {args.sync_changes} changes (polling, then hub) ...", file=sys.stderr)
            p50, p95 = sync_latency(work, url, env, args.sync_changes, None)
            rows += [("sync latency p50, polling 2 s (ms)", "fusedrive", p50),
                     ("sync latency p95, polling 2 s (ms)", "fusedrive", p95)]
            hub = subprocess.Popen([sys.executable, "-m", "fusedrive.cli", "hub", "--listen", "127.0.0.1:0"],
                                   stdout=subprocess.PIPE, text=True)
            try:
                port = hub.stdout.readline().strip().rsplit(":", 1)[1]
                p50, p95 = sync_latency(work, url, env, args.sync_changes, f"http://127.0.0.1:{port}")
            finally:
                hub.kill()
            rows += [("sync latency p50, hub (ms)", "fusedrive", p50), ("sync latency p95, hub (ms)", "fusedrive", p95)]
        if args.join_entries:
            print(f"new device joining after {args.join_entries} journal entries ...", file=sys.stderr)
            seconds = join_seconds(work, url, env, args.join_entries)
            rows.append((f"join after {args.join_entries} entries (ms)", "fusedrive", seconds * 1000))
    finally:
        for mountpoint in work.glob("**/mnt"):
            if os.path.ismount(mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nfusedrive benchmark — store: {args.store}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores\n")
    print(f"{'workload':<42} {'local dir':>12} {'fusedrive':>12} {'fusedrive/local':>16}")
    workloads = dict.fromkeys(w for w, _, _ in rows)
    values = {(w, t): v for w, t, v in rows}
    for workload in workloads:
        loc, fd = values.get((workload, "local")), values.get((workload, "fusedrive"))
        ratio = f"{fd / loc:.2f}" if loc and fd else "—"
        print(f"{workload:<42} {f'{loc:,.0f}' if loc else '—':>12} {f'{fd:,.0f}':>12} {ratio:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
