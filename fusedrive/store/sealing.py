"""Keys and sealing. Everything written to the store passes through `seal`.

The passphrase only unwraps a random master key; every working key is derived
from the master key with HKDF, one per purpose, so a block id (a keyed BLAKE3 of
the plaintext) reveals nothing to someone who can list the bucket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import IntegrityError, KeyNotGiven

SEAL_VERSION = 1
EPOCH_SEAL_VERSION = 2  # format 5: the header names the key epoch
IN_PLACE_SEAL_VERSION = 3  # format 5: sealed again in place by `members rekey --full`; the epoch is found by trying
EPOCH_ID_PREFIX = "k"  # block ids of epoch n > 0: k<n>.<keyed BLAKE3>, keyed by that epoch's block-id key
NONCE_BYTES = 12


def passphrase_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """Stretch a passphrase with scrypt so guessing it offline is expensive."""
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def seal(key: bytes, plaintext: bytes, aad: bytes, epoch: int = 0) -> bytes:
    """AES-256-GCM with a random nonce; `aad` binds the ciphertext to its key name. Sealed
    under the keys of key epoch `epoch` > 0 (a volume rekeyed: members.py), the header says
    which: version 2 and the epoch, 4 bytes big-endian."""
    nonce = os.urandom(NONCE_BYTES)
    head = bytes([SEAL_VERSION]) if epoch == 0 else bytes([EPOCH_SEAL_VERSION]) + epoch.to_bytes(4, "big")
    return head + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def seal_in_place(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """`seal` to exactly the length version 1 has (one header byte, version 3), for a block
    inside a pack, found by its byte range, sealed again under a newer epoch's key: the header
    cannot name the epoch, so a reader tries the epochs it holds (`KeyRing.unseal`); the GCM
    tag says which key is right, as age's recipient stanzas are tried."""
    nonce = os.urandom(NONCE_BYTES)
    return bytes([IN_PLACE_SEAL_VERSION]) + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def sealed_epoch(blob: bytes) -> int | None:
    """The key epoch whose keys sealed `blob` (0 for every object of a volume never rekeyed;
    None: sealed in place, the header does not say)."""
    if blob[:1] == bytes([IN_PLACE_SEAL_VERSION]):
        return None
    return int.from_bytes(blob[1:5], "big") if blob[:1] == bytes([EPOCH_SEAL_VERSION]) else 0


def unseal(key: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    """Open a sealed blob or raise IntegrityError naming `what` failed its tag."""
    start = 5 if blob[:1] == bytes([EPOCH_SEAL_VERSION]) else 1
    if len(blob) < start + NONCE_BYTES + 16 or blob[0] not in (SEAL_VERSION, EPOCH_SEAL_VERSION,
                                                               IN_PLACE_SEAL_VERSION):
        raise IntegrityError(f"{what} is damaged (bad header).")
    try:
        return AESGCM(key).decrypt(blob[start:start + NONCE_BYTES], blob[start + NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise IntegrityError(f"{what} failed its authentication tag.") from exc


@dataclass(frozen=True)
class VolumeKeys:
    """The per-purpose keys derived from a volume's master key."""

    block_id: bytes
    block_seal: bytes
    journal_seal: bytes

    @classmethod
    def derive(cls, master: bytes, volume_id: str) -> "VolumeKeys":
        def sub(purpose: str) -> bytes:
            return HKDF(
                algorithm=hashes.SHA256(), length=32, salt=volume_id.encode(), info=purpose.encode()
            ).derive(master)

        return cls(block_id=sub("block-id"), block_seal=sub("block-seal"), journal_seal=sub("journal-seal"))

    def id_of(self, plaintext: bytes | memoryview) -> str:
        """A block's id: keyed BLAKE3 of its plaintext, so identical blocks dedupe."""
        return blake3.blake3(plaintext, key=self.block_id).hexdigest()


@dataclass(eq=False)
class KeyRing:
    """A volume's keys: those of each key epoch this device holds, and the epoch it writes
    with (`current`: the newest its roster names). A volume never rekeyed has epoch 0 only,
    the keys of its master key, and every object is sealed as before format 5. `loader`:
    gets the master key of an epoch not held yet (from the volume's `epochs/<n>`, members.py),
    or None."""

    volume_id: str
    masters: dict[int, bytes]
    current: int = 0
    loader: Callable[[int, dict[int, bytes]], bytes | None] | None = None

    def __post_init__(self) -> None:
        self._derived: dict[int, VolumeKeys] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyRing) and (self.volume_id, self.masters) == (other.volume_id, other.masters)

    @classmethod
    def of_master(cls, master: bytes, volume_id: str) -> "KeyRing":
        return cls(volume_id, {0: master})

    def epoch(self, epoch: int) -> VolumeKeys:
        keys = self._derived.get(epoch)
        if keys is None:
            master = self.masters.get(epoch)
            if master is None and self.loader is not None:
                master = self.loader(epoch, dict(self.masters))
            if master is None:
                raise KeyNotGiven(f"What the volume holds since key epoch {epoch} is sealed with a key this device "
                                  "was never given: its person's membership was removed, or it opened the volume "
                                  "by passphrase, which opens only the volume's first key.")
            self.masters[epoch] = master
            keys = self._derived[epoch] = VolumeKeys.derive(master, self.volume_id)
        return keys

    def advance(self, epoch: int) -> None:
        """Write with epoch `epoch`'s keys from now on (its key fetched now: KeyNotGiven if not given)."""
        if epoch > self.current:
            self.epoch(epoch)
            self.current = epoch

    # --- what the rest of the code calls ---------------------------------------------------------

    def id_of(self, plaintext: bytes | memoryview) -> str:
        """A new block's id (the writing epoch's key)."""
        digest = self.epoch(self.current).id_of(plaintext)
        return digest if self.current == 0 else f"{EPOCH_ID_PREFIX}{self.current}.{digest}"

    def is_id_of(self, block_id: str, plaintext: bytes | memoryview) -> bool:
        """Whether `plaintext` is the block `block_id` names (keyed by the epoch its id says)."""
        epoch, digest = 0, block_id
        if "." in block_id:  # (a hex digest has none)
            number, _, digest = block_id.removeprefix(EPOCH_ID_PREFIX).partition(".")
            epoch = int(number) if number.isdigit() else -1
        return epoch >= 0 and self.epoch(epoch).id_of(plaintext) == digest

    def seal(self, purpose: str, body: bytes, aad: bytes) -> bytes:
        """`purpose`: "block_seal" or "journal_seal"."""
        return seal(getattr(self.epoch(self.current), purpose), body, aad, self.current)

    def seal_in_place(self, purpose: str, body: bytes, aad: bytes) -> bytes:
        """Sealed with the writing epoch's key to the length epoch 0's sealing has (`seal_in_place`)."""
        return seal_in_place(getattr(self.epoch(self.current), purpose), body, aad)

    def unseal(self, purpose: str, blob: bytes, aad: bytes, what: str) -> bytes:
        epoch = sealed_epoch(blob)
        if epoch is not None:
            return unseal(getattr(self.epoch(epoch), purpose), blob, aad, what)
        failed = None
        for epoch in self._epochs_to_try():
            try:
                return unseal(getattr(self.epoch(epoch), purpose), blob, aad, what)
            except IntegrityError as exc:
                failed = exc
        raise failed or IntegrityError(f"{what} failed its authentication tag.")

    def _epochs_to_try(self) -> Iterator[int]:
        """For an object sealed in place: the epochs held, newest first, then newer ones the
        loader has (the rekey that sealed it may be newer than what this device follows)."""
        yield from sorted(self.masters, reverse=True)
        newer = max(self.masters) + 1
        while True:
            try:
                self.epoch(newer)
            except KeyNotGiven:
                return
            yield newer
            newer += 1
