"""Checkpoints: the whole committed metadata state as of a seq, so a new device does
not replay the journal from the beginning.

`checkpoints/<seq, 20 digits>`, sealed like journal entries (bound to the key name
and volume). Any device writes one after a commit when CHECKPOINT_EVERY entries
have passed since the newest one and its own queue is empty (so its replica is
exactly the committed state) — in a volume shared with people, only an admin's device,
and signed by it. A device with an empty replica loads the newest checkpoint (in a shared
volume, one it can trust: membership.distrust), then replays the entries after it. fsck
checks each checkpoint against the replayed journal.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Iterable, Iterator

import zstandard

from ..errors import IntegrityError
from .journal import Entry, Journal, follow_chain
from .membership import STATE_KEY as ROSTER_KEY, apply_checked, distrust
from ..report import Progress
from .replica import Replica
from .tree import ROOT_FID, ROOT_INO, name_from_json, name_to_json
from ..store import NotFound
from ..store.devices import CHECKPOINT_CONTEXT, DeviceKey
from ..store.members import has_members
from ..store.sealing import sealed_epoch
from ..store.volume import Volume

log = logging.getLogger(__name__)

PREFIX = "checkpoints/"
CHECKPOINT_EVERY = 1000


def checkpoint_key(seq: int) -> str:
    return f"{PREFIX}{seq:020d}"


def dump_state(replica: Replica) -> dict:
    """The committed tree by file id (inode numbers are per device and stay out)."""
    db = replica.db
    fid_of = dict(db.execute("SELECT ino, fid FROM inodes"))
    inodes = [list(row) for row in db.execute(
        "SELECT fid, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, rdev, target, manifest, version "
        "FROM inodes WHERE nlink > 0 OR ino = ?", (ROOT_INO,))]
    for row in inodes:
        row[10] = None if row[10] is None else name_to_json(row[10])
    dentries = [[fid_of[p], name_to_json(n), fid_of[i]] for p, n, i in db.execute(
        "SELECT parent, name, ino FROM dentries")]
    kept = {row[0] for row in inodes}
    xattrs = [[fid_of[i], name_to_json(n), base64.b64encode(v).decode()] for i, n, v in db.execute(
        "SELECT ino, name, value FROM xattrs") if fid_of.get(i) in kept]
    versions = [list(row) for row in db.execute(
        "SELECT fid, version, manifest, size, mtime_ns, t, device FROM versions")]
    trash = [[fid, parent, name_to_json(name), *rest, None if target is None else name_to_json(target), deleted]
             for fid, parent, name, *rest, target, deleted in db.execute(
                 "SELECT fid, parent, name, mode, uid, gid, size, mtime_ns, manifest, target, deleted_t FROM trash")]
    archived = [list(row) for row in db.execute("SELECT block, storage_class FROM archived")]
    lineage = [list(row) for row in db.execute("SELECT fid, predecessor, predecessor_last FROM lineage")]
    departed = [[parent, name_to_json(name), fid, t] for parent, name, fid, t in db.execute(
        "SELECT parent, name, fid, t FROM departed")]
    carried = [list(row) for row in db.execute("SELECT block, seq FROM carried")]
    return {"seq": replica.applied_seq, "commit": replica.get_state("applied_commit"), "inodes": inodes,
            "dentries": dentries, "xattrs": xattrs, "versions": versions, "trash": trash, "archived": archived,
            "lineage": lineage, "departed": departed, "carried": carried, "roster": replica.get_state(ROSTER_KEY)}


def load_state(replica: Replica, state: dict) -> None:
    """Fill an empty replica from a checkpoint (in the caller's transaction, if any)."""
    db = replica.db
    with replica:
        # (a replica that takes the store's history after a fork keeps its inode numbers)
        db.execute("INSERT OR IGNORE INTO fid_inos(ino, fid) VALUES(?, ?)", (ROOT_INO, ROOT_FID))
        for row in state["inodes"]:
            if row[0] != ROOT_FID:
                db.execute("INSERT OR IGNORE INTO fid_inos(fid) VALUES(?)", (row[0],))
        inos = dict(db.execute("SELECT fid, ino FROM fid_inos"))
        for row in state["inodes"]:
            target = None if row[10] is None else name_from_json(row[10])
            db.execute("INSERT INTO inodes(ino, fid, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, rdev,"
                       " target, manifest, version) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (inos[row[0]], *row[:10], target, *row[11:]))
        db.executemany("INSERT INTO dentries(parent, name, ino) VALUES(?, ?, ?)",
                       [(inos[p], name_from_json(n), inos[c]) for p, n, c in state["dentries"]])
        db.executemany("INSERT INTO xattrs(ino, name, value) VALUES(?, ?, ?)",
                       [(inos[f], name_from_json(n), base64.b64decode(v)) for f, n, v in state["xattrs"]])
        db.executemany("INSERT INTO versions(fid, version, manifest, size, mtime_ns, t, device)"
                       " VALUES(?, ?, ?, ?, ?, ?, ?)", state.get("versions", []))
        db.executemany("INSERT INTO trash(fid, parent, name, mode, uid, gid, size, mtime_ns, manifest, target,"
                       " deleted_t) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [(fid, parent, name_from_json(name), *rest, None if target is None else name_from_json(target),
                         deleted) for fid, parent, name, *rest, target, deleted in state.get("trash", [])])
        db.executemany("INSERT INTO archived(block, storage_class) VALUES(?, ?)", state.get("archived", []))
        db.executemany("INSERT INTO lineage(fid, predecessor, predecessor_last) VALUES(?, ?, ?)",
                       state.get("lineage", []))
        db.executemany("INSERT INTO departed(parent, name, fid, t) VALUES(?, ?, ?, ?)",
                       [(parent, name_from_json(name), fid, t) for parent, name, fid, t in state.get("departed", [])])
        replica.carried_by_many(state.get("carried", []))
        replica.set_state(ROSTER_KEY, state.get("roster"))
        replica.set_state("applied_seq", state["seq"])
        replica.set_state("applied_commit", state.get("commit"))
        replica.set_state("checkpoint_seq", state["seq"])


def write_checkpoint(volume: Volume, state: dict, signed_by: DeviceKey | None = None) -> None:
    """`signed_by`: in a volume shared with people, an admin's device (membership.distrust)."""
    if signed_by is not None:
        state = signed(volume, state, signed_by)
    body = zstandard.compress(json.dumps(state, separators=(",", ":")).encode())
    volume.store.put_if_absent(checkpoint_key(state["seq"]),
                               volume.seal(checkpoint_key(state["seq"]), body))


def signed(volume: Volume, state: dict, signer: DeviceKey) -> dict:
    """`state` with its `signer` and `sig` (Ed25519 over CHECKPOINT_CONTEXT, the volume id, the
    seq and the rest as canonical JSON, as entries are signed)."""
    state = {**state, "signer": signer.signer}
    state["sig"] = signer.sign_entry(volume.volume_id, state["seq"], state, CHECKPOINT_CONTEXT)
    return state


def checkpoint_seqs(volume: Volume) -> list[int]:
    return [int(item.key[len(PREFIX):]) for item in volume.store.list(PREFIX) if item.key[len(PREFIX):].isdigit()]


def read_checkpoint(volume: Volume, seq: int) -> dict:
    return read_sealed_checkpoint(volume, seq)[0]


def read_sealed_checkpoint(volume: Volume, seq: int) -> tuple[dict, int | None]:
    """Checkpoint `seq`, and the key epoch it is sealed under."""
    try:
        blob = volume.store.get(checkpoint_key(seq))
    except NotFound:
        raise IntegrityError(f"Checkpoint {seq} is missing.") from None
    body = volume.unseal(checkpoint_key(seq), blob, f"Checkpoint {seq}")
    state = json.loads(zstandard.decompress(body))
    if state.get("seq") != seq:
        raise IntegrityError(f"Checkpoint {seq} is not the state at {seq}.")
    return state, sealed_epoch(blob)


def newest_live_checkpoint(journal: Journal, upto: int | None = None) -> dict | None:
    """The newest checkpoint (at or before `upto`) of the store's history: one whose chain id
    is the store's entry's at its seq (checkpoints without one, from older builds, are taken
    as they are). A checkpoint of a history the store lost (it went back in time below it, and
    other entries took its seq) would hand a new device a tree no reader has. The entry at
    the checkpoint's seq is read through `journal`, so a device keeping copies keeps it.
    In a volume shared with people, only a checkpoint its reader can trust (an admin's, with
    its roster checked: membership.distrust); None if the newest is not one: a replay checks
    every entry."""
    volume = journal.volume
    shared = has_members(volume.store)
    for seq in sorted((found for found in checkpoint_seqs(volume) if upto is None or found <= upto), reverse=True):
        state, epoch = read_sealed_checkpoint(volume, seq)
        try:
            entry = journal.read(seq)
        except NotFound:
            continue
        if state.get("commit") not in (None, entry.chain_id):
            continue
        distrusted = distrust(journal, state, epoch) if shared else None
        if distrusted is not None:
            log.info("checkpoint %d not used, the journal is replayed instead: %s", seq, distrusted)
            return None
        return state
    return None


def state_at(volume: Volume, journal: Journal, seq: int) -> tuple[dict | None, list[Entry]]:
    """What rebuilds the committed state at `seq`: the newest checkpoint at or before it (None:
    from the first entry) and the entries after that checkpoint up to `seq` (dead ones
    emptied), from the kept copies where `journal` has them."""
    state = newest_live_checkpoint(journal, seq)
    checkpoint, chain = (0, None) if state is None else (state["seq"], state.get("commit"))
    return state, list(follow_chain(journal.kept_entries(checkpoint + 1, seq), chain))


def replay_to_head(volume: Volume, replica: Replica, progress: Progress | None = None) -> None:
    """Fill an empty replica with the volume's committed state: the newest checkpoint,
    then every entry after it (for commands that work without a mount), with a progress
    bar on a terminal."""
    journal = Journal(volume)
    state = newest_live_checkpoint(journal)
    if state is not None:
        load_state(replica, state)
    start = replica.applied_seq
    bar = progress("reading the journal", len(journal.seqs_after(start))) if progress else None

    def counted(entries: Iterable[Entry]) -> Iterator[Entry]:
        for entry in entries:
            yield entry
            if bar is not None:
                bar.update(1)

    apply_checked(replica, counted(journal.entries_after(start, replica.get_state("applied_commit"))))
    if bar is not None:
        bar.close()
