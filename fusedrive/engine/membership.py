"""Who may write a volume shared with people (issue 39): the roster, and the check every
journal entry passes before any device applies it.

The roster — each member's role (admin, writer, reader) and the devices revoked — is the
journal's membership log applied: `member` ops (a role given or taken away: "removed") and
`revoke` ops (one device), in entries signed by an admin's device. It lives in the
replica's state at the seq applied, so every device that applied the same entries holds
the same roster (and a checkpoint carries it).

A volume without members (every volume before one is added) has an empty roster and takes
entries unsigned, as always. The entry that first gives roles founds the roster: it must be
signed, and its signer's person must be one it makes admin (whoever held the passphrase
then could do anything anyway). From then on every entry must be signed by a device
certified by a member who may write (writer, admin; membership ops: admin; an empty
marker of `fsck --repair` excepted): anything else is refused — not applied, and the
device applies nothing after it (`EntryRefused`), so that no device's tree ever holds a
forged change.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import FusedriveError, IntegrityError
from ..store import NotFound
from ..store.devices import CHECKPOINT_CONTEXT, DeviceKey, entry_signed_by, signer_of
from ..store.epochs import check_of, newest_epoch_written, previous_epoch_of
from ..store.members import founder
from ..store.sealing import KeyRing
from .journal import REPAIR_DEVICE, Entry, Journal

ROLES = ("reader", "writer", "admin")
REMOVED = "removed"
MEMBERSHIP_OPS = ("member", "revoke", "epoch")
STATE_KEY = "roster"


class EntryRefused(IntegrityError):
    """A journal entry its writer had no right to write (or whose signature does not hold):
    this device applies nothing from it on, and says so."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"Journal entry {seq} is refused: {reason}. This device applies nothing after it (its "
                         "own changes stay queued); `fusedrive fsck --repair` puts an empty entry in its "
                         "place.")
        self.seq = seq
        self.reason = reason


class NotAWriter(FusedriveError):
    """This device may not commit to the volume (a reader's, a removed member's, one without
    an identity in a volume shared with people): its changes stay queued."""

    exit_code = 5


@dataclass
class Roster:
    members: dict[str, dict] = field(default_factory=dict)  # public identity (fdid1…) → {"name", "role"}
    revoked: set[str] = field(default_factory=set)  # device public keys (base64)
    epoch: dict = field(default_factory=lambda: {"n": 0})  # the key epoch writers use, with its key's check
    log: list[int] = field(default_factory=list)  # the seqs of the entries that made it (what a checkpoint shows)

    @property
    def founded(self) -> bool:
        return bool(self.members)

    def role_of(self, member: str) -> str | None:
        found = self.members.get(member)
        return None if found is None else found["role"]

    def name_of(self, member: str) -> str:
        found = self.members.get(member)
        return found["name"] if found else "someone"

    def apply(self, op: dict) -> None:
        if op["op"] == "member":
            if op["role"] == REMOVED:
                self.members.pop(op["public"], None)
            else:
                self.members[op["public"]] = {"name": op["name"], "role": op["role"]}
        elif op["op"] == "revoke":
            self.revoked.add(op["key"])
        elif op["op"] == "epoch" and op["epoch"] > self.epoch["n"]:
            self.epoch = {"n": op["epoch"], "check": op["check"]}

    def to_json(self) -> str:
        return json.dumps({"members": self.members, "revoked": sorted(self.revoked), "epoch": self.epoch,
                           "log": self.log}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "Roster":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(dict(data["members"]), set(data["revoked"]), data.get("epoch", {"n": 0}),
                   [int(seq) for seq in data.get("log", [])])  # (no log: a roster from before there were logs)

    @classmethod
    def of(cls, replica) -> "Roster":
        return cls.from_json(replica.get_state(STATE_KEY))

    def person(self, signer: DeviceKey | None) -> str | None:
        """How `signer`'s person is named in the versions it saves (None: a volume without members)."""
        if not self.founded or signer is None or signer.member not in self.members:
            return None
        return self.name_of(signer.member)

    def may_write(self, signer: DeviceKey | None) -> str | None:
        """Why the device signing with `signer` (None: one without an identity) may not
        commit; None if it may."""
        if not self.founded:
            return None
        if signer is not None and base64.b64encode(signer.public).decode() in self.revoked:
            return "this device was revoked by an admin of the volume"
        member = signer.member if signer is not None else None
        if member is None:
            return ("this volume is shared with people, and this device has no identity: make one "
                    "(fusedrive id) and ask an admin to add you")
        role = self.role_of(member)
        if role is None:
            return "you are not a member of this volume (any more)"
        if role == "reader":
            return "you are a reader of this volume"
        return None


def follow_epoch(keys: KeyRing, roster: Roster) -> None:
    """Write with the key epoch the roster names from now on (its key fetched and checked
    against what the admin recorded: a record someone else put at its place is never used)."""
    wanted = roster.epoch["n"]
    if wanted <= keys.current:
        return
    keys.epoch(wanted)  # (fetched: KeyNotGiven if this device's person was not given it)
    if check_of(keys.masters[wanted]) != roster.epoch["check"]:
        raise IntegrityError(f"The volume's key epoch {wanted} is not the one its admin recorded; nothing is "
                             "written with it.")
    keys.advance(wanted)


def refusal(roster: Roster, entry: Entry) -> str | None:
    """Why `entry` may not be applied on top of `roster` (None: it may)."""
    membership = [op for op in entry.ops if op["op"] in MEMBERSHIP_OPS]
    if entry.dead or not roster.founded and not membership:
        return None
    if entry.signer is None:
        if entry.device == REPAIR_DEVICE and not entry.ops and not entry.blocks:
            return None
        return "it is not signed, and this volume is shared with people"
    signer = signer_of(entry.signer)
    if signer is None:
        return "its writer's device certificate does not verify"
    key, person = signer
    if not entry.signature_ok:
        return f"its signature does not verify (it claims to be from {roster.name_of(person.text)})"
    if base64.b64encode(key).decode() in roster.revoked:
        return f"it was written by a device of {roster.name_of(person.text)} that was revoked"
    role = roster.role_of(person.text)
    if not roster.founded:  # the entry that founds the roster: its writer makes themselves admin
        founding = Roster()
        for op in membership:
            founding.apply(op)
        return None if founding.role_of(person.text) == "admin" else "it gives roles without making its writer admin"
    who = roster.name_of(person.text)
    if role is None:
        return "its writer is not a member of this volume"
    if role == "reader":
        return f"it was written by {who}, a reader of this volume"
    if membership and role != "admin":
        return f"it changes the volume's members, and {who} is not an admin"
    # `by`: who saved. The signer's own name — or, in an entry that commits again changes a store
    # that went back in time lost (`restores`), any member's: those saves were others'.
    allowed = {found["name"] for found in roster.members.values()} if entry.restores else {who}
    named = {op["by"] for op in entry.ops if "by" in op} - allowed
    if named:
        return f"it names {', '.join(sorted(named))} as who saved, and {who} signed it"
    return None


def admit(roster: Roster, entry: Entry) -> None:
    """EntryRefused if `entry` may not be applied on top of `roster`; else `roster` follows
    its membership ops."""
    reason = refusal(roster, entry)
    if reason is not None:
        raise EntryRefused(entry.seq, reason)
    for op in entry.ops:
        roster.apply(op)


def admitted(roster: Roster, entries: list[Entry]) -> tuple[list[Entry], EntryRefused | None]:
    """The entries that may be applied, in order, up to the first refused one (and why it
    is); `roster` follows their membership ops."""
    for index, entry in enumerate(entries):
        try:
            admit(roster, entry)
        except EntryRefused as refused:
            return entries[:index], refused
    return entries, None


def distrust(journal: Journal, state: dict, sealed_epoch: int | None) -> str | None:
    """Why a new device must not start from checkpoint `state` of a volume shared with people
    (None: it may). A checkpoint is an admin's word on the tree at its seq: it must be signed
    by a device of a person who is admin in its roster, and that roster must be the one its
    membership log makes — the entries its `log` names, read and admitted in order from an
    entry signed by the volume's founder (`store.members.founder`), each key epoch following
    the one before as its `epochs/<n>` record says (none left out). Every removal, revocation
    and admin's demotion starts a key epoch, so a checkpoint sealed under the newest epoch
    whose roster is at that epoch cannot leave one out: someone who lost their rights since
    can sign no checkpoint a new device takes. `sealed_epoch`: the epoch the checkpoint was
    sealed under."""
    volume, seq = journal.volume, state["seq"]
    found = signer_of(state.get("signer"))
    if found is None:
        return "it is not signed by a certified device"
    key, person = found
    fields = {name: value for name, value in state.items() if name != "sig"}
    if not entry_signed_by(key, state.get("sig"), volume.volume_id, seq, fields, CHECKPOINT_CONTEXT):
        return "its signature does not verify"
    claimed = Roster.from_json(state.get("roster"))
    roster = Roster()
    for at in claimed.log:
        try:
            entry = journal.read(at) if 0 < at <= seq else None
        except (NotFound, IntegrityError) as exc:  # (a store that does not answer: raised)
            return f"entry {at} of its membership log cannot be read ({exc})"
        if entry is None or not any(op["op"] in MEMBERSHIP_OPS for op in entry.ops):
            return f"its membership log names entry {at}, which changes no member"
        if not roster.founded and (entry.signer or {}).get("member") != founder(volume.store):
            return "its membership log does not start with the founder's entry"
        epoch = roster.epoch["n"]
        for op in entry.ops:
            if op["op"] == "epoch" and op["epoch"] > epoch:
                if previous_epoch_of(volume.store, op["epoch"]) != epoch:
                    return f"its membership log leaves out the entry that started key epoch {epoch + 1}"
                epoch = op["epoch"]
        try:
            admit(roster, entry)
        except EntryRefused as refused:
            return f"entry {at} of its membership log is refused: {refused.reason}"
        roster.log.append(at)
    if roster.to_json() != claimed.to_json():
        return "its roster is not what its membership log makes"
    if roster.role_of(person.text) != "admin" or base64.b64encode(key).decode() in roster.revoked:
        return "it was not written by an admin's device"
    newest = newest_epoch_written(volume.store)
    if sealed_epoch != roster.epoch["n"] or newest != roster.epoch["n"]:
        return f"it is not of the newest key epoch ({newest})"
    return None


def apply_checked(replica, entries: Iterable[Entry]) -> None:
    """Apply `entries` one by one (a replay: commands without a mount, fsck), each checked
    first; EntryRefused at the first refused one, with everything before it applied."""
    roster = Roster.of(replica)
    for entry in entries:
        admit(roster, entry)
        replica.apply_remote(entry.seq, entry.ops, entry.format, entry.blocks)
