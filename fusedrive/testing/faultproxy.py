"""A proxy on loopback in front of the S3 server, to make the store misbehave while
mounts keep running.

Whole-store faults: `down()` refuses new connections and cuts open ones, like a server
that stopped; `blackhole()` accepts connections and never answers, like one that hangs;
`up()` serves again. Per-request faults: `inject(Fault(...))` makes the requests whose
method and path match answer an HTTP error (500, 503), wait before being forwarded, be
cut before or after the server saw them (the answer is lost), or hang — each for a
number of requests or until `clear()`. The proxy speaks HTTP/1.1 to both sides (h11),
one request at a time per connection, as boto3 does, and counts the bytes clients
upload (the benchmark's measure of what an edit costs).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass

import h11

ERROR_CODES = {403: "AccessDenied", 404: "NoSuchBucket", 500: "InternalError", 503: "SlowDown"}


@dataclass
class Fault:
    """What happens to the requests that match `method` (None: any) and `path` (a regex
    searched in the request target). `times` None: until cleared."""

    method: str | None = None
    path: str = ""
    status: int | None = None  # answer this HTTP error instead of forwarding
    delay: float = 0.0  # seconds to wait before going on
    cut: bool = False  # close the connection without forwarding the request
    lose_answer: bool = False  # forward, then close the connection instead of answering
    hang: bool = False  # never answer (the connection stays open until down())
    times: int | None = None
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method is None or self.method == method) and re.search(self.path, target) is not None


class _Closed(Exception):
    """The client or the server closed the connection, or a fault cut it."""


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._silent = False
        self.uploaded_bytes = 0  # request bodies forwarded to the server (what a client uploaded)
        self.writes: list[str] = []  # the target of each PUT forwarded, in order
        self.port = self._free_port()
        self.up()

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- per-request faults -------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _fault_for(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.hits += 1
                    return fault
        return None

    # --- whole-store faults -------------------------------------------------------------

    def blackhole(self) -> None:
        """Keep accepting, answer nothing."""
        self.up(silent=True)

    def up(self, silent: bool = False) -> None:
        if self._listener is not None:
            if self._silent == silent:
                return
            self.down()
        self._silent = silent
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse connections and cut the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in connections:
            _close(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    return
                self._connections.add(client)  # a silent proxy holds it, never answered, until down()
            if not self._silent:
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    # --- relaying -----------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        """Relay requests one by one, applying the first matching fault to each."""
        upstream: socket.socket | None = None
        to_client = h11.Connection(h11.SERVER)
        to_server = h11.Connection(h11.CLIENT)
        try:
            while True:
                request, body = _receive_message(client, to_client)
                method, target = request.method.decode(), request.target.decode()
                fault = self._fault_for(method, target)
                if fault is not None:
                    time.sleep(fault.delay)
                    if fault.hang:
                        _wait_until_closed(client)
                        return
                    if fault.cut:
                        return
                    if fault.status:
                        client.sendall(_error_response(to_client, fault.status, target))
                        to_client.start_next_cycle()
                        continue
                if upstream is None:
                    upstream = socket.create_connection(self.target)
                    with self._lock:
                        self._connections.add(upstream)
                with self._lock:
                    self.uploaded_bytes += sum(len(b) for b in body)
                    if method == "PUT":
                        self.writes.append(target)
                upstream.sendall(to_server.send(request) + b"".join(to_server.send(h11.Data(data=b)) for b in body)
                                 + to_server.send(h11.EndOfMessage()))
                response, answer = _receive_message(upstream, to_server)
                if fault is not None and fault.lose_answer:
                    return
                client.sendall(to_client.send(response) + b"".join(to_client.send(h11.Data(data=b)) for b in answer)
                               + to_client.send(h11.EndOfMessage()))
                if to_client.our_state is not h11.DONE or to_server.our_state is not h11.DONE:
                    return
                to_client.start_next_cycle()
                to_server.start_next_cycle()
        except (_Closed, OSError, h11.ProtocolError):
            return
        finally:
            with self._lock:
                self._connections.discard(client)
                self._connections.discard(upstream)
            for conn in (client, upstream):
                if conn is not None:
                    _close(conn)


def _next_event(sock: socket.socket, conn: h11.Connection):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            if not data:
                raise _Closed()
            conn.receive_data(data)
            continue
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            raise _Closed()
        return event


def _receive_message(sock: socket.socket, conn: h11.Connection):
    """One whole request or response: its head and its body chunks."""
    head = _next_event(sock, conn)
    while isinstance(head, h11.InformationalResponse):  # 100 Continue from the server: not relayed
        head = _next_event(sock, conn)
    if conn.they_are_waiting_for_100_continue:
        sock.sendall(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
    body: list[bytes] = []
    while not isinstance(event := _next_event(sock, conn), h11.EndOfMessage):
        body.append(bytes(event.data))
    return head, body


def _error_response(conn: h11.Connection, status: int, target: str) -> bytes:
    code = ERROR_CODES.get(status, "InternalError")
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected fault'
            f'</Message><Resource>{target}</Resource></Error>').encode()
    headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    return conn.send(h11.Response(status_code=status, headers=headers)) + conn.send(h11.Data(data=body)) \
        + conn.send(h11.EndOfMessage())


def _wait_until_closed(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
