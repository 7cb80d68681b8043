"""`fusedrive members rekey --full`: every object of the volume sealed again under the newest
key epoch, so key material of an older epoch — a removed member's — opens nothing (issue 39).

Each object keeps its key and its content; only its sealing changes, so no journal entry,
manifest or block id changes and devices go on as they were (a device's kept copy of an entry
is compared with the store's by content, not bytes: engine/journal.py). Blocks and metadata are
sealed as every newer object is (version 2, the epoch in the header). A block inside a pack is
found by its byte range, which must not move: it is sealed again to the same length
(`sealing.seal_in_place`). Bytes of a pack that no retained file names — deleted files'
blocks — become zeros once the pack is older than `UNNAMED_GRACE_SECONDS` (a younger pack may
hold blocks of a commit still on its way; they stay as they are and a later run seals them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..engine.blocks import BLOCKS, PACKS
from ..engine.manifest import Location
from ..engine.replica import Replica
from ..errors import IntegrityError, KeyNotGiven
from ..report import Progress
from ..store import Listed
from ..store.sealing import sealed_epoch
from ..store.members import FOUNDER_KEY
from ..store.volume import Volume

PLAINTEXT_KEYS = ("volume", "members/", "epochs/", "shares/", "journal/went-back-", FOUNDER_KEY)  # nothing to redo
UNNAMED_GRACE_SECONDS = 24 * 3600  # as gc's default grace: no commit still names a pack's other blocks


@dataclass
class ResealReport:
    objects: int = 0  # sealed again
    current: int = 0  # sealed under the newest epoch already
    unopened: list[str] = field(default_factory=list)  # damaged, or not this volume's: left as they are
    pack_bytes_zeroed: int = 0  # of blocks no retained file names


def reseal_all(volume: Volume, replica: Replica, progress: Progress, now: float | None = None) -> ResealReport:
    """Seal every object of `volume` under its key ring's current epoch. `replica`: the
    volume's state at (or after) the new epoch's entry, for where packed blocks are."""
    now = time.time() if now is None else now
    report = ResealReport()
    listed = [item for item in volume.store.list("") if not item.key.startswith(PLAINTEXT_KEYS)]
    named: dict[str, dict[str, Location]] = {}  # pack key → the blocks retained files name in it
    for block_id, where in replica.all_block_refs():
        if isinstance(where, Location):
            named.setdefault(PACKS + where.pack, {})[block_id] = where
    bar = progress("sealing again", len(listed))
    for item in listed:
        try:
            if item.key.startswith(PACKS):
                _reseal_pack(volume, item, named.get(item.key, {}), now, report)
            else:
                _reseal_object(volume, item.key, report)
        except (IntegrityError, KeyNotGiven):
            report.unopened.append(item.key)
        bar.update(1)
    bar.close()
    return report


def _reseal_object(volume: Volume, key: str, report: ResealReport) -> None:
    keys, blob = volume.keys, volume.store.get(key)
    if sealed_epoch(blob) == keys.current:
        report.current += 1
        return
    if key.startswith(BLOCKS):
        aad = key.encode()
        sealed = keys.seal("block_seal", keys.unseal("block_seal", blob, aad, key), aad)
    else:
        sealed = volume.seal(key, volume.unseal(key, blob, key))
    volume.store.put(key, sealed)
    report.objects += 1


def _reseal_pack(volume: Volume, item: Listed, named: dict[str, Location], now: float,
                 report: ResealReport) -> None:
    keys = volume.keys
    body = bytearray(volume.store.get(item.key))
    if now - item.modified >= UNNAMED_GRACE_SECONDS:
        kept = bytearray(len(body))
        for where in named.values():
            kept[where.start:where.start + where.size] = body[where.start:where.start + where.size]
        report.pack_bytes_zeroed += len(body) - sum(where.size for where in named.values())
        body = kept
    for block_id, where in named.items():
        aad = (BLOCKS + block_id).encode()
        blob = bytes(body[where.start:where.start + where.size])
        plaintext = keys.unseal("block_seal", blob, aad, f"Block {block_id} in {item.key}")
        body[where.start:where.start + where.size] = keys.seal_in_place("block_seal", plaintext, aad)
    volume.store.put(item.key, bytes(body))
    report.objects += 1
