"""The block cache stays within its limit, and what it evicted is fetched again."""

from __future__ import annotations

import hashlib
import os
import shutil

MiB = 1024 * 1024


def _du(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _dirs, files in os.walk(path) for f in files)


def test_cache_respects_its_size_limit(volume):
    writer = volume.mount("writer")
    digests = {}
    for name in ("one", "two", "three"):
        data = os.urandom(20 * MiB)
        digests[name] = hashlib.sha256(data).hexdigest()
        with open(writer.p(name), "wb") as f:
            f.write(data)
    writer.umount()
    shutil.rmtree(writer.cache_dir)

    reader = volume.mount("reader", cache_size="16M")
    for _ in range(2):  # the second pass must fetch again what the first evicted
        for name, digest in digests.items():
            with open(reader.p(name), "rb") as f:
                # drop the kernel's page cache so the read really goes through fusedrive
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                assert hashlib.sha256(f.read()).hexdigest() == digest
            # limit + one block of slack (eviction happens after the insert) + SQLite index
            assert _du(reader.cache_dir / "blocks") < 16 * MiB + 4 * MiB + 1 * MiB
