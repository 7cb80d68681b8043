"""Crash safety: the mount killed with SIGKILL at random moments loses nothing closed.

Each iteration runs a seeded workload of whole-file saves (some fsync'd) against the
mount, kills the mount process at a random moment, unmounts the dead mount point and
mounts again from the same cache dir. Every file whose save had returned must hold
exactly that save; the one save in flight at the kill may hold its old or its new
content (or be empty: open(O_TRUNC) is where a save starts). fsck must be clean at
the end, and a fresh device must see the same files.

Replay: FUSEDRIVE_CRASH_SEED=7 FUSEDRIVE_CRASH_ITERATIONS=50 scripts/test.sh -k crash
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

from fusedrive import control
from test_posix import read

SEED = int(os.environ.get("FUSEDRIVE_CRASH_SEED", "20261124"))
ITERATIONS = int(os.environ.get("FUSEDRIVE_CRASH_ITERATIONS", "20"))
NAMES = [f"file{i}.bin" for i in range(8)]
MAX_SIZE = 100_000  # one FUSE write: a save is never half-applied by the kernel


class Workload(threading.Thread):
    """Saves files until the mount dies under it; remembers what each save returned."""

    def __init__(self, root: str, rng: random.Random, closed: dict[str, bytes]) -> None:
        super().__init__(daemon=True)
        self.root, self.rng, self.closed = root, rng, closed
        self.in_flight: tuple[str, bytes] | None = None
        self.saves = 0

    def run(self) -> None:
        while True:
            name = self.rng.choice(NAMES)
            data = f"{name} save {self.saves}\n".encode() + self.rng.randbytes(self.rng.randrange(MAX_SIZE - 100))
            self.in_flight = (name, data)
            try:
                fd = os.open(os.path.join(self.root, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, data)
                    if self.rng.random() < 0.3:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                return  # the mount is gone
            self.closed[name] = data
            self.in_flight = None
            self.saves += 1


def kill_mount(mount) -> None:
    entry = control.read_registry(str(mount.path))
    os.kill(entry["pid"], signal.SIGKILL)
    assert control.wait_for_exit(entry["pid"], 30)
    subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], capture_output=True, timeout=30)


def test_sigkill_at_random_moments_loses_nothing_that_was_closed(s3_volume):
    rng = random.Random(SEED)
    closed: dict[str, bytes] = {}
    mount = s3_volume.mount("crashy")
    for iteration in range(ITERATIONS):
        workload = Workload(str(mount.path), random.Random(rng.random()), closed)
        workload.start()
        time.sleep(rng.uniform(0.05, 1.5))
        kill_mount(mount)
        workload.join(timeout=60)
        assert not workload.is_alive(), "a write to a killed mount must fail, not hang"
        mount.start()
        in_flight = workload.in_flight
        for name in NAMES:
            path = mount.p(name)
            if in_flight and name == in_flight[0]:
                got = read(path) if os.path.exists(path) else None
                # new, truncated, or the last save (None: it never existed before)
                assert got in {in_flight[1], b"", closed.get(name)}, \
                    f"iteration {iteration} (seed {SEED}): the file saved at the kill holds bytes nobody saved"
                if got is not None:
                    closed[name] = got  # whichever it is, it is what the drive now holds
            elif name in closed:
                assert read(path) == closed[name], f"iteration {iteration} (seed {SEED}): {name} lost a closed save"
            else:
                assert not os.path.exists(path)
    mount.sync()
    fresh = s3_volume.mount("fresh")
    for name, data in closed.items():
        assert read(fresh.p(name)) == data


def test_a_full_cache_disk_is_enospc_for_the_writer_and_closed_files_still_upload(s3_volume, tmp_path):
    import errno
    import subprocess

    import pytest

    from test_posix import write

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the cache disk")
    small = tmp_path / "small-disk"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(small)], check=True)
    try:
        laptop = s3_volume.mount("laptop", cache_dir=small / "cache")
        kept = os.urandom(3_000_000)
        write(laptop.p("kept.bin"), kept)
        with pytest.raises(OSError) as caught:
            write(laptop.p("huge.bin"), os.urandom(60_000_000))
        assert caught.value.errno == errno.ENOSPC
        os.unlink(laptop.p("huge.bin"))  # the user makes room
        laptop.sync()
        fresh = s3_volume.mount("fresh")
        assert read(fresh.p("kept.bin")) == kept
        assert not os.path.exists(fresh.p("huge.bin"))
        laptop.umount()
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
