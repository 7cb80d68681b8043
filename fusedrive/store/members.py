"""People a volume is shared with (issue 39, first part): identities and member key slots.

An identity is a person's pair of keys: X25519 (to receive a volume's key) and Ed25519 (to
sign; kept for the signed journal entries to come). `fusedrive id` makes one, once, in the
config dir: the secret halves sealed with a key stretched by scrypt from a generated key
file (as the default volume's) or a passphrase. Its public half is one short string to
send to others: `fdid1` and the base32 of both public keys and a 4-byte SHA-256 check.

A member's key slot is the volume's master key wrapped for that person's X25519 key, the
way age wraps a file key for an X25519 recipient (age-encryption.org/v1, "X25519 recipient
stanza"): a fresh ephemeral key pair per slot, shared secret = X25519(ephemeral, recipient),
wrap key = HKDF-SHA-256(shared secret, salt = ephemeral share || recipient, info =
SLOT_INFO), body = ChaCha20-Poly1305(wrap key, nonce 12 zero bytes, the master key), with
the volume id and the recipient as associated data (a slot cannot be moved to another
volume or person). It is the object `members/<member id>`, written put-if-absent. Anyone who
can write the bucket could write a slot, so a master key unwrapped from one is checked
against the volume before it is used: it must open the journal's first entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import FusedriveError, UsageError
from . import NotFound, ObjectStore, sealing
from .volume import keep_json

PUBLIC_PREFIX = "fdid1"
SLOT_INFO = b"fusedrive.org/v1/member-slot"
SLOTS = "members/"
IDENTITY_FILE = "identity.json"
IDENTITY_KEY_FILE = "identity.key"
KEPT_SLOTS = "slots"  # beside the identity: the slots it opened, by volume id, to open them offline
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_RAW = serialization.Encoding.Raw


class NotAMember(FusedriveError):
    """This identity has no key slot in the volume."""

    exit_code = 5


@dataclass(frozen=True)
class PublicIdentity:
    """What others know of a person: the two public keys."""

    exchange: bytes  # X25519, 32 bytes
    signing: bytes  # Ed25519, 32 bytes

    @property
    def text(self) -> str:
        raw = self.exchange + self.signing
        return PUBLIC_PREFIX + base64.b32encode(raw + hashlib.sha256(raw).digest()[:4]).decode().rstrip("=").lower()

    @property
    def member_id(self) -> str:
        """The name of this person's key slot in a volume."""
        return hashlib.sha256(self.exchange + self.signing).hexdigest()[:32]

    @classmethod
    def parse(cls, text: str) -> "PublicIdentity":
        body = text.strip().lower()
        if not body.startswith(PUBLIC_PREFIX):
            raise UsageError(f"{text!r} is not a fusedrive identity (they start with {PUBLIC_PREFIX}).")
        encoded = body[len(PUBLIC_PREFIX):].upper()
        try:
            raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
        except ValueError:
            raw = b""
        if len(raw) != 68 or hashlib.sha256(raw[:64]).digest()[:4] != raw[64:]:
            raise UsageError(f"{text!r} is not a whole fusedrive identity (mistyped or cut short?).")
        return cls(raw[:32], raw[32:64])


@dataclass(frozen=True)
class Identity:
    """A person's identity with its secret halves (in memory only once unsealed)."""

    name: str
    exchange_key: X25519PrivateKey
    signing_key: Ed25519PrivateKey

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(self.exchange_key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw),
                              self.signing_key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw))

    @classmethod
    def generate(cls, name: str) -> "Identity":
        return cls(name, X25519PrivateKey.generate(), Ed25519PrivateKey.generate())


# --- the identity on this machine ---------------------------------------------------------------


def identity_path(config_dir: Path) -> Path:
    return config_dir / IDENTITY_FILE


def create_identity(config_dir: Path, name: str, passphrase: str | None) -> Identity:
    """Make this person's identity, once: sealed with `passphrase`, or with a generated key
    file beside it (owner-only) when None."""
    path = identity_path(config_dir)
    if path.exists():
        raise UsageError(f"There is already an identity in {path}; `fusedrive id` shows it.")
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if passphrase is None:
        key_file = config_dir / IDENTITY_KEY_FILE
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        protection = {"key_file": IDENTITY_KEY_FILE}
        passphrase = key_file.read_text().strip()
    else:
        protection = {}
    identity = Identity.generate(name)
    salt = os.urandom(16)
    secret = identity.exchange_key.private_bytes(_RAW, serialization.PrivateFormat.Raw,
                                                 serialization.NoEncryption()) + \
        identity.signing_key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    sealed = sealing.seal(sealing.passphrase_key(passphrase, salt, **SCRYPT), secret,
                          _identity_aad(identity.name, identity.public))
    record = {"version": 1, "name": name, "public": identity.public.text, **protection,
              "kdf": {"name": "scrypt", "salt": base64.b64encode(salt).decode(), **SCRYPT},
              "secret": base64.b64encode(sealed).decode()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1)
    return identity


def load_public(config_dir: Path) -> tuple[str, PublicIdentity] | None:
    """This machine's identity's name and public half, without unsealing anything; None if none."""
    try:
        record = json.loads(identity_path(config_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read the identity in {identity_path(config_dir)}: {exc}.") from None
    return record["name"], PublicIdentity.parse(record["public"])


def load_identity(config_dir: Path, passphrase: str | None) -> Identity | None:
    """This machine's identity, unsealed (its key file, else `passphrase`); None if it has none."""
    path = identity_path(config_dir)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if "key_file" in record:
        passphrase = (config_dir / record["key_file"]).read_text().strip()
    if passphrase is None:
        raise UsageError("Your identity is protected by a passphrase: set FUSEDRIVE_IDENTITY_PASSPHRASE.")
    public = PublicIdentity.parse(record["public"])
    kdf = record["kdf"]
    key = sealing.passphrase_key(passphrase, base64.b64decode(kdf["salt"]), kdf["n"], kdf["r"], kdf["p"])
    try:
        secret = sealing.unseal(key, base64.b64decode(record["secret"]), _identity_aad(record["name"], public),
                                "your identity")
    except FusedriveError:
        raise UsageError(f"Wrong passphrase for your identity in {path}.") from None
    identity = Identity(record["name"], X25519PrivateKey.from_private_bytes(secret[:32]),
                        Ed25519PrivateKey.from_private_bytes(secret[32:]))
    if identity.public != public:
        raise UsageError(f"The identity in {path} is damaged (its keys do not match its public half).")
    return identity


def _identity_aad(name: str, public: PublicIdentity) -> bytes:
    return f"fusedrive-identity:{name}:{public.text}".encode()


# --- key slots ----------------------------------------------------------------------------


def _wrap_key(shared: bytes, ephemeral_share: bytes, recipient: bytes) -> bytes:
    if shared == bytes(32):
        raise UsageError("That identity's key is not usable (a low-order point).")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_share + recipient, info=SLOT_INFO).derive(shared)


def _slot_aad(volume_id: str, member: PublicIdentity) -> bytes:
    return f"{SLOTS}{member.member_id}:{volume_id}".encode()


def wrap_for(member: PublicIdentity, master: bytes, volume_id: str) -> dict:
    """A key slot: the master key wrapped for `member` (see the module docstring)."""
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(member.exchange))
    body = ChaCha20Poly1305(_wrap_key(shared, share, member.exchange)).encrypt(
        bytes(12), master, _slot_aad(volume_id, member))
    return {"version": 1, "member": member.text, "ephemeral": base64.b64encode(share).decode(),
            "body": base64.b64encode(body).decode()}


def unwrap(slot: dict, identity: Identity, volume_id: str) -> bytes:
    """The master key from this identity's slot (NotAMember if it does not open)."""
    me = identity.public
    try:
        share = base64.b64decode(slot["ephemeral"], validate=True)
        body = base64.b64decode(slot["body"], validate=True)
    except (KeyError, ValueError):
        raise NotAMember("Your key slot in this volume is damaged.") from None
    if len(share) != 32 or len(body) != 48:  # 32 bytes of key + the tag: nothing else is tried
        raise NotAMember("Your key slot in this volume is damaged.")
    shared = identity.exchange_key.exchange(X25519PublicKey.from_public_bytes(share))
    try:
        return ChaCha20Poly1305(_wrap_key(shared, share, me.exchange)).decrypt(bytes(12), body,
                                                                                 _slot_aad(volume_id, me))
    except InvalidTag:
        raise NotAMember("Your key slot in this volume does not open with your identity.") from None


def slot_key(member: PublicIdentity) -> str:
    return SLOTS + member.member_id


def slot_binding(volume_id: str, epoch: int) -> str:
    """What a key slot of key epoch `epoch` (epochs.py) is bound to; epoch 0's: the volume id."""
    return volume_id if epoch == 0 else f"{volume_id}#{epoch}"


def add_member(store: ObjectStore, member: PublicIdentity, master: bytes, volume_id: str, epoch: int = 0) -> bool:
    """Give `member` a key slot (of `master`, the key of epoch `epoch`); False if they have one already."""
    slot = wrap_for(member, master, slot_binding(volume_id, epoch))
    if epoch:
        slot["epoch"] = epoch
    return store.put_if_absent(slot_key(member), json.dumps(slot).encode())


def read_slot(store: ObjectStore, member: PublicIdentity) -> dict | None:
    try:
        return json.loads(store.get(slot_key(member)))
    except NotFound:
        return None
    except ValueError:
        raise NotAMember("Your key slot in this volume is damaged.") from None


def members(store: ObjectStore) -> list[str]:
    """The public identities of the volume's members (who have a key slot)."""
    found = []
    for listed in store.list(SLOTS):
        try:
            found.append(json.loads(store.get(listed.key))["member"])
        except (NotFound, ValueError, KeyError):
            continue
    return found


FOUNDER_KEY = "founder"  # plaintext JSON {"version": 1, "member": fdid1…}: who founded the roster


def write_founder(store: ObjectStore, member: PublicIdentity) -> None:
    """Name the person who founds the volume's roster, once (put-if-absent), before the entry
    that founds it: a new device trusts a checkpoint's membership log only from an entry
    signed by them (engine/membership.py), so a member cannot found a second roster."""
    store.put_if_absent(FOUNDER_KEY, json.dumps({"version": 1, "member": member.text}).encode())


def founder(store: ObjectStore) -> str | None:
    try:
        return str(json.loads(store.get(FOUNDER_KEY))["member"])
    except (NotFound, ValueError, KeyError, TypeError):
        return None


def has_members(store: ObjectStore) -> bool:
    """Whether anyone has a key slot: the volume is shared with people."""
    return next(iter(store.list(SLOTS)), None) is not None


def keep_slot(config_dir: Path, volume_id: str, slot: dict | None) -> None:
    """Remember (or forget, None) this person's slot of a volume, to open it while the store
    does not answer: it is sealed for them alone, as in the volume."""
    path = config_dir / KEPT_SLOTS / f"{volume_id}.json"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    keep_json(path, slot)


def kept_slot(config_dir: Path, volume_id: str) -> dict | None:
    try:
        return json.loads((config_dir / KEPT_SLOTS / f"{volume_id}.json").read_text())
    except (OSError, ValueError):
        return None
