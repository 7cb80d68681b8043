"""Three devices doing a seeded random mix of changes on shared files, with commits
held and released at random to interleave them. Afterwards all trees are identical,
and every version any device closed is live, a conflicted copy, or in the journal.
A held device goes on without waiting for its uploads (each block upload takes a
while, through the fault proxy), so its renames and deletes race its own saves; a save it overwrote before that save uploaded (the same file, by inode:
another device may have renamed it meanwhile) is coalesced, as in every sync client.

Each seed runs twice: three mounts, and two mounts with a mirror (a real folder, watched)
as the third device. Replay a failure with FUSEDRIVE_SYNC_SEEDS=<seed> pytest -k sync_random."""

from __future__ import annotations

import hashlib
import os
import random
import time

import pytest

from fusedrive.engine.manifest import contents
from fusedrive.testing.faultproxy import Fault
from test_mirror import converged
from test_sync import POLL, same_everywhere, wait_for
from treeutil import move_or_delete, save

SEEDS = [int(s) for s in os.environ.get("FUSEDRIVE_SYNC_SEEDS", "101,202,303").split(",")]
STEPS = int(os.environ.get("FUSEDRIVE_SYNC_STEPS", "60"))
FILES = ["a.txt", "b.txt", "c.bin", "dir/d.txt", "dir/e.txt"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def journal_versions(volume, story: list | None = None) -> set[str]:
    """The sha256 of every file content ever committed to the volume's journal
    (and, into `story`, one line per operation, for explaining a failure)."""
    from fusedrive.engine.blocks import BlockStore
    from fusedrive.engine.cache import BlockCache
    from fusedrive.engine.journal import Journal
    import tempfile
    from pathlib import Path

    with volume.opened() as vol, tempfile.TemporaryDirectory() as scratch:
        blocks = BlockStore(vol, BlockCache(Path(scratch), 1 << 30, vol.keys.is_id_of))
        found = set()
        for entry in Journal(vol).entries_after(0):
            blocks.carried_in(dict.fromkeys(entry.blocks, entry.seq))  # as a device applying it notes
            for op in entry.ops:
                digest = ""
                if op["op"] == "update":
                    digest = sha(b"".join(contents(op["manifest"], blocks.fetch)))
                    found.add(digest)
                if story is not None:
                    story.append(f"{entry.seq} {entry.device} {op['op']} {op.get('fid', '')[:6]} "
                                 f"{op.get('name', '')}{'→' + op['newname'] if 'newname' in op else ''} "
                                 f"base={op.get('base')} {digest[:8]}")
        blocks.cache.close()
        return found


def live_versions(root) -> set[str]:
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                found.add(sha(f.read()))
    return found


def describe_versions(root, hashes: set[str]) -> list[str]:
    """Which files hold these contents, and how each begins (every write starts with its step)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                data = f.read()
            if sha(data) in hashes:
                found.append(f"{os.path.relpath(os.path.join(dirpath, name), root)}: {len(data)} bytes, "
                             f"starts {data[:40]!r}")
    return found


@pytest.mark.parametrize("server", ["mount", "mirror"])
@pytest.mark.parametrize("seed", SEEDS)
def test_three_devices_random_changes_converge_and_lose_nothing(store_proxy, s3_volume, seed, server):
    """`server`: the third device is a mount, or a mirror (a real folder, synced by watching it)."""
    store_proxy.inject(Fault(method="PUT", path="/(blocks|packs)/", delay=0.3))
    devices = [s3_volume.mount(name, poll_interval=POLL, endpoint=store_proxy.endpoint)
               for name in ("laptop", "desktop")]
    devices.append(getattr(s3_volume, server)("server", poll_interval=POLL, endpoint=store_proxy.endpoint))
    rng = random.Random(seed)
    closed: dict[str, str] = {}  # sha256 → "device step path" of every version that must survive
    written: set[str] = set()  # sha256 of every version a device closed, coalesced or not
    paused = None
    log = []
    unsynced: dict[tuple[str, int], str] = {}  # (device, inode) → sha of its save not known uploaded


    def synced(device) -> None:
        for key in [k for k in unsynced if k[0] == device.device]:
            del unsynced[key]

    def resume(device) -> None:
        device.control("resume")
        wait_for(lambda: device.control("status")["files_waiting"] == 0, what=f"{device.device} uploads")
        synced(device)

    for step in range(STEPS):
        device = rng.choice(devices)
        op = rng.choices(["write", "append", "rename", "delete", "mkdir", "hold"], [6, 3, 2, 2, 1, 1])[0]
        path = rng.choice(FILES)
        full = device.p(path)
        log.append(f"{step} {device.device} {op} {path}")
        try:
            if op == "hold":
                if paused is not None:
                    resume(paused)
                    paused = None
                else:
                    paused = device
                    device.control("pause")
                continue
            if op in ("write", "append"):
                data = f"{device.device} step {step}\n".encode() + rng.randbytes(rng.choice([10, 3000, 200_000]))
                content, ino = save(full, data, append=op == "append")
                digest, key = sha(content), (device.device, ino)
                closed[digest] = log[-1]
                written.add(digest)
                if device is paused:
                    closed.pop(unsynced.get(key, ""), None)  # overwritten before it uploaded: coalesced
                    unsynced[key] = digest
            elif op in ("rename", "delete"):
                target = rng.choice(FILES) if op == "rename" else ""
                log[-1] += f" -> {target}" if target else ""
                move_or_delete(op, full, device.p(target), lambda ino: unsynced.pop((device.device, ino), None))
            elif op == "mkdir":
                os.makedirs(device.p("dir", f"sub{step}"))
        except OSError:
            continue  # the name was not there on this device (yet): fine, as for any user
        if server == "mirror" and device is devices[2]:
            # A mirror takes a closed file when its watcher says so; a person's saves are
            # further apart than that, so each step's change is taken before the next step
            # (what the folder held for a few milliseconds only is not a save).
            device.control("settle")
        if device is not paused:
            device.sync()
            synced(device)
    if paused is not None:
        resume(paused)
    for device in devices:
        device.sync()
    time.sleep(POLL * 3)
    try:
        if server == "mirror":  # a real folder's folders have their own mtimes, and it keeps no xattrs
            converged(*devices)
        else:
            same_everywhere(*devices)
        live = live_versions(devices[0].path)
        history = journal_versions(s3_volume)
        lost = {h: where for h, where in closed.items() if h not in live and h not in history}
        if lost:
            journal = []
            journal_versions(s3_volume, journal)
            detail = [f"{where} sha {h[:8]}" for h, where in lost.items()]
            raise AssertionError(f"versions lost: {detail}\nsteps:\n" + "\n".join(log) +
                                 "\njournal:\n" + "\n".join(journal))
        invented = live - written - {sha(b"")}
        assert not invented, f"files hold bytes nobody wrote: {describe_versions(devices[0].path, invented)}"
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {exc}\nlast steps: {log[-10:]}") from None
