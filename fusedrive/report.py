"""How `fusedrive status` puts a mount's state into words: a verdict first, details after."""

from __future__ import annotations

import time
from typing import Any, Callable

Progress = Callable[[str, int], Any]  # (what, total) → a bar with update() and close(); cli.progress


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(what: str, total: int) -> _NoBar:
    """A Progress that shows nothing (the simulation's and the tests' commands)."""
    return _NoBar()


def human_bytes(n: float) -> str:
    """Binary units, as --cache-size takes them (4G is 4.0 GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def count(n: int, one: str, many: str) -> str:
    """"1 conflicted copy", "3 conflicted copies"."""
    return f"{n:,} {one if n == 1 else many}"


def clock(timestamp: float) -> str:
    """10:42 today, else 2026-11-23 10:42."""
    local = time.localtime(timestamp)
    if time.strftime("%Y-%m-%d", local) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M", local)
    return time.strftime("%Y-%m-%d %H:%M", local)


def where_data_lives(volume_url: str) -> str:
    """"in the cloud", or for a file:// volume the directory: nobody should take a USB disk
    for an off-site backup."""
    if volume_url.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return f"in the volume directory {unquote(urlparse(volume_url).path)} (a local disk, not the cloud)"
    return "in the cloud"


def is_pending(status: dict) -> bool:
    return bool(status["files_waiting"] or status["ops_waiting"] or status.get("folder_changes_waiting"))


def verdict(status: dict) -> str:
    """The one line that answers "is my data in the cloud yet?"."""
    if status.get("cache_dir_lost"):
        return status["cache_dir_lost"]
    if status.get("needs_upgrade"):
        return status["needs_upgrade"]
    if status.get("key_not_given"):
        return (f"This device can no longer read the volume: {status['key_not_given']} It shows what it had; "
                f"{count(status['ops_waiting'], 'change', 'changes')} made here stay queued.")
    if status.get("integrity_problem"):
        return (f"Something read from the store failed verification, so it was not applied: "
                f"{status['integrity_problem']} Changes stay queued here; run `fusedrive fsck`.")
    if status.get("stuck"):
        return (f"This device is stuck — {status['stuck'][0].lower()}{status['stuck'][1:]} (an internal error): it "
                f"serves what it has and keeps {status['ops_waiting']} changes queued; run `fusedrive fsck "
                f"{status['volume']}` and report the mount's log.")
    if status.get("cannot_write") and status["ops_waiting"]:
        waiting = count(status["ops_waiting"], "change", "changes")
        return f"This device cannot commit: {status['cannot_write']}; {waiting} made here stay queued, uncommitted."
    if not is_pending(status):
        line = f"All changes are {where_data_lives(status['volume'])}"
        if status.get("cannot_write"):
            line += f" — read-only here: {status['cannot_write']}"
            not_uploaded = status.get("folder_changes_not_uploaded")
            if not_uploaded:
                line += f" (this mirror does not upload: {count(not_uploaded, 'change', 'changes')} stay in the folder)"
        if status.get("store_needs_attention"):
            line += f" — but the store needs attention: {status['store_needs_attention']}"
        elif status["store_offline_since"] is not None:
            line += f" — but the store has not answered since {clock(status['store_offline_since'])}"
        elif status.get("replica_reads_since") is not None:
            line += f" — but the store has not answered since {clock(status['replica_reads_since'])}: files are " \
                    "read from its replica"
    else:
        parts = []
        if status.get("folder_changes_waiting"):  # a mirror: changes in its folder not taken yet
            parts.append(f"{status['folder_changes_waiting']} changes in the folder being taken")
        if status["files_waiting"]:
            parts.append(f"{status['files_waiting']} files ({human_bytes(status['bytes_waiting'])}) waiting to upload")
        if status["ops_waiting"]:
            parts.append(f"{status['ops_waiting']} changes waiting to be committed")
        line = ", ".join(parts)
        if status.get("store_needs_attention"):
            line += f" — the store needs attention: {status['store_needs_attention'].rstrip('.')}"
        elif status["store_offline_since"] is not None:
            line += f" — store unreachable since {clock(status['store_offline_since'])}"
        elif status["paused"]:
            line += " — paused"
    if status["conflicted_copies"]:
        line += f"; {count(status['conflicted_copies'], 'conflicted copy', 'conflicted copies')} to look at"
    return line + "."


def replica_line(status: dict) -> str:
    """The replica store, how far behind it is, and whether reads come from it."""
    parts = [status["replica"]]
    if status.get("replica_reads_since") is not None:
        parts.append(f"READING FROM IT since {clock(status['replica_reads_since'])} (the store does not answer)")
    if status.get("replica_by_provider"):
        parts.append("kept by the provider's replication")
    elif status.get("replica_objects_behind"):
        parts.append(f"{count(status['replica_objects_behind'], 'object', 'objects')} "
                     f"({human_bytes(status['replica_bytes_behind'])}) written here not copied yet")
    else:
        parts.append("has everything written here")
    entries = status.get("replica_entries_behind")
    if entries:
        parts.append(f"its journal {count(entries, 'entry', 'entries')} behind")
    line = ", ".join(parts)
    return line + (f" — {status['replica_error']}" if status.get("replica_error") else "")


def moved_line(status: dict) -> str:
    """The volume moved to its promoted replica: from where, and what is left to do about the old store."""
    line = f"from {status['moved_from']} at {clock(status['moved_at'])} (its replica was promoted)"
    if not status["old_store_fenced"]:
        line += "; the old store is not fenced yet (it does not answer: tried again every few seconds)"
    if status.get("replica_objects_behind") and "replica" not in status:
        line += (f"; {count(status['replica_objects_behind'], 'object', 'objects')} written here before the move "
                 "are not on the new store yet")
    return line


def pins_line(state: dict) -> str:
    """What is pinned and whether it is all here, in one line."""
    if not state.get("pinned"):
        return "pinned: nothing"
    line = f"pinned: {state['pinned_files']:,} files, {human_bytes(state['pinned_bytes'])}"
    if not state["pinned_files_waiting"]:
        return line + ", all on this device"
    line += (f"; {state['pinned_files_waiting']:,} files ({human_bytes(state['pinned_bytes_waiting'])}) "
             "still downloading")
    return line + (f" — {state['pinned_error']}" if state.get("pinned_error") else "")


def details(status: dict) -> list[str]:
    endpoint = f" at {status['endpoint']}" if status.get("endpoint") else ""
    lines = [f"volume      {status['volume']}{endpoint} (device {status['device']})"]
    if "folder" in status:  # a mirror
        waiting = status["folder_changes_waiting"]
        folder = f"{status['folder']}, mirrored: " + (f"{waiting} changes being taken" if waiting else "nothing waiting")
        if not status["first_scan_done"]:
            folder += f", first scan at {status['scanned']:,} of ~{status['volume_entries']:,} paths"
        if status["folder_paths_failing"]:
            folder += f", {status['folder_paths_failing']} paths failing (tried again every few seconds)"
        lines.append(f"folder      {folder}")
    if status.get("store_needs_attention"):
        lines.append(f"store       NEEDS ATTENTION (retried every few minutes, and at a sync): "
                     f"{status['store_needs_attention']}")
    elif status["store_offline_since"] is not None:
        lines.append(f"store       OFFLINE since {clock(status['store_offline_since'])}: {status['store_error']}")
    else:
        lines.append("store       reachable")
    if "moved_from" in status:
        lines.append(f"moved       {moved_line(status)}")
    if "replica" in status:
        lines.append(f"replica     {replica_line(status)}")
    hub = status["hub"]
    lines.append(f"changes     {'hub ' + hub if hub else 'polling the journal'}; applied entry "
                 f"{status['applied_seq']} of {status['journal_head']}")
    queue = f"{status['files_waiting']} files, {human_bytes(status['bytes_waiting'])}, {status['ops_waiting']} changes"
    if status["waiting_since"] is not None:
        queue += f", oldest since {clock(status['waiting_since'])}"
    lines.append(f"queue       {queue}")
    lines.append(f"transfers   up {human_bytes(status['upload_rate'])}/s, down {human_bytes(status['download_rate'])}/s "
                 f"(total up {human_bytes(status['bytes_uploaded'])}, down {human_bytes(status['bytes_downloaded'])})")
    lines.append(f"cache       {human_bytes(status['cache_bytes'])} of {human_bytes(status['cache_limit'])}")
    if status.get("pinned"):
        lines.append(f"offline     {pins_line(status)}")
    if status["conflicted_copies"]:
        lines.append(f"conflicts   {count(status['conflicted_copies'], 'conflicted copy', 'conflicted copies')} in "
                     "the drive (keep what you need, delete the copy):")
        lines += [f"              {path}" for path in status.get("conflicted_copy_paths", [])]
    for error in status["errors"][-3:]:
        lines.append(f"error       {error}")
    return lines
