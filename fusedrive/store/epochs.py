"""Key epochs (issue 39): a new volume key when someone is removed.

A volume starts in epoch 0, whose master key the passphrase (the header) and the first key
slots wrap. `fusedrive members remove` (and `revoke`, and `members rekey`) starts epoch n: a
random master key K_n, from which the same per-purpose keys are derived (sealing.KeyRing);
everything written from then on is sealed under them and new block ids are keyed by them, so
a removed member, who never receives K_n, reads nothing written after and cannot tell which
new blocks equal old ones. What was written before stays sealed as it was (and readable to
whoever had it).

`epochs/<n, 10 digits>` (plaintext JSON, put-if-absent, by the admin who rekeys): `epoch`,
`previous_epoch` p, `previous` — K_p sealed with a key derived from K_n (whoever holds K_n
gets every older key down the chain) — and `slots`: K_n wrapped for each member then (as a
key slot, members.py, bound to `<volume id>#<n>`). A member added later gets their slot at
`members/<id>` with `epoch` n. The journal's `epoch` op (admin-signed) says which epoch
writers use, with a check of K_n, so a record someone else put at `epochs/<n>` first is
never written with.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import FusedriveError, StoreUnreachable
from . import NotFound, ObjectStore, sealing
from .members import Identity, PublicIdentity, read_slot, slot_binding, unwrap, wrap_for
from .volume import keep_json

PREFIX = "epochs/"
CHAIN_INFO = b"fusedrive.org/v1/epoch-chain"
CHECK_CONTEXT = b"fusedrive.org/v1/epoch-check\0"


def epoch_key(epoch: int) -> str:
    return f"{PREFIX}{epoch:010d}"


def check_of(master: bytes) -> str:
    """What the journal's `epoch` op records of K_n (SHA-256: reveals nothing of the key)."""
    return hashlib.sha256(CHECK_CONTEXT + master).hexdigest()


def _chain_key(master: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CHAIN_INFO).derive(master)


def write_epoch(store: ObjectStore, volume_id: str, epoch: int, master: bytes, previous_epoch: int,
                previous: bytes, members: list[PublicIdentity], wrapping: bytes | None = None) -> bool:
    """Put `epochs/<epoch>`; False if something is there already. `wrapping`: the passphrase's
    key (volume.Volume.wrapping), so that the passphrase opens the new epoch too."""
    record = {"version": 1, "epoch": epoch, "previous_epoch": previous_epoch,
              "previous": base64.b64encode(sealing.seal(_chain_key(master), previous,
                                                        _chain_aad(volume_id, epoch))).decode(),
              "slots": {member.member_id: wrap_for(member, master, slot_binding(volume_id, epoch))
                        for member in members}}
    if wrapping:
        record["passphrase"] = base64.b64encode(sealing.seal(wrapping, master, _passphrase_aad(volume_id, epoch))
                                                ).decode()
    return store.put_if_absent(epoch_key(epoch), json.dumps(record).encode())


def _chain_aad(volume_id: str, epoch: int) -> bytes:
    return f"{epoch_key(epoch)}:{volume_id}".encode()


def _passphrase_aad(volume_id: str, epoch: int) -> bytes:
    return f"{epoch_key(epoch)}:passphrase:{volume_id}".encode()


def newest_epoch_written(store: ObjectStore) -> int:
    return max((int(listed.key[len(PREFIX):]) for listed in store.list(PREFIX)
                if listed.key[len(PREFIX):].isdigit()), default=0)


def previous_epoch_of(store: ObjectStore, epoch: int) -> int | None:
    """The epoch `epochs/<epoch>` follows (None: no such record)."""
    try:
        return int(json.loads(store.get(epoch_key(epoch)))["previous_epoch"])
    except (NotFound, ValueError, KeyError, TypeError):
        return None


class EpochLoader:
    """Gets the master key of an epoch a device does not hold yet (sealing.KeyRing.loader):
    its person's slot in `epochs/<n>` (or their `members/<id>` slot of that epoch), else down
    the chain from a newer epoch it holds. Records read are kept in `kept_dir` (beside the
    identity) for a device that restarts while the store does not answer."""

    def __init__(self, store: ObjectStore, volume_id: str, identity: Callable[[], Identity | None],
                 kept_dir: Path | None = None, wrapping: bytes = b"") -> None:
        """`wrapping`: the passphrase's key, where the passphrase opened the volume."""
        self.store, self.volume_id, self.identity, self.kept_dir = store, volume_id, identity, kept_dir
        self.wrapping = wrapping

    def __call__(self, epoch: int, known: dict[int, bytes]) -> bytes | None:
        identity = self.identity()
        record = self._record(epoch) if identity is not None or self.wrapping else None
        if identity is not None:
            slot = (record or {}).get("slots", {}).get(identity.public.member_id) or self._member_slot(identity,
                                                                                                         epoch)
            if slot is not None:
                return unwrap(slot, identity, slot_binding(self.volume_id, epoch))
        if self.wrapping and record is not None and "passphrase" in record:
            return sealing.unseal(self.wrapping, base64.b64decode(record["passphrase"]),
                                  _passphrase_aad(self.volume_id, epoch), f"Key epoch {epoch}")
        for newer in sorted(held for held in known if held > epoch):
            found = self.down_the_chain(newer, known[newer], epoch)
            if found is not None:
                return found
        return None

    def down_the_chain(self, epoch: int, master: bytes, wanted: int) -> bytes | None:
        """K_wanted from K_epoch (None if `wanted` is not on its chain)."""
        while epoch > wanted:
            record = self._record(epoch)
            if record is None:
                return None
            master = sealing.unseal(_chain_key(master), base64.b64decode(record["previous"]),
                                    _chain_aad(self.volume_id, epoch), f"The chain of key epoch {epoch}")
            epoch = int(record["previous_epoch"])
        return master if epoch == wanted else None

    def _member_slot(self, identity: Identity, epoch: int) -> dict | None:
        try:
            slot = read_slot(self.store, identity.public)
        except StoreUnreachable:
            return None
        return slot if slot is not None and slot.get("epoch", 0) == epoch else None

    def _record(self, epoch: int) -> dict | None:
        kept = self.kept_dir / f"{self.volume_id}.epoch-{epoch}.json" if self.kept_dir is not None else None
        try:
            record = json.loads(self.store.get(epoch_key(epoch)))
        except (NotFound, ValueError):
            return None
        except StoreUnreachable:
            try:
                return json.loads(kept.read_text()) if kept is not None else None
            except (OSError, ValueError):
                raise FusedriveError(f"The store does not answer and this device has not kept key epoch {epoch} "
                                     "of the volume yet.") from None
        if kept is not None:
            kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            keep_json(kept, record)
        return record


def open_member_slot(store: ObjectStore, slot: dict, identity: Identity, volume_id: str) -> dict[int, bytes]:
    """The master keys a person's `members/<id>` slot opens: its epoch's, and epoch 0's (down
    the chain: what opens the volume)."""
    epoch = int(slot.get("epoch", 0))
    master = unwrap(slot, identity, slot_binding(volume_id, epoch))
    if epoch == 0:
        return {0: master}
    first = EpochLoader(store, volume_id, lambda: identity).down_the_chain(epoch, master, 0)
    if first is None:
        raise FusedriveError(f"The volume's key epochs are broken: epoch {epoch} does not lead back to its first key.")
    return {0: first, epoch: master}
