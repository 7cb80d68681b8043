"""Retention, gc and space accounting on a real S3 server, with devices mounted."""

from __future__ import annotations

import json
import os
import time

from test_posix import read, write
from test_sync import POLL, held, wait_for


def blocks(volume) -> set[str]:
    return {key for key, _size in volume.list_objects("blocks/")}


def gc(volume, *extra) -> dict:
    return json.loads(volume.cli.run("gc", volume.url, "--json", *extra).stdout)


def expire_everything_old(volume) -> None:
    volume.cli.run("config", volume.url, "--keep-all", "0", "--keep-daily", "0", "--trash-days", "0")


def test_gc_removes_exactly_the_blocks_nothing_kept_references(s3_volume):
    laptop = s3_volume.mount("laptop", poll_interval=POLL)
    shared = os.urandom(3_000_000)
    write(laptop.p("original.bin"), shared)
    write(laptop.p("copy.bin"), shared)  # the same blocks (dedup)
    laptop.sync()
    before_doomed = blocks(s3_volume)
    write(laptop.p("doomed.bin"), os.urandom(2_500_000))
    laptop.sync()
    doomed_blocks = blocks(s3_volume) - before_doomed
    v1 = os.urandom(1_500_000)
    write(laptop.p("draft.txt"), v1)
    laptop.sync()
    v1_blocks = blocks(s3_volume) - before_doomed - doomed_blocks
    v2 = os.urandom(1_200_000)
    write(laptop.p("draft.txt"), v2)
    laptop.sync()
    assert doomed_blocks and v1_blocks

    os.unlink(laptop.p("doomed.bin"))
    os.unlink(laptop.p("original.bin"))  # its blocks live on in copy.bin
    laptop.sync()
    all_before = blocks(s3_volume)
    assert gc(s3_volume, "--grace", "0")["blocks_deleted"] == 0, "the default policy keeps all of it for now"
    expire_everything_old(s3_volume)

    dry = gc(s3_volume, "--grace", "0", "--dry-run")
    assert blocks(s3_volume) == all_before
    assert dry["blocks_deleted"] == len(doomed_blocks | v1_blocks)

    report = gc(s3_volume, "--grace", "0")
    assert report["trash_purged"] == 2 and report["versions_pruned"] >= 1
    assert blocks(s3_volume) == all_before - doomed_blocks - v1_blocks
    assert report["blocks_deleted"] == len(doomed_blocks | v1_blocks)

    assert read(laptop.p("copy.bin")) == shared
    assert read(laptop.p("draft.txt")) == v2
    wait_for(lambda: [v["number"] for v in json.loads(s3_volume.cli.run(
        "history", laptop.p("draft.txt"), "--json").stdout)] == [2], what="the laptop to apply the prune")
    assert json.loads(s3_volume.cli.run("trash", "list", str(laptop.path), "--json").stdout) == []
    verify = s3_volume.cli.run("fsck", s3_volume.url, "--verify-blocks", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    fresh = s3_volume.mount("fresh")
    assert read(fresh.p("copy.bin")) == shared and read(fresh.p("draft.txt")) == v2


def test_gc_never_removes_blocks_of_a_commit_still_on_its_way(s3_volume):
    laptop = s3_volume.mount("laptop", poll_interval=POLL)
    desktop = s3_volume.mount("desktop", poll_interval=POLL)
    expire_everything_old(s3_volume)
    data = os.urandom(2_000_000)
    with held(desktop):
        before = blocks(s3_volume)
        write(desktop.p("late.bin"), data)
        wait_for(lambda: desktop.control("status")["files_waiting"] == 0, what="the desktop's upload")
        assert blocks(s3_volume) - before, "its blocks are in the store, its commit is not"
        report = gc(s3_volume)  # default grace: 24 h
        assert report["blocks_deleted"] == 0 and report["blocks_kept_young"] >= 1
    desktop.sync()
    wait_for(lambda: os.path.exists(laptop.p("late.bin")), what="the commit to reach the laptop")
    assert read(laptop.p("late.bin")) == data


def test_du_counts_logical_bytes_exactly_and_three_copies_dedup_three_times(volume):
    laptop = volume.mount("laptop")
    data = os.urandom(1 << 20)
    for name in ("a.bin", "b.bin", "c.bin"):
        write(laptop.p(name), data)
    write(laptop.p("small.txt"), b"x" * 1000)
    laptop.sync()
    usage = json.loads(volume.cli.run("du", volume.url, "--json").stdout)
    assert usage["logical_bytes"] == 3 * (1 << 20) + 1000
    assert 2.9 < usage["dedup_ratio"] <= 3.01
    assert usage["stored_bytes"] < 1.1 * (1 << 20) + 10_000
    assert usage["history_bytes"] == usage["trash_bytes"] == 0
    write(laptop.p("a.bin"), os.urandom(1 << 20))  # the old content still lives in b and c
    os.unlink(laptop.p("small.txt"))
    laptop.sync()
    usage = json.loads(volume.cli.run("du", volume.url, "--json").stdout)
    assert usage["trash_bytes"] == 1000
    assert usage["history_bytes"] == 0  # a.bin's old blocks are still live in b.bin and c.bin
    assert "dedup" in volume.cli.run("du", volume.url).stdout


def storage_class(seaweed, volume, key: str) -> str:
    from conftest import BUCKET

    prefix = volume.url.split(f"{BUCKET}/", 1)[1]
    return seaweed.client().head_object(Bucket=BUCKET, Key=f"{prefix}/{key}").get("StorageClass", "STANDARD")


def test_archive_moves_old_versions_cold_and_thaw_brings_them_back(s3_volume, seaweed):
    import errno

    import pytest

    from test_history import subprocess_bytes

    laptop = s3_volume.mount("laptop", poll_interval=POLL)
    old = os.urandom(1_000_000)
    write(laptop.p("thesis.txt"), old)
    laptop.sync()
    before = blocks(s3_volume)
    current = os.urandom(1_000_000)
    write(laptop.p("thesis.txt"), current)
    laptop.sync()
    old_blocks, live_blocks = before, blocks(s3_volume) - before

    time.sleep(1.5)
    archived = s3_volume.cli.run("archive", s3_volume.url, "--older-than", "1s").stdout
    assert f"Archived {len(old_blocks)} blocks" in archived
    assert {storage_class(seaweed, s3_volume, k) for k in old_blocks} == {"GLACIER"}
    assert {storage_class(seaweed, s3_volume, k) for k in live_blocks} == {"STANDARD"}
    cat = s3_volume.cli.run("cat", "thesis.txt", "--version", "1", "--volume", s3_volume.url, check=False)
    assert cat.returncode == 10
    assert "archived in the GLACIER storage class" in cat.stderr and "fusedrive thaw" in cat.stderr
    fresh = s3_volume.mount("fresh")  # nothing cached: the history tree answers EIO at once
    version_1 = [n for n in os.listdir(fresh.p(".fusedrive/history/thesis.txt")) if n.startswith("v1 ")][0]
    with pytest.raises(OSError) as caught:
        with open(fresh.p(".fusedrive/history/thesis.txt", version_1), "rb") as f:
            f.read()
    assert caught.value.errno == errno.EIO
    assert read(fresh.p("thesis.txt")) == current, "the current version is not archived"

    s3_volume.cli.run("thaw", s3_volume.url)
    assert {storage_class(seaweed, s3_volume, k) for k in old_blocks} == {"STANDARD"}
    assert subprocess_bytes(s3_volume, "cat", "thesis.txt", "--version", "1", "--volume", s3_volume.url) == old
    wait_for(lambda: read(fresh.p(".fusedrive/history/thesis.txt", version_1)) == old,
             what="the fresh device to apply the thaw")
