"""What the user sees of a running drive: `status`, `events`, desktop notifications,
share links and Prometheus metrics."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
import zipfile
from io import BytesIO

from test_posix import read, write
from test_sync import POLL, conflicted, held, same_everywhere, wait_for


def status(mount, *extra):
    return mount.volume.cli.run("status", str(mount.path), *extra, check=False)


def status_json(mount) -> tuple[int, dict]:
    result = status(mount, "--json")
    assert result.returncode in (0, 1), result.stderr
    [entry] = json.loads(result.stdout)
    return result.returncode, entry


# --- status -----------------------------------------------------------------------------


def test_status_counts_the_queue_while_the_store_is_offline_then_drains(proxied_volume, store_proxy):
    laptop = proxied_volume.mount("laptop", poll_interval=POLL)
    write(laptop.p("before.txt"), b"uploaded before the outage")
    laptop.sync()
    result = status(laptop)
    assert result.returncode == 0
    assert result.stdout.startswith(f"{laptop.path}: All changes are in the cloud.")

    store_proxy.down()
    sizes = {"a.bin": 300_000, "b.bin": 1_000_000, "c.txt": 1}
    contents = {name: os.urandom(size) for name, size in sizes.items()}
    for name, data in contents.items():
        write(laptop.p(name), data)
    code, entry = wait_for(lambda: (lambda r: r if r[1]["store_offline_since"] else None)(status_json(laptop)),
                           timeout=60, what="status to report the store offline")
    assert code == 1
    assert entry["files_waiting"] == 3 and entry["bytes_waiting"] == sum(sizes.values())
    assert entry["verdict"].startswith("3 files (1.2 MiB) waiting to upload")
    assert "store unreachable since" in entry["verdict"]
    text = status(laptop)
    assert text.returncode == 1
    assert "store       OFFLINE since" in text.stdout
    assert read(laptop.p("before.txt")) == b"uploaded before the outage", "cached reads keep working"

    store_proxy.up()
    code, entry = wait_for(lambda: (lambda r: r if r[0] == 0 else None)(status_json(laptop)), timeout=90,
                           what="the queue to drain")
    assert entry["verdict"] == "All changes are in the cloud."
    assert entry["files_waiting"] == entry["ops_waiting"] == 0 and entry["store_offline_since"] is None
    fresh = proxied_volume.mount("fresh")
    for name, data in contents.items():
        assert read(fresh.p(name)) == data


def test_status_without_a_mount_is_an_error(volume):
    result = volume.cli.run("status", str(volume.root), check=False)
    assert result.returncode == 9
    assert "is not a fusedrive mount" in result.stderr


# --- events -----------------------------------------------------------------------------


def laptop_and_desktop_sharing(volume, name: str, data: bytes):
    """Two devices that both see `name` with `data`."""
    laptop = volume.mount("laptop", poll_interval=POLL)
    desktop = volume.mount("desktop", poll_interval=POLL)
    write(laptop.p(name), data)
    laptop.sync()
    same_everywhere(laptop, desktop)
    return laptop, desktop


def test_a_change_on_one_device_is_exactly_one_event_on_the_other(s3_volume, event_streams):
    laptop, desktop = laptop_and_desktop_sharing(s3_volume, "report.txt", b"draft")
    stream = event_streams(desktop)

    write(laptop.p("report.txt"), b"final version")
    laptop.sync()
    wait_for(lambda: stream.of_kind("remote-change"), what="the remote-change event")
    time.sleep(POLL * 4)  # nothing more may come
    assert [(e["path"], e["change"], e["device"]) for e in stream.of_kind("remote-change")] == \
        [("/report.txt", "changed", "laptop")]

    os.rename(laptop.p("report.txt"), laptop.p("report-final.txt"))
    laptop.sync()
    wait_for(lambda: len(stream.of_kind("remote-change")) == 2, what="the rename event")
    assert stream.of_kind("remote-change")[1]["path"] == "/report-final.txt"
    assert stream.of_kind("remote-change")[1]["change"] == "moved"


def test_a_conflict_is_an_event_naming_both_files_on_both_devices(s3_volume, event_streams):
    laptop, desktop = laptop_and_desktop_sharing(s3_volume, "notes.txt", b"original")
    laptop_events, desktop_events = event_streams(laptop), event_streams(desktop)
    with held(desktop):
        write(desktop.p("notes.txt"), b"desktop edit")
        write(laptop.p("notes.txt"), b"laptop edit")
        laptop.sync()
    desktop.sync()
    same_everywhere(laptop, desktop)
    [copy] = conflicted(laptop)
    for stream in (desktop_events, laptop_events):
        wait_for(lambda: stream.of_kind("conflict"), what="a conflict event")
        [event] = stream.of_kind("conflict")
        assert (event["path"], event["copy"], event["device"]) == ("/notes.txt", "/" + copy, "desktop")


def test_notify_raises_a_desktop_notification_for_a_conflict_only(s3_volume, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "notifications"
    fake = bin_dir / "notify-send"  # stands in for the freedesktop tool; records what it was asked to show
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {record}\n")
    fake.chmod(0o755)
    s3_volume.cli.env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    laptop = s3_volume.mount("laptop", poll_interval=POLL, args=("--notify",))
    desktop = s3_volume.mount("desktop", poll_interval=POLL)
    write(desktop.p("plan.md"), b"v1")
    desktop.sync()
    same_everywhere(laptop, desktop)
    assert not record.exists(), "ordinary remote changes raise no notification"
    with held(laptop):
        write(laptop.p("plan.md"), b"laptop")
        write(desktop.p("plan.md"), b"desktop")
        desktop.sync()
    laptop.sync()
    # the shell creates the file before it writes the line
    wait_for(lambda: record.exists() and record.read_text().endswith("\n"), what="a notification")
    [line] = record.read_text().splitlines()
    assert "conflict: /plan.md" in line and "conflicted copy from laptop" in line


# --- share links ------------------------------------------------------------------------


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_share_link_serves_exact_bytes_until_unshared(s3_volume):
    laptop = s3_volume.mount("laptop")
    data = os.urandom(3 * 1024 * 1024 + 17)
    write(laptop.p("photo.jpg"), data)
    result = s3_volume.cli.run("share", laptop.p("photo.jpg"), "--expires", "1h")
    url = result.stdout.strip()
    assert url.startswith("http") and "photo.jpg" in url
    assert fetch(url) == data

    listed = s3_volume.cli.run("shares", str(laptop.path), "--json")
    [share] = json.loads(listed.stdout)
    assert share["path"] == "/photo.jpg" and share["url"] == url and not share["expired"]

    s3_volume.cli.run("unshare", laptop.p("photo.jpg"))
    assert fetch_status(url) in (403, 404)
    assert json.loads(s3_volume.cli.run("shares", str(laptop.path), "--json").stdout) == []


def test_share_link_stops_at_its_expiry(s3_volume):
    laptop = s3_volume.mount("laptop")
    write(laptop.p("brief.txt"), b"short-lived")
    url = s3_volume.cli.run("share", laptop.p("brief.txt"), "--expires", "3s").stdout.strip()
    assert fetch(url) == b"short-lived"
    time.sleep(4)
    assert fetch_status(url) == 403
    [share] = json.loads(s3_volume.cli.run("shares", str(laptop.path), "--json").stdout)
    assert share["expired"]


def test_share_of_a_folder_is_one_zip_and_reveals_nothing_else(s3_volume):
    laptop = s3_volume.mount("laptop")
    os.makedirs(laptop.p("trip/day1"))
    files = {"trip/a.txt": b"alpha", "trip/day1/b.bin": os.urandom(200_000)}
    for path, data in files.items():
        write(laptop.p(path), data)
    write(laptop.p("private.txt"), b"not shared")
    url = s3_volume.cli.run("share", laptop.p("trip")).stdout.strip()
    with zipfile.ZipFile(BytesIO(fetch(url))) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == \
            {"a.txt": files["trip/a.txt"], "day1/b.bin": files["trip/day1/b.bin"]}
    # Only the shared copy is readable with the link: the signature covers that one key.
    stored = [key for key, _size in s3_volume.list_objects() if not key.startswith("shares/")]
    base = url.split("/shares/")[0]
    for key in stored[:5]:
        assert fetch_status(url.replace(url.split("?")[0], f"{base}/{key}")) == 403
        assert fetch_status(f"{base}/{key}") == 403
    for key in stored:
        assert b"not shared" not in s3_volume.read_object(key)


def test_share_longer_than_s3_allows_is_refused(s3_volume):
    laptop = s3_volume.mount("laptop")
    write(laptop.p("f.txt"), b"x")
    result = s3_volume.cli.run("share", laptop.p("f.txt"), "--expires", "8d", check=False)
    assert result.returncode == 64
    assert "at most 7 days" in result.stderr
    assert not list(s3_volume.list_objects("shares/"))


# --- metrics ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = fetch(f"http://127.0.0.1:{port}/metrics").decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_endpoint_counts_uploads(volume):
    port = free_port()
    laptop = volume.mount("laptop", args=("--metrics", f"127.0.0.1:{port}"))
    before = scrape(port)
    assert before["fusedrive_uploaded_bytes_total"] == 0 and before["fusedrive_files_waiting"] == 0
    write(laptop.p("data.bin"), os.urandom(2_000_000))
    laptop.sync()
    after = scrape(port)
    assert after["fusedrive_uploaded_bytes_total"] >= 2_000_000
    assert after["fusedrive_uploaded_blocks_total"] >= 1
    assert after["fusedrive_commits_total"] > before["fusedrive_commits_total"]
    assert after["fusedrive_commit_latency_seconds_count"] == after["fusedrive_commits_total"]


def test_small_fsynced_writes_count_in_the_bytes_uploaded(s3_volume):
    """Small writes travel inside journal entries (carried blocks): they are uploaded
    bytes too (status said "total up 70 B" after 200 fsynced 4 KiB writes)."""
    laptop = s3_volume.mount("laptop")
    written = 0
    fd = os.open(laptop.p("log.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(40):
            written += os.write(fd, os.urandom(4096))
            os.fsync(fd)
    finally:
        os.close(fd)
    laptop.sync()
    uploaded = laptop.control("status")["bytes_uploaded"]
    assert uploaded >= written, f"{uploaded} bytes counted for {written} written and fsynced"
