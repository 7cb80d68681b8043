"""Keys and sealing. Everything written to the store passes through `seal`.

The passphrase only unwraps a random master key; every working key is derived
from the master key with HKDF, one per purpose, so a block id (a keyed BLAKE3 of
the plaintext) reveals nothing to someone who can list the bucket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import IntegrityError

SEAL_VERSION = 1
NONCE_BYTES = 12


def passphrase_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """Stretch a passphrase with scrypt so guessing it offline is expensive."""
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a random nonce; `aad` binds the ciphertext to its key name."""
    nonce = os.urandom(NONCE_BYTES)
    return bytes([SEAL_VERSION]) + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    """Open a sealed blob or raise IntegrityError naming `what` failed its tag."""
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != SEAL_VERSION:
        raise IntegrityError(f"{what} is damaged (bad header).")
    try:
        return AESGCM(key).decrypt(blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:], aad)
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
