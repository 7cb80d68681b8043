#!/usr/bin/env python3
"""CPU per MiB of the upload path's parts, against a local SeaweedFS: what the S3 server
spends taking a PUT and serving a GET, what the client spends sending them (1 MiB and
4 MiB objects, and per request for 4 KiB ones) through boto3 and through obstore, which
`S3Store.get`/`put` use, and what fusedrive's whole upload of a staged file costs with
and without the copy into the block cache. Not a test: it measures where the durable
write's CPU goes (docs/benchmarks.md, "the two cores' CPU budget").

    .venv/bin/python scripts/store_costs.py [--mib 512]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import MiB, cpu_seconds  # noqa: E402

from fusedrive.engine.blocks import BlockStore  # noqa: E402
from fusedrive.engine.cache import BlockCache  # noqa: E402
from fusedrive.store.s3 import S3Store  # noqa: E402
from fusedrive.testing.seaweed import start_seaweed  # noqa: E402
from fusedrive.engine.uploader import build_manifest  # noqa: E402
from fusedrive.store.volume import create_volume  # noqa: E402

THREADS = 8
SMALL_PUTS = 2000  # two threads, as a small-file burst's uploads run here


class NoDiskCache(BlockCache):
    """The block cache minus its disk: what the upload costs without the cache copy."""

    def put(self, block_id: str, data: bytes) -> None:
        pass


def measure(label: str, units: float, server_pid: int, work, unit: str = "MiB", unit_bytes: int = MiB) -> None:
    client0, server0, start = time.process_time(), cpu_seconds(server_pid), time.monotonic()
    work()
    seconds = time.monotonic() - start
    client, server = time.process_time() - client0, cpu_seconds(server_pid) - server0
    print(f"{label:<48} {units * unit_bytes / seconds / 1e6:7.1f} MB/s {units / seconds:7.0f} {unit}/s   "
          f"client {1000 * client / units:5.2f} ms/{unit}   server {1000 * server / units:5.2f} ms/{unit}", flush=True)


def boto3_put(store: S3Store, key: str, body: bytes) -> None:
    store.client.put_object(Bucket=store.bucket, Key=store.prefix + key, Body=body)


def boto3_get(store: S3Store, key: str) -> bytes:
    return store.client.get_object(Bucket=store.bucket, Key=store.prefix + key)["Body"].read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=512, help="MiB moved by each measurement")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fdcosts-"))
    server = start_seaweed(work / "seaweed")
    try:
        os.environ.update(server.env)
        server.client().create_bucket(Bucket="costs")
        store = S3Store("s3://costs/volume", "costs", "volume", server.endpoint)
        pid = server.process.pid
        with ThreadPoolExecutor(THREADS) as pool, ThreadPoolExecutor(2) as pair:
            for client, put, get in (("boto3", boto3_put, boto3_get), ("obstore", S3Store.put, S3Store.get)):
                for size in (1, 4):
                    bodies = [os.urandom(size * MiB) for _ in range(4)]
                    keys = [f"{client}/{size}/{i}" for i in range(args.mib // size)]
                    measure(f"{client} PUT, {size} MiB objects, {THREADS} threads", args.mib, pid,
                            lambda: list(pool.map(lambda i: put(store, keys[i], bodies[i % 4]), range(len(keys)))))
                    measure(f"{client} GET, {size} MiB objects, {THREADS} threads", args.mib, pid,
                            lambda: list(pool.map(lambda key: get(store, key), keys)))
                small = [os.urandom(4096) for _ in range(SMALL_PUTS)]
                measure(f"{client} PUT, 4 KiB objects, 2 threads", SMALL_PUTS, pid,
                        lambda: list(pair.map(lambda i: put(store, f"{client}/small/{i}", small[i]), range(SMALL_PUTS))),
                        unit="PUT", unit_bytes=4096)
            volume = create_volume(store, "costs")
            staged = work / "staged"
            with open(staged, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(MiB))
            for label, cache_class in (("fusedrive upload, blocks cached", BlockCache),
                                       ("fusedrive upload, no cache copy", NoDiskCache)):
                cache = cache_class(Path(tempfile.mkdtemp(dir=work)), 64 << 30, volume.keys.id_of)
                blocks = BlockStore(volume, cache)  # knows no block yet: uploads them all
                fd = os.open(staged, os.O_RDONLY)
                try:
                    measure(label, args.mib, pid,
                            lambda: build_manifest(fd, args.mib * MiB, volume.chunking, blocks, pool))
                finally:
                    os.close(fd)
                    cache.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
