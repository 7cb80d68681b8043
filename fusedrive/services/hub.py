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
from collections import defaultdict

import trio

from ..engine.hubclient import WAIT_SECONDS
from .httpserve import serve_http

log = logging.getLogger(__name__)



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
