"""The mirror's rules, as a pure function of three views of one path: the folder's now
(`local`), the volume's now (`remote`), and what both last agreed on (`synced`).

- Neither side changed since they agreed: nothing to do.
- One side changed: it wins, the other side is made equal to it (a push or a pull).
- Both changed (or they never agreed, as on a first sync): a merge. Equal things are
  simply agreed on; a deletion loses to a change (a file changed on one side and deleted
  on the other comes back, as in the mount); two different files (or a file and a
  folder) become the volume's under the name and the local one as a conflicted copy
  beside it. Equal files with different permissions take the folder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .folder import LocalEntry
from .synced import Synced


@dataclass(frozen=True)
class RemoteEntry:
    kind: str  # "file", "dir" or "link"; anything else is not mirrored
    fid: str
    size: int
    mtime_ns: int
    mode: int  # permission bits
    target: bytes | None = None


class Action(Enum):
    NOTHING = "nothing"
    PUSH = "push"  # the folder's side wins
    PULL = "pull"  # the volume's side wins
    MERGE = "merge"  # both changed: see `merge`


class Merge(Enum):
    AGREE = "agree"  # the same on both sides: record it
    PUSH = "push"
    PULL = "pull"
    CONFLICT = "conflict"  # the local file becomes a conflicted copy, then the volume's is pulled


def local_unchanged(local: LocalEntry | None, synced: Synced | None) -> bool:
    if local is None or synced is None:
        return local is None and synced is None
    if local.kind != synced.kind or local.mode != synced.mode:
        return False
    if local.kind == "file":
        return (local.size, local.mtime_ns, local.ino) == (synced.size, synced.mtime_ns, synced.ino)
    return local.target == synced.target


def remote_unchanged(remote: RemoteEntry | None, synced: Synced | None) -> bool:
    """A file's content counts as unchanged while its size and mtime are what was agreed
    (its version moves with this device's own uploads, which change neither)."""
    if remote is None or synced is None:
        return remote is None and synced is None
    if remote.fid != synced.fid or remote.kind != synced.kind or remote.mode != synced.mode:
        return False
    if remote.kind == "file":
        return (remote.size, remote.mtime_ns) == (synced.size, synced.mtime_ns)
    return remote.target == synced.target


def decide(local: LocalEntry | None, synced: Synced | None, remote: RemoteEntry | None) -> Action:
    local_same, remote_same = local_unchanged(local, synced), remote_unchanged(remote, synced)
    if local_same and remote_same:
        return Action.NOTHING
    if local_same:
        return Action.PULL
    if remote_same:
        return Action.PUSH
    return Action.MERGE


def merge(local: LocalEntry | None, remote: RemoteEntry | None, same_content: bool) -> Merge:
    """Both sides changed. `same_content`: two files whose bytes are equal (the caller
    compares only when their sizes are)."""
    if local is None:
        return Merge.PULL if remote is not None else Merge.AGREE
    if remote is None:
        return Merge.PUSH
    if local.kind != remote.kind:
        return Merge.CONFLICT  # the local one (a folder too) moves aside under a conflicted-copy name
    if local.kind == "dir":
        return Merge.AGREE if local.mode == remote.mode else Merge.PUSH
    if local.kind == "link":
        return Merge.AGREE if local.target == remote.target else Merge.CONFLICT
    if same_content:
        return Merge.AGREE
    # An empty file on one side holds nothing to lose (a `touch`, or the create of a push
    # a kill cut off before its content was taken): the other side's content is the file.
    if remote.size == 0:
        return Merge.PUSH
    if local.size == 0:
        return Merge.PULL
    return Merge.CONFLICT
