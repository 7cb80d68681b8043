"""A store in this process's memory: for the in-process test tier (the rules, several
devices' engines on one volume, no FUSE and no S3 server) and for trying the engine.

Thread-safe, with the same contract as the real stores (tests/test_store_contract.py
runs one suite over all three). `unreachable` makes every call fail as a store that is
down does, so one device can be cut off while others go on; `answers_to_lose` makes a
conditional write that lands look failed, as a reply lost on the way does.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from ..errors import StoreUnreachable
from . import Listed, NotFound


class MemoryObjects:
    """The objects themselves, shared by every device's view of one volume."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, tuple[bytes, float]] = {}


class MemoryStore:
    def __init__(self, url: str = "memory://volume", objects: MemoryObjects | None = None) -> None:
        self.url = url
        self.objects = objects or MemoryObjects()
        self.unreachable = False
        self.answers_to_lose = 0  # the next N conditional writes are made, but their answer is lost

    def _check(self) -> None:
        if self.unreachable:
            raise StoreUnreachable(f"Cannot reach the store for {self.url} (cut off by the test).")

    def get(self, key: str) -> bytes:
        return self.get_range(key, 0, -1)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._check()
        with self.objects.lock:
            if key not in self.objects.data:
                raise NotFound(key)
            data = self.objects.data[key][0]
        return data[start:] if length < 0 else data[start:start + length]

    def put(self, key: str, data: bytes) -> None:
        self._check()
        with self.objects.lock:
            self.objects.data[key] = (bytes(data), time.time())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._check()
        with self.objects.lock:
            if key in self.objects.data:
                return False
            self.objects.data[key] = (bytes(data), time.time())
            if self.answers_to_lose:
                self.answers_to_lose -= 1
                raise StoreUnreachable(f"The answer to the write of {key} was lost (by the test).")
            return True

    def list(self, prefix: str, start_after: str = "") -> Iterator[Listed]:
        self._check()
        with self.objects.lock:
            found = sorted((key, len(data), modified) for key, (data, modified) in self.objects.data.items()
                           if key.startswith(prefix) and key > start_after)
        for key, size, modified in found:
            yield Listed(key, size, modified)

    def delete(self, key: str) -> None:
        self._check()
        with self.objects.lock:
            self.objects.data.pop(key, None)

    def put_file(self, key: str, path: str) -> None:
        with open(path, "rb") as f:
            self.put(key, f.read())
