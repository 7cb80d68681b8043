"""A TCP relay on loopback that puts a store "far away": every byte the server sends
back reaches the client `rtt_ms` later, so each request/response exchange costs one
more round trip of that length, while bandwidth stays that of loopback (responses are
delayed, not throttled: a pipelined download pays the round trip once, as on a real
long fat link).

Used by `scripts/bench.py --rtt-ms N` in front of the S3 server, so fusedrive, JuiceFS
and rclone all see the same distance. It relays bytes and knows nothing of HTTP, which
keeps its cost per MiB a recv and a sendall (the GIL is free while they wait).
"""

from __future__ import annotations

import queue
import socket
import threading
import time

CHUNK = 256 * 1024


class LatencyProxy:
    def __init__(self, target_port: int, rtt_ms: float) -> None:
        self.target = ("127.0.0.1", target_port)
        self.delay = rtt_ms / 1000
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="latency-accept").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            self._delayed_pipe(server, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Requests go straight through."""
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shut(sink)

    def _delayed_pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Answers arrive `delay` after the server sent them: a reader stamps each chunk,
        a writer sends it when its time comes."""
        chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def read() -> None:
            try:
                while data := source.recv(CHUNK):
                    chunks.put((time.monotonic() + self.delay, data))
            except OSError:
                pass
            chunks.put((time.monotonic() + self.delay, b""))

        def write() -> None:
            try:
                while True:
                    due, data = chunks.get()
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    if not data:
                        break
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                _shut(sink)
                sink.close()
                source.close()

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
