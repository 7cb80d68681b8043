"""A device's side of the notification hub (services/hub.py): blocking calls made from
worker threads. The hub is never trusted for data: any failure means "poll instead"."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

WAIT_SECONDS = 30.0
PROBE_SECONDS = 2.0  # a hub not known to answer gets this long before the device polls instead
# A device's long-poll lasts this long, so that a hub that hangs (accepts, never answers) is
# noticed within it plus a margin: then the device polls.
DEVICE_WAIT_SECONDS = 10.0


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


