"""Space: `fusedrive gc` (retention, then unreferenced blocks) and `fusedrive du`.

gc works on the volume directly and is safe while devices are mounted and writing:
- Retention becomes journal ops (`prune` old versions, `purge` expired trash),
  appended like any device's commit, so every device applies the same decision.
- A block is deleted only if nothing retained references it (live files, kept
  versions, the trash; the journal is read again right before deleting, so commits
  that landed meanwhile count) and it is older than the grace period: a block another
  device uploaded but has not committed yet is young, and stays. A pack (small files'
  blocks stored together) goes once none of its blocks is referenced; until then the
  blocks in it nothing references still take their space (packs are not rewritten).
- Archiving moves whole objects to a cold class, so blocks in packs stay where they are.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable

from ..engine.blocks import BLOCKS, PACKS, block_key, pack_key, stored_objects
from ..engine.checkpoints import replay_to_head
from ..errors import FusedriveError, UsageError
from ..engine.journal import Entry, Journal
from ..engine.membership import NotAWriter, Roster, apply_checked, follow_epoch
from ..engine.manifest import Carried, Location, known_lengths, pieces
from ..report import Progress
from ..engine.replica import Replica
from ..engine.retention import Retention, expired_trash, thin
from ..store import StorageClasses
from ..store.volume import Volume

APPEND_ATTEMPTS = 20  # of appending a command's journal entry while devices commit



@dataclass
class GcReport:
    dry_run: bool
    versions_pruned: int = 0
    trash_purged: int = 0
    blocks_deleted: int = 0
    packs_deleted: int = 0  # packs of small files' blocks none of which is referenced now
    bytes_reclaimed: int = 0
    blocks_kept_young: int = 0  # unreferenced blocks and packs, but within the grace period

    def as_dict(self) -> dict:
        return asdict(self)


def retention_ops(replica: Replica, policy: Retention, now: float) -> list[dict]:
    """The prune and purge operations the policy asks for at `now`."""
    t = int(now * 1e9)
    by_path: dict[str, list[tuple[tuple[str, int], float]]] = defaultdict(list)  # one history per path
    heads: dict[str, str] = {}  # each file's path history, looked up once (not once per version)
    for fid, number, saved in replica.db.execute("SELECT fid, version, t FROM versions"):
        if fid not in heads:
            heads[fid] = replica.history_head(fid)
        by_path[heads[fid]].append(((fid, number), saved / 1e9))
    drops: dict[str, list[int]] = defaultdict(list)
    for kept in by_path.values():
        for fid, number in thin(kept, max(kept, key=lambda v: (v[1], v[0]))[0], policy, now):
            drops[fid].append(number)
    ops = [{"op": "prune", "fid": fid, "versions": sorted(numbers), "t": t} for fid, numbers in sorted(drops.items())]
    deleted_at = {fid: deleted / 1e9 for fid, deleted in replica.db.execute("SELECT fid, deleted_t FROM trash")}
    expired = expired_trash(deleted_at, policy, now)
    if expired:
        ops.append({"op": "purge", "fids": sorted(expired), "t": t})
    return ops


def catch_up(journal: Journal, replica: Replica) -> None:
    """Apply (checked) what devices committed since `replica` was replayed."""
    apply_checked(replica, journal.entries_after(replica.applied_seq))


def append_at_head(journal: Journal, replica: Replica, make_ops: Callable[[], list[dict]], device: str) -> list[dict]:
    """Commit `make_ops()` as this command's journal entry at the head (signed by this
    machine's device key where it has one), deciding again on the newer state whenever a
    device committed first. Returns what was committed."""
    for _attempt in range(APPEND_ATTEMPTS):
        ops = make_ops()
        if not ops:
            return []
        signer, roster = journal.volume.signer, Roster.of(replica)
        follow_epoch(journal.volume.keys, roster)
        refused = roster.may_write(signer)
        if refused is not None:
            raise NotAWriter(f"This command cannot change the volume: {refused}.")
        entry = Entry(seq=replica.applied_seq + 1, device=device, ops=ops)
        if journal.append(entry, signer):
            replica.apply_remote(entry.seq, ops)
            return ops
        catch_up(journal, replica)
    raise FusedriveError("Devices are committing too fast to add this command's journal entry; try again.")


def archive(volume: Volume, older_than: float, storage_class: str, progress: Progress,
            now: float | None = None) -> dict:
    """Move blocks referenced only by versions older than `older_than` seconds to a cold
    storage class, and record them so reading such a version says so instead of hanging."""
    _needs_storage_classes(volume)
    now = time.time() if now is None else now
    journal, replica = Journal(volume), Replica(":memory:")
    replay_to_head(volume, replica)
    cutoff = int((now - older_than) * 1e9)
    old = _block_lengths(replica, "SELECT manifest FROM versions WHERE t < ?", (cutoff,))
    needed = {**_block_lengths(replica, "SELECT manifest FROM inodes WHERE nlink > 0"),
              **_block_lengths(replica, "SELECT manifest FROM trash"),
              **_block_lengths(replica, "SELECT manifest FROM versions WHERE t >= ?", (cutoff,))}
    packed = {block for block, location in replica.all_block_refs() if location is not None}  # not an object of its own
    moving = sorted(b for b in old.keys() - needed.keys() - packed if replica.archived_class(b) is None)
    moved = _set_class(volume, moving, storage_class, progress, "archiving")
    append_at_head(journal, replica, lambda: [{"op": "archive", "blocks": moved, "storage_class": storage_class,
                                              "t": time.time_ns()}] if moved else [], "archive")
    replica.close()
    return {"blocks_archived": len(moved), "storage_class": storage_class}


def thaw(volume: Volume, progress: Progress) -> dict:
    """Bring every archived block back to the standard class (on AWS: request the restore
    first; blocks still on their way are counted as waiting, run thaw again later)."""
    _needs_storage_classes(volume)
    journal, replica = Journal(volume), Replica(":memory:")
    replay_to_head(volume, replica)
    archived = [b for (b,) in replica.db.execute("SELECT block FROM archived ORDER BY block")]
    thawed = _set_class(volume, archived, "STANDARD", progress, "thawing")
    append_at_head(journal, replica, lambda: [{"op": "thaw", "blocks": thawed, "t": time.time_ns()}]
                   if thawed else [], "thaw")
    replica.close()
    return {"blocks_thawed": len(thawed), "blocks_waiting": len(archived) - len(thawed)}


def _needs_storage_classes(volume: Volume) -> None:
    if not isinstance(volume.store, StorageClasses):
        raise UsageError(f"The volume at {volume.url} has no storage classes to archive to; archive needs an S3 "
                         "volume.")


def _set_class(volume: Volume, block_ids: list[str], storage_class: str, progress: Progress, what: str) -> list[str]:
    store = volume.store
    assert isinstance(store, StorageClasses)  # checked by archive() and thaw() before any work
    done = []
    bar = progress(what, len(block_ids))
    for block_id in block_ids:
        if store.set_storage_class(block_key(block_id), storage_class):
            done.append(block_id)
        bar.update(1)
    bar.close()
    return done


def _block_lengths(replica: Replica, query: str, args: tuple = ()) -> dict[str, int]:
    """Block id → plaintext length, for every block the manifests a query selects name
    (as much of it as they show: a block kept only in part counts that part)."""
    return known_lengths(json.loads(manifest) for (manifest,) in replica.db.execute(query, args))


def collect(volume: Volume, policy: Retention, grace_seconds: float, dry_run: bool, progress: Progress,
            now: float | None = None) -> GcReport:
    now = time.time() if now is None else now
    report = GcReport(dry_run=dry_run)
    journal = Journal(volume)
    replica = Replica(":memory:")
    replay_to_head(volume, replica, progress)
    if dry_run:
        ops = retention_ops(replica, policy, now)
        replica.apply_remote(replica.applied_seq + 1, ops)  # the scratch replica only
    else:
        ops = append_at_head(journal, replica, lambda: retention_ops(replica, policy, now), "gc")
    report.versions_pruned = sum(len(op["versions"]) for op in ops if op["op"] == "prune")
    report.trash_purged = sum(len(op["fids"]) for op in ops if op["op"] == "purge")

    stored = [item for prefix in (BLOCKS, PACKS) for item in volume.store.list(prefix)]
    if not dry_run:
        catch_up(journal, replica)
    referenced = stored_objects(replica.all_block_refs())
    doomed = []
    for item in stored:
        if item.key in referenced:
            continue
        if now - item.modified < grace_seconds:
            report.blocks_kept_young += 1
            continue
        doomed.append(item)
    bar = progress("deleting blocks", len(doomed))
    for item in doomed:
        if not dry_run:
            volume.store.delete(item.key)
        if item.key.startswith(PACKS):
            report.packs_deleted += 1
        else:
            report.blocks_deleted += 1
        report.bytes_reclaimed += item.size
        bar.update(1)
    bar.close()
    replica.close()
    return report


def usage(volume: Volume, progress: Progress | None = None) -> dict:
    """Logical and stored bytes, dedup and compression ratios, bytes held by history and trash."""
    replica = Replica(":memory:")
    replay_to_head(volume, replica, progress)
    live_rows = replica.db.execute("SELECT size, manifest FROM inodes WHERE nlink > 0 AND (mode & 61440) = 32768")
    logical = data_bytes = 0
    for size, manifest in live_rows:
        logical += size
        data_bytes += sum(piece.length for piece in pieces(json.loads(manifest)) if piece.block)
    live = _block_lengths(replica, "SELECT manifest FROM inodes WHERE nlink > 0")
    versions = _block_lengths(replica, "SELECT manifest FROM versions WHERE fid NOT IN (SELECT fid FROM trash)")
    trash = _block_lengths(replica, "SELECT manifest FROM trash UNION ALL "
                                    "SELECT manifest FROM versions WHERE fid IN (SELECT fid FROM trash)")
    block_length = {**trash, **versions, **live}
    stored = {item.key: item.size for prefix in (BLOCKS, PACKS) for item in volume.store.list(prefix)}
    refs = replica.all_block_refs()
    carried = {block for block, location in refs if isinstance(location, Carried)}
    sealed = {block: stored.get(block_key(block), 0) if location is None else location.size
              for block, location in refs if isinstance(location, Location | None)}
    referenced = stored_objects(refs)
    live_in_packs: dict[str, set[Location]] = {}  # pack key → the distinct blocks in it something references
    for _block, location in refs:
        if isinstance(location, Location):
            live_in_packs.setdefault(pack_key(location.pack), set()).add(location)
    unique_plain = sum(block_length.values())
    stored_referenced = sum(sealed.values())
    live_unique = sum(live.values())
    replica.close()
    return {
        "logical_bytes": logical,
        "unique_bytes": unique_plain,
        "stored_bytes": sum(stored.values()),
        "dedup_ratio": data_bytes / live_unique if live_unique else 1.0,
        # of blocks stored as objects (a carried block's sealed size is not listed)
        "compression_ratio": (sum(length for block, length in block_length.items() if block not in carried)
                              / stored_referenced if stored_referenced else 1.0),
        "history_bytes": sum(length for b, length in versions.items() if b not in live),
        "trash_bytes": sum(length for b, length in trash.items() if b not in live and b not in versions),
        "unreferenced_stored_bytes": sum(size for key, size in stored.items() if key not in referenced),
        # blocks nothing references inside packs that still hold a referenced one: gc keeps them
        "unreferenced_bytes_in_packs": sum(stored.get(key, 0) - sum(location.size for location in live)
                                           for key, live in live_in_packs.items() if key in stored),
    }
