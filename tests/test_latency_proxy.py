"""The relay `bench.py --rtt-ms` puts in front of the store: every answer arrives the round
trip late, whole and in order, and a long answer pays it once (bandwidth untouched)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from fusedrive.testing.latency import LatencyProxy

pytestmark = pytest.mark.inprocess


def _echo_server() -> socket.socket:
    """Answers each request (4 bytes of length, then the body) with the body itself."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while header := conn.recv(4, socket.MSG_WAITALL):
                body = conn.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
                conn.sendall(body)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


def _ask(conn: socket.socket, body: bytes) -> bytes:
    conn.sendall(len(body).to_bytes(4, "big") + body)
    return conn.recv(len(body), socket.MSG_WAITALL)


def test_each_answer_arrives_a_round_trip_late_and_whole():
    server = _echo_server()
    proxy = LatencyProxy(server.getsockname()[1], rtt_ms=50)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as conn:
            for size in (10, 3_000_000):
                body = os.urandom(size)
                started = time.monotonic()
                assert _ask(conn, body) == body
                elapsed = time.monotonic() - started
                assert 0.05 <= elapsed < 0.5, (size, elapsed)  # one round trip, not one per chunk
    finally:
        proxy.stop()
        server.close()
