"""A minimal HTTP/1.1 server on trio (h11 parses): for the hub and the metrics endpoint.

`answer(method, path, query)` returns (status, content type, body); it may await
(the hub's long-poll does). Keep-alive connections are served request by request.
"""

from __future__ import annotations

import urllib.parse
from typing import Awaitable, Callable

import h11
import trio

from ..errors import UsageError

MAX_REQUEST = 16 * 1024

Answer = Callable[[bytes, str, dict], Awaitable[tuple[int, str, bytes]]]


def parse_listen(text: str) -> tuple[str, int]:
    """"127.0.0.1:7780" → ("127.0.0.1", 7780)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"Expected HOST:PORT to listen on (a port from 0 to 65535), not {text!r}.")
    return host, int(port)


async def serve_http(host: str, port: int, answer: Answer, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `task_status.started(port actually bound)`."""
    async def handler(stream: trio.SocketStream) -> None:
        try:
            await _handle(stream, answer)
        except (h11.RemoteProtocolError, trio.BrokenResourceError):
            pass

    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def _handle(stream: trio.SocketStream, answer: Answer) -> None:
    connection = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            request = await _next_request(connection, stream)
            if request is None:
                return
            url = urllib.parse.urlsplit(request.target.decode())
            status, content_type, body = await answer(request.method, url.path, dict(urllib.parse.parse_qsl(url.query)))
            headers = [("content-type", content_type), ("content-length", str(len(body)))]
            for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
                await stream.send_all(connection.send(event))
            if connection.our_state is h11.MUST_CLOSE:
                return
            connection.start_next_cycle()


async def _next_request(connection: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
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
