"""A journal that forked: the store went back in time (a backup restored, a versioning
rollback, a disk image put back) and another device committed at seqs this device had
applied. The device takes the store's history up to the fork point and queues again what
it applied after it — its own changes and other devices', from its kept copies — with its
own queue after them; the pull that follows rebases them onto the store's entries like any
queued change, and they commit as new entries (docs/format.md, "Fork")."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .checkpoints import load_state, newest_live_checkpoint, state_at
from .journal import Entry, Journal, UnknownForkPoint, follow_chain
from .membership import MEMBERSHIP_OPS
from .replica import Replica
from .rebase import Revalidator
from .tree import TREE_TABLES, Inode, fids_of

log = logging.getLogger(__name__)


@dataclass
class ForkedHistory:
    """What a device needs to take the store's history: the fork point (`common`), the
    checkpoint at or before it (None: from the first entry) and the store's entries after
    that up to it (`shared`), and the entries this device applied after it (`lost`)."""

    common: int
    state: dict | None
    shared: list[Entry]
    lost: list[Entry]
    exact: bool = True  # the lost entries follow the state at `common` exactly (else: rewritten to fit)


def read_forked_history(journal: Journal, applied: int, device: str, chain: str | None) -> ForkedHistory:
    """Both histories, as far as they are needed (store calls: run in a worker thread);
    `chain`: the chain id of what this device applied last."""
    try:
        common = journal.fork_point(applied, device, chain)
    except UnknownForkPoint:
        return _where_the_store_starts(journal, applied)
    state, shared = state_at(journal.volume, journal, common)
    chain = None if state is None else state.get("commit")
    for entry in shared:
        chain = chain if entry.dead else entry.chain_id
    return ForkedHistory(common, state, shared, list(follow_chain(journal.kept_entries(common + 1, applied), chain)))


def _where_the_store_starts(journal: Journal, applied: int) -> ForkedHistory:
    """The histories part below what this device keeps of its own (it started from a checkpoint
    of a history the store lost, or the fork is older than its 5,000 kept copies): it takes the
    store's history from its newest live checkpoint (or its first entry) and queues again the
    entries it kept that the store does not hold, with its queue. What it applied before those
    is not its to put back: the devices that made it, or kept it, do. Its queued rows were made
    on another tree: applied there, they may not apply (the transaction then undoes everything
    and the device stops with one sentence) — or they do, and the rebase after checks them
    against the store's entries as any queued change."""
    state = newest_live_checkpoint(journal)
    if state is None:
        return ForkedHistory(1, None, journal.kept_entries(1, 1), journal.kept_not_held(applied), exact=False)
    return ForkedHistory(state["seq"], state, [], journal.kept_not_held(applied), exact=False)


def take_store_history(replica: Replica, history: ForkedHistory, device: str) -> None:
    """In one transaction: the tree becomes the store's state at the fork point; then the ops
    of each lost entry are queued and applied, a row per entry, and after them every row that
    was queued here (`requeue`). The tree is the same after as before — only what is
    committed changed. File ids keep their inode numbers (fid_inos stays) and files open here
    with no name keep their rows. When the histories part below what this device keeps (not
    `exact`), the rows are fitted to the store's tree by the conflict rules (`device` names
    the conflicted copies they make), as a rebase does."""
    db = replica.db
    with replica:
        revalidate = None
        if not history.exact:  # the conflict rules fit them to the store's tree, as in a rebase
            revalidate = Revalidator(device)
            replica.base_locations = replica.locations(
                {fid for entry in history.lost for op in entry.ops for fid in fids_of(op)}
                | {fid for _, ops in replica.pending_ops(2**31) for op in ops for fid in fids_of(op)})
        nameless = db.execute("SELECT * FROM inodes WHERE nlink=0").fetchall()
        nameless_xattrs = db.execute(
            "SELECT x.ino, x.name, x.value FROM xattrs x JOIN inodes i ON i.ino = x.ino WHERE i.nlink=0").fetchall()
        for table in [*TREE_TABLES, "archived", "carried", "undo"]:  # (the queue stays, not applied)
            db.execute(f"DELETE FROM {table}")
        replica.set_state("applied_seq", 0)
        replica.set_state("applied_commit", None)
        replica.set_state("inflight", None)
        if history.state is not None:
            load_state(replica, history.state)
        for entry in history.shared:
            replica.apply_remote(entry.seq, entry.ops, entry.format, entry.blocks)
            if not entry.dead:
                replica.set_state("applied_commit", entry.chain_id)
        db.executemany(f"INSERT OR IGNORE INTO inodes VALUES({','.join('?' * len(Inode.__annotations__))})", nameless)
        db.executemany("INSERT OR IGNORE INTO xattrs(ino, name, value) VALUES(?, ?, ?)", nameless_xattrs)
        requeue(replica, history.lost, revalidate)


def queue_first(replica: Replica, lost: list[Entry], revalidate: Revalidator) -> None:
    """Queue the ops of `lost` entries (dead in the store's history, see Committer._fill_gap)
    before everything queued here, all fitted to the tree by the conflict rules, in one
    transaction."""
    with replica:
        rows = replica.pending_ops(2**31)
        referenced = {fid for entry in lost for op in entry.ops for fid in fids_of(op)} | {
            fid for _, ops in rows for op in ops for fid in fids_of(op)}
        here = replica.locations(referenced)
        replica.take_back_queue()
        replica.base_locations = {**here, **replica.locations(referenced)}
        requeue(replica, lost, revalidate)


def requeue(replica: Replica, lost: list[Entry], revalidate: Revalidator | None = None) -> None:
    """With the queue not applied to the tree (taken back, or the tree rebuilt): queue and
    apply the ops of each of the `lost` entries, a row per entry, then every row that was
    queued, as they are or as `revalidate` rewrites them. The lost entries' rows take ids
    below the queued ones (below 1 if need be): whoever waits for a queued row waits for
    them too. Their carried blocks travel again, in the entries that commit them again. (In
    the caller's transaction.)"""
    rows = replica.pending_ops(2**31)
    # (an entry lost again, whose changes a fork before queued again and no commit took yet:
    # its row is queued already)
    queued = {commit_id for (commit_id,) in replica.db.execute(
        "SELECT r.commit_id FROM requeued r JOIN pending p ON p.id = r.pending_id")}
    replica.db.execute("DELETE FROM pending")
    again = []
    for entry in (entry for entry in lost if entry.commit_id not in queued):
        # a change of members is an admin's `members` command, never a device's to commit
        # again (every device would refuse it from this one): lost with the store, it is said
        ops = [op for op in entry.ops if op["op"] not in MEMBERSHIP_OPS]
        if len(ops) < len(entry.ops):
            log.warning("the store lost journal entry %d, a change of the volume's members; an admin must make it "
                        "again (fusedrive members)", entry.seq)
        if ops:
            again.append((entry, ops))
    carried = set(replica.carried_blocks())
    for entry, _ in again:
        replica.carry({block: blob for block, blob in entry.blocks.items() if block not in carried})
    first = rows[0][0] if rows else replica.last_pending_id() + 1
    top = first if first - len(again) >= 1 else min(first, 0)
    for pending_id, (entry, ops) in zip(range(top - len(again), top), again):
        replica.queue_again(pending_id, ops, entry.commit_id, revalidate)
    for pending_id, ops in rows:
        replica.queue_again(pending_id, ops, revalidate=revalidate)
