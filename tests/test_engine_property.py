"""The promise as a property, on three devices' real engines in this process: whatever
sequence of saves, deletes, renames, partitions, syncs, pulls, commits whose answer is
lost (they landed) and kills with a restart from the cache dir they make, once all of
them sync

- they hold the same tree;
- every closed save is still there: a live file's content, a kept version or in the
  trash — except a save the same device overwrote before it could upload it (a local
  overwrite, as on any disk).

hypothesis shrinks a failure to its shortest sequence and prints it; replay one with
`FUSEDRIVE_PROPERTY_SEED=<n> scripts/test.sh tests/test_engine_property.py`. More
examples: FUSEDRIVE_PROPERTY_EXAMPLES=2000.
"""

from __future__ import annotations

import pytest

import os
import uuid

import trio
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from engines import devices, new_volume, tree
from fusedrive.engine.checkpoints import replay_to_head
from fusedrive.engine.replica import Replica
from fusedrive.testing.simulation import digest, kept_contents
from fusedrive.tools.fsck import snapshot

pytestmark = pytest.mark.inprocess

DEVICES = ["laptop", "desktop", "phone"]
NAMES = ["a.txt", "b.txt"]
EXAMPLES = int(os.environ.get("FUSEDRIVE_PROPERTY_EXAMPLES", "100"))
STEP = st.one_of(
    st.tuples(st.just("save"), st.sampled_from(DEVICES), st.sampled_from(NAMES), st.just("")),
    st.tuples(st.just("delete"), st.sampled_from(DEVICES), st.sampled_from(NAMES), st.just("")),
    st.tuples(st.just("rename"), st.sampled_from(DEVICES), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.sampled_from(["cut", "heal", "sync", "pull", "lose-answer", "restart"]), st.sampled_from(DEVICES),
              st.just(""), st.just("")),
    st.just(("settle", "", "", "")),  # every device that reaches the store syncs, then pulls
)
KEYS = new_volume()


async def play(steps: list[tuple[str, str, str, str]]) -> None:
    async with devices(*DEVICES, keys_of=KEYS) as started:
        by_name = {device.name: device for device in started}
        cut: set[str] = set()
        required: dict[str, str] = {}  # digest of each save that must survive → what it was
        unuploaded: dict[tuple[str, str], str] = {}  # (device, fid) → the digest of its save not uploaded yet
        for path in NAMES:  # from a common start: every device has every name
            content = f"the first {path}".encode()
            await started[0].save("/" + path, content)
            required[digest(content)] = content.decode()
        steps = [("settle", "", "", ""), *steps]
        for kind, name, path, other in steps:
            if kind == "settle":
                for device in started:
                    if device.name not in cut:
                        await device.sync()
                        unuploaded = {key: block for key, block in unuploaded.items() if key[0] != device.name}
                for device in started:
                    if device.name not in cut:
                        await device.pull()
                continue
            device = by_name[name]
            node = device.lookup("/" + path) if path else None
            if kind == "save":
                content = f"{name} saved {path} #{uuid.uuid4().hex[:8]}".encode()
                await device.save("/" + path, content)
                block = digest(content)
                fid = device.lookup("/" + path).fid
                superseded = unuploaded.pop((name, fid), None)
                required.pop(superseded, None)  # overwritten here before it could upload
                required[block] = content.decode()
                if name in cut:
                    unuploaded[(name, fid)] = block
                else:
                    await device.sync()
            elif kind == "delete" and node is not None and not node.is_dir:
                device.delete("/" + path)
            elif kind == "rename" and node is not None and path != other:
                device.rename("/" + path, "/" + other)
            elif kind == "cut":
                device.cut_off()
                cut.add(name)
            elif kind in ("heal", "sync") and (kind == "heal" or name not in cut):
                device.cut_off(False)
                cut.discard(name)
                await device.sync()
                unuploaded = {key: block for key, block in unuploaded.items() if key[0] != name}
            elif kind == "pull" and name not in cut:
                await device.pull()
            elif kind == "lose-answer":  # its next commit lands, and it is told it failed
                device.store.answers_to_lose = 1
            elif kind == "restart":  # killed, and started again from its cache dir
                await device.restart()
        for device in started:
            device.cut_off(False)
            await device.sync()
        for device in started:
            await device.sync()
            await device.pull()
        trees = [await tree(device) for device in started]
        assert trees[1] == trees[0] and trees[2] == trees[0], "the devices do not agree"
        replayed = Replica(":memory:")  # what fsck compares every device's replica with
        replay_to_head(started[0].drive.volume, replayed)
        for device in started:
            assert snapshot(device.drive.replica) == snapshot(replayed), f"{device.name}'s replica is not the journal's"
        kept = kept_contents(started[0].drive.replica, started[0].drive.blocks)
        lost = {content for block, content in required.items() if block not in kept}
        assert not lost, f"closed saves lost: {sorted(lost)}"


test_seed = int(os.environ["FUSEDRIVE_PROPERTY_SEED"]) if "FUSEDRIVE_PROPERTY_SEED" in os.environ else None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=4, max_size=40))
def test_three_engines_agree_and_keep_every_closed_save(steps):
    trio.run(play, steps)


if test_seed is not None:
    test_three_engines_agree_and_keep_every_closed_save = seed(test_seed)(
        test_three_engines_agree_and_keep_every_closed_save)
