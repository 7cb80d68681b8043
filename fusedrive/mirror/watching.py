"""Hearing the folder's changes: watchdog's observer (inotify on Linux, FSEvents and
ReadDirectoryChangesW elsewhere) runs in its own thread; each event is handed to the
mirror in the trio thread, as the path it concerns."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import trio
from watchdog.events import (EVENT_TYPE_CLOSED, EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_MOVED, EVENT_TYPE_OPENED,
                             DirModifiedEvent, EventsLostEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer

from .mirror import Mirror

NOT_A_CHANGE = {EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE}


class _Handler(FileSystemEventHandler):
    def __init__(self, mirror: Mirror, token: trio.lowlevel.TrioToken) -> None:
        self.mirror = mirror
        self.token = token
        self.prefix = mirror.root + b"/"

    def on_any_event(self, event: FileSystemEvent) -> None:  # the observer's thread
        if event.event_type in NOT_A_CHANGE or isinstance(event, DirModifiedEvent):
            return  # a folder's mtime changes with every entry in it: those entries say what changed
        try:
            self.token.run_sync_soon(self._deliver, event)
        except trio.RunFinishedError:
            pass

    def _deliver(self, event: FileSystemEvent) -> None:  # the trio thread
        if isinstance(event, EventsLostEvent):
            self.mirror.events_lost()
            return
        source = self._inside(event.src_path)
        if event.event_type == EVENT_TYPE_MOVED:
            destination = self._inside(event.dest_path)
            if source is not None and destination is not None:
                self.mirror.local_moved(source, destination)
            elif destination is not None:  # moved in from outside: new here
                self.mirror.local_changed(destination)
            elif source is not None:  # moved out: gone from here
                self.mirror.local_changed(source)
        elif source is not None:
            self.mirror.local_changed(source, closed=event.event_type == EVENT_TYPE_CLOSED)

    def _inside(self, path: str | bytes) -> bytes | None:
        """The path relative to the folder; None for the folder itself or outside it."""
        path = os.fsencode(path)
        return path[len(self.prefix):] if path.startswith(self.prefix) else None


@contextlib.contextmanager
def watching(mirror: Mirror) -> Iterator[None]:
    """Watch the mirror's folder, recursively, while in the block (called in trio)."""
    observer = Observer()
    observer.schedule(_Handler(mirror, trio.lowlevel.current_trio_token()), os.fsdecode(mirror.root),
                      recursive=True)
    observer.start()
    try:
        yield
    finally:
        observer.stop()
        observer.join(timeout=10)
