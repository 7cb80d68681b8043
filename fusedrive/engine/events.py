"""What happened, for the user: remote changes, conflicts, upload trouble, store outages.

The drive publishes events here; `fusedrive events` streams them from the control
socket, `--notify` turns the important ones into desktop notifications, and
`StoreHealth` turns a run of store failures into one "offline" and one "back online"
event instead of one per retry. Everything runs in the trio loop.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator

import trio

from ..errors import FusedriveError, IntegrityError, KeyNotGiven, NewerFormat, StoreRefused, StoreUnreachable
from ..signals import Broadcast

log = logging.getLogger(__name__)

RECENT_EVENTS = 200
SUBSCRIBER_BUFFER = 1000
REFUSED_RETRY_SECONDS = 300  # credentials refused, bucket missing: the user must act

# kinds worth interrupting the user for (--notify); remote changes never are
NOTIFY_KINDS = {"conflict", "upload-failed", "store-offline", "store-refused", "store-online", "store-went-back",
                "replica-reads", "store-moved"}


def describe(event: dict) -> str:
    """One line a person can read."""
    kind = event["kind"]
    if kind == "remote-change":
        return f"{event['path']} {event['change']} on {event['device']}"
    if kind == "conflict":
        return f"conflict: {event['path']} was changed on two devices at once; " \
               f"the version from {event['device']} is saved as {event['copy']}"
    if kind == "upload-failed":
        return f"upload of {event['path']} failed, will retry: {event['error']}"
    if kind == "upload-recovered":
        return "uploads are going through again"
    if kind == "store-offline":
        return f"store unreachable: {event['error']} (changes stay queued here)"
    if kind == "pinned-local":
        return f"everything pinned is on this device ({event['files']} files)"
    if kind == "store-refused":
        return f"the store needs attention: {event['error']} (changes stay queued here)"
    if kind == "store-online":
        return "store reachable again: uploading what is queued"
    if kind == "replica-reads":
        return f"reading from the replica {event['replica']}: the store does not answer ({event['error']})"
    if kind == "store-moved":
        return f"the volume moved to {event['new']} (its replica was promoted; {event['old']} is not used again)"
    if kind == "primary-reads":
        return f"reading from the store {event['store']} again"
    if kind in ("store-went-back", "cache-dir-lost"):
        return event["error"]
    return f"{kind}: {event}"


class EventBus:
    """Fan-out of events to every subscriber, dropping (never blocking) for slow readers."""

    def __init__(self) -> None:
        self.recent: deque[dict] = deque(maxlen=RECENT_EVENTS)
        self._subscribers: set[trio.MemorySendChannel] = set()

    def publish(self, kind: str, **fields) -> None:
        event = {"kind": kind, "time": time.time(), **fields}
        self.recent.append(event)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                log.warning("an event reader is too slow; it misses events")
            except trio.BrokenResourceError:
                self._subscribers.discard(channel)

    def subscribe(self) -> trio.MemoryReceiveChannel:
        send, receive = trio.open_memory_channel(SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        return receive


SLOW_SECONDS = 3.0  # a request waiting this long means the store is not answering


def in_words(exc: BaseException) -> str:
    """What a user is told of a failure: our errors are sentences written for them; anything
    else (SQLite's text, an S3 client's, a bug) is only in the log."""
    return str(exc) if isinstance(exc, FusedriveError) else "an internal error (the mount's log has the details)"


class Problems:
    """The problems the user should see in `fusedrive status` (the last 20 are kept), and
    the parts of the device that cannot go on (`stuck`) until what stops them is gone."""

    def __init__(self) -> None:
        self.recent: deque[str] = deque(maxlen=20)
        self.needs_upgrade: str | None = None  # why this device cannot follow the volume until upgraded
        self.integrity: str | None = None  # a journal entry or checkpoint that failed verification
        self.key_not_given: str | None = None  # the volume moved to a key epoch this device's person was not given
        self.stuck: dict[str, str] = {}  # "apply" / "commit" → why it cannot, for a cause that is not the store
        self._said: dict[str, str] = {}  # place → the last message said from there
        self._integrity_from: str | None = None  # the part whose failure set `integrity`, if one did

    def report(self, message: str, cause: Exception | None = None, place: str | None = None) -> None:
        """`cause`: the exception behind it, when it says more than the words (a newer
        format, a failed verification: status shows those apart, with their exit codes).
        `place`: where it comes from; the same message from the same place (a retry) is said once."""
        if isinstance(cause, NewerFormat):
            self.needs_upgrade = str(cause)
        elif isinstance(cause, KeyNotGiven):
            self.key_not_given = str(cause)
        elif isinstance(cause, IntegrityError):
            self.integrity = str(cause)
        log.error(message, exc_info=cause if cause is not None and not isinstance(cause, FusedriveError) else None)
        said = self.recent[-1] if place is None and self.recent else self._said.get(place or "", "")
        if said.endswith(message):
            return  # the same problem again (a retry): said once
        if place is not None:
            self._said[place] = message
        self.recent.append(f"{time.strftime('%H:%M:%S')} {message}")

    def cannot(self, part: str, message: str, cause: Exception) -> None:
        """`part` ("apply", "commit") failed for `cause`, not the store: said once; and for
        a cause that is not one of ours (those have their own verdicts: a newer format, a
        failed verification, a lost cache dir), the device says it is stuck (status exit
        17) until `resolved(part)`."""
        self.report(f"{message}: {in_words(cause)}", cause, place=part)
        if isinstance(cause, IntegrityError):
            self._integrity_from = part
        if not isinstance(cause, FusedriveError):
            self.stuck[part] = message

    def resolved(self, part: str) -> None:
        """`part` works again: what stopped it is over (a journal gap another device filled)."""
        self.stuck.pop(part, None)
        self._said.pop(part, None)
        if self._integrity_from == part:
            self.integrity = self.key_not_given = self._integrity_from = None


class StoreHealth:
    """Is the store reachable? Fed by every upload and commit, it says so once per change."""

    def __init__(self, events: EventBus) -> None:
        self.events = events
        self.offline_since: float | None = None
        self.last_error: str | None = None
        self.refused: str | None = None  # the store answers but refuses us: it needs the user
        self.recovered = Broadcast()  # retries waiting out a backoff wake up on it
        self._waiting: dict[int, float] = {}  # requests now in flight → when each started
        self._tokens = itertools.count()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Around a store request someone waits for: a store that hangs shows in status
        within SLOW_SECONDS, long before the request times out."""
        token = next(self._tokens)
        started = self._waiting[token] = time.time()
        try:
            yield
        except trio.Cancelled:  # given up on (an open's freshness check, a read's --io-timeout)
            waited = time.time() - started
            if waited > SLOW_SECONDS:
                self.failed(StoreUnreachable(f"The store did not answer within {waited:.0f} s."))
            raise
        finally:
            del self._waiting[token]

    def state(self) -> tuple[float | None, str | None]:
        """(unreachable since, why), or (None, None) while it answers."""
        if self.offline_since is not None:
            return self.offline_since, self.last_error
        oldest = min(self._waiting.values(), default=None)
        if oldest is not None and time.time() - oldest > SLOW_SECONDS:
            return oldest, f"The store has not answered a request for {time.time() - oldest:.0f} s."
        return None, None

    async def backoff(self, seconds: float) -> None:
        """Sleep before a retry, but only until the store is seen answering again. A store
        that refuses us is asked again only every REFUSED_RETRY_SECONDS (or on a sync)."""
        with trio.move_on_after(REFUSED_RETRY_SECONDS if self.refused else seconds):
            await self.recovered.wait()

    def retry_now(self) -> None:
        """Someone waits for the store (sync, fsync): retries waiting out a backoff go now (also
        after a failure that was not the store's: what stopped it may be over, a repaired entry)."""
        self.recovered.fire()

    def failed(self, error: Exception) -> None:
        self.last_error = str(error)
        if isinstance(error, StoreRefused):
            if self.refused != str(error):
                self.events.publish("store-refused", error=str(error))
            self.refused = str(error)
            return
        if self.offline_since is None:
            self.offline_since = time.time()
            self.events.publish("store-offline", error=str(error))

    def succeeded(self, wrote: bool) -> None:
        """The store answered; `wrote`: a write went through (a store that refuses writes
        but lets us read, a read-only key, still needs attention after a read)."""
        self.last_error = None
        if wrote:
            self.refused = None
        if self.offline_since is not None:
            self.offline_since = None
            self.events.publish("store-online")
            self.recovered.fire()


async def notify_desktop(events: EventBus) -> None:
    """--notify: raise freedesktop notifications (notify-send) for conflicts and problems."""
    command = shutil.which("notify-send")
    if command is None:
        log.warning("--notify: notify-send is not installed; no desktop notifications")
        return
    async with events.subscribe() as receive:
        async for event in receive:
            if event["kind"] not in NOTIFY_KINDS:
                continue
            urgency = "critical" if event["kind"] in ("upload-failed", "store-offline") else "normal"
            try:
                await trio.run_process([command, "--app-name=fusedrive", f"--urgency={urgency}", "fusedrive",
                                        describe(event)], check=False)
            except OSError as exc:
                log.warning("notify-send failed: %s", exc)
