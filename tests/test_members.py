"""Sharing a volume with people (issue 39, first part): identities, and the volume's key
wrapped for each member (a key slot, age's X25519 recipient construction), so that a person
mounts it with their identity instead of the passphrase."""

from __future__ import annotations

import json
import os

import pytest

from fusedrive.errors import UsageError, WrongPassphrase
from fusedrive.store.members import (NotAMember, PublicIdentity, add_member, create_identity, load_identity,
                                     load_public, members, read_slot, slot_key, unwrap, wrap_for)
from fusedrive.store.memory import MemoryStore
from fusedrive.store.volume import create_volume, open_volume
from fusedrive.engine.journal import start_journal
from test_posix import read, write
from test_sync import wait_for


@pytest.mark.inprocess
def test_an_identity_is_made_once_kept_sealed_and_its_public_half_catches_typos(tmp_path):
    bob = create_identity(tmp_path / "bob", "bob", None)
    assert load_public(tmp_path / "bob") == ("bob", bob.public)
    assert load_identity(tmp_path / "bob", None).public == bob.public
    record = json.loads((tmp_path / "bob" / "identity.json").read_text())
    assert (tmp_path / "bob" / "identity.json").stat().st_mode & 0o077 == 0
    assert "secret" in record and bob.public.text not in record["secret"]
    with pytest.raises(UsageError, match="already an identity"):
        create_identity(tmp_path / "bob", "bob", None)
    carol = create_identity(tmp_path / "carol", "carol", "carol's passphrase")
    assert load_identity(tmp_path / "carol", "carol's passphrase").public == carol.public
    with pytest.raises(UsageError, match="Wrong passphrase"):
        load_identity(tmp_path / "carol", "guess")
    text = bob.public.text
    assert PublicIdentity.parse(text) == bob.public
    typo = text[:20] + ("a" if text[20] != "a" else "b") + text[21:]
    with pytest.raises(UsageError, match="not a whole"):
        PublicIdentity.parse(typo)
    with pytest.raises(UsageError, match="not a fusedrive identity"):
        PublicIdentity.parse("age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj")


@pytest.mark.inprocess
def test_a_key_slot_opens_the_volume_for_its_member_only(tmp_path):
    store = MemoryStore()
    volume = create_volume(store, "the passphrase")
    start_journal(volume)
    bob = create_identity(tmp_path / "bob", "bob", None)
    carol = create_identity(tmp_path / "carol", "carol", None)
    assert add_member(store, bob.public, volume.master, volume.volume_id)
    assert not add_member(store, bob.public, volume.master, volume.volume_id)  # put-if-absent
    assert members(store) == [bob.public.text]

    def slot_of(identity):
        return lambda volume_id: ((unwrap(slot, identity, volume_id), False)
                                  if (slot := read_slot(store, identity.public)) is not None else None)

    as_bob = open_volume(store, lambda: pytest.fail("a member is not asked the passphrase"), member=slot_of(bob))
    assert as_bob.opened_by == "identity" and as_bob.keys == volume.keys
    assert slot_of(carol)(volume.volume_id) is None  # no slot: the passphrase is asked
    stolen = read_slot(store, bob.public)
    with pytest.raises(NotAMember):
        unwrap(stolen, carol, volume.volume_id)  # another person cannot open it
    with pytest.raises(NotAMember):
        unwrap(stolen, bob, "another-volume-id")  # nor can it serve another volume
    # anyone who can write the bucket can write a slot: one that wraps another key is refused
    store.delete(slot_key(bob.public))
    store.put(slot_key(bob.public), json.dumps(wrap_for(bob.public, os.urandom(32), volume.volume_id)).encode())
    with pytest.raises(WrongPassphrase, match="holds another key"):
        open_volume(store, "unused", member=slot_of(bob))


def person(tmp_path, name: str) -> dict:
    """A person's own config dir (their identity lives there), as environment for the CLI."""
    return {"XDG_CONFIG_HOME": str(tmp_path / f"{name}-config")}


def test_a_member_mounts_with_their_identity_and_removal_takes_their_slot_away(volume, tmp_path):
    bob = person(tmp_path, "bob")
    made = volume.cli.run("id", "--name", "bob", env=bob, passphrase=None)
    bob_id = made.stdout.strip()
    assert bob_id.startswith("fdid1") and "Created your identity" in made.stderr
    assert volume.cli.run("id", env=bob, passphrase=None).stdout.strip() == bob_id  # once: shown again after

    alice_env = person(tmp_path, "alice")
    alice = volume.mount("alice", env=alice_env)  # by passphrase; she makes her identity while it runs
    write(alice.p("plan.txt"), b"alice's plan")
    alice.sync()
    refused = volume.cli.run("members", "add", volume.url, bob_id, check=False, env=alice_env)
    assert refused.returncode == 64 and "make yours first" in refused.stderr
    volume.cli.run("id", "--name", "alice", passphrase=None, env=alice_env)
    added = volume.cli.run("members", "add", volume.url, bob_id, "--name", "bob", env=alice_env)
    assert "is now a writer" in added.stdout
    listed = [line.split() for line in volume.cli.run("members", "list", volume.url,
                                                      env=alice_env).stdout.splitlines()]
    assert [(role, name) for _id, role, name in listed] == [("admin", "alice"), ("writer", "bob")]
    assert [bob_id] == [member for member, _role, name in listed if name == "bob"]

    laptop = volume.mount("bob-laptop", passphrase=None, env=bob)  # no passphrase anywhere
    assert read(laptop.p("plan.txt")) == b"alice's plan"
    write(laptop.p("bob.txt"), b"bob was here")
    laptop.sync()
    wait_for(lambda: os.path.exists(alice.p("bob.txt")), timeout=30, what="bob's file on alice's device")
    laptop.umount()

    removed = volume.cli.run("members", "remove", volume.url, bob_id, env=alice_env)
    assert "no longer a member" in removed.stdout and "stays readable to them" in removed.stdout
    assert "credentials" in removed.stdout
    refused = volume.cli.run("du", volume.url, env=bob, passphrase=None, check=False)
    assert refused.returncode == 5 and "no key slot" in refused.stderr, refused.stderr
    assert not list((tmp_path / "bob-config" / "fusedrive" / "slots").glob("*.json")), "the slot kept for offline"
    stranger = volume.cli.run("members", "add", volume.url, bob_id[:-3] + "abc", check=False, env=alice_env)
    assert stranger.returncode == 64 and "not a whole fusedrive identity" in stranger.stderr


def test_a_member_mounts_offline_with_the_slot_their_identity_kept(proxied_volume, store_proxy, tmp_path):
    volume = proxied_volume
    bob = person(tmp_path, "bob")
    bob_id = volume.cli.run("id", env=bob, passphrase=None).stdout.strip()
    alice_env = person(tmp_path, "alice")
    alice = volume.mount("alice", env=alice_env)
    write(alice.p("plan.txt"), b"alice's plan")
    alice.sync()
    volume.cli.run("id", passphrase=None, env=alice_env)  # alice's, who shares it
    volume.cli.run("members", "add", volume.url, bob_id, env=alice_env)
    laptop = volume.mount("bob-laptop", passphrase=None, env=bob)
    assert read(laptop.p("plan.txt")) == b"alice's plan"
    laptop.umount()
    store_proxy.down()
    laptop.start(passphrase=None, env=bob)  # the same cache dir, the store away: no passphrase either
    volume.mounts.append(laptop)
    assert read(laptop.p("plan.txt")) == b"alice's plan"
    write(laptop.p("offline.txt"), b"written by bob while the store is away")
    store_proxy.up()
    laptop.sync()
    wait_for(lambda: os.path.exists(alice.p("offline.txt")), timeout=30, what="bob's offline file on alice's device")


def alice_id(cli, env) -> str:
    return cli.run("id", env=env, passphrase=None).stdout.strip()


def test_init_with_a_member_shares_the_new_volume_at_once(tmp_path):
    from conftest import Cli

    cli = Cli({})
    bob = person(tmp_path, "bob")
    bob_id = cli.run("id", env=bob, passphrase=None).stdout.strip()
    alice = person(tmp_path, "alice")
    cli.run("id", "--name", "alice", env=alice, passphrase=None)
    url = (tmp_path / "shared-volume").as_uri()
    made = cli.run("init", url, "--member", bob_id + ":reader", env=alice)
    assert "shared with 1 member(s) (you are its admin)" in made.stdout
    listed = cli.run("members", "list", url, env=bob, passphrase=None)  # Bob opens it with his identity alone
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [[alice_id(cli, alice), "admin"], [bob_id, "reader"]]
    typo = cli.run("init", (tmp_path / "another").as_uri(), "--member", bob_id[:-2] + "zz", check=False, env=alice)
    assert typo.returncode == 64 and not (tmp_path / "another").exists(), "a mistyped member must stop init first"


# --- roles, signed entries, the membership log (issue 39, second part) --------------------------


def people(tmp_path, *names: str) -> dict:
    """name → (identity, this machine's device key) for each person, in config dirs of their own."""
    from fusedrive.store.devices import device_key

    found = {}
    for name in names:
        identity = create_identity(tmp_path / name, name, None)
        found[name] = identity, device_key(tmp_path / name, identity)
    return found


def as_their_people(keys: dict, *devices) -> None:
    """Each in-process device signs with its person's device key and fetches the key epochs
    their slots open, as a mount opened by their identity does."""
    from fusedrive.store.epochs import EpochLoader

    for device in devices:
        identity, device.drive.volume.signer = keys[device.name]
        device.drive.volume.keys.loader = EpochLoader(device.store, device.drive.volume.volume_id,
                                                      lambda identity=identity: identity)


async def share_with_bob_and_carol(keys: dict, alice, bob, carol):
    """Alice's volume, as her devices saved it, shared with bob (writer) and carol (reader);
    every device has applied that. The volume as alice's `members` commands open it."""
    from fusedrive.tools.people import set_member

    as_their_people(keys, alice, bob, carol)
    await alice.sync()
    admin = as_admin(alice, keys["alice"][1])
    set_member(admin, keys["bob"][0].public, "writer", "bob", "alice")
    set_member(admin, keys["carol"][0].public, "reader", "carol", "alice")
    for device in (alice, bob, carol):
        await device.pull()
    return admin


def as_admin(device, signer):
    """The volume as a `members` command on `device`'s machine opens it."""
    import dataclasses

    return dataclasses.replace(device.drive.volume, signer=signer)


def forge(volume, seq: int, signer, **entry_fields) -> None:
    """An entry put straight into the bucket at `seq` (whoever holds the volume's key can)."""
    import time

    from fusedrive.engine.journal import Entry, Journal

    ops = entry_fields.pop("ops", [{"op": "unlink", "parent": "root", "name": "plan.txt", "t": time.time_ns()}])
    assert Journal(volume).append(Entry(seq=seq, device="forged", ops=ops, **entry_fields), signer)


@pytest.mark.inprocess
def test_members_write_by_role_and_an_entry_a_reader_forges_is_refused_by_every_device(tmp_path):
    import trio

    from engines import devices, tree
    from fusedrive.engine.membership import EntryRefused, NotAWriter
    from fusedrive.tools.fsck import repair_journal
    from fusedrive.engine.journal import Journal

    keys = people(tmp_path, "alice", "bob", "carol")

    async def scenario():
        async with devices("alice", "bob", "carol") as (alice, bob, carol):
            await alice.save("/plan.txt", b"alice's plan")
            admin = await share_with_bob_and_carol(keys, alice, bob, carol)
            assert [d.drive.write_refusal() for d in (alice, bob)] == [None, None]
            assert carol.drive.write_refusal() == "you are a reader of this volume"
            await bob.save("/bob.txt", b"bob was here")
            await bob.sync()
            await alice.pull()
            assert await alice.read("/bob.txt") == b"bob was here"
            told = [event for event in alice.drive.events.recent if event.get("path") == "/bob.txt"]
            assert told and told[-1]["by"] == "bob" and told[-1]["device"] == "bob", told
            # both change one file at once: the copy names the person and the device
            await alice.save("/bob.txt", b"alice's edit")
            await bob.save("/bob.txt", b"bob's edit")
            await alice.sync()
            await bob.sync()
            await alice.pull()
            copies = [path for path in await tree(alice) if "conflicted copy from" in path]
            assert len(copies) == 1 and "(conflicted copy from bob on bob " in copies[0], copies
            await carol.pull()
            await carol.save("/carol.txt", b"a reader's write")  # (a mount is read-only; the engine refuses too)
            with pytest.raises(NotAWriter, match="reader"):
                await carol.sync()
            assert carol.drive.status()["cannot_write"] == "you are a reader of this volume"
            # carol holds the volume's key: she forges an entry deleting alice's plan, signed by her
            # own device; then one unsigned; every other device refuses it and applies nothing after
            head = alice.drive.replica.applied_seq
            forge(admin, head + 1, keys["carol"][1])
            for device in (alice, bob):
                with pytest.raises(EntryRefused, match="carol, a reader"):
                    await device.pull()
                assert await device.read("/plan.txt") == b"alice's plan"
                assert device.drive.replica.applied_seq == head
            await bob.save("/queued.txt", b"waits behind the forgery")
            with pytest.raises(EntryRefused):
                await bob.sync()
            said = repair_journal(Journal(admin), None)
            assert said and "carol, a reader" in said[0]
            forge(admin, head + 2, None)  # unsigned
            for device in (alice, bob):
                with pytest.raises(EntryRefused, match="not signed"):
                    await device.pull()
            repair_journal(Journal(admin), None)
            await bob.sync()
            await alice.pull()
            assert await alice.read("/queued.txt") == b"waits behind the forgery"
            assert await alice.read("/plan.txt") == b"alice's plan"

    trio.run(scenario)


@pytest.mark.inprocess
def test_what_a_signed_entry_must_be_to_be_applied(tmp_path):
    """Each rule of membership.refusal, on entries as the store holds them."""
    import base64
    import time

    from fusedrive.engine.journal import Entry, Journal
    from fusedrive.engine.membership import Roster, refusal
    from fusedrive.store.devices import device_key

    keys = people(tmp_path, "alice", "bob", "carol")
    volume = create_volume(MemoryStore(), "the passphrase")
    start_journal(volume)
    journal = Journal(volume)
    seq = iter(range(2, 100))

    def stored(signer, ops=(), device="laptop", tamper=None):
        at = next(seq)
        blob = journal._seal(Entry(seq=at, device=device, ops=list(ops)), signer)
        if tamper:
            blob = journal.volume.seal(f"journal/{at:020d}", tamper(volume.unseal(f"journal/{at:020d}", blob, "")))
        return journal._unseal(at, blob)

    def member(name, role):
        return {"op": "member", "public": keys[name][0].public.text, "name": name, "role": role, "t": time.time_ns()}

    roster = Roster()
    assert refusal(roster, stored(None, [{"op": "mkroot", "mode": 0, "uid": 0, "gid": 0, "t": 1}])) is None
    assert "without making its writer admin" in refusal(roster, stored(keys["bob"][1], [member("alice", "admin")]))
    for op in stored(keys["alice"][1], [member("alice", "admin"), member("bob", "writer"),
                                        member("carol", "reader")]).ops:
        roster.apply(op)
    touch = [{"op": "setattr", "fid": "root", "t": 1, "mode": 0o40755}]
    assert refusal(roster, stored(keys["bob"][1], touch)) is None
    assert "not signed" in refusal(roster, stored(None, touch))
    assert refusal(roster, stored(None, [], device="fsck --repair")) is None  # an empty marker
    assert "carol, a reader" in refusal(roster, stored(keys["carol"][1], touch))
    assert "not an admin" in refusal(roster, stored(keys["bob"][1], [member("carol", "admin")]))
    stranger = people(tmp_path / "elsewhere", "mallory")["mallory"][1]
    assert "not a member" in refusal(roster, stored(stranger, touch))
    import zstandard

    def retouch(body):  # change the ops after signing (the volume's key seals it again)
        return zstandard.compress(zstandard.decompress(body).replace(b'"mode":16877', b'"mode":16895'))
    assert "signature does not verify" in refusal(roster, stored(keys["bob"][1], touch, tamper=retouch))
    saved = [{"op": "update", "fid": "root", "manifest": [], "size": 0, "mtime_ns": 1, "t": 1, "device": "x"}]
    assert refusal(roster, stored(keys["bob"][1], [dict(saved[0], by="bob")])) is None
    assert "names alice as who saved" in refusal(roster, stored(keys["bob"][1], [dict(saved[0], by="alice")]))
    # a device committing again what a store that went back in time lost commits others' saves
    recommitted = journal._unseal(5, journal._seal(Entry(seq=5, device="laptop", ops=[dict(saved[0], by="alice")],
                                                         restores=["lost-commit"]), keys["bob"][1]))
    assert refusal(roster, recommitted) is None
    assert "mallory" in refusal(roster, journal._unseal(5, journal._seal(
        Entry(seq=5, device="laptop", ops=[dict(saved[0], by="mallory")], restores=["x"]), keys["bob"][1])))
    forged_cert = type(keys["bob"][1])(keys["carol"][1].key, keys["bob"][1].member, "x", keys["bob"][1].cert)
    assert "certificate does not verify" in refusal(roster, stored(forged_cert, touch))
    # one of bob's two machines is lost: revoked alone
    other = device_key(tmp_path / "bob-desktop", keys["bob"][0])
    roster.apply({"op": "revoke", "key": base64.b64encode(keys["bob"][1].public).decode(), "t": 1})
    assert "revoked" in refusal(roster, stored(keys["bob"][1], touch))
    assert refusal(roster, stored(other, touch)) is None
    roster.apply(member("bob", "removed"))
    assert "not a member" in refusal(roster, stored(other, touch))


def test_a_writer_a_reader_and_a_removal_through_real_mounts(s3_volume, tmp_path):
    """alice shares her volume with bob (writer) and carol (reader): bob's changes reach alice,
    carol's mount is read-only, and once alice removes bob his device commits nothing more and
    says so."""
    import errno

    volume = s3_volume

    envs = {name: person(tmp_path, name) for name in ("alice", "bob", "carol")}
    ids = {name: volume.cli.run("id", "--name", name, env=env, passphrase=None).stdout.strip()
           for name, env in envs.items()}
    alice = volume.mount("alice", env=envs["alice"])
    write(alice.p("plan.txt"), b"alice's plan")
    alice.sync()
    volume.cli.run("members", "add", volume.url, ids["bob"], "--name", "bob", env=envs["alice"])
    volume.cli.run("members", "add", volume.url, ids["carol"] + ":reader", "--name", "carol", env=envs["alice"])
    bob = volume.mount("bob-laptop", passphrase=None, env=envs["bob"])
    carol = volume.mount("carol-laptop", passphrase=None, env=envs["carol"])
    folder = volume.mirror("carol-desktop", passphrase=None, env=envs["carol"])
    write(bob.p("notes.txt"), b"bob's notes")
    os.rename(bob.p("notes.txt"), bob.p("minutes.txt"))
    os.mkdir(bob.p("drafts"))
    os.unlink(bob.p("plan.txt"))
    bob.sync()
    wait_for(lambda: os.path.exists(alice.p("minutes.txt")) and os.path.isdir(carol.p("drafts"))
             and os.path.exists(folder.p("minutes.txt")) and not os.path.exists(folder.p("plan.txt")), timeout=30,
             what="bob's changes on alice's device, carol's mount and carol's mirror")
    assert read(carol.p("minutes.txt")) == read(folder.p("minutes.txt")) == b"bob's notes"
    write(bob.p("minutes.txt"), b"bob's notes, v2")
    bob.sync()
    wait_for(lambda: read(alice.p("minutes.txt")) == b"bob's notes, v2", timeout=30, what="bob's second save")
    shown = volume.cli.run("history", alice.p("minutes.txt")).stdout
    assert shown.count("bob on bob-laptop") == 2, shown  # both versions name the person and the device
    write(folder.p("carol.txt"), b"written in a reader's folder")  # stays there: the mirror does not upload it
    wait_for(lambda: "this mirror does not upload: 1 change" in volume.cli.run("status", str(folder.path),
                                                                             check=False).stdout,
             timeout=30, what="carol's mirror saying it does not upload")
    assert not os.path.exists(alice.p("carol.txt"))
    for attempt in (lambda: write(carol.p("carol.txt"), b"x"), lambda: os.unlink(carol.p("plan.txt")),
                    lambda: os.mkdir(carol.p("mine"))):
        with pytest.raises(OSError) as refused:
            attempt()
        assert refused.value.errno == errno.EROFS
    shown = volume.cli.run("status", str(carol.path), check=False)
    assert shown.returncode == 0 and "read-only here: you are a reader" in shown.stdout, shown.stdout
    # carol holds the volume's key: an entry she puts straight into the bucket, signed by her own
    # device, is refused by alice's and bob's devices, which stop there and say so
    from pathlib import Path

    from fusedrive.engine.journal import Journal
    from fusedrive.store.devices import kept_device_key

    carols_device = kept_device_key(Path(envs["carol"]["XDG_CONFIG_HOME"]) / "fusedrive")
    with volume.opened() as opened:
        forge(opened, Journal(opened).seqs_after(0)[-1] + 1, carols_device, ops=[
            {"op": "unlink", "parent": "root", "name": "minutes.txt", "t": 1}])
    for device in (alice, bob):
        wait_for(lambda: volume.cli.run("status", str(device.path), check=False).returncode == 8, timeout=30,
                 what="the forged entry refused")
        shown = volume.cli.run("status", str(device.path), check=False).stdout
        assert "is refused: it was written by carol, a reader" in shown, shown
        assert os.path.exists(device.p("minutes.txt"))
    repaired = volume.cli.run("fsck", volume.url, "--repair", check=False)
    assert "was refused" in repaired.stdout, repaired.stdout
    write(alice.p("plan.txt"), b"alice's plan, v2")  # alice still writes (a passphrase mount, her identity)
    alice.sync()
    wait_for(lambda: os.path.exists(folder.p("plan.txt")), timeout=30, what="alice's plan back in carol's folder")

    volume.cli.run("members", "remove", volume.url, ids["bob"], env=envs["alice"])
    wait_for(lambda: "can no longer read" in (volume.cli.run("status", str(bob.path), check=False).stdout),
             timeout=30, what="bob's device learning he was removed")
    write(bob.p("after.txt"), b"written after the removal")
    stuck = volume.cli.run("sync", str(bob.path), check=False)
    assert stuck.returncode != 0
    shown = volume.cli.run("status", str(bob.path), check=False)
    assert shown.returncode == 5 and "membership was removed" in shown.stdout, shown.stdout
    write(alice.p("later.txt"), b"after bob left")  # alice and carol go on, under the new key
    alice.sync()
    wait_for(lambda: os.path.exists(carol.p("later.txt")), timeout=30, what="alice's file after the removal on "
             "carol's device")
    assert read(carol.p("later.txt")) == b"after bob left"
    volume.cli.run("umount", str(bob.path), "--no-wait", check=False)  # his change cannot commit: left behind
    volume.mounts.remove(bob)
    assert not os.path.exists(alice.p("after.txt"))
    assert read(carol.p("plan.txt")) == read(folder.p("plan.txt")) == b"alice's plan, v2"
    # everything written before bob left, sealed again under a key he never had: every block
    # still opens, and alice's and carol's devices go on
    resealed = volume.cli.run("members", "rekey", volume.url, "--full", env=envs["alice"])
    assert "sealed again under it" in resealed.stdout and "could not be opened" not in resealed.stdout
    checked = volume.cli.run("fsck", volume.url, "--verify-blocks", env=envs["alice"], check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    write(alice.p("last.txt"), b"after the full rekey")
    alice.sync()
    wait_for(lambda: os.path.exists(carol.p("last.txt")) and os.path.exists(folder.p("last.txt")), timeout=30,
             what="alice's file after the full rekey on carol's devices")
    assert read(folder.p("minutes.txt")) == b"bob's notes, v2"


@pytest.mark.inprocess
def test_a_removed_member_cannot_read_what_is_written_after_and_the_others_go_on(tmp_path):
    import trio

    from engines import devices, tree
    from fusedrive.engine.membership import NotAWriter
    from fusedrive.errors import KeyNotGiven
    from fusedrive.store.sealing import KeyRing
    from fusedrive.tools.people import remove_member
    from fusedrive.engine.journal import Journal

    keys = people(tmp_path, "alice", "bob", "carol")

    async def scenario():
        async with devices("alice", "bob", "carol") as (alice, bob, carol):
            await alice.save("/old.txt", b"written before bob left")
            admin = await share_with_bob_and_carol(keys, alice, bob, carol)
            bobs_keys = dict(bob.drive.volume.keys.masters)  # all the key material bob's device ever held
            before = {listed.key for listed in admin.store.list("")}
            remove_member(admin, keys["bob"][0].public)
            new = os.urandom(300_000)  # (not carried in an entry: a block of its own)
            await alice.save("/new.txt", new)
            await alice.sync()
            for device in (alice, carol):
                await device.pull()
                assert (await tree(device))["/new.txt"] == new
            assert alice.drive.volume.keys.current == 1 and carol.drive.volume.keys.current == 1
            with pytest.raises(KeyNotGiven):
                await bob.pull()  # his device cannot even read the entry that removed him
            with pytest.raises((KeyNotGiven, NotAWriter)):
                await bob.save("/bob.txt", b"too late")
                await bob.sync()
            # everything written since, in bob's hands with all the keys he had: nothing opens
            after = {listed.key for listed in admin.store.list("")} - before
            sealed = [key for key in after if key.startswith(("journal/0", "blocks/", "packs/"))]
            assert any(key.startswith("journal/") for key in sealed) and \
                any(key.startswith(("blocks/k1.", "packs/")) for key in sealed)
            his = KeyRing(admin.volume_id, bobs_keys)
            journal = Journal(type(admin)(admin.store, admin.volume_id, admin.chunking, his))
            for key in sealed:
                blob = admin.store.get(key)
                with pytest.raises(KeyNotGiven):
                    if key.startswith("journal/"):
                        journal._unseal(int(key[len("journal/"):]), blob)
                    else:
                        his.unseal("block_seal", blob, key.encode(), key)
            await carol.pull()
            assert await carol.read("/old.txt") == b"written before bob left"

    trio.run(scenario)


@pytest.mark.inprocess
def test_rekey_full_seals_what_was_written_before_so_a_removed_members_keys_open_nothing(tmp_path):
    import trio

    from engines import devices, tree
    from fusedrive.engine.journal import Journal
    from fusedrive.engine.manifest import Location
    from fusedrive.errors import IntegrityError, KeyNotGiven
    from fusedrive.report import no_progress
    from fusedrive.store.sealing import KeyRing
    from fusedrive.tools.people import rekey, remove_member

    keys = people(tmp_path, "alice", "bob", "carol")

    async def scenario():
        async with devices("alice", "bob", "carol") as (alice, bob, carol):
            await alice.save("/big.bin", os.urandom(300_000))  # a block of its own
            alice.mkdir("/small")
            for n in range(40):  # small files, more than an entry carries: packed
                await alice.save(f"/small/{n}.txt", os.urandom(8_000))
            await alice.sync()
            admin = await share_with_bob_and_carol(keys, alice, bob, carol)
            await bob.save("/by-bob.txt", b"bob wrote this while a member")
            await bob.sync()
            for device in (alice, carol):
                await device.pull()
            bobs_keys = dict(bob.drive.volume.keys.masters)
            remove_member(admin, keys["bob"][0].public)
            await alice.pull()
            epoch, report = rekey(admin, no_progress, full=True)
            assert epoch == 2 and report.objects >= 5 and not report.unopened

            # every object the store holds, in bob's hands with every key he had: nothing opens
            his = KeyRing(admin.volume_id, bobs_keys)
            his_volume = type(admin)(admin.store, admin.volume_id, admin.chunking, his)
            packed = [(block_id, where) for block_id, where in alice.drive.replica.all_block_refs()
                      if isinstance(where, Location)]
            sealed = [listed.key for listed in admin.store.list("")
                      if listed.key.startswith(("journal/0", "blocks/", "packs/"))]
            assert packed and any(key.startswith("blocks/") for key in sealed)
            for key in sealed:
                blob = admin.store.get(key)
                with pytest.raises((KeyNotGiven, IntegrityError)):
                    if key.startswith("journal/"):
                        Journal(his_volume)._unseal(int(key[len("journal/"):]), blob)
                    elif key.startswith("blocks/"):
                        his.unseal("block_seal", blob, key.encode(), key)
                    else:
                        raise IntegrityError("a pack: its blocks are tried below")
            for block_id, where in packed:
                blob = admin.store.get_range(f"packs/{where.pack}", where.start, where.size)
                with pytest.raises(IntegrityError):
                    his.unseal("block_seal", blob, f"blocks/{block_id}".encode(), block_id)

            # the members go on: their devices, and a new one of alice's, read everything
            before = await tree(alice)
            assert before["/by-bob.txt"] == b"bob wrote this while a member" and len(before) > 40
            await alice.save("/after.txt", b"written after the full rekey")
            await alice.sync()
            await carol.pull()
            assert await tree(carol) == {**before, "/after.txt": b"written after the full rekey"}
            await alice.restart(afresh=True)
            await alice.pull()
            assert await tree(alice) == await tree(carol)
            assert not Journal(alice.drive.volume).kept_not_held(alice.drive.replica.applied_seq)

    trio.run(scenario)


@pytest.mark.inprocess
def test_a_new_device_of_a_shared_volume_starts_from_an_admins_checkpoint_and_no_one_elses(tmp_path, monkeypatch):
    """A new device trusts a checkpoint only from a device of a current admin, at the newest
    key epoch, with the roster its membership log makes; otherwise it replays every entry."""
    import trio

    from engines import devices, tree
    from fusedrive.engine import committer
    from fusedrive.engine.checkpoints import (checkpoint_seqs, dump_state, read_sealed_checkpoint, signed,
                                              write_checkpoint)
    from fusedrive.engine.journal import Journal
    from fusedrive.engine.membership import Roster, distrust
    from fusedrive.report import no_progress
    from fusedrive.tools.people import rekey, set_member

    monkeypatch.setattr(committer, "CHECKPOINT_EVERY", 5)
    keys = people(tmp_path, "alice", "bob", "carol")

    async def saves(device, prefix: str) -> None:
        for n in range(6):
            await device.save(f"/{prefix}{n}.txt", f"{prefix} {n}".encode())
            await device.sync()

    async def scenario():
        async with devices("alice", "bob", "carol") as (alice, bob, carol):
            admin = await share_with_bob_and_carol(keys, alice, bob, carol)
            set_member(admin, keys["bob"][0].public, "admin", "bob", "alice")
            await bob.pull()
            await saves(bob, "b")  # bob, an admin now, writes a checkpoint
            bobs = max(checkpoint_seqs(alice.drive.volume))
            assert read_sealed_checkpoint(alice.drive.volume, bobs)[0]["signer"]["member"] == keys["bob"][0].public.text
            set_member(admin, keys["bob"][0].public, "writer", "bob", "alice")  # an admin no more: a new epoch
            await alice.pull()
            await saves(alice, "a")
            alices = max(checkpoint_seqs(alice.drive.volume))
            assert alices > bobs
            await carol.restart(afresh=True)  # a new device of carol's: from alice's checkpoint
            assert carol.drive.replica.get_state("checkpoint_seq") == alices
            assert await tree(carol) == await tree(alice)

            # bob signs a checkpoint after his demotion: his roster from before it (log and all),
            # the tree as he likes it, sealed under the newest key (he is still a member)
            await bob.save("/one-more.txt", b"after alice's checkpoint")
            await bob.sync()
            journal = Journal(bob.drive.volume)
            head = bob.drive.replica.applied_seq
            assert head not in checkpoint_seqs(bob.drive.volume)
            forged = dict(read_sealed_checkpoint(bob.drive.volume, bobs)[0], seq=head,
                          commit=journal.read(head).chain_id)
            forged.pop("sig"), forged.pop("signer")
            assert Roster.from_json(forged["roster"]).role_of(keys["bob"][0].public.text) == "admin"
            write_checkpoint(bob.drive.volume, forged, keys["bob"][1])
            assert "newest key epoch" in distrust(journal, *read_sealed_checkpoint(bob.drive.volume, head))
            # carol, a reader, signs the true state: not an admin's
            honest = dump_state(carol.drive.replica)
            assert "not written by an admin" in distrust(journal, signed(bob.drive.volume, honest, keys["carol"][1]),
                                                         carol.drive.volume.keys.current)
            await carol.restart(afresh=True)  # the newest checkpoint is bob's: not trusted, every entry replayed
            assert carol.drive.replica.get_state("checkpoint_seq") in (None, 0)
            await alice.pull()
            assert await tree(carol) == await tree(alice)

            # after alice's next rekey bob's roster can reach the newest epoch only by leaving out
            # the entry that demoted him (it started epoch 1)
            rekey(admin, no_progress)
            await bob.save("/and-another.txt", b"after the rekey")
            await bob.sync()
            await alice.pull()
            rekeyed = max(Roster.of(alice.drive.replica).log)
            head = bob.drive.replica.applied_seq
            roster = Roster.from_json(forged["roster"])
            for op in journal.read(rekeyed).ops:
                roster.apply(op)
            roster.log.append(rekeyed)
            write_checkpoint(bob.drive.volume, dict(forged, seq=head, commit=journal.read(head).chain_id,
                                                    roster=roster.to_json()), keys["bob"][1])
            assert "leaves out the entry that started key epoch 1" in distrust(
                journal, *read_sealed_checkpoint(bob.drive.volume, head))
            # and a log that does not start with the founder's entry is no one's
            admin.store.delete("founder")
            admin.store.put_if_absent("founder", json.dumps({"version": 1, "member": keys["carol"][0].public.text})
                                      .encode())
            assert "founder" in distrust(journal, *read_sealed_checkpoint(alice.drive.volume, alices))

    trio.run(scenario)


@pytest.mark.inprocess
def test_one_of_a_persons_two_devices_is_revoked_alone(tmp_path):
    import base64

    import trio

    from engines import devices
    from fusedrive.engine.membership import EntryRefused
    from fusedrive.store.devices import device_key
    from fusedrive.tools.people import revoke_device, set_member

    keys = people(tmp_path, "alice", "bob")
    keys["bob-desktop"] = keys["bob"][0], device_key(tmp_path / "bob-desktop", keys["bob"][0])
    keys["bob-laptop"] = keys.pop("bob")

    async def scenario():
        async with devices("alice", "bob-laptop", "bob-desktop") as (alice, laptop, desktop):
            as_their_people(keys, alice, laptop, desktop)
            admin = as_admin(alice, keys["alice"][1])
            set_member(admin, keys["bob-laptop"][0].public, "writer", "bob", "alice")
            await laptop.pull()
            lost = base64.b64encode(keys["bob-laptop"][1].public).decode()
            revoke_device(admin, lost)
            for device in (laptop, desktop):
                await device.pull()
            assert laptop.drive.write_refusal() == "this device was revoked by an admin of the volume"
            assert desktop.drive.write_refusal() is None
            set_member(admin, keys["bob-laptop"][0].public, "reader", "bob", "alice")  # a role changed
            await desktop.pull()
            assert desktop.drive.write_refusal() == "you are a reader of this volume"
            set_member(admin, keys["bob-laptop"][0].public, "writer", "bob", "alice")
            await desktop.pull()
            assert desktop.drive.write_refusal() is None
            await desktop.save("/from-the-desktop.txt", b"bob goes on")
            await desktop.sync()
            await alice.pull()
            assert await alice.read("/from-the-desktop.txt") == b"bob goes on"
            # the lost laptop's key, used anyway (a thief with the bucket's credentials): refused
            forge(admin, alice.drive.replica.applied_seq + 1, keys["bob-laptop"][1])
            with pytest.raises(EntryRefused, match="revoked"):
                await alice.pull()

    trio.run(scenario)
