"""The notification hub: a small long-poll HTTP service that tells devices "there is a
newer commit", so a change reaches other devices in well under a second.

    GET  /wait?volume=ID&after=SEQ   answered as soon as a commit newer than SEQ is
                                     announced for the volume, or after ~30 s
    POST /notify?volume=ID&seq=SEQ   a device announces a commit

It holds no data and is never trusted for it: an answer only makes a device list
the journal itself. When the hub is down, devices fall back to polling. One hub
serves many devices and volumes. HTTP/1.1 parsing is h11's.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict

import h11
import trio

log = logging.getLogger(__name__)

WAIT_SECONDS = 30.0
MAX_REQUEST = 16 * 1024


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

    async def handle(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request = await self._next_request(connection, stream)
                if request is None:
                    return
                status, body = await self._answer(request)
                await self._send(connection, stream, status, body)
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()

    async def _next_request(self, connection: h11.Connection, stream: trio.SocketStream):
        request = None
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(MAX_REQUEST)
                connection.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _answer(self, request: h11.Request) -> tuple[int, dict]:
        url = urllib.parse.urlsplit(request.target.decode())
        query = dict(urllib.parse.parse_qsl(url.query))
        try:
            volume = query["volume"]
            if url.path == "/notify" and request.method == b"POST":
                self.notify(volume, int(query["seq"]))
                return 200, {"seq": self.heads[volume]}
            if url.path == "/wait" and request.method == b"GET":
                timeout = min(float(query.get("timeout", WAIT_SECONDS)), WAIT_SECONDS)
                return 200, {"seq": await self.wait(volume, int(query["after"]), timeout)}
        except (KeyError, ValueError):
            return 400, {"error": "volume and after (wait) or seq (notify) are required"}
        return 404, {"error": "GET /wait or POST /notify"}

    async def _send(self, connection: h11.Connection, stream: trio.SocketStream, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
        for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=payload), h11.EndOfMessage()):
            await stream.send_all(connection.send(event))


async def serve(host: str, port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
    hub = Hub()

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await hub.handle(stream)
        except (h11.RemoteProtocolError, trio.BrokenResourceError):
            pass

    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


class HubClient:
    """A device's side: blocking calls, made from worker threads."""

    def __init__(self, url: str, volume_id: str) -> None:
        self.url = url.rstrip("/")
        self.volume_id = volume_id

    def _call(self, method: str, path: str, params: dict, timeout: float) -> int:
        query = urllib.parse.urlencode({"volume": self.volume_id, **params})
        request = urllib.request.Request(f"{self.url}{path}?{query}", method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(json.loads(response.read())["seq"])

    def wait(self, after: int, timeout: float = WAIT_SECONDS) -> int:
        """The newest seq the hub knows, once it is past `after` (or when the wait times out)."""
        return self._call("GET", "/wait", {"after": after, "timeout": timeout}, timeout + 10)

    def notify(self, seq: int) -> None:
        self._call("POST", "/notify", {"seq": seq}, 5)


HubError = (urllib.error.URLError, OSError, ValueError, KeyError)
