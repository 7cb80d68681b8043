"""What the committer tells the rest of the drive, as events.

The committer (committer.py) applies other devices' entries and appends this device's; what
follows from that — the front end told what changed, the hub told of a commit, status and
the user told of a fork or a store that went back — is not its business. It hands each
event to the one `Tell` it was built with; the Drive (drive.py) decides what each means.
Events are handed over in the trio thread, between awaits: a handler must not block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .journal import Entry
from .replica import Rebased


@dataclass(frozen=True)
class Applied:
    """Other devices' entries were applied under this device's queue (`rebased`: what the
    rebase did: conflicted copies, saves brought back)."""
    entries: list[Entry]
    rebased: Rebased


@dataclass(frozen=True)
class Committed:
    """This device's entry `seq` is in the store."""
    seq: int


@dataclass(frozen=True)
class CommitFailed:
    """A commit failed for a reason that is not the store's (status says it until one works)."""
    cause: Exception


@dataclass(frozen=True)
class CommitsWork:
    """A commit went through after CommitFailed."""


@dataclass(frozen=True)
class EntriesPutBack:
    """The store had gone back in time; this device put `restored` back, and could not put
    back the objects `lost` (not on this device)."""
    restored: list[Entry]
    lost: list[str]


@dataclass(frozen=True)
class HistoryForked:
    """The store had gone back and other devices committed since: the changes of `requeued`
    (entries the store's history lost) are committed again; `lost`: objects not put back."""
    requeued: list[Entry]
    lost: list[str]


@dataclass(frozen=True)
class GapFilled:
    """No device put the entries `missing` back in time: this device took their seqs."""
    missing: range


@dataclass(frozen=True)
class HistoryRetaken:
    """The replica took another history (a fork, a gap filled): carried blocks are read anew."""


CommitterEvent = Applied | Committed | CommitFailed | CommitsWork | EntriesPutBack | HistoryForked | GapFilled | \
    HistoryRetaken
Tell = Callable[[CommitterEvent], None]
