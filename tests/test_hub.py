"""The notification hub: changes arrive at once through it, devices fall back to
polling while it is down and go back to it when it returns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from test_sync import wait_for

SLOW_POLL = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "fusedrive.cli", "hub", "--listen",
                                         f"127.0.0.1:{self.port}"], stdout=subprocess.PIPE, text=True)
        assert "listening" in self.process.stdout.readline()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def arrival_seconds(writer, reader, name: str) -> float:
    """Seconds from close() on the writer until the name shows in the reader's listing.
    (A listing does not trigger the open-time freshness check: only the tail task can
    bring the change.)"""
    with open(writer.p(name), "wb") as f:
        f.write(b"x")
    start = time.monotonic()
    wait_for(lambda: name in os.listdir(reader.path), timeout=SLOW_POLL * 3, what=f"{name} on the reader")
    return time.monotonic() - start


def test_changes_arrive_through_the_hub_and_survive_its_outage(s3_volume, hub):
    url = f"http://127.0.0.1:{hub.port}"
    a = s3_volume.mount("laptop", poll_interval=SLOW_POLL, hub=url)
    b = s3_volume.mount("desktop", poll_interval=SLOW_POLL, hub=url)
    wait_for(lambda: b.control("status")["hub"] == "connected", what="hub connection")
    fast = [arrival_seconds(a, b, f"via-hub-{i}") for i in range(3)]
    assert max(fast) < 2.0, f"with the hub, changes arrive at once (polling is every {SLOW_POLL} s): {fast}"

    hub.stop()
    slow = arrival_seconds(a, b, "while-hub-down")
    assert slow < SLOW_POLL * 2.5
    assert b.control("status")["hub"] == "polling"

    hub.start()  # same port
    wait_for(lambda: b.control("status")["hub"] == "connected", timeout=SLOW_POLL * 3, what="hub again")
    wait_for(lambda: a.control("status")["hub"] == "connected", timeout=SLOW_POLL * 3, what="hub again")
    again = arrival_seconds(a, b, "hub-is-back")
    assert again < 2.0


def test_hub_rejects_nonsense(hub):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{hub.port}/wait?after=1", timeout=5)
    assert info.value.code == 400


class BrokenHub:
    """A hub that answers as told: properly ("ok"), or the ways a dying or hostile one does —
    headers then closing mid-answer, a reset, garbage, or nothing at all."""

    def __init__(self) -> None:
        import threading

        self.mode = "ok"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        import struct

        request = conn.recv(65536).decode(errors="replace")
        mode = self.mode
        if mode == "ok":
            time.sleep(0.5)
            body = b'{"seq": 1}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
        elif mode == "truncated":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"se")
        elif mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "garbage":
            conn.sendall(b"\x00\xffnot http at all\r\n\r\n" + os.urandom(200))
        elif mode == "hang":
            self.held.append(conn)
            return
        conn.close()
        del request

    def stop(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def broken_hub():
    hub = BrokenHub()
    yield hub
    hub.stop()


def test_a_hub_that_fails_in_any_way_means_polling_never_a_dead_mount(s3_volume, broken_hub):
    """A hub killed while answering sends headers and closes: the mounts crashed on it and
    their mount points silently became plain directories. Every failure means: poll."""
    url = f"http://127.0.0.1:{broken_hub.port}"
    a = s3_volume.mount("laptop", poll_interval=1, hub=url)
    b = s3_volume.mount("desktop", poll_interval=1, hub=url)
    for mode in ("truncated", "reset", "garbage", "hang"):
        broken_hub.mode = "ok"
        wait_for(lambda: b.control("status")["hub"] == "connected", timeout=20, what="the hub connection")
        broken_hub.mode = mode
        time.sleep(1.5)  # the long-polls in flight meet the failure
        arrival = arrival_seconds(a, b, f"while-the-hub-is-{mode}")
        assert arrival < 25, f"with the hub {mode}, polling brings changes ({arrival:.1f} s)"
        for mount in (a, b):
            assert os.path.ismount(mount.path), f"the {mode} hub took the {mount.device} mount down"
            assert mount.control("status")["errors"] == []
