"""The written, versioned format: docs/format.md names every op the code checks, entries
are checked before anything is applied, an older volume opens, a newer one is refused with
one sentence, and an entry this build cannot apply never takes the mount down."""

import json
import os
import re
from pathlib import Path

import pytest
import zstandard

from fusedrive.engine.ops import OPS, check_entry
from fusedrive.errors import IntegrityError, UnknownOperation
from fusedrive.store.volume import FORMAT_VERSION
from test_posix import read, write

FORMAT_DOC = Path(__file__).parent.parent / "docs" / "format.md"


@pytest.mark.inprocess
def test_format_doc_names_every_op_and_field_the_code_checks():
    doc = FORMAT_DOC.read_text()
    assert f"**{FORMAT_VERSION}**" in doc, "the doc states the current format version"
    rows = {}
    for line in doc.splitlines():
        match = re.match(r"\| `(\w+)`(?: / `(\w+)`)? \| (.*?) \|", line)
        if match:
            for kind in filter(None, match.groups()[:2]):
                rows[kind] = set(re.findall(r"`(\w+)`", match[3]))
    assert set(rows) >= set(OPS), f"ops missing from docs/format.md: {set(OPS) - set(rows)}"
    for kind, spec in OPS.items():
        fields = set(spec.required) | set(spec.optional)
        missing = fields - rows[kind] - {"t"}  # `t` is said once for every op
        assert not missing, f"{kind}: fields not in docs/format.md: {missing}"


@pytest.mark.inprocess
def test_an_entry_is_checked_whole_before_it_is_applied():
    good = {"op": "unlink", "parent": "root", "name": "a", "t": 1}
    assert check_entry(5, [good], FORMAT_VERSION) == [good]
    with pytest.raises(UnknownOperation, match=r"newer fusedrive \(format 9.*'teleport'.*Upgrade"):
        check_entry(5, [good, {"op": "teleport"}], 9)
    with pytest.raises(IntegrityError, match="entry 5 is malformed.*'unlink'.*'name'"):
        check_entry(5, [{"op": "unlink", "parent": "root", "t": 1}], FORMAT_VERSION)
    with pytest.raises(IntegrityError, match="'t'"):
        check_entry(5, [{"op": "link", "fid": "f", "parent": "root", "name": "a", "t": "soon"}], FORMAT_VERSION)
    with pytest.raises(IntegrityError, match="not a list"):
        check_entry(5, {"op": "unlink"}, FORMAT_VERSION)


def _rewrite_header(volume, **fields) -> None:
    header = json.loads(volume.read_object("volume"))
    header.update(fields)
    for key in [k for k, v in fields.items() if v is None]:
        del header[key]
    volume.write_object("volume", json.dumps(header).encode())


def test_a_volume_of_the_first_format_opens_and_its_old_entries_apply(volume):
    """Format 1: no reader version in the header, no format in the entries."""
    from fusedrive.engine.journal import entry_key

    laptop = volume.mount("laptop")
    write(laptop.p("kept.txt"), b"written before")
    laptop.sync()
    laptop.umount()
    _rewrite_header(volume, version=1, reader_version=None)
    with volume.opened() as opened:
        seqs = [int(key.split("/")[1]) for key, _ in volume.list_objects("journal/")]
        old_entry = {"commit_id": "c0ffee", "device": "old-laptop", "time": 1.0,
                     "ops": [{"op": "setattr", "fid": "root", "mode": 0o40755, "t": 1}]}
        blob = opened.seal(entry_key(max(seqs) + 1), zstandard.compress(json.dumps(old_entry).encode()))
        assert opened.store.put_if_absent(entry_key(max(seqs) + 1), blob)
    desktop = volume.mount("desktop")
    assert read(desktop.p("kept.txt")) == b"written before"
    write(desktop.p("new.txt"), b"written by this build")
    desktop.sync()
    assert volume.fsck().returncode == 0


@pytest.mark.parametrize("version, reader_version, opens", [(FORMAT_VERSION + 1, FORMAT_VERSION + 1, False),
                                                           (FORMAT_VERSION + 1, FORMAT_VERSION, True)])
def test_a_newer_format_is_refused_in_one_sentence_unless_it_stays_readable(volume, version, reader_version, opens):
    _rewrite_header(volume, version=version, reader_version=reader_version)
    mountpoint = volume.root / "mnt"
    result = volume.cli.run("mount", volume.url, str(mountpoint), "--cache-dir", str(volume.root / "cache"),
                            check=False)
    try:
        if opens:
            assert result.returncode == 0, result.stderr
            write(os.path.join(mountpoint, "a.txt"), b"fine")
            return
        assert result.returncode == 15, result.stdout + result.stderr
    finally:
        if os.path.ismount(mountpoint):  # opened (as it should, or not): never left mounted
            volume.cli.run("umount", str(mountpoint))
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "newer fusedrive" in message and "upgrade fusedrive" in message and f"format {version}" in message
    for command in (["du", volume.url], ["fsck", volume.url]):
        assert volume.cli.run(*command, check=False).returncode == 15


def mount_then_append(volume, device: str, ops: list[dict]):
    """A mounted device that saved a file, and then an entry of `ops` from `device` at the
    journal's head: (the mount, that entry's seq)."""
    from fusedrive.engine.journal import Entry, Journal

    laptop = volume.mount("laptop", poll_interval=0.5)
    write(laptop.p("before.txt"), b"before")
    laptop.sync()
    with volume.opened() as opened:
        journal = Journal(opened)
        seq = journal.seqs_after(0)[-1] + 1
        assert journal.append(Entry(seq=seq, device=device, ops=ops))
    return laptop, seq


def test_a_journal_entry_this_build_cannot_apply_stops_commits_never_the_mount(s3_volume):
    from test_sync import wait_for

    laptop, _ = mount_then_append(s3_volume, "from-the-future", [{"op": "teleport", "fid": "x"}])
    status = wait_for(lambda: (s := laptop.control("status"))["needs_upgrade"] and s, timeout=30,
                      what="the cause in status")
    assert "newer fusedrive" in status["needs_upgrade"] and "Upgrade fusedrive" in status["needs_upgrade"]
    assert "teleport" in status["errors"][-1]
    write(laptop.p("after.txt"), b"written while commits are stopped")
    assert read(laptop.p("after.txt")) == b"written while commits are stopped"
    assert read(laptop.p("before.txt")) == b"before"
    assert os.path.ismount(laptop.path)
    wait_for(lambda: laptop.control("status")["ops_waiting"], timeout=30, what="the new file queued")
    shown = s3_volume.cli.run("status", str(laptop.path), check=False)
    assert shown.returncode == 15, shown.stdout + shown.stderr
    assert "newer fusedrive" in shown.stdout.splitlines()[0] and "Traceback" not in shown.stdout + shown.stderr
    status = laptop.control("status")
    assert len([e for e in status["errors"] if "teleport" in e]) <= 2, "said once per place, not once per retry"
    result = s3_volume.cli.run("umount", str(laptop.path), "--no-wait", check=False)
    assert result.returncode == 1 and not os.path.ismount(laptop.path)
    s3_volume.mounts.remove(laptop)


def test_a_device_that_cannot_apply_an_entry_says_it_is_stuck_never_that_all_is_fine(s3_volume):
    """An entry this build reads but cannot apply for a reason that is neither the store nor
    a newer format (here: a file created in a folder no entry ever made — what a bug in the
    conflict rules left behind in issue 40's stalled device): status exits 17 with one
    sentence and no raw library text, the mount goes on serving, and umount says so at
    once instead of waiting for a store that is fine."""
    import time
    import uuid

    from test_sync import wait_for

    laptop, seq = mount_then_append(s3_volume, "desktop", [
        {"op": "mknod", "fid": str(uuid.uuid4()), "parent": str(uuid.uuid4()), "name": "orphan.txt",
         "mode": 0o100644, "uid": 0, "gid": 0, "rdev": 0, "t": time.time_ns()}])
    wait_for(lambda: laptop.control("status")["stuck"], timeout=30, what="the device to say it is stuck")
    write(laptop.p("after.txt"), b"written while stuck")
    assert read(laptop.p("after.txt")) == b"written while stuck" and read(laptop.p("before.txt")) == b"before"
    wait_for(lambda: laptop.control("status")["ops_waiting"], timeout=30, what="the new file queued")
    shown = s3_volume.cli.run("status", str(laptop.path), check=False)
    verdict = shown.stdout.splitlines()[0]
    assert shown.returncode == 17, shown.stdout + shown.stderr
    assert "stuck" in verdict and f"after entry {seq - 1}" in verdict and "fusedrive fsck" in verdict
    for raw in ("KeyError", "unknown file id", "Traceback", "sqlite"):
        assert raw not in shown.stdout + shown.stderr, f"{raw!r} is for the log, not the user"
    assert "unknown file id" in (laptop.cache_dir / "mount.log").read_text(), "the log has the details"
    started = time.monotonic()
    result = s3_volume.cli.run("umount", str(laptop.path), "--timeout", "60", check=False)
    assert result.returncode == 1 and "cannot commit" in result.stderr and not os.path.ismount(laptop.path)
    assert time.monotonic() - started < 30, "waiting cannot help a stuck device: umount does not wait for it"
    s3_volume.mounts.remove(laptop)
