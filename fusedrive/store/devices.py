"""A person's devices and the signatures on what they write (issue 39).

Each machine a person uses has its own Ed25519 key (`device.json` beside their identity in
the config dir, owner-only), certified by their identity: the certificate is the identity's
Ed25519 signature over CERT_CONTEXT ‖ the device's public key ‖ the identity's public
string, so one lost laptop can be revoked (the `revoke` journal op) without the person.

A journal entry in a volume with members carries `signer` — {"key": the device's public
key, "member": its person's public string, "cert": the certificate} — and `sig`, the
device's signature over ENTRY_CONTEXT, the volume id and the seq (an entry copied to
another volume or seq does not verify) and the entry's other fields as canonical JSON
(sorted keys, no spaces). Who may write what is the roster's to decide
(engine/membership.py); here only whether the bytes are what that key signed.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import UsageError
from .members import Identity, PublicIdentity, load_identity, load_public
from .volume import keep_json

DEVICE_FILE = "device.json"
CERT_CONTEXT = b"fusedrive.org/v1/device-certificate\0"
ENTRY_CONTEXT = b"fusedrive.org/v1/journal-entry\0"
CHECKPOINT_CONTEXT = b"fusedrive.org/v1/checkpoint\0"  # a checkpoint of a volume with members, by an admin
_RAW = serialization.Encoding.Raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _certified(device_public: bytes, member: str) -> bytes:
    return CERT_CONTEXT + device_public + b"\0" + member.encode()


@dataclass(frozen=True)
class DeviceKey:
    """This machine's signing key for a person, with the certificate their identity made."""

    key: Ed25519PrivateKey
    member: str  # the person's public identity (fdid1…)
    name: str  # the machine's name, shown where its writes are named
    cert: bytes

    @classmethod
    def new(cls, identity: Identity, name: str) -> "DeviceKey":
        """A new device key for `identity`, certified by it."""
        key = Ed25519PrivateKey.generate()
        return cls(key, identity.public.text, name, certify(identity, key.public_key().public_bytes(
            _RAW, serialization.PublicFormat.Raw)))

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    @property
    def signer(self) -> dict:
        """What an entry names its writer by."""
        return {"key": _b64(self.public), "member": self.member, "cert": _b64(self.cert)}

    def sign_entry(self, volume_id: str, seq: int, fields: dict, context: bytes = ENTRY_CONTEXT) -> str:
        """`context`: what is signed — a journal entry, or a checkpoint (CHECKPOINT_CONTEXT)."""
        return _b64(self.key.sign(_entry_message(context, volume_id, seq, fields)))


def _entry_message(context: bytes, volume_id: str, seq: int, fields: dict) -> bytes:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return context + f"{volume_id}\0{seq}\0".encode() + body


def certify(identity: Identity, device_public: bytes) -> bytes:
    return identity.signing_key.sign(_certified(device_public, identity.public.text))


def device_key(config_dir: Path, identity: Identity) -> DeviceKey:
    """This machine's device key for `identity`, made (and certified) the first time."""
    path = config_dir / DEVICE_FILE
    try:
        kept = _read_device_key(path)
        if kept.member == identity.public.text:
            return kept
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"Cannot read this device's key in {path}: {exc}.") from None
    made = DeviceKey.new(identity, socket.gethostname())
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keep_json(path, {"version": 1, "member": made.member, "name": made.name, "public": _b64(made.public),
                     "cert": _b64(made.cert), "key": _b64(made.key.private_bytes(
                         _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()))})
    return made


def kept_device_key(config_dir: Path) -> DeviceKey | None:
    """The device key made before, without the identity (a mount opened by passphrase)."""
    try:
        return _read_device_key(config_dir / DEVICE_FILE)
    except (OSError, ValueError, KeyError):
        return None


def _read_device_key(path: Path) -> DeviceKey:
    record = json.loads(path.read_text())
    return DeviceKey(Ed25519PrivateKey.from_private_bytes(base64.b64decode(record["key"])), record["member"],
                     record["name"], base64.b64decode(record["cert"]))


def this_machine_key(config_dir: Path) -> DeviceKey | None:
    """This machine's device key for the person whose identity is in `config_dir`, made the
    first time; None without an identity (or while its passphrase is not given)."""
    found = load_public(config_dir)
    if found is None:
        return None
    kept = kept_device_key(config_dir)
    if kept is not None and kept.member == found[1].text:
        return kept
    try:
        identity = load_identity(config_dir, os.environ.get("FUSEDRIVE_IDENTITY_PASSPHRASE"))
    except UsageError:
        return None
    return device_key(config_dir, identity)


def signer_of(signer: object) -> tuple[bytes, PublicIdentity] | None:
    """(the device's public key, its person) if `signer` is well formed and its certificate is
    that person's signature; None otherwise."""
    try:
        return _certified_signer(signer["key"], signer["member"], signer["cert"])
    except (TypeError, KeyError):
        return None


@functools.lru_cache(maxsize=1024)
def _certified_signer(key_text: str, member_text: str, cert_text: str) -> tuple[bytes, PublicIdentity] | None:
    """(A device signs every entry with the same certificate: checked once per process.)"""
    try:
        key = base64.b64decode(key_text, validate=True)
        member = PublicIdentity.parse(member_text)
        cert = base64.b64decode(cert_text, validate=True)
        Ed25519PublicKey.from_public_bytes(member.signing).verify(cert, _certified(key, member.text))
    except (TypeError, ValueError, UsageError, InvalidSignature):
        return None
    return key, member


def entry_signed_by(device_public: bytes, signature: object, volume_id: str, seq: int, fields: dict,
                    context: bytes = ENTRY_CONTEXT) -> bool:
    """Whether `signature` is the device's over the entry's (or checkpoint's) other fields."""
    try:
        Ed25519PublicKey.from_public_bytes(device_public).verify(base64.b64decode(signature, validate=True),
                                                                 _entry_message(context, volume_id, seq, fields))
    except (TypeError, ValueError, InvalidSignature):
        return False
    return True
