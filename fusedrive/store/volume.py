"""A volume: an object store plus the `volume` header that says how to read it.

`init` writes the header once with put-if-absent; `open` unwraps the master key
with the passphrase. Also knows where the embedded default volume and its
generated key live, and how a command gets a passphrase.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import (FusedriveError, IntegrityError, NewerFormat, StoreUnreachable, StoreUnsupported, UsageError,
                      VolumeExists, VolumeNotFound, WrongPassphrase)
from . import NotFound, ObjectStore, sealing

if TYPE_CHECKING:
    from .devices import DeviceKey

FORMAT = "fusedrive-volume"
# The format this build writes and reads (docs/format.md says what each version changed), and
# the lowest reader a volume it creates needs. A volume whose header asks for a newer reader
# is refused with one sentence; entries say which format wrote them.
FORMAT_VERSION = 5
READER_VERSION = 4
CARRYING_VERSION = 4  # volumes readable from this format on may carry blocks in journal entries
HEADER_KEY = "volume"
DEFAULT_CHUNKING = {"min": 256 * 1024, "avg": 1024 * 1024, "max": 4 * 1024 * 1024}
SCRYPT = {"n": 2**15, "r": 8, "p": 1}


@dataclass
class Volume:
    store: ObjectStore
    volume_id: str
    chunking: dict
    keys: sealing.KeyRing
    header: bytes = b""  # the `volume` object as read, kept in a cache dir for mounting offline
    reader_version: int = READER_VERSION  # the lowest format that can read it (its header says)
    opened_by: str = "passphrase"  # or "identity": a member's key slot opened it
    wrapping: bytes = field(default=b"", repr=False)  # the passphrase's scrypt key, where it opened the volume
    signer: DeviceKey | None = None  # this machine's key for its person, where it has one (store/devices.py)

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def master(self) -> bytes:
        """The volume's first master key: what its header and the first key slots wrap."""
        return self.keys.masters[0]

    @property
    def carries_blocks(self) -> bool:
        """Whether a journal entry may carry small blocks (format 4): only in volumes no
        older build can open, because an older one could not read those blocks."""
        return self.reader_version >= CARRYING_VERSION

    def seal(self, key: str, body: bytes) -> bytes:
        """Seal a metadata object (journal entry, checkpoint, settings, share record) stored
        at `key`. One convention for all: the associated data is `<key>:<volume id>`, so an
        object moved to another key or copied from another volume fails its tag."""
        return self.keys.seal("journal_seal", body, self._aad(key))

    def unseal(self, key: str, blob: bytes, what: str) -> bytes:
        """The body of a metadata object sealed by `seal` (IntegrityError naming `what`)."""
        return self.keys.unseal("journal_seal", blob, self._aad(key), what)

    def _aad(self, key: str) -> bytes:
        return f"{key}:{self.volume_id}".encode()


def _wrap_aad(volume_id: str, chunking: dict) -> bytes:
    return f"volume-key:{volume_id}:{json.dumps(chunking, sort_keys=True)}".encode()


def probe_conditional_writes(store: ObjectStore) -> None:
    """Race two put-if-absent writers on a scratch key: exactly one must win.

    A store that ignores `If-None-Match: *` would let two devices take the same
    journal seq and silently fork the volume, so such a store is refused.
    """
    key = f"probe/{uuid.uuid4().hex}"
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def writer(tag: bytes) -> None:
        barrier.wait()
        results.append(store.put_if_absent(key, tag))

    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    late = store.put_if_absent(key, b"c")
    store.delete(key)
    if sorted(results) != [False, True] or late:
        raise StoreUnsupported(
            f"The store at {store.url} does not enforce conditional writes (If-None-Match: *), "
            "so devices could overwrite each other's journal entries; fusedrive refuses to use it."
        )


def create_volume(store: ObjectStore, passphrase: str) -> Volume:
    """Write a new volume header; refuses if one is already there."""
    try:
        store.get(HEADER_KEY)
        raise VolumeExists(f"There is already a fusedrive volume at {store.url}; not overwriting it.")
    except NotFound:
        pass
    probe_conditional_writes(store)
    volume_id = str(uuid.uuid4())
    salt = os.urandom(16)
    master = os.urandom(32)
    wrapping = sealing.passphrase_key(passphrase, salt, **SCRYPT)
    chunking = dict(DEFAULT_CHUNKING)
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "reader_version": READER_VERSION,
        "volume_id": volume_id,
        "created": time.time(),
        "chunking": chunking,
        "kdf": {"name": "scrypt", "salt": base64.b64encode(salt).decode(), **SCRYPT},
        "wrapped_key": base64.b64encode(sealing.seal(wrapping, master, _wrap_aad(volume_id, chunking))).decode(),
    }
    raw = json.dumps(header, indent=1).encode()
    if not store.put_if_absent(HEADER_KEY, raw):
        raise VolumeExists(f"Another device created a volume at {store.url} just now; not overwriting it.")
    return Volume(store, volume_id, chunking, sealing.KeyRing.of_master(master, volume_id), raw, wrapping=wrapping)


def open_volume(store: ObjectStore, passphrase: str | Callable[[], str],
                offline_header: bytes | None = None,
                member: Callable[[str], tuple[bytes, bool] | None] | None = None) -> Volume:
    """Read the header and unwrap the master key; a wrong passphrase is one clear error.
    `passphrase` may be a function asked only once the header is there (no volume there is
    said as that, not as a missing passphrase).
    `offline_header`: the header a cache dir kept, used when the store does not answer
    (a device that holds the volume mounts without it).
    `member`: given the volume id, the master key from this person's key slot (members.py)
    and whether that slot was checked before (kept once it opened the volume), or None if
    they have none: then the passphrase is asked."""
    try:
        raw = store.get(HEADER_KEY)
    except NotFound:
        if offline_header is None:
            raise VolumeNotFound(f"No fusedrive volume at {store.url} (create one with `fusedrive init`).") from None
        # This device holds the volume (a disk unplugged, a bucket emptied or restored later):
        # it mounts from its cache, and its committer appends nothing until the header is back.
        raw = offline_header
    except StoreUnreachable:
        if offline_header is None:
            raise
        raw = offline_header
    try:
        header = json.loads(raw)
        if header.get("format") != FORMAT:
            raise ValueError
        needed = header.get("reader_version", header["version"])
        if needed > FORMAT_VERSION:
            raise NewerFormat(f"The volume at {store.url} was made by a newer fusedrive (format {header['version']}, "
                              f"readable from format {needed}); this one reads up to format {FORMAT_VERSION}: "
                              "upgrade fusedrive.")
        kdf = header["kdf"]
        salt = base64.b64decode(kdf["salt"])
        wrapped = base64.b64decode(header["wrapped_key"])
        volume_id, chunking = header["volume_id"], header["chunking"]
    except (ValueError, KeyError, TypeError):
        raise FusedriveError(f"The object `volume` at {store.url} is not a fusedrive volume header.") from None
    slot = member(volume_id) if member is not None else None
    if slot is not None:
        master, checked = slot
        volume = Volume(store, volume_id, chunking, sealing.KeyRing.of_master(master, volume_id), raw, needed,
                        opened_by="identity")
        try:
            _check_master(volume)
        except StoreUnreachable:
            if not checked:
                raise
        return volume
    if callable(passphrase):
        passphrase = passphrase()
    wrapping = sealing.passphrase_key(passphrase, salt, kdf["n"], kdf["r"], kdf["p"])
    try:
        master = sealing.unseal(wrapping, wrapped, _wrap_aad(volume_id, chunking), "volume key")
    except FusedriveError:
        raise WrongPassphrase(f"Wrong passphrase for the volume at {store.url}.") from None
    return Volume(store, volume_id, chunking, sealing.KeyRing.of_master(master, volume_id), raw, needed,
                  wrapping=wrapping)


FIRST_ENTRY = "journal/" + "1".zfill(20)  # every volume's (docs/format.md): sealed with keys from the master key


def _check_master(volume: Volume) -> None:
    """A master key from a key slot is the volume's only if it opens the journal's first
    entry: anyone who can write the bucket could write a slot wrapping another key."""
    try:
        volume.unseal(FIRST_ENTRY, volume.store.get(FIRST_ENTRY), "the journal's first entry")
    except NotFound:
        raise FusedriveError(f"The volume at {volume.url} has no journal.") from None
    except IntegrityError:
        raise WrongPassphrase(f"Your key slot in the volume at {volume.url} holds another key: it was not written "
                              "by a member.") from None


# --- where things live on this machine -------------------------------------------------


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


def data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "fusedrive"


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "fusedrive"


def cache_root() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "fusedrive"


OFFLINE_HEADER = "volume-header.json"  # in a cache dir: {"url", "header"}


def keep_header(cache_dir: Path, volume: Volume) -> None:
    """Remember the volume's header in its cache dir for mounting offline."""
    keep_json(cache_dir / OFFLINE_HEADER, {"url": volume.url, "header": volume.header.decode()})


def keep_json(path: Path, value: dict | None) -> None:
    """Remember `value` in an owner-only file (what a device or a person keeps to work
    offline), written whole then renamed: a crash leaves the old one or the new one; None:
    forget it."""
    if value is None:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    os.replace(temporary, path)


def kept_header(url: str, cache_dir: Path | None) -> bytes | None:
    """The header a cache dir kept for `url`: the one given, else the first under the
    default cache root that holds this volume."""
    kept = kept_in_cache_dir(OFFLINE_HEADER, url, cache_dir)
    return kept["header"].encode() if kept is not None else None


def kept_in_cache_dir(name: str, url: str, cache_dir: Path | None) -> dict | None:
    """The JSON file `name` a cache dir kept for the volume at `url`: in the one given, else
    in the first under the default cache root that holds it."""
    candidates = [cache_dir] if cache_dir is not None else sorted(cache_root().glob("*"))
    for directory in candidates:
        try:
            kept = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        if kept.get("url") == url:
            return kept
    return None


def state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "fusedrive"


def default_volume_url() -> str:
    return (data_dir() / "default-volume").as_uri()


def default_key_file() -> Path:
    return config_dir() / "default.key"


def key_file_for(url: str, key_file: str | None) -> str | None:
    """`key_file`, or for the default volume named by its URL (as status and mount.log show
    it) the generated key it was made with, unless a passphrase is given otherwise."""
    if key_file or os.environ.get("FUSEDRIVE_PASSPHRASE") or not default_key_file().exists():
        return key_file
    from urllib.parse import unquote, urlparse

    parsed, default = urlparse(url), urlparse(default_volume_url())
    same = parsed.scheme == "file" and os.path.realpath(unquote(parsed.path)) == os.path.realpath(unquote(default.path))
    return str(default_key_file()) if same else key_file


def read_key_file(path: str | Path) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"Cannot read the key file {path}: {exc.strerror}.") from None
    if not text:
        raise UsageError(f"The key file {path} is empty.")
    return text


def get_passphrase(key_file: str | None, confirm: bool = False, env: str = "FUSEDRIVE_PASSPHRASE") -> str:
    """--key-file, else $FUSEDRIVE_PASSPHRASE (or `env`), else ask on the terminal."""
    if key_file:
        return read_key_file(key_file)
    given = os.environ.get(env)
    if given:
        return given
    if not sys.stdin.isatty():
        raise UsageError(f"No passphrase: pass --key-file, set {env}, or run on a terminal.")
    first = getpass.getpass("Volume passphrase: " if env == "FUSEDRIVE_PASSPHRASE" else "Identity passphrase: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise UsageError("The two passphrases differ.")
    if not first:
        raise UsageError("An empty passphrase is not allowed.")
    return first
