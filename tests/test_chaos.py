"""Three devices doing a seeded random mix of changes while the faults users have strike:
a device killed (SIGKILL) and mounted again from its cache dir (also while cut off, and
0–400 ms after a burst of closed saves), a device cut off from the store (connections
refused, or never answered), the whole store down for every device at once (its replica
answers reads meanwhile), a journal write that lands but whose answer is lost, the hub
killed and started again. At the end every device is back, all trees are identical, every
save whose close() returned 0 is live, a conflicted copy, in history or in the trash
(the whole trash is restored before looking), and the replica holds what the store holds.

A save a device overwrote before it was known uploaded (same file, by inode; the device
was cut off, or healed but still backing off, so no sync had returned since) is
coalesced, as in every sync client: only the last one must survive.

Replay: FUSEDRIVE_CHAOS_SEEDS=7 FUSEDRIVE_CHAOS_STEPS=200 scripts/test.sh -k chaos
A sweep: FUSEDRIVE_CHAOS_SEEDS=1-30 FUSEDRIVE_CHAOS_STEPS=200 scripts/test.sh -k chaos
"""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from fusedrive.errors import FusedriveError
from fusedrive.services import control
from fusedrive.testing.faultproxy import Fault, FaultProxy
from oracle import assert_nothing_lost
from test_mirror import converged
from test_sync import same_everywhere, wait_for
from treeutil import move_or_delete, save


def seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


SEEDS = seeds(os.environ.get("FUSEDRIVE_CHAOS_SEEDS", "11,22"))
STEPS = int(os.environ.get("FUSEDRIVE_CHAOS_STEPS", "50"))
FILES = ["a.txt", "b.txt", "c.bin", "dir/d.txt", "dir/e.txt"]
NAMES = ("laptop", "desktop", "server")
# An edit of a file not on a cut-off device fails (EIO) after this: at the default 60 s, a
# seed that keeps a device on a hanging store for many steps spends minutes in such edits.
IO_TIMEOUT = ("--io-timeout", "10")


class Device:
    """One mount (or mirror) of the volume with its own way to the store, which the test can cut."""

    def __init__(self, volume, name: str, proxy: FaultProxy, hub: str, kind: str = "mount") -> None:
        self.volume, self.name, self.proxy, self.hub, self.kind = volume, name, proxy, hub, kind
        self.cut = None  # None, "refused" or "hanging"
        self.mount = getattr(volume, kind)(name, poll_interval=0.5, hub=hub, endpoint=proxy.endpoint, args=self.args())
        self.alive = True

    def args(self) -> tuple[str, ...]:
        """A mirror started while cut off cannot finish its first sync: it returns at once."""
        return IO_TIMEOUT + (("--no-wait",) if self.kind == "mirror" else ())

    def p(self, path: str) -> str:
        return self.mount.p(path)

    def cut_off(self, how: str) -> None:
        self.cut = how
        if how == "refused":
            self.proxy.down()
        else:
            self.proxy.blackhole()

    def heal(self) -> None:
        self.cut = None
        self.proxy.up()

    def kill(self) -> None:
        entry = control.read_registry(str(self.mount.path))
        os.kill(entry["pid"], 9)
        assert control.wait_for_exit(entry["pid"], 30)
        if self.kind == "mount":
            subprocess.run(["fusermount3", "-u", "-z", str(self.mount.path)], capture_output=True, timeout=30)
        self.volume.mounts.remove(self.mount)
        self.alive = False

    def revive(self) -> None:
        """Mount again from the same cache dir: while still cut off (refused) it mounts
        offline; a store that hangs is healed first (a mount would wait for its timeouts)."""
        if self.cut == "hanging":
            self.heal()
        where = {"folder": self.mount.path} if self.kind == "mirror" else {}  # a mirror's folder is its data
        self.mount = getattr(self.volume, self.kind)(self.name, cache_dir=self.mount.cache_dir, poll_interval=0.5,
                                                     hub=self.hub, endpoint=self.proxy.endpoint, args=self.args(),
                                                     **where)
        self.alive = True

    def sync(self) -> None:
        """`fusedrive sync` as a user runs it: once more if it said the store failed (a lost
        answer: the commit landed, the sync was told it failed, the retry recognises it)."""
        try:
            self.mount.sync()
        except FusedriveError:
            self.mount.sync()

    def taken(self) -> None:
        """A mirror takes a closed file when its watcher says so; a person's saves are further
        apart than that, so each step's change is taken before the next (even cut off)."""
        if self.kind == "mirror":
            self.mount.control("settle")


@pytest.fixture
def proxies(seaweed):
    port = int(seaweed.endpoint.rsplit(":", 1)[1])
    made = [FaultProxy(port) for _ in NAMES]
    yield made
    for proxy in made:
        proxy.down()


@pytest.mark.parametrize("server", ["mount", "mirror"])
@pytest.mark.parametrize("seed", SEEDS)
def test_three_devices_under_kills_partitions_and_hub_failures_lose_no_closed_save(
        proxies, hub, s3_volume, seed, server, tmp_path):
    """`server`: the third device is a mount, or a mirror (a real folder, watched). The volume
    has a replica (a directory the devices reach directly): a device cut off, or all of them
    in an outage, read from it; at the end it holds everything the store holds."""
    hub_url = f"http://127.0.0.1:{hub.port}"
    replica = tmp_path / "replica"
    replica.mkdir()
    s3_volume.cli.run("replica", "add", s3_volume.url, replica.as_uri())
    devices = [Device(s3_volume, name, proxy, hub_url, kind) for name, proxy, kind
               in zip(NAMES, proxies, ("mount", "mount", server))]
    rng = random.Random(seed)
    closed: dict[str, bytes] = {}  # "device step path" → every save that must survive
    unsynced: dict[tuple[str, int], str] = {}  # (device, inode) → its save not known uploaded
    log: list[str] = []


    try:
        for step in range(STEPS):
            device = rng.choice(devices)
            op = rng.choices(["write", "append", "rename", "delete", "mkdir", "cut", "kill", "hub", "outage",
                              "burst-kill", "lose-answer"], [6, 2, 2, 2, 1, 2, 1, 1, 1, 1, 1])[0]
            path = rng.choice(FILES)
            log.append(f"{step} {device.name} {op} {path}")
            if op == "hub":
                if hub.process.poll() is None:
                    hub.stop()
                else:
                    hub.start()
                continue
            if not device.alive:
                device.revive()
                log[-1] += " (revived instead)"
                continue
            if op == "cut":
                if device.cut:
                    device.heal()
                else:
                    device.cut_off(rng.choice(["refused", "hanging"]))
                log[-1] += f" ({device.cut or 'healed'})"
                continue
            if op == "kill":
                device.kill()
                continue
            if op == "outage":  # the store itself: every device loses it at once
                for each in devices:
                    each.cut_off("refused")
                continue
            if op == "lose-answer":  # its next journal write lands, and it is told it failed
                device.proxy.inject(Fault(method="PUT", path="journal", lose_answer=True, times=1))
                continue
            if op == "burst-kill":  # saves closed one after another, then killed before (or while) they upload
                for i, burst_path in enumerate(rng.sample(FILES, 3)):
                    content, ino = save(device.p(burst_path), f"{device.name} burst {step}.{i}\n".encode(), False)
                    closed[f"{log[-1]} {burst_path}"] = content
                    closed.pop(unsynced.get((device.name, ino), ""), None)  # overwritten here before it uploaded
                    unsynced[(device.name, ino)] = f"{log[-1]} {burst_path}"
                time.sleep(rng.uniform(0, 0.4))
                device.kill()
                continue
            full = device.p(path)
            try:
                if op in ("write", "append"):
                    data = f"{device.name} step {step}\n".encode() + rng.randbytes(rng.choice([10, 3000, 200_000]))
                    content, ino = save(full, data, append=op == "append")
                    key = (device.name, ino)
                    closed[log[-1]] = content
                    # A save overwritten before it was known uploaded (cut off, or healed and
                    # still backing off) may be coalesced into this one.
                    closed.pop(unsynced.get(key, ""), None)
                    unsynced[key] = log[-1]
                elif op in ("rename", "delete"):
                    target = rng.choice(FILES) if op == "rename" else ""
                    log[-1] += f" -> {target}" if target else ""
                    move_or_delete(op, full, device.p(target), lambda ino: unsynced.pop((device.name, ino), None))
                elif op == "mkdir":
                    os.makedirs(device.p(f"dir/sub{step}"))
            except OSError:
                continue  # not there on this device (yet): fine, as for any user
            device.taken()
            if not device.cut:
                device.sync()
                for key in [k for k in unsynced if k[0] == device.name]:
                    del unsynced[key]
        if hub.process.poll() is not None:
            hub.start()
        for device in devices:
            if not device.alive:
                device.revive()
            device.heal()
        for device in devices:
            wait_for(lambda: device.mount.control("status")["store_offline_since"] is None, timeout=60,
                     what=f"{device.name} to see the store again")
            device.sync()
        for device in devices:
            device.sync()
        if server == "mirror":  # a real folder's folders have their own mtimes, and it keeps no xattrs
            converged(*(d.mount for d in devices))
        else:
            same_everywhere(*(d.mount for d in devices))
        assert_nothing_lost(devices[0].mount, closed)
        for device in devices:
            wait_for(lambda: device.mount.control("status")["replica_objects_behind"] == 0, timeout=60,
                     what=f"{device.name}'s writes to reach the replica")
        compared = s3_volume.cli.run("fsck", s3_volume.url, "--replica", check=False)
        assert compared.returncode == 0, f"the replica is not a copy of the store:\n{compared.stdout}"
        print(f"seed {seed} ({server}), {STEPS} steps: 0 lost, 0 divergent, 0 stuck; {len(closed)} closed saves checked")
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {exc}\nsteps:\n" + "\n".join(log)) from None
