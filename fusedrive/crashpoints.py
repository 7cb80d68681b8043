"""Test-only crash points: SIGKILL this process at a named step of the upload and commit
path, the way SQLite and S3QL test durability. `FUSEDRIVE_CRASH_AT=STEP` kills at the
first time STEP is reached (`STEP:N` at the N-th). Unset (always, outside tests) a crash
point costs one comparison.

Steps: `staged` (a closed file is staged, its upload not started), `blocks-stored` (its
blocks are in the store, its update not recorded), `before-append` (a commit is marked
in flight, its journal PUT not sent), `after-append` (the PUT landed, not recorded here),
`rebase` (other devices' entries applied, this device's queue not re-applied yet, in
the middle of the transaction), `checkpoint` (a checkpoint stored, not recorded here).

`hook`: the whole-engine simulation's (fusedrive/testing/simulation.py), which may end the
device's simulated process at any of these steps.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

STEPS = ("staged", "blocks-stored", "before-append", "after-append", "rebase", "checkpoint")
_step, _, _nth = (os.environ.get("FUSEDRIVE_CRASH_AT") or "").partition(":")
_remaining = int(_nth or 1)
hook: Callable[[str], None] | None = None


def crash_point(step: str) -> None:
    """Die here, without cleaning anything up, if the environment names this step."""
    global _remaining
    if hook is not None:
        hook(step)
    if step != _step:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
