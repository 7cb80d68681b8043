"""The retention policy: which old versions and trashed files `fusedrive gc` lets go.

Stored sealed in the volume (`settings`), so every device and every gc run applies
the same policy; `fusedrive config` shows and changes it. Nothing here deletes:
`thin` and `expired_trash` only decide, gc turns the decisions into journal ops.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Hashable, TypeVar

from ..store import NotFound
from ..store.volume import Volume

SETTINGS_KEY = "settings"
DAY = 86400.0


@dataclass(frozen=True)
class Retention:
    keep_all_days: float = 30  # every version younger than this is kept
    keep_daily_days: float = 365  # then the newest version of each day, up to this age
    max_versions: int = 100  # never more than this many per file (the current one included)
    trash_days: float = 30  # deleted files stay in the trash this long

    def describe(self) -> str:
        return (f"keep every version for {self.keep_all_days:g} days, then one per day up to "
                f"{self.keep_daily_days:g} days, at most {self.max_versions} versions per file; "
                f"trash kept {self.trash_days:g} days")


V = TypeVar("V", bound=Hashable)


def thin(versions: list[tuple[V, float]], current: V, policy: Retention, now: float) -> set[V]:
    """The versions to drop, from (version, time saved) of one file's (or one path's) history;
    a version is whatever names it (a number, or a (file, number) along a path)."""
    kept: list[int] = []
    days_kept: set[int] = set()
    drop: set[int] = set()
    for version, saved in sorted(versions, key=lambda v: (v[1], v[0]), reverse=True):
        age = now - saved
        if version == current or age <= policy.keep_all_days * DAY:
            kept.append(version)
        elif age <= policy.keep_daily_days * DAY and int(saved // DAY) not in days_kept:
            kept.append(version)
        else:
            drop.add(version)
            continue
        days_kept.add(int(saved // DAY))
    over = len(kept) - policy.max_versions
    for version in reversed(kept):  # oldest first
        if over <= 0:
            break
        if version != current:
            drop.add(version)
            over -= 1
    return drop


def expired_trash(deleted_at: dict[str, float], policy: Retention, now: float) -> set[str]:
    """File ids whose time in the trash is up."""
    return {fid for fid, when in deleted_at.items() if now - when > policy.trash_days * DAY}


def load_retention(volume: Volume) -> Retention:
    try:
        blob = volume.store.get(SETTINGS_KEY)
    except NotFound:
        return Retention()
    data = json.loads(volume.unseal(SETTINGS_KEY, blob, "The volume settings"))
    known = {f.name for f in fields(Retention)}
    return Retention(**{k: v for k, v in data.get("retention", {}).items() if k in known})


def save_retention(volume: Volume, policy: Retention) -> None:
    body = json.dumps({"retention": asdict(policy)}).encode()
    volume.store.put(SETTINGS_KEY, volume.seal(SETTINGS_KEY, body))
