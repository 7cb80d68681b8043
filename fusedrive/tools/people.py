"""`fusedrive members`: the people a volume is shared with and their roles (issue 39).

Each change is a key slot (store/members.py) and a journal entry of the membership log
(engine/membership.py) signed by this machine's device key: the first member added makes
whoever adds them the volume's first admin (they held the passphrase); after that only an
admin changes members. Commands work without a mount: the volume's state is replayed into
memory, every entry checked, and the entry appended at the head.
"""

from __future__ import annotations

import time

from ..engine.checkpoints import replay_to_head
from ..engine.journal import Journal
from ..engine.membership import REMOVED, ROLES, Roster
from ..engine.replica import Replica
from ..errors import UsageError
from ..report import Progress
from ..store.members import PublicIdentity, add_member, read_slot, slot_key
from ..store.volume import Volume
from .space import append_at_head

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


def _as_admin(volume: Volume, roster: Roster) -> None:
    signer = volume.signer
    if signer is None:
        raise UsageError("Whoever shares a volume needs an identity: make yours first (fusedrive id).")
    if roster.founded and roster.role_of(signer.member) != "admin":
        raise UsageError("Only an admin of this volume changes its members, and your identity is not one.")


def set_member(volume: Volume, member: PublicIdentity, role: str, name: str, me: str,
               progress: Progress | None = None) -> bool:
    """Give `member` a key slot and `role`; the first time, this person (`me`: their name)
    becomes admin too. Whether anything changed."""
    roster, replica = roster_of(volume, progress)
    _as_admin(volume, roster)
    signer = volume.signer
    if roster.role_of(member.text) == role:
        return False

    def ops() -> list[dict]:
        founded = Roster.of(replica).founded
        made = [] if founded else [_member_op(PublicIdentity.parse(signer.member), me, "admin")]
        return made + ([_member_op(member, name, role)] if founded or member.text != signer.member else [])

    if not roster.founded:  # the admin opens it by identity from now on, as every member
        add_member(volume.store, PublicIdentity.parse(signer.member), volume.master, volume.volume_id)
    add_member(volume.store, member, volume.master, volume.volume_id)
    append_at_head(Journal(volume), replica, ops, DEVICE)
    return True


def remove_member(volume: Volume, member: PublicIdentity, progress: Progress | None = None) -> bool:
    """Take `member`'s role and key slot away; whether they had one."""
    roster, replica = roster_of(volume, progress)
    _as_admin(volume, roster)
    if roster.role_of(member.text) == "admin" and \
            sum(1 for found in roster.members.values() if found["role"] == "admin") == 1:
        raise UsageError("That is the volume's last admin: make someone else admin first.")
    had = roster.role_of(member.text) is not None or read_slot(volume.store, member) is not None
    if roster.founded and roster.role_of(member.text) is not None:
        append_at_head(Journal(volume), replica,
                       lambda: [_member_op(member, roster.name_of(member.text), REMOVED)], DEVICE)
    volume.store.delete(slot_key(member))
    return had


def revoke_device(volume: Volume, key: str, progress: Progress | None = None) -> None:
    """No entry signed by the device with public key `key` (base64) is applied from now on."""
    roster, replica = roster_of(volume, progress)
    _as_admin(volume, roster)
    if not roster.founded:
        raise UsageError("This volume is not shared with people: it has no devices to revoke.")
    append_at_head(Journal(volume), replica, lambda: [{"op": "revoke", "key": key, "t": time.time_ns()}], DEVICE)
