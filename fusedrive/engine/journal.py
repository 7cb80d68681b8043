"""The journal: the single source of truth for metadata.

`journal/<seq, 20 digits>` objects, each one sealed commit (a batch of operations
by one device), created only with put-if-absent so seq N is taken by exactly one
device. The associated data binds each entry to its seq and volume, so a forged,
moved or reordered entry fails its tag. Every entry carries a commit id: a PUT
whose answer was lost and that is retried meets 412, and the id tells whether
the existing entry is ours after all.

A device keeps the sealed bytes of the entries it applied or wrote lately (`KeptEntries`,
in its cache dir). A store that goes back in time (restored from an older copy, a
versioning rollback, a disk image put back) has a journal that ends before the entry a
device last applied: the listing of a pull shows it (`StoreWentBack`), and the device puts
the lost entries back, byte for byte, at their seqs — never appending after its own head
on a store that lost it, which would leave a gap no new device could read past.

From format 4 an entry may also carry blocks (`blocks`: id → sealed bytes, as
`blocks/<id>` would hold them): the few KiB an fsync of a small edit wrote travel in
the entry that commits the edit, so it costs one PUT instead of two (see blocks.py).
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import time
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import zstandard

from ..errors import IntegrityError, KeyNotGiven, StoreRefused
from ..store import Listed, NotFound
from ..store.devices import DeviceKey, entry_signed_by, signer_of
from ..store.replicated import FENCE_KEY
from ..store.volume import FORMAT_VERSION, HEADER_KEY, Volume
from .entrycopies import KeptEntries
from .ops import check_entry

PREFIX = "journal/"
FETCH_THREADS = 8
REPAIR_DEVICE = "fsck --repair"  # the device name of the entries fsck --repair puts in place of lost ones
WENT_BACK = "went-back-"  # journal/went-back-<seq>-<random>: a device put lost entries back (empty object)
CHECKED_BEHIND = 16  # a pull checks that the store still holds this many of the entries it applied last


class StoreWentBack(Exception):
    """The store's journal no longer holds entry `missing`, which this device has applied (as
    it has every entry up to `through`)."""

    def __init__(self, missing: int, through: int | None = None) -> None:
        super().__init__(f"The store's journal no longer holds entry {missing}, which this device has applied.")
        self.missing = missing
        self.through = missing if through is None else through


class JournalGap(IntegrityError):
    """The store's journal lacks entries that come before others it holds (restored from a copy
    made while a gap was open, or older than what this device keeps): nothing past it is
    applied or appended here until a device that has them puts them back (or `fsck --repair`
    marks them lost). A state of the store, not of this device: a pull later may find it
    filled."""

    def __init__(self, message: str, missing: range = range(0)) -> None:
        super().__init__(message)
        self.missing = missing  # the entries missing below one the store holds


class UnknownForkPoint(IntegrityError):
    """Where the store's history and this device's part lies below what the device keeps."""


class JournalForked(IntegrityError):
    """The store's history is not the one this device applied from some entry on: after the
    store went back in time another device committed at a seq this device had applied (or
    this device appended on top of an entry the store had lost). The committer takes the
    store's history and commits this device's lost changes again on top (`Journal.fork_point`,
    `forks.py`); raised as is, it stops the device."""


def entry_key(seq: int) -> str:
    return f"{PREFIX}{seq:020d}"


@dataclass
class Entry:
    seq: int
    device: str
    ops: list[dict]
    commit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)
    format: int = FORMAT_VERSION  # of the build that wrote it (its rules apply to it)
    blocks: dict[str, bytes] = field(default_factory=dict)  # carried blocks: id → sealed bytes
    prev: str | None = None  # the commit id of the entry before it, as its writer applied it
    dead: bool = False  # its `prev` names another history: no reader applies its ops (Journal.entries_after)
    restores: list[str] = field(default_factory=list)  # commit ids of lost entries whose changes it commits again
    signer: dict | None = None  # who signed it (a volume with members: store/devices.py), as stored
    # whether `sig` is the signer's device's signature over it: checked when asked (a kept copy
    # read to compare bytes never is), once
    verify_signature: Callable[[], bool] = field(default=lambda: False, repr=False, compare=False)

    @property
    def signature_ok(self) -> bool:
        return self.verify_signature()

    @property
    def chain_id(self) -> str | None:
        """What the next entry's `prev` must name; None (anything may follow) for the marker
        `fsck --repair` puts where an entry was lost: the entries after it name the lost one."""
        return None if self.device == REPAIR_DEVICE else self.commit_id

    def follows(self, chain: str | None) -> bool:
        """Whether this entry may come after one whose chain id is `chain`."""
        return self.prev is None or chain is None or self.prev == chain


def follow_chain(entries: Iterable[Entry], chain: str | None) -> Iterator[Entry]:
    """The entries as a reader applies them after the entry whose chain id is `chain`: one whose
    `prev` names another history is dead — it comes with no ops and no blocks, and the next must
    follow the entry before it. Decided by the store's entries alone, so every reader agrees."""
    for entry in entries:
        if entry.follows(chain):
            chain = entry.chain_id
            yield entry
        else:
            yield Entry(entry.seq, entry.device, [], entry.commit_id, entry.time, entry.format, {}, entry.prev,
                        dead=True)


class Journal:
    def __init__(self, volume: Volume, kept: KeptEntries | None = None) -> None:
        """`kept`: where a device keeps copies of the entries it reads and writes."""
        self.volume = volume
        self.store = volume.store
        self.kept = kept
        self.went_back_marks: set[str] = set()
        self.fenced = False  # the last listing found the fence: the volume moved to its promoted replica
        self.gap: JournalGap | None = None  # what the last entries_after(up_to_a_gap=True) stopped at

    def _seal(self, entry: Entry, signed_by: DeviceKey | None = None) -> bytes:
        fields = {"format": FORMAT_VERSION, "commit_id": entry.commit_id, "device": entry.device,
                  "time": entry.time, "ops": entry.ops}
        if entry.prev is not None:
            fields["prev"] = entry.prev
        if entry.restores:
            fields["restores"] = entry.restores
        if entry.blocks:
            fields["blocks"] = {block_id: base64.b64encode(blob).decode() for block_id, blob in entry.blocks.items()}
        if signed_by is not None:
            fields["signer"] = signed_by.signer
            fields["sig"] = signed_by.sign_entry(self.volume.volume_id, entry.seq, fields)
        body = json.dumps(fields, separators=(",", ":")).encode()
        return self.volume.seal(entry_key(entry.seq), zstandard.compress(body))

    def _unseal(self, seq: int, blob: bytes) -> Entry:
        body = self.volume.unseal(entry_key(seq), blob, f"Journal entry {seq}")
        try:
            data = json.loads(zstandard.decompress(body))
            entry_format = int(data.get("format", 1))  # entries before format 2 do not say
            blocks = {str(block_id): base64.b64decode(blob, validate=True)
                      for block_id, blob in data.get("blocks", {}).items()}
            prev = data.get("prev")
            if prev is not None and not isinstance(prev, str):
                raise TypeError("prev")
            restores = [str(commit_id) for commit_id in data.get("restores", [])]
            signature = data.pop("sig", None)
            signer = data.get("signer")
            entry = Entry(seq, data["device"], data["ops"], data["commit_id"], data["time"], entry_format, blocks,
                          prev, restores=restores, signer=signer if isinstance(signer, dict) else None,
                          verify_signature=self._signature_check(seq, data, signature))
        except (ValueError, KeyError, TypeError, AttributeError, zstandard.ZstdError) as exc:
            raise IntegrityError(f"Journal entry {seq} is malformed.") from exc
        check_entry(seq, entry.ops, entry_format)
        return entry

    def _signature_check(self, seq: int, fields: dict, signature: object) -> Callable[[], bool]:
        @functools.cache
        def verified() -> bool:
            device = signer_of(fields.get("signer")) if signature is not None else None
            return device is not None and entry_signed_by(device[0], signature, self.volume.volume_id, seq, fields)
        return verified

    def seqs_after(self, seq: int) -> list[int]:
        """Seqs of the entries after `seq` (one list call per 1000 entries)."""
        return [found for found in self._listed_from(seq) if found > seq]

    def _listed_from(self, seq: int) -> dict[int, Listed]:
        """Seq → what the listing says of each entry after `seq`, in order. The went-back marks
        list after every entry (letters sort after digits): `went_back_marks` is what the last
        listing found, free; so does the fence of a promotion (`fenced`)."""
        found = {}
        marks = set()
        fenced = False
        for listed in self.store.list(PREFIX, start_after=entry_key(seq)):
            suffix = listed.key[len(PREFIX):]
            if suffix.isdigit():
                found[int(suffix)] = listed
            elif suffix.startswith(WENT_BACK):
                marks.add(suffix)
            fenced |= listed.key == FENCE_KEY
        self.went_back_marks, self.fenced = marks, fenced
        return found

    def read(self, seq: int, new: bool = False) -> Entry:
        """Entry `seq` from the store, kept (`new`: one this device has not applied, see
        KeptEntries.put)."""
        blob = self.store.get(entry_key(seq))
        entry = self._unseal(seq, blob)
        if self.kept is not None:
            self.kept.put(seq, blob, replace=new)
        return entry

    def _read_new(self, seq: int) -> Entry:
        return self.read(seq, new=True)

    def entries_after(self, seq: int, chain: str | None = None, device: str | None = None,
                      up_to_a_gap: bool = False) -> Iterator[Entry]:
        """Every entry after `seq`, in order (fetched 8 at a time, for catching up after
        a long time offline); a gap in the seqs is an integrity error (`JournalGap`) — with
        `up_to_a_gap`, the entries before it come and `gap` names it. The listing starts
        CHECKED_BEHIND entries before `seq`: a store whose journal no longer holds one of
        them went back in time (`StoreWentBack`) — also when a device appended after what
        it remembered before it noticed, which leaves a gap under its own entry that only
        it (or another device that applied those entries) can fill.

        `chain`: the chain id of entry `seq` as the reader applied it. An entry whose `prev`
        names another history is dead: it comes with no ops and no blocks (`dead`), and the
        next must follow the entry before it — every reader of the store decides the same. When
        it is the first one, the reader's own history is checked first (`fork_point`, with
        `device`, its name): JournalForked if the store lost part of it."""
        listed = self._listed_from(max(seq - CHECKED_BEHIND, 0))
        for held in range(max(seq - CHECKED_BEHIND + 1, 1), seq + 1):
            if held not in listed:  # (the same listing: free)
                raise StoreWentBack(held, through=seq)
        for held in range(max(seq - CHECKED_BEHIND + 1, 1), seq):
            if self._replaced(held, listed[held]):  # (an entry under this device's last ones)
                raise self._forked(held)
        seqs = [found for found in listed if found > seq]
        self.gap = None
        for expected, found in enumerate(seqs, start=seq + 1):
            if found != expected:
                self.gap = JournalGap(f"Journal entry {expected} is missing (found {found} after it).",
                                      range(expected, found))
                if not up_to_a_gap:
                    raise self.gap
                seqs = seqs[:expected - seq - 1]
                break
        fetched = self._fetched(seq, seqs, listed)
        first = next(fetched, None)
        if first is None:
            return
        if not first.follows(chain) and device is not None and self._forked_below(seq, device, chain):
            raise self._forked(seq)
        yield from follow_chain(itertools.chain([first], fetched), chain)

    def _fetched(self, seq: int, seqs: list[int], listed: dict[int, Listed]) -> Iterator[Entry]:
        """Entries `seqs`, read in order; first, that the store's entry `seq` is still the one
        this device kept (its bytes, read beside the next entry)."""
        mine = self.kept.get(seq) if self.kept is not None and seq > 0 else None
        if mine is not None and seqs:  # what comes next must follow the entry this device applied
            with ThreadPoolExecutor(max_workers=2) as pool:
                theirs = pool.submit(self.store.get, entry_key(seq))
                first = pool.submit(self._read_new, seqs[0])
                if not self._same_entry(seq, theirs.result(), mine):
                    raise self._forked(seq)
                yield first.result()
            seqs = seqs[1:]
        elif mine is not None and self._replaced(seq, listed[seq]):  # (nothing after it to read beside it)
            raise self._forked(seq)
        if len(seqs) <= 1:
            yield from (self._read_new(s) for s in seqs)
            return
        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            yield from pool.map(self._read_new, seqs)

    @staticmethod
    def _forked(seq: int) -> JournalForked:
        return JournalForked(f"Journal entry {seq} in the store is not the one this device applied: after the "
                             "store went back in time another device committed there, so the journal forked.")

    def fork_point(self, applied: int, device: str, chain: str | None = None) -> int:
        """The newest seq up to which the store holds the history this device applied through
        `applied` (`applied` itself when it lost none of it; `chain`: the chain id it applied
        there). Walks back over the kept copies, comparing each with the store's (the listing's
        sizes, then the bytes). An entry this device appended counts only with the entries
        below it down to one another device wrote: it was appended on what this device had
        applied, which the store may already have lost (then it is dead in the store's
        history, though its bytes are there). A copy of an entry that was dead here (its chain
        is not the one this device applied: it only read it) is passed over. UnknownForkPoint
        when the two histories meet below the kept copies, or the checkpoint this device started
        from is not the store's."""
        if self.kept is None:
            raise self._forked(applied)
        low = max(applied - self.kept.keep, 0)
        listed = self._listed_from(low)
        candidate = None
        expected = chain  # the chain id of the live entry this device applied at `at` (None: any)
        for at in range(applied, low, -1):
            mine = self.kept.get(at)
            if mine is None and at == applied:  # applied from a checkpoint: is it the store's still?
                if chain is None or (at in listed and self._chain_at(at) == chain):
                    return applied
                break
            if mine is None and candidate is not None:  # an own run down to where its copies start
                return candidate
            if mine is None:
                break
            entry = self._unseal(at, mine)
            if expected is not None and entry.chain_id is not None and entry.chain_id != expected:
                continue  # a copy of an entry that was dead here (read, never applied): it says nothing
            if entry.chain_id is not None:
                expected = entry.prev
            if not self._holds(at, mine, listed):
                candidate = None
                continue
            candidate = at if candidate is None else candidate
            if entry.device != device:
                return candidate
        else:
            if low == 0:  # every entry down to the first compared
                return candidate or 0
        raise UnknownForkPoint(f"The journal forked after the store went back in time, below what this device "
                               f"keeps of its history (it applied {applied}).")

    def _chain_at(self, seq: int) -> str | None:
        return self._unseal(seq, self.store.get(entry_key(seq))).chain_id

    def _replaced(self, seq: int, listed: Listed) -> bool:
        """Whether the store's entry `seq` is not the copy this device kept: unless its size is
        the copy's and it was not written after the copy was kept (free), its bytes say (a GET). A device
        whose last entries are its own would otherwise build on them after another device
        took a seq under them (the store went back): they are dead, and it would never see. (A
        store whose clock runs ahead costs a GET here; one that keeps whole seconds may hide a
        replacement made within the second.)"""
        if self.kept is None or (size := self.kept.size(seq)) is None:
            return False
        if size == listed.size and listed.modified <= self.kept.kept_at(seq):
            return False
        return not self._same_entry(seq, self.store.get(entry_key(seq)), self.kept.get(seq))

    def _forked_below(self, applied: int, device: str, chain: str | None) -> bool:
        """Whether the store lost part of the history this device applied through `applied`."""
        try:
            return self.fork_point(applied, device, chain) < applied
        except UnknownForkPoint:
            return True

    def _holds(self, seq: int, mine: bytes, listed: dict[int, Listed]) -> bool:
        """Whether the store's entry `seq` is this device's copy (`_same_entry`)."""
        return seq in listed and self._same_entry(seq, self.store.get(entry_key(seq)), mine)

    def _same_entry(self, seq: int, stored: bytes, mine: bytes) -> bool:
        """Whether the store's entry `seq` is this device's copy: byte for byte, or the same
        entry sealed again under a newer key (`members rekey --full`; the copy kept from then
        on is the store's, so the next check is by bytes again)."""
        if stored == mine:
            return True
        try:
            same = self.volume.unseal(entry_key(seq), stored, "") == self.volume.unseal(entry_key(seq), mine, "")
        except (IntegrityError, KeyNotGiven):
            return False
        if same and self.kept is not None:
            self.kept.put(seq, stored, replace=True)
        return same

    def kept_not_held(self, applied: int) -> list[Entry]:
        """The entries this device kept copies of, from `applied` down to its oldest copy, that
        the store does not hold at their seqs, in order."""
        listed = self._listed_from(max(applied - self.kept.keep, 0)) if self.kept is not None else {}
        entries = []
        for seq in range(applied, 0, -1):
            mine = self.kept.get(seq) if self.kept is not None else None
            if mine is None:
                break
            if not self._holds(seq, mine, listed):
                entries.append(self._unseal(seq, mine))
        return entries[::-1]

    def stored_entries(self, after: int) -> list[Entry]:
        """The store's entries after `after`, as written (no copies kept: this device does not
        apply them; see Committer._fill_gap)."""
        return [self._unseal(seq, self.store.get(entry_key(seq))) for seq in self.seqs_after(after)]

    def restored_below(self, seq: int, depth: int = 1000) -> set[str]:
        """The commit ids that the entries this device kept copies of below `seq` (down to
        `depth` of them) commit again (`restores`): changes of entries lost to a fork that
        are in the history already."""
        restored: set[str] = set()
        for at in range(seq - 1, max(seq - 1 - depth, 0), -1):
            blob = self.kept.get(at) if self.kept is not None else None
            if blob is None:
                break
            restored.update(self._unseal(at, blob).restores)
        return restored

    def kept_entries(self, first: int, last: int) -> list[Entry]:
        """Entries `first`..`last` as this device applied them, from its kept copies (the
        store's where it has none: below a fork point both histories are one)."""
        entries = []
        for seq in range(first, last + 1):
            blob = self.kept.get(seq) if self.kept is not None else None
            entries.append(self.read(seq) if blob is None else self._unseal(seq, blob))
        return entries

    def append(self, entry: Entry, signed_by: DeviceKey | None = None) -> bool:
        """Try to take `entry.seq` (signed by this device's key, in a volume with members); False
        if another commit already holds it."""
        blob = self._seal(entry, signed_by)
        if self.store.put_if_absent(entry_key(entry.seq), blob):
            if self.kept is not None:
                self.kept.put(entry.seq, blob, replace=True)
            return True
        try:
            existing = self.read(entry.seq)
        except NotFound:
            return False
        return existing.commit_id == entry.commit_id

    def replace_with_marker(self, seq: int) -> None:
        """Put an empty entry over entry `seq`, which every device refuses (`fsck --repair`:
        a forged entry, membership.py); the only overwrite of an entry there is."""
        self.store.put(entry_key(seq), self._seal(Entry(seq=seq, device=REPAIR_DEVICE, ops=[])))

    def check_identity(self) -> None:
        """A store that lost its header too was emptied or is another store: nothing is
        put into it (StoreRefused: the device stays offline, status says it needs the user)."""
        try:
            header = json.loads(self.store.get(HEADER_KEY))
        except NotFound:
            header = None
        except ValueError:
            header = {}
        if header is None or header.get("volume_id") != self.volume.volume_id:
            raise StoreRefused(f"The store at {self.store.url} no longer holds this volume (emptied, or another "
                                   "store at that address?); nothing is written to it.")

    def mark_went_back(self, seq: int) -> None:
        """Tell every device (at its next listing) that the store went back in time around entry
        `seq`, so that each puts back the objects its tree names that the store lost: a device
        that put entries back, took the store's history after a fork or filled a gap may name
        blocks only another device has."""
        self.store.put(f"{PREFIX}{WENT_BACK}{seq:020d}-{secrets.token_hex(8)}", b"")

    def put_back(self, went_back: StoreWentBack) -> list[Entry]:
        """Put every entry up to the one missing that the store lost back at its seq, byte
        for byte, from the kept copies; the entries put back. Raises IntegrityError naming what
        cannot be: an entry this device has no copy of, or a seq the store now holds another
        entry at (a device committed there after the store went back: the journal forked)."""
        self.check_identity()
        held = self._listed_from(0)
        lost = [seq for seq in range(1, went_back.through + 1) if seq not in held]
        checked = range(max(lost[0] - CHECKED_BEHIND, 1), went_back.through + 1) if lost else range(0)
        for seq in (seq for seq in checked if seq in held):
            mine = self.kept.get(seq) if self.kept is not None else None
            if mine is not None and not self._holds(seq, mine, held):
                # another device committed at this seq after the store went back: putting ours
                # back around it would mix two histories (entries naming files the other never made)
                raise JournalForked(f"{went_back} Another device committed entry {seq} since, so the journal "
                                    "forked.")
        restored = []
        for seq in lost:
            blob = self.kept.get(seq) if self.kept is not None else None
            if blob is None:
                raise JournalGap(f"{went_back} This device has no copy of entry {seq} to put back; another "
                                     "device may (mount it), or run `fusedrive fsck --repair`.")
            if not self.store.put_if_absent(entry_key(seq), blob) and self.store.get(entry_key(seq)) != blob:
                raise JournalForked(f"{went_back} Another device committed entry {seq} since, so the journal "
                                    "forked.")
            restored.append(self._unseal(seq, blob))
        # Every device learns the store went back (at its next listing), so that each puts
        # back the blocks it has: the entries it restored may name blocks only another uploaded.
        self.mark_went_back(went_back.through)
        return restored


def start_journal(volume: Volume) -> None:
    """Entry 1 of every volume: the root directory, owned by whoever created the volume."""
    import os
    import stat

    root = {"op": "mkroot", "mode": stat.S_IFDIR | 0o755, "uid": os.getuid(), "gid": os.getgid(),
            "t": time.time_ns()}
    if not Journal(volume).append(Entry(seq=1, device="init", ops=[root])):
        raise IntegrityError(f"The volume at {volume.url} already has a journal.")
