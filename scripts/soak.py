"""Soak: two devices doing random saves, in-place edits, renames and deletes on one volume
while the store fails now and then (stopped, or hanging), for --minutes; then both
devices must agree, fsck must be clean, and every version that was closed and then
synced, deleted or replaced (or was the last save of its file on its device) must be
live or kept in history (the trash keeps its versions). A save overwritten on the same
device before it uploaded is coalesced, as in every sync client: "the same file" is the
same inode on that device, not the same name, since another device may have renamed the
file meanwhile (the save follows the file). Not part of CI.

    .venv/bin/python scripts/soak.py --minutes 60 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fusedrive.services import control
from fusedrive.errors import FusedriveError
from fusedrive.engine.manifest import contents
from fusedrive.testing.faultproxy import FaultProxy
from fusedrive.testing.seaweed import start_seaweed

PASSPHRASE = "soak test passphrase"
NAMES = [f"doc{i}.txt" for i in range(12)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inode_at(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="fusedrive-soak-"))
    server = start_seaweed(root / "seaweed")
    server.client().create_bucket(Bucket="soak")
    proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))
    env = {**os.environ, **server.env, "AWS_ENDPOINT_URL": proxy.endpoint, "FUSEDRIVE_PASSPHRASE": PASSPHRASE,
           "XDG_RUNTIME_DIR": str(root / "run")}
    (root / "run").mkdir()
    os.environ.update(XDG_RUNTIME_DIR=str(root / "run"))
    url = "s3://soak/volume"

    def cli(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "fusedrive.cli", *argv], env=env, capture_output=True,
                                text=True, timeout=600)
        if check and result.returncode:
            raise SystemExit(f"fusedrive {' '.join(argv)} failed: {result.stderr}")
        return result

    cli("init", url)
    devices = []
    for name in ("laptop", "desktop"):
        path = root / f"mnt-{name}"
        path.mkdir()
        cli("mount", url, str(path), "--cache-dir", str(root / f"cache-{name}"), "--device-name", name,
            "--poll-interval", "0.5", "--io-timeout", "5")
        devices.append(path)
    closed: dict[str, str] = {}  # sha → where, for every version that must survive
    unsynced: dict[tuple[str, int], tuple[str, str]] = {}  # (device, inode) → its last save since a sync
    faults = errors = steps = 0
    log = open(root / "steps.log", "a", buffering=1)  # what each step did, to trace a file that goes wrong
    deadline = time.monotonic() + args.minutes * 60
    next_fault = time.monotonic() + rng.uniform(10, 30)
    try:
        while time.monotonic() < deadline:
            if time.monotonic() > next_fault:
                faults += 1
                (proxy.down if rng.random() < 0.5 else proxy.blackhole)()
                time.sleep(rng.uniform(3, 15))
                proxy.up()
                next_fault = time.monotonic() + rng.uniform(10, 30)
            device, name = rng.choice(devices), rng.choice(NAMES)
            steps += 1
            try:
                roll = rng.random()
                if roll < 0.8:
                    if roll < 0.6:  # a save: the whole file anew
                        how, data = "write", f"{device.name} {steps}\n".encode() + rng.randbytes(
                            rng.choice([100, 5000, 300_000]))
                        with open(device / name, "wb") as f:
                            f.write(data)
                            inode = os.fstat(f.fileno()).st_ino
                    else:  # an edit in place (or an append): only the bytes written upload
                        how = "edit"
                        with open(device / name, "r+b") as f:
                            f.seek(rng.randrange(os.fstat(f.fileno()).st_size + 1))
                            f.write(f"{device.name} {steps}".encode() + rng.randbytes(rng.choice([1, 100, 5000])))
                            f.seek(0)
                            data = f.read()
                            inode = os.fstat(f.fileno()).st_ino
                    unsynced[(device.name, inode)] = (sha(data), f"{device.name} step {steps} {name}")
                    log.write(f"{time.time():.3f} {device.name} {steps} {how} {name} {len(data)} {sha(data)[:12]}\n")
                elif rng.random() < 0.5:
                    target = rng.choice(NAMES)
                    source, over = inode_at(device / name), inode_at(device / target)
                    os.rename(device / name, device / target)
                    log.write(f"{time.time():.3f} {device.name} {steps} rename {name} {target}\n")
                    replaced = unsynced.pop((device.name, over), None) if over != source else None
                    if replaced:  # renamed over before it uploaded: the trash keeps it
                        closed[replaced[0]] = replaced[1]
                else:
                    inode = inode_at(device / name)
                    os.unlink(device / name)
                    log.write(f"{time.time():.3f} {device.name} {steps} unlink {name}\n")
                    deleted = unsynced.pop((device.name, inode), None)
                    if deleted:  # deleted before it uploaded: the trash keeps it
                        closed[deleted[0]] = deleted[1]
            except OSError:
                errors += 1
            if steps % 200 == 0:
                try:
                    control.request(str(device), "sync", timeout=30)
                    for key in [k for k in unsynced if k[0] == device.name]:
                        digest, where = unsynced.pop(key)
                        closed[digest] = where
                except FusedriveError:
                    pass  # the store is down: try again later
        proxy.up()
        unsettled = []
        for device in devices:
            for _attempt in range(10):  # an upload that failed during a fault is retried first
                try:
                    control.request(str(device), "sync", timeout=120)
                    break
                except FusedriveError:
                    time.sleep(2)
            else:
                unsettled.append(device.name)
        closed.update(unsynced.values())
        time.sleep(3)
        trees = [{p.name: sha(p.read_bytes()) for p in d.iterdir() if p.is_file()} for d in devices]
        live = set(trees[0].values())
        kept: set[str] = set()
        from fusedrive.engine.blocks import BlockStore
        from fusedrive.engine.cache import BlockCache
        from fusedrive.engine.checkpoints import replay_to_head
        from fusedrive.engine.replica import Replica
        from fusedrive.store import open_store
        from fusedrive.store.volume import open_volume

        os.environ.update(server.env)
        volume = open_volume(open_store(url, server.endpoint), PASSPHRASE)
        replica = Replica(":memory:")
        replay_to_head(volume, replica)
        blocks = BlockStore(volume, BlockCache(root / "verify-cache", 1 << 30, volume.keys.is_id_of))
        for (manifest,) in replica.db.execute("SELECT manifest FROM versions"):
            kept.add(sha(b"".join(contents(json.loads(manifest), blocks.fetch))))
        lost = {h: where for h, where in closed.items() if h not in live and h not in kept}
        fsck = cli("fsck", url, check=False)
        print(f"{steps} operations, {len(closed)} closed versions, {faults} store faults, {errors} refused "
              f"operations (names gone, store down)")
        print(f"devices agree: {trees[0] == trees[1]}; versions lost: {len(lost)}; fsck exit {fsck.returncode}; "
              f"devices that could not finish uploading in 20 minutes: {unsettled or 'none'}; steps: {log.name}")
        for where in list(lost.values())[:10]:
            print(f"  lost: {where}")
        return 0 if trees[0] == trees[1] and not lost and fsck.returncode == 0 and not unsettled else 1
    finally:
        proxy.up()
        for device in devices:
            cli("umount", str(device), "--timeout", "300", check=False)
        proxy.down()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
