"""The notification hub: a small long-poll HTTP service that tells devices "there is a
newer commit", so a change reaches other devices in well under a second.

    GET  /wait?volume=ID&after=SEQ   answered as soon as a commit newer than SEQ is
                                     announced for the volume, or after ~30 s
    POST /notify?volume=ID&seq=SEQ   a device announces a commit

It holds no data and is never trusted for it: an answer only makes a device list
the journal itself. When the hub is down, devices fall back to polling. One hub
serves many devices and volumes.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections import defaultdict

import trio

from .httpserve import serve_http

log = logging.getLogger(__name__)

WAIT_SECONDS = 30.0
PROBE_SECONDS = 2.0  # a hub not known to answer gets this long before the device polls instead
# A device's long-poll lasts this long, so that a hub that hangs (accepts, never answers) is
# noticed within it plus a margin: then the device polls.
DEVICE_WAIT_SECONDS = 10.0


class Hub:
    def __init__(self) -> None:
        self.heads: dict[str, int] = defaultdict(int)
        self.changed: dict[str, trio.Event] = defaultdict(trio.Event)

    def notify(self, volume: str, seq: int) -> None:
        if seq > self.heads[volume]:
            self.heads[volume] = seq
            waiting = self.changed.pop(volume, None)
            if waiting is not None:
                waiting.set()

    async def wait(self, volume: str, after: int, timeout: float) -> int:
        with trio.move_on_after(timeout):
            while self.heads[volume] <= after:
                await self.changed[volume].wait()
        return self.heads[volume]

    async def answer(self, method: bytes, path: str, query: dict) -> tuple[int, str, bytes]:
        try:
            volume = query["volume"]
            if path == "/notify" and method == b"POST":
                self.notify(volume, int(query["seq"]))
                return _json(200, {"seq": self.heads[volume]})
            if path == "/wait" and method == b"GET":
                timeout = min(float(query.get("timeout", WAIT_SECONDS)), WAIT_SECONDS)
                return _json(200, {"seq": await self.wait(volume, int(query["after"]), timeout)})
        except (KeyError, ValueError):
            return _json(400, {"error": "volume and after (wait) or seq (notify) are required"})
        return _json(404, {"error": "GET /wait or POST /notify"})


def _json(status: int, body: dict) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()


async def serve(host: str, port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
    await serve_http(host, port, Hub().answer, task_status=task_status)


class HubError(Exception):
    """Any failure of the hub. It is never trusted for data, so a device just polls instead."""


class HubClient:
    """A device's side: blocking calls, made from worker threads."""

    def __init__(self, url: str, volume_id: str) -> None:
        self.url = url.rstrip("/")
        self.volume_id = volume_id

    def _call(self, method: str, path: str, params: dict, timeout: float) -> int:
        query = urllib.parse.urlencode({"volume": self.volume_id, **params})
        request = urllib.request.Request(f"{self.url}{path}?{query}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(json.loads(response.read())["seq"])
        except Exception as exc:  # noqa: BLE001 - refused, reset, cut mid-answer, garbage: all mean "poll"
            raise HubError(f"the hub at {self.url} did not answer usefully ({type(exc).__name__}: {exc})") from exc

    def wait(self, after: int, timeout: float = WAIT_SECONDS) -> int:
        """The newest seq the hub knows, once it is past `after` (or when the wait times out)."""
        return self._call("GET", "/wait", {"after": after, "timeout": timeout}, timeout + 10)

    def notify(self, seq: int) -> None:
        self._call("POST", "/notify", {"seq": seq}, 5)


