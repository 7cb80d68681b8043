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

    alice = volume.mount("alice")
    write(alice.p("plan.txt"), b"alice's plan")
    alice.sync()
    added = volume.cli.run("members", "add", volume.url, bob_id)
    assert "can now mount" in added.stdout
    assert volume.cli.run("members", "list", volume.url).stdout.split() == [bob_id]

    laptop = volume.mount("bob-laptop", passphrase=None, env=bob)  # no passphrase anywhere
    assert read(laptop.p("plan.txt")) == b"alice's plan"
    write(laptop.p("bob.txt"), b"bob was here")
    laptop.sync()
    wait_for(lambda: os.path.exists(alice.p("bob.txt")), timeout=30, what="bob's file on alice's device")
    laptop.umount()

    removed = volume.cli.run("members", "remove", volume.url, bob_id)
    assert "stays readable to them" in removed.stdout and "credentials" in removed.stdout
    refused = volume.cli.run("du", volume.url, env=bob, passphrase=None, check=False)
    assert refused.returncode == 5 and "no key slot" in refused.stderr, refused.stderr
    assert not list((tmp_path / "bob-config" / "fusedrive" / "slots").glob("*.json")), "the slot kept for offline"
    stranger = volume.cli.run("members", "add", volume.url, bob_id[:-3] + "abc", check=False)
    assert stranger.returncode == 64 and "not a whole fusedrive identity" in stranger.stderr


def test_a_member_mounts_offline_with_the_slot_their_identity_kept(proxied_volume, store_proxy, tmp_path):
    volume = proxied_volume
    bob = person(tmp_path, "bob")
    bob_id = volume.cli.run("id", env=bob, passphrase=None).stdout.strip()
    alice = volume.mount("alice")
    write(alice.p("plan.txt"), b"alice's plan")
    alice.sync()
    volume.cli.run("members", "add", volume.url, bob_id)
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


def test_init_with_a_member_shares_the_new_volume_at_once(tmp_path):
    from conftest import Cli

    cli = Cli({})
    bob = person(tmp_path, "bob")
    bob_id = cli.run("id", env=bob, passphrase=None).stdout.strip()
    url = (tmp_path / "shared-volume").as_uri()
    made = cli.run("init", url, "--member", bob_id)
    assert "shared with 1 member(s)" in made.stdout
    listed = cli.run("members", "list", url, env=bob, passphrase=None)  # Bob opens it with his identity alone
    assert listed.stdout.split() == [bob_id]
    typo = cli.run("init", (tmp_path / "another").as_uri(), "--member", bob_id[:-2] + "zz", check=False)
    assert typo.returncode == 64 and not (tmp_path / "another").exists(), "a mistyped member must stop init first"
