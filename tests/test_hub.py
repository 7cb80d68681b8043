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


@pytest.fixture
def hub():
    process = HubProcess(free_port())
    process.start()
    yield process
    process.stop()


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
