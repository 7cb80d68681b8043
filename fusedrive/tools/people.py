"""`fusedrive members`: the people a volume is shared with and their roles (issue 39).

Each change is a key slot (store/members.py) and a journal entry of the membership log
(engine/membership.py) signed by this machine's device key: the first member added makes
whoever adds them the volume's first admin (they held the passphrase); after that only an
admin changes members. Commands work without a mount: the volume's state is replayed into
memory, every entry checked, and the entry appended at the head.
"""

from __future__ import annotations

import os
import time

from ..engine.checkpoints import replay_to_head
from ..engine.journal import Journal, entry_key
from ..engine.membership import REMOVED, ROLES, Roster
from ..engine.replica import Replica
from ..errors import UsageError
from ..report import Progress
from ..store.epochs import check_of, newest_epoch_written, write_epoch
from ..store.sealing import sealed_epoch
from ..store.members import PublicIdentity, add_member, read_slot, slot_key, write_founder
from ..store.volume import Volume
from .resealing import ResealReport, reseal_all
from .space import catch_up, append_at_head

DEVICE = "members"  # the device name of the entries these commands append


def parse_member(text: str, default_role: str = "writer") -> tuple[PublicIdentity, str]:
    """`fdid1…` or `fdid1…:ROLE` (reader, writer, admin)."""
    identity, _, role = text.partition(":")
    role = role or default_role
    if role not in ROLES:
        raise UsageError(f"{role!r} is not a role: a member is a reader, a writer or an admin.")
    return PublicIdentity.parse(identity), role


def roster_of(volume: Volume, progress: Progress | None = None) -> tuple[Roster, Replica]:
    replica = Replica(":memory:")
    replay_to_head(volume, replica, progress)
    return Roster.of(replica), replica


def _member_op(member: PublicIdentity, name: str, role: str) -> dict:
    return {"op": "member", "public": member.text, "name": name, "role": role, "t": time.time_ns()}


def _as_admin(volume: Volume, progress: Progress | None) -> tuple[Roster, Replica]:
    """The volume's state replayed, this person checked to be its admin (or the first, the
    volume not shared yet)."""
    roster, replica = roster_of(volume, progress)
    signer = volume.signer
    if signer is None:
        raise UsageError("Whoever shares a volume needs an identity: make yours first (fusedrive id).")
    if roster.founded and roster.role_of(signer.member) != "admin":
        raise UsageError("Only an admin of this volume changes its members, and your identity is not one.")
    return roster, replica


def set_member(volume: Volume, member: PublicIdentity, role: str, name: str, me: str,
               progress: Progress | None = None) -> bool:
    """Give `member` a key slot and `role`; the first time, this person (`me`: their name)
    becomes admin too. Whether anything changed."""
    roster, replica = _as_admin(volume, progress)
    signer = volume.signer
    if roster.role_of(member.text) == role:
        return False

    def ops() -> list[dict]:
        founded = Roster.of(replica).founded
        made = [] if founded else [_member_op(PublicIdentity.parse(signer.member), me, "admin")]
        return made + ([_member_op(member, name, role)] if founded or member.text != signer.member else [])

    epoch = roster.epoch["n"]
    volume.keys.epoch(epoch)  # (the newest key: what a new member's slot wraps)
    for person in ([] if roster.founded else [PublicIdentity.parse(signer.member)]) + [member]:
        # (the admin opens it by identity from now on, as every member)
        add_member(volume.store, person, volume.keys.masters[epoch], volume.volume_id, epoch)
    if not roster.founded:
        write_founder(volume.store, PublicIdentity.parse(signer.member))
    if roster.role_of(member.text) == "admin":
        # an admin no more: a new epoch, so that no checkpoint they sign later is trusted (membership.distrust)
        rekeyed = new_epoch(volume, roster)
        append_at_head(Journal(volume), replica, lambda: [*ops(), rekeyed], DEVICE)
        return True
    append_at_head(Journal(volume), replica, ops, DEVICE)
    return True


def remove_member(volume: Volume, member: PublicIdentity, progress: Progress | None = None) -> bool:
    """Take `member`'s role and key slot away; whether they had one."""
    roster, replica = _as_admin(volume, progress)
    if roster.role_of(member.text) == "admin" and \
            sum(1 for found in roster.members.values() if found["role"] == "admin") == 1:
        raise UsageError("That is the volume's last admin: make someone else admin first.")
    had = roster.role_of(member.text) is not None or read_slot(volume.store, member) is not None
    volume.store.delete(slot_key(member))
    if roster.founded and roster.role_of(member.text) is not None:
        removal = _member_op(member, roster.name_of(member.text), REMOVED)
        rekeyed = new_epoch(volume, roster, without=member.text)
        append_at_head(Journal(volume), replica, lambda: [removal, rekeyed], DEVICE)
    return had


def revoke_device(volume: Volume, key: str, progress: Progress | None = None) -> None:
    """No entry signed by the device with public key `key` (base64) is applied from now on."""
    _commit_new_epoch(volume, progress, [{"op": "revoke", "key": key, "t": time.time_ns()}],
                      "This volume is not shared with people: it has no devices to revoke.")


def rekey(volume: Volume, progress: Progress, full: bool = False) -> tuple[int, ResealReport | None]:
    """Start a new key epoch for the members there are; the epoch. `full`: then seal every
    object the volume holds again under it (resealing.py), and say how that went."""
    epoch, replica = _commit_new_epoch(volume, progress, [],
                                       "This volume is not shared with people: its key is the passphrase's.")
    if not full:
        return epoch, None
    catch_up(Journal(volume), replica)  # (packs other devices committed since: where their blocks are)
    return epoch, reseal_all(volume, replica, progress)


def _commit_new_epoch(volume: Volume, progress: Progress | None, ops: list[dict],
                      not_shared: str) -> tuple[int, Replica]:
    """Commit `ops` with a new key epoch after them (an admin's); the epoch, and the state
    replayed to it."""
    roster, replica = _as_admin(volume, progress)
    if not roster.founded:
        raise UsageError(not_shared)
    rekeyed = new_epoch(volume, roster)
    append_at_head(Journal(volume), replica, lambda: [*ops, rekeyed], DEVICE)
    return rekeyed["epoch"], replica


def newest_epoch_sealed(volume: Volume, depth: int = 64) -> int:
    """The newest key epoch the store's last `depth` journal entries are sealed under (their
    headers, 5 bytes each). A store that went back in time may have lost an epoch's record
    and entry while devices still seal with its key: a new epoch must not take its number
    again (two keys for one epoch would leave entries no one can open)."""
    seqs = Journal(volume).seqs_after(0)[-depth:]
    return max((sealed_epoch(volume.store.get_range(entry_key(seq), 0, 5)) or 0 for seq in seqs), default=0)


def new_epoch(volume: Volume, roster: Roster, without: str | None = None) -> dict:
    """Start a key epoch (store/epochs.py): a new master key in `epochs/<n>` for every member
    but `without`, written with from now on (`volume.keys`); the `epoch` op that says so."""
    keys, current = volume.keys, roster.epoch["n"]
    keys.epoch(current)
    members = [PublicIdentity.parse(text) for text in roster.members if text != without]
    master = os.urandom(32)
    epoch = max(current, newest_epoch_written(volume.store), newest_epoch_sealed(volume)) + 1
    while not write_epoch(volume.store, volume.volume_id, epoch, master, current, keys.masters[current], members,
                          volume.wrapping or None):
        epoch += 1  # (someone put a record there first: never used, the op's check says which is ours)
    keys.masters[epoch] = master
    keys.advance(epoch)
    return {"op": "epoch", "epoch": epoch, "check": check_of(master), "t": time.time_ns()}
