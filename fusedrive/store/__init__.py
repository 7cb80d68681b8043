"""The object store: the only layer that speaks S3 (or touches a file:// volume directory).

Everything above it sees flat string keys (`volume`, `blocks/<id>`, `journal/<seq>`)
and a few blocking calls; callers in the trio loop run them in worker threads.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Protocol, runtime_checkable
from urllib.parse import urlparse

from ..errors import UsageError


class NotFound(KeyError):
    """The key does not exist in the store."""


class Listed(NamedTuple):
    key: str
    size: int
    modified: float  # Unix seconds of the last write


class ObjectStore(Protocol):
    url: str

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of `key` from `start` (fewer if the object ends sooner)."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if nobody has; False when it already existed."""
        ...

    def list(self, prefix: str, start_after: str = "") -> Iterator[Listed]:
        """Yield the keys under `prefix`, in key order, after `start_after`."""
        ...

    def delete(self, key: str) -> None: ...

    def put_file(self, key: str, path: str) -> None:
        """Store a local file of any size (multipart where the store needs it)."""
        ...


# What only some stores can do: callers ask `isinstance(store, ShareLinks)` first.

@runtime_checkable
class ShareLinks(Protocol):
    def share_url(self, key: str, expires_in: int) -> str:
        """A URL anyone can GET `key` with, for `expires_in` seconds (UsageError beyond
        what the store allows)."""
        ...


@runtime_checkable
class StorageClasses(Protocol):
    def set_storage_class(self, key: str, storage_class: str) -> bool:
        """Move an object to another storage class (archive, thaw). False while a thaw
        has been requested but the archive tier has not made the object readable yet."""
        ...


def open_store(url: str, endpoint_url: str | None = None) -> ObjectStore:
    """Open the store a volume URL names: `s3://bucket/prefix` or `file:///dir`."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UsageError(f"Malformed volume URL {url!r}: expected s3://BUCKET/PREFIX.")
        from .s3 import S3Store

        return S3Store(url, parsed.netloc, parsed.path.strip("/"), endpoint_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise UsageError(f"Malformed volume URL {url!r}: expected file:///ABSOLUTE/DIR.")
        from .local import FileStore

        return FileStore(url, parsed.path)
    raise UsageError(
        f"Malformed volume URL {url!r}: it must start with s3:// or file:///."
    )
