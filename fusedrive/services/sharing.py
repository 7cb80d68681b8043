"""Share links: a plaintext copy of one file (a zip for a directory) under
`shares/<token>/<name>`, reachable through the store's presigned GET URL until it
expires or is unshared.

The copy is the only plaintext of the volume in the store, and the user chose it.
Its record (path, expiry, URL) is sealed like the journal under `share-records/`,
so any device of the volume can list and remove links. The token is random, so a
link reveals nothing about other shares. All functions block (worker threads).
"""

from __future__ import annotations

import json
import os
import secrets
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..errors import FusedriveError, IntegrityError, UsageError
from ..store import NotFound, ShareLinks
from ..store.volume import Volume

RECORDS = "share-records/"
COPY_CHUNK = 1 << 20


@dataclass
class Share:
    token: str
    path: str  # inside the drive, as shared
    name: str  # what the downloader gets
    created: float
    expires: float
    url: str
    device: str

    @property
    def key(self) -> str:
        return f"shares/{self.token}/{self.name}"

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires


def parse_duration(text: str) -> int:
    """'7d', '12h', '30m', '45s' or plain seconds → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except (ValueError, KeyError):
        raise UsageError(f"Not a duration: {text!r} (try 30m, 12h or 7d).") from None
    if value <= 0:
        raise UsageError(f"A duration must be positive, not {text!r}.")
    return int(value)


def prepare_copy(source: Path, scratch: Path, progress: Callable[[int], None]) -> tuple[Path, str]:
    """The bytes to share, in a scratch file: the file itself, or NAME.zip of a directory.
    `progress(n)` is told of every n bytes read."""
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / secrets.token_hex(8)
    if source.is_dir():
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for path in sorted(source.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    with path.open("rb") as src, archive.open(str(path.relative_to(source)), "w",
                                                              force_zip64=True) as dst:
                        _copy(src, dst, progress)
        return target, source.name + ".zip"
    with source.open("rb") as src, target.open("wb") as dst:
        _copy(src, dst, progress)
    return target, source.name


def _copy(src, dst, progress: Callable[[int], None]) -> None:
    while chunk := src.read(COPY_CHUNK):
        dst.write(chunk)
        progress(len(chunk))


def size_of(source: Path) -> int:
    if source.is_dir():
        return sum(p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink())
    return source.stat().st_size


def publish(volume: Volume, copy: Path, name: str, path: str, expires_in: int, device: str) -> Share:
    """Upload the copy and its record; returns the share with its URL."""
    token = secrets.token_urlsafe(24)
    now = time.time()
    share = Share(token=token, path=path, name=name, created=now, expires=now + expires_in, url="", device=device)
    if not isinstance(volume.store, ShareLinks):
        raise UsageError(f"The volume at {volume.url} cannot make share links.")
    share.url = volume.store.share_url(share.key, expires_in)  # refuses too long an expiry before any upload
    volume.store.put_file(share.key, str(copy))
    volume.store.put(RECORDS + token, _seal_record(volume, share))
    return share


def list_shares(volume: Volume) -> list[Share]:
    shares = []
    for key, *_ in volume.store.list(RECORDS):
        try:
            shares.append(_open_record(volume, key[len(RECORDS):], volume.store.get(key)))
        except NotFound:
            continue  # removed meanwhile
    return sorted(shares, key=lambda s: s.created)


def remove(volume: Volume, share: Share) -> None:
    """Delete the copy (the link stops working at once), then the record."""
    volume.store.delete(share.key)
    volume.store.delete(RECORDS + share.token)


def find(volume: Volume, token_or_path: str) -> list[Share]:
    """Shares whose token or drive path is `token_or_path`."""
    found = [s for s in list_shares(volume) if token_or_path in (s.token, s.path)]
    if not found:
        raise FusedriveError(f"No share link for {token_or_path!r}.")
    return found


def _seal_record(volume: Volume, share: Share) -> bytes:
    return volume.seal(RECORDS + share.token, json.dumps(asdict(share)).encode())


def _open_record(volume: Volume, token: str, blob: bytes) -> Share:
    what = f"Share record {token}"
    try:
        data = volume.unseal(RECORDS + token, blob, what)
    except IntegrityError:  # written before format 2, whose records were bound to their key alone
        data = volume.keys.unseal("journal_seal", blob, (RECORDS + token).encode(), what)
    return Share(**json.loads(data))


def clean_scratch(cache_dir: Path) -> Path:
    """The scratch dir for copies being shared, emptied of what an interrupted share left."""
    path = cache_dir / "share-scratch"
    path.mkdir(mode=0o700, exist_ok=True)
    for leftover in path.iterdir():
        os.unlink(leftover)
    return path
