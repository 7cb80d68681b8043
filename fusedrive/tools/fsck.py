"""fsck: check a volume's invariants from the store, and a device's replica against it.

1. Replay the whole journal into a scratch replica (every entry must pass its tag
   and apply cleanly).
2. Check the tree: every name points at a live inode, every inode is reachable,
   link counts are right, directories have one name, file extents cover the size,
   and a piece of a block (left by an in-place edit) lies within that block.
3. Every block the metadata references exists in the store, as its own object or in
   the pack its manifest names (`--verify-blocks`: and decrypts to its id).
4. If this device has a replica of the volume, it shows the same tree.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from pathlib import Path

import diskcache

from ..engine import history
from ..engine.blocks import BLOCKS, PACKS, BlockStore, object_key, stored_objects
from ..engine.pins import blocks_needed, pinned_files
from ..engine.checkpoints import checkpoint_seqs, load_state, read_checkpoint
from ..errors import FusedriveError
from ..engine.entrycopies import KeptEntries
from ..engine.journal import REPAIR_DEVICE, Entry, Journal, entry_key
from ..engine.manifest import BlockRef, Carried, pieces
from ..engine.membership import EntryRefused, apply_checked
from ..report import Progress
from ..engine.replica import Replica
from ..engine.tree import ROOT_INO


def check_tree(replica: Replica) -> list[str]:
    problems = []
    db = replica.db
    root = replica.inode(ROOT_INO)
    if root is None or not root.is_dir:
        return ["The root directory is missing."]
    for parent, name, ino in db.execute("SELECT parent, name, ino FROM dentries"):
        if replica.inode(ino) is None:
            problems.append(f"The name {os.fsdecode(name)!r} points at a missing inode {ino}.")
        parent_node = replica.inode(parent)
        if parent_node is None or not parent_node.is_dir:
            problems.append(f"The name {os.fsdecode(name)!r} is in a missing or non-directory parent {parent}.")
    names = Counter(ino for (ino,) in db.execute("SELECT ino FROM dentries"))
    subdirs = Counter(
        parent for (parent,) in db.execute(
            "SELECT d.parent FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE (i.mode & 61440) = 16384")
    )
    reachable = {node.ino for _path, node in replica.walk()}
    for (ino,) in db.execute("SELECT ino FROM inodes"):
        node = replica.inode(ino)
        where = f"Inode {ino} (file id {node.fid})"
        if ino not in reachable:
            problems.append(f"{where} is not reachable from the root.")
        if node.is_dir:
            expected = 2 + subdirs[ino]
            if ino != ROOT_INO and names[ino] != 1:
                problems.append(f"Directory {where} has {names[ino]} names.")
        else:
            expected = names[ino]
        if node.nlink != expected:
            problems.append(f"{where} has link count {node.nlink}, expected {expected}.")
        if node.is_reg:
            covered = sum(piece.length for piece in pieces(node.extents()))
            if covered != node.size:
                problems.append(f"{where} has size {node.size} but its blocks cover {covered} bytes.")
    return problems + _pieces_outside_their_blocks(replica) + _path_histories(replica)


def _path_histories(replica: Replica) -> list[str]:
    """Each file continues at most one history, with no loop, and its path's version
    numbers are each one version (history, restore and the history tree rely on it)."""
    problems = []
    for fid, predecessor in replica.db.execute("SELECT fid, predecessor FROM lineage"):
        chain = replica.history_chain(fid)
        tail = replica.db.execute("SELECT predecessor FROM lineage WHERE fid=?", (chain[-1],)).fetchone()
        if tail is not None:
            problems.append(f"The history of file {fid} loops (through {tail[0]}).")
            continue
        if fid == replica.history_head(fid):
            numbers = [v.number for v in history.versions(replica, fid)]
            if len(numbers) != len(set(numbers)):
                problems.append(f"The path history of file {fid} numbers two versions alike.")
    return problems


def _pieces_outside_their_blocks(replica: Replica) -> list[str]:
    """Pieces reaching past the end of their block, where a manifest shows the whole block."""
    manifests = [json.loads(m) for table in ("inodes", "versions", "trash")
                 for (m,) in replica.db.execute(f"SELECT manifest FROM {table}")]
    whole = {piece.block: piece.length for manifest in manifests for piece in pieces(manifest)
             if piece.whole and piece.block is not None}
    return [f"A manifest takes bytes {piece.offset}-{piece.offset + piece.length} of block {piece.block}, "
            f"which has {whole[piece.block]}."
            for manifest in manifests for piece in pieces(manifest)
            if piece.block in whole and piece.offset + piece.length > whole[piece.block]]


def snapshot(replica: Replica) -> list[tuple]:
    """What a user sees of the tree, its history and its trash, for comparing two replicas."""
    rows: list[tuple] = [tuple(row) for query in ("SELECT * FROM versions ORDER BY fid, version",
                                                  "SELECT * FROM trash ORDER BY fid",
                                                  "SELECT * FROM archived ORDER BY block",
                                                  "SELECT * FROM lineage ORDER BY fid",
                                                  "SELECT * FROM carried ORDER BY block")
                         for row in replica.db.execute(query)]
    for path, node in replica.walk():
        xattrs = [(name, replica.xattr(node.ino, name)) for name in replica.xattr_names(node.ino)]
        rows.append((path, node.fid, node.mode, node.uid, node.gid, node.size, node.mtime_ns, node.atime_ns,
                     node.nlink, node.rdev, node.target, json.loads(node.manifest), xattrs))
    return rows


def _check_pins(local: Replica, pinned_dir: Path) -> list[str]:
    """What `pin` promised: every block a pinned file needs is in the cache's pinned tier."""
    try:
        files = pinned_files(local)
    except sqlite3.OperationalError:  # a cache dir from before pins
        return []
    if not files:
        return []
    tier = diskcache.Cache(str(pinned_dir))
    try:
        missing = [block for block in blocks_needed(files) if block not in tier]
    finally:
        tier.close()
    return [f"{len(missing)} blocks of pinned files are not on this device (mount it to download them)."] \
        if missing else []


def _check_checkpoint(journal: Journal, replayed: Replica, seq: int) -> list[str]:
    """A checkpoint must show exactly the tree the journal replays to at its seq."""
    try:
        state = read_checkpoint(journal.volume, seq)
    except FusedriveError as exc:
        return [str(exc)]
    loaded = Replica(":memory:")
    try:
        load_state(loaded, state)
        if snapshot(loaded) != snapshot(replayed):
            return [f"Checkpoint {seq} differs from the journal replayed to entry {seq}."]
        return []
    finally:
        loaded.close()


def where(ref: BlockRef) -> str:
    """What holds a block, for a finding: its object, or the journal for a carried one."""
    return f"block {ref[0]} (carried by the journal)" if isinstance(ref[1], Carried) else object_key(ref)


def check_blocks(refs: set[BlockRef], blocks: BlockStore, verify: bool, progress: Progress) -> list[str]:
    """Every referenced block is in the store, alone or in its pack (`verify`: and decrypts
    to its id). A block may be referenced both ways (packed by one device, stored alone by
    another): each copy is checked."""
    referenced = stored_objects(refs)
    stored = {item.key for prefix in (BLOCKS, PACKS) for item in blocks.volume.store.list(prefix)}
    carried = {ref for ref in refs if isinstance(ref[1], Carried)}
    problems = [f"Block {block_id} is to travel in a journal entry, but no entry carries it."
                for block_id, _ in sorted(carried) if not blocks.is_carried(block_id)]
    for key in sorted(referenced.keys() - stored):
        if key.startswith(BLOCKS):
            problems.append(f"Block {key[len(BLOCKS):]} is referenced but missing from the store.")
        else:
            problems.append(f"Pack {key} (holding blocks {', '.join(sorted(referenced[key]))}) is referenced "
                            "but missing from the store.")
    if verify:
        present = sorted((ref for ref in refs if ref in carried and blocks.is_carried(ref[0])
                          or ref not in carried and object_key(ref) in stored), key=lambda ref: (ref[0], where(ref)))
        bar = progress("blocks", len(present))
        for block_id, location in present:
            try:
                blocks.verify_stored(block_id, location)
            except FusedriveError as exc:
                problems.append(f"{where((block_id, location))}: {exc}")
            bar.update(1)
        bar.close()
    return problems


def repair_journal(journal: Journal, kept: KeptEntries | None) -> list[str]:
    """Make a journal with gaps readable again, as one sentence per seq: each missing entry
    is put back, byte for byte, from the copies a device's cache dir kept (`kept`), or
    else marked lost — an entry of no operations (every build reads it; put-if-absent, so
    an entry a device puts back meanwhile wins, and a second repair changes nothing).
    Entries a device holds at a seq the store holds otherwise (a fork) are named, not
    changed: that device takes the store's history and commits them again when it runs."""
    said = []
    held = journal.seqs_after(0)
    for seq in sorted(set(range(1, max(held, default=0) + 1)) - set(held)):
        blob = kept.get(seq) if kept is not None else None
        if blob is not None and journal.store.put_if_absent(entry_key(seq), blob):
            said.append(f"Journal entry {seq} was missing: put back from this device's copy.")
        elif blob is None and journal.append(Entry(seq=seq, device=REPAIR_DEVICE, ops=[])):
            said.append(f"Journal entry {seq} was missing and no copy of it is here: marked lost, so devices read "
                        f"past it (its changes are gone unless a device that applied it puts them back).")
    said += _replace_refused(journal)
    if kept is not None:
        for seq in held:
            mine = kept.get(seq)
            if mine is not None and mine != journal.store.get(entry_key(seq)):
                said.append(f"Journal entry {seq} in the store is not the one this device applied (the journal "
                            "forked after the store went back in time); nothing was changed: mounted, this device "
                            "commits what it applied there again on top of the store's history.")
    return said


def _replace_refused(journal: Journal) -> list[str]:
    """In a volume shared with people: every entry each device refuses (a forgery, a
    reader's write: engine/membership.py) is replaced by an empty one, so devices read past
    it; its changes were never applied anywhere."""
    said = []
    replica = Replica(":memory:")
    chain = None
    for seq in journal.seqs_after(0):
        entry = journal.read(seq)
        if not entry.follows(chain):
            continue  # (dead: applied by no reader)
        try:
            apply_checked(replica, [entry])
            chain = entry.chain_id
        except EntryRefused as refused:
            journal.replace_with_marker(seq)
            replica.set_state("applied_seq", seq)
            chain = None
            said.append(f"Journal entry {seq} was refused ({refused.reason}): replaced by an empty entry, so "
                        "devices read past it; its changes were never applied.")
    return said


def fsck(journal: Journal, blocks: BlockStore, local_replica: Path | None, verify_blocks: bool,
         progress: Progress) -> list[str]:
    """Every problem found, as one sentence each; an empty list means the volume is sound."""
    problems: list[str] = []
    scratch = Replica(":memory:")
    seqs = journal.seqs_after(0)
    checkpoints = set(checkpoint_seqs(journal.volume))
    bar = progress("journal", len(seqs))
    chain = None
    for expected, seq in enumerate(seqs, start=1):
        if seq != expected:
            problems.append(f"Journal entry {expected} is missing.")
            break
        try:
            entry = journal.read(seq)
            if entry.follows(chain):  # (else dead: appended on another history, applied by no reader)
                chain = entry.chain_id
                apply_checked(scratch, [entry])
                scratch.set_state("applied_commit", chain)
        except FusedriveError as exc:
            problems.append(str(exc))
            break
        except Exception as exc:  # noqa: BLE001 - an entry that cannot apply is a finding, not a crash
            problems.append(f"Journal entry {seq} does not apply: {exc!r}.")
            break
        if seq in checkpoints:
            problems += _check_checkpoint(journal, scratch, seq)
        bar.update(1)
    bar.close()
    for orphan in scratch.orphans():
        scratch.forget_inode(orphan.ino)
    problems += check_tree(scratch)

    blocks.carried_in(scratch.carried_blocks())
    problems += check_blocks(scratch.all_block_refs(), blocks, verify_blocks, progress)

    if local_replica is not None and local_replica.exists():
        local = Replica(str(local_replica))
        try:
            waiting = local.pending_count() + len(local.dirty_fids())
            if waiting:
                problems.append(f"This device has {waiting} changes not yet uploaded (mount the volume to upload them).")
            elif local.applied_seq != scratch.applied_seq:
                problems.append(
                    f"This device's replica is at journal entry {local.applied_seq}, the store at {scratch.applied_seq}.")
            elif snapshot(local) != snapshot(scratch):
                problems.append("This device's replica differs from the journal.")
            if not waiting:
                problems += _check_pins(local, local_replica.parent / "blocks" / "pinned")
        finally:
            local.close()
    scratch.close()
    return problems
