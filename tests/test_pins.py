"""Files available offline: a pinned folder is on the device now, stays current as other
devices change it, survives a remount without the store, and is never evicted."""

from __future__ import annotations

import errno
import os
import time

import pytest

from test_posix import read, write
from test_sync import wait_for


def local(mount, path: str) -> bytes:
    return os.getxattr(mount.p(path), "user.fusedrive.local")


def pins_state(mount) -> dict:
    return mount.control("pins")


def test_a_pinned_folder_stays_current_and_reads_exactly_without_the_store(proxied_volume, store_proxy):
    laptop = proxied_volume.mount("laptop")
    files = {"docs/small.txt": b"a few words\n", "docs/photo.jpg": os.urandom(3_000_000),
             "docs/deep/notes.md": os.urandom(200_000), "other/big.bin": os.urandom(2_000_000),
             **{f"other/churn{i}.bin": os.urandom(3_000_000) for i in range(4)}}
    for path, data in files.items():
        os.makedirs(os.path.dirname(laptop.p(path)), exist_ok=True)
        write(laptop.p(path), data)
    laptop.sync()
    phone = proxied_volume.mount("phone", cache_size="8M", args=("--io-timeout", "5"))
    wait_for(lambda: os.path.exists(phone.p("docs/deep/notes.md")) and os.path.exists(phone.p("other/big.bin")),
             timeout=30, what="the phone to see the files")
    assert local(phone, "docs/photo.jpg") == b"0"
    pinned = proxied_volume.cli.run("pin", phone.p("docs"))
    assert "3 files" in pinned.stdout and "all on this device" in pinned.stdout
    assert all(local(phone, path) == b"1" for path in files if path.startswith("docs/"))
    assert local(phone, "other/big.bin") == b"0"

    added = os.urandom(1_000_000)
    write(laptop.p("docs/added later.bin"), added)
    laptop.sync()
    wait_for(lambda: os.path.exists(phone.p("docs/added later.bin")) and local(phone, "docs/added later.bin") == b"1",
             timeout=30, what="a file added to the pinned folder elsewhere to arrive without being opened")
    files["docs/added later.bin"] = added
    state = pins_state(phone)
    assert state["pinned_files"] == 4 and state["pinned_files_waiting"] == 0
    shown = proxied_volume.cli.run("status", str(phone.path), check=False)
    assert "pinned: 4 files" in shown.stdout and "all on this device" in shown.stdout

    for i in range(4):  # 12 MB through an 8 MB cache: the LRU evicts, never what is pinned
        assert read(phone.p(f"other/churn{i}.bin")) == files[f"other/churn{i}.bin"]
    phone.umount()
    store_proxy.down()
    phone.start(cache_size="8M", args=("--io-timeout", "5"))  # a laptop on a train: it mounts from its cache dir
    proxied_volume.mounts.append(phone)
    for path, data in files.items():
        if path.startswith("docs/"):
            assert read(phone.p(path)) == data, path
    started = time.monotonic()
    with pytest.raises(OSError) as failed:
        read(phone.p("other/big.bin"))  # neither pinned nor cached
    assert failed.value.errno == errno.EIO and time.monotonic() - started < 30
    waiting = proxied_volume.cli.run("pin", phone.p("other/big.bin"), check=False)  # the store is away
    assert waiting.returncode == 1 and "still downloading" in waiting.stdout, waiting.stdout + waiting.stderr
    store_proxy.up()
    phone.sync()
    wait_for(lambda: local(phone, "other/big.bin") == b"1", timeout=60, what="the pin to finish once the store is back")


def test_pinning_more_than_the_cache_holds_is_refused(volume):
    laptop = volume.mount("laptop", cache_size="16M")
    write(laptop.p("video.mp4"), os.urandom(20_000_000))
    laptop.sync()
    refused = volume.cli.run("pin", laptop.p("video.mp4"), check=False)
    assert refused.returncode == 64, refused.stdout + refused.stderr
    assert "more than the cache holds" in refused.stderr and "nothing was pinned" in refused.stderr
    assert pins_state(laptop)["pins"] == []


def test_unpin_lets_the_cache_evict(volume):
    laptop = volume.mount("laptop")
    data = os.urandom(4_000_000)
    write(laptop.p("album.zip"), data)
    laptop.sync()
    volume.cli.run("pin", laptop.p("album.zip"))
    assert [p["path"] for p in pins_state(laptop)["pins"]] == ["/album.zip"]
    with_pin = laptop.control("status")["cache_bytes"]
    listed = volume.cli.run("pins", str(laptop.path))
    assert "/album.zip" in listed.stdout and "all on this device" in listed.stdout
    volume.cli.run("unpin", laptop.p("album.zip"))
    wait_for(lambda: laptop.control("status")["cache_bytes"] <= with_pin - len(data) // 2, timeout=30,
             what="the pinned copy to be let go")
    assert pins_state(laptop)["pins"] == [] and read(laptop.p("album.zip")) == data
