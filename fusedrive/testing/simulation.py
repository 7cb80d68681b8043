"""The whole engine, simulated: several devices' real engines (replica, staging, uploads,
committer, follower, cache dirs on disk) in one trio run on a virtual clock, over a store
in memory that fails, answers slowly, loses answers and goes down by seed, with devices
killed at any store call and at every named crash point and started again from their
cache dirs. Deterministic: a seed is one run, replayed exactly in a process started with
the same PYTHONHASHSEED (scripts/simulate.py sets it).

    outcome = simulate(seed)            # its plan drawn from the seed
    outcome = simulate(seed, steps)     # a given (e.g. shrunk) plan, faults from the seed
    assert outcome.failure is None, outcome.report()

What makes a run deterministic (and cheap): trio's MockClock jumps to the next deadline
whenever every task waits, so a backoff of 30 s costs nothing; the calls the engine sends
to worker threads run in the trio thread instead, after a virtual delay drawn from the
seed (that is where concurrent requests reorder); the engine's thread pools run inline;
trio's scheduler, uuid4, secrets and the wall clock (virtual) are seeded.

A crash is what SIGKILL does: the device's tasks stop at their next await (none of its
in-memory state survives: a new Drive is made from the cache dir), what its store calls
did stays done. The oracles after each run (see `_check`): every device converges to one
tree equal to a replay of the journal, within bounded virtual time once the store is
healthy; every save whose close returned is live, a version, in the trash or a conflicted
copy; per-file invariants hold; fsck finds nothing; no exception escapes an engine task.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import random
import secrets
import shutil
import tempfile
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .. import crashpoints
from ..engine import blocks as blocks_module, committer as committer_module, drive as drive_module, \
    journal as journal_module, uploads as uploads_module
from ..engine.blocks import BlockStore
from ..engine.cache import BlockCache
from ..engine.drive import Drive
from ..engine.journal import Entry, Journal, JournalGap, entry_key, start_journal
from ..engine.manifest import contents
from ..engine.replica import Replica
from ..engine.tree import Inode
from ..errors import BlockMissing, FusedriveError, IntegrityError, StoreUnreachable
from ..report import no_progress
from ..store.devices import DeviceKey, certify
from ..store.epochs import check_of, write_epoch
from ..store.members import Identity, add_member, write_founder
from ..store.memory import MemoryObjects, MemoryStore
from ..store.sealing import KeyRing
from ..store.volume import HEADER_KEY, Volume, create_volume
from ..tools.fsck import fsck, snapshot
from ..tools.people import rekey, roster_of, set_member
from .bypath import PathFrontEnd, content, tree

EPOCH = 1_800_000_000.0  # the virtual wall clock's start (Unix seconds)
FILES = ["/a", "/b", "/c", "/d/x", "/d/y"]
FOLDERS = ["/d", "/e"]
DEVICES = ["laptop", "desktop", "phone"]
# (kind, weight): what users do, and what happens to devices and the store
STEP_KINDS = [("save", 20), ("save-by-rename", 8), ("mirror-save", 4), ("fsync-save", 6), ("edit", 6), ("truncate", 3),
              ("delete", 8), ("rename", 8), ("mkdir", 4), ("rmdir", 2), ("rm-r", 2), ("link", 2), ("chmod", 3),
              ("setxattr", 2), ("read", 5), ("sync", 4), ("pull", 2),
              ("cut", 3), ("heal", 3), ("outage", 1), ("lose-answer", 3), ("crash", 3), ("rejoin", 1)]
ROLLBACK_KINDS = [("backup", 2), ("restore", 1)]
# a volume shared with people: its admin (the first device's person) starts a key epoch, or
# makes the step's device's person admin or writer again (an admin's demotion starts an epoch)
MEMBERSHIP_KINDS = [("rekey", 1), ("role", 1)]
# steps that happen to the store or the network, whether or not the device's process runs
AROUND_THE_DEVICE = {"cut", "heal", "outage", "lose-answer", "backup", "restore", "rekey", "role"}
SETTLE_SECONDS = 1800  # virtual: once the store is healthy, every device must be done within this
CHECKPOINT_EVERY = 10  # entries between checkpoints (1,000 in the drive)
POLL_SECONDS = 10.0  # virtual: how often a device lists the journal (idle devices' polls are most of a run's CPU)
STARTING_SECONDS = 60  # virtual: a user waits this long for a device to start before giving up a step
PLAY_SECONDS = 7200  # virtual: the steps of a run are done within this (each is bounded far below)
CALL_SECONDS = 120  # virtual: one sync or fsync may wait this long for a store that fails


class SimulatedCrash(BaseException):
    """The device's process dies here (BaseException: no engine handler may catch it)."""


@dataclass(frozen=True)
class Step:
    device: int
    kind: str
    a: str = ""
    b: str = ""
    wait: float = 0.0  # virtual seconds after the device's previous step

    def __repr__(self) -> str:
        return f"Step({self.device}, {self.kind!r}, {self.a!r}, {self.b!r}, {self.wait!r})"


@dataclass
class Faults:
    """Chances per store request (fail, lose its answer, hang), per store call or crash
    point (crash), while the run plays; all zero while it settles."""
    fail: float = 0.03
    lose: float = 0.03
    hang: float = 0.005
    crash: float = 0.004
    slow_mean: float = 0.05  # virtual seconds a request takes, on average

    @classmethod
    def none(cls) -> "Faults":
        return cls(0, 0, 0, 0, 0.05)


def plan(seed: int, operations: int = 60, devices: int = len(DEVICES), rollbacks: bool = False,
         shared: bool = False) -> list[Step]:
    """The steps of the run `seed`: `operations` of them over `devices` devices. `rollbacks`:
    the store is also copied now and then and put back to its last copy (a bucket restored
    from a backup: the store goes back in time), and no device's cache dir is wiped.
    `shared`: the volume's admin also changes roles and key epochs (MEMBERSHIP_KINDS)."""
    rng = random.Random(f"plan {seed}")
    # (with rollbacks, no device loses its cache dir: one that does between a copy and its
    # restore held the only copy of what it uploaded meanwhile — a double loss nothing can
    # undo; the device that meets the missing blocks names them)
    kinds, weights = zip(*([kind for kind in STEP_KINDS if kind[0] != "rejoin"] + ROLLBACK_KINDS if rollbacks
                           else STEP_KINDS) + (MEMBERSHIP_KINDS if shared else []))
    steps = []
    for _ in range(operations):
        kind = rng.choices(kinds, weights)[0]
        a = rng.choice(FOLDERS if kind in ("mkdir", "rmdir", "rm-r") else FILES)
        b = rng.choice(FILES)
        steps.append(Step(rng.randrange(devices), kind, a, b if kind in ("rename", "link") else "",
                          round(rng.expovariate(1.0), 3)))
    return steps


@dataclass
class Outcome:
    seed: int
    steps: list[Step]
    failure: str | None = None
    virtual_seconds: float = 0.0
    requests: int = 0
    faults: int = 0
    crashes: int = 0
    operations: int = 0  # steps that did what they asked (the rest were refused: ENOENT, a store down)
    saves_checked: int = 0

    def report(self) -> str:
        said = (f"seed {self.seed}: {len(self.steps)} steps, {self.operations} done, {self.virtual_seconds:.0f} "
                f"virtual s, {self.requests} store requests, {self.faults} faults, {self.crashes} crashes, "
                f"{self.saves_checked} closed saves checked")
        return said if self.failure is None else f"{said}\nFAILED: {self.failure}"


# --- determinism ----------------------------------------------------------------------

_SIMULATION: contextvars.ContextVar["Simulation"] = contextvars.ContextVar("simulation")
_DEVICE: contextvars.ContextVar["SimDevice | None"] = contextvars.ContextVar("device", default=None)


class InlineExecutor:
    """The engine's thread pools, run in the caller's thread (in order, at once)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to whoever asks the future, as a pool does
            future.set_exception(exc)
        return future

    def map(self, fn, *iterables):
        return [fn(*args) for args in zip(*iterables)]

    def shutdown(self, wait: bool = True, **kwargs) -> None:
        pass

    def __enter__(self) -> "InlineExecutor":
        return self

    def __exit__(self, *exc) -> None:
        pass


async def _in_thread_of_the_simulation(fn, *args, abandon_on_cancel: bool = False, limiter=None, **kwargs):
    """trio.to_thread.run_sync, simulated: a virtual delay (where requests reorder), then the
    call in this thread; a crash may come before or after it."""
    simulation = _SIMULATION.get()
    with trio.CancelScope(shield=not abandon_on_cancel):  # a call that cannot be abandoned runs to its end
        await trio.sleep(simulation.delay())
    simulation.maybe_crash("before a store call")
    result = fn(*args)
    simulation.maybe_crash("after a store call")
    return result


def _virtual_time() -> float:
    try:
        return EPOCH + trio.current_time()
    except RuntimeError:  # outside the run
        return _REAL_TIME()


_REAL_TIME = time.time


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    rng = random.Random(f"ids {seed}")
    run = trio._core._run  # the scheduler's shuffle, seeded as trio's own hypothesis plugin does
    patches = [
        (uuid, "uuid4", lambda: uuid.UUID(int=rng.getrandbits(128), version=4)),
        (secrets, "token_hex", lambda nbytes=32: rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()),
        (time, "time", _virtual_time),
        (time, "time_ns", lambda: int(_virtual_time() * 1e9)),
        (trio.to_thread, "run_sync", _in_thread_of_the_simulation),
        (blocks_module, "PACK_LINGER_SECONDS", 0),
        (drive_module, "CACHE_DIR_CHECK_SECONDS", POLL_SECONDS),
        (committer_module, "CHECKPOINT_EVERY", CHECKPOINT_EVERY),  # a run makes tens of entries, not thousands
        (blocks_module, "ThreadPoolExecutor", InlineExecutor),
        (journal_module, "ThreadPoolExecutor", InlineExecutor),
        (uploads_module, "ThreadPoolExecutor", InlineExecutor),
        (crashpoints, "hook", lambda step: _SIMULATION.get().maybe_crash(step)),
        (run, "_ALLOW_DETERMINISTIC_SCHEDULING", True),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    scheduler_state = run._r.getstate()
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        run._r.seed(seed)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        run._r.setstate(scheduler_state)


# --- the store ------------------------------------------------------------------------

class SimulatedStore(MemoryStore):
    """One device's view of the shared objects, failing as the simulation says."""

    def __init__(self, objects: MemoryObjects, device: "SimDevice") -> None:
        super().__init__(objects=objects)
        self.device = device

    def _check(self) -> None:
        super()._check()
        _SIMULATION.get().request(self.device)

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        _SIMULATION.get().answer(self.device, key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        landed = super().put_if_absent(key, data)
        if landed:
            _SIMULATION.get().answer(self.device, key)
        return landed


# --- a volume shared with people ------------------------------------------------------

@dataclass
class People:
    """A run with `shared` (issue 39): each device is its own person's, signing every entry,
    and the volume's roster was founded and rekeyed to epoch 1 before any device starts — so
    signatures ride through lost answers, put-backs and forks, and everything is sealed under
    an epoch key, as in a volume shared with people whose member was removed."""

    identities: dict[str, Identity]
    signers: dict[str, DeviceKey]
    epoch_master: bytes
    masters: dict[int, bytes] = field(default_factory=dict)  # every epoch's key the admin made (1 and on)

    @classmethod
    def of(cls, seed: int) -> "People":
        def key(*words: object) -> bytes:  # (the same keys in every run of a seed: replayable)
            return hashlib.sha256(" ".join(map(str, words)).encode()).digest()

        identities = {name: Identity(name, X25519PrivateKey.from_private_bytes(key("x25519", name)),
                                     Ed25519PrivateKey.from_private_bytes(key("ed25519", name))) for name in DEVICES}
        signers = {}
        for name, identity in identities.items():
            device = Ed25519PrivateKey.from_private_bytes(key("device", name))
            public = device.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            signers[name] = DeviceKey(device, identity.public.text, name, certify(identity, public))
        return cls(identities, signers, key("epoch", seed))

    def ring(self, keys: Volume) -> KeyRing:
        """A device's keys as its process starts: epoch 0's from its slot, each later one when
        met (every person is a member of every epoch: its slot would open it)."""
        return KeyRing(keys.volume_id, {0: keys.keys.masters[0]}, loader=lambda epoch, known: (
            self.epoch_master if epoch == 1 else self.masters.get(epoch)))

    def change(self, objects: MemoryObjects, keys: Volume, kind: str, device: int) -> bool | None:
        """The admin's `members` command, on a machine of its own (the store answers it): a new
        key epoch ("rekey"), or the step's device's person made admin or writer again ("role";
        the first device's person stays admin). False when it could not run (the store's
        journal has a gap, a fork, a refused entry: the admin would try again later)."""
        admin = DEVICES[0]
        ring = KeyRing(keys.volume_id, {0: keys.keys.masters[0], 1: self.epoch_master, **self.masters})
        volume = Volume(MemoryStore(objects=objects), keys.volume_id, keys.chunking, ring,
                        signer=self.signers[admin])
        try:
            if kind == "rekey":
                rekey(volume, no_progress)
            else:
                name = DEVICES[device] if device else DEVICES[1]
                role = roster_of(volume)[0].role_of(self.identities[name].public.text)
                set_member(volume, self.identities[name].public, "writer" if role == "admin" else "admin", name,
                           admin)
        except FusedriveError:
            return False
        finally:
            self.masters.update({epoch: master for epoch, master in ring.masters.items() if epoch > 1})
        return None

    def found(self, volume: Volume) -> None:
        """Entry 2: the roster (the first device's person admin, the others writers) and epoch 1."""
        for identity in self.identities.values():
            add_member(volume.store, identity.public, volume.keys.masters[0], volume.volume_id)
        write_founder(volume.store, self.identities[DEVICES[0]].public)
        write_epoch(volume.store, volume.volume_id, 1, self.epoch_master, 0, volume.keys.masters[0],
                    [identity.public for identity in self.identities.values()])
        volume.keys.masters[1] = self.epoch_master
        volume.keys.advance(1)
        ops = [{"op": "member", "public": identity.public.text, "name": name,
                "role": "admin" if name == DEVICES[0] else "writer", "t": 1}
               for name, identity in self.identities.items()]
        ops.append({"op": "epoch", "epoch": 1, "check": check_of(self.epoch_master), "t": 1})
        if not Journal(volume).append(Entry(seq=2, device="members", ops=ops), self.signers[DEVICES[0]]):
            raise AssertionError("entry 2 taken")


# --- devices --------------------------------------------------------------------------

class SimDevice(PathFrontEnd):
    """One device's process: a Drive on its cache dir, killed and started again."""

    def __init__(self, name: str, cache_dir: Path, objects: MemoryObjects, keys: Volume,
                 people: People | None = None) -> None:
        self.name = name
        self.cache_dir = cache_dir
        self.store = SimulatedStore(objects, self)
        self.volume = Volume(self.store, keys.volume_id, keys.chunking, keys.keys, header=keys.header,
                             signer=people.signers[name] if people is not None else None)
        self.keys, self.people = keys, people
        self._drive: Drive | None = None
        self.up = trio.Event()  # set while the process runs (after its start)
        self._process: trio.CancelScope | None = None
        self.operation: trio.CancelScope | None = None  # the front end's call in progress
        self.idle = trio.Event()  # set while there is none
        self.cut = False
        self.answers_to_lose = 0
        self.rng = random.Random()  # its faults' stream (the simulation seeds it)
        self.wipe = False  # its cache dir goes with the next kill (a "rejoin" step)

    @property
    def drive(self) -> Drive:
        """The running process's engine; a front end's call into a killed one dies with it."""
        if not self.up.is_set():
            raise SimulatedCrash(f"{self.name} is not running")
        return self._drive

    def crash(self) -> None:
        """SIGKILL: every task of the process stops at its next await."""
        if self._process is None or self._process.cancel_called:
            return
        _SIMULATION.get().outcome.crashes += 1
        if self.up.is_set():
            self.up = trio.Event()
        self._process.cancel()
        if self.operation is not None:
            self.operation.cancel()

    async def live(self) -> None:
        """The process, started again (from its cache dir) after every crash."""
        _DEVICE.set(self)
        while True:
            if self.people is not None:  # (what a process holds of the keys dies with it)
                self.volume.keys = self.people.ring(self.keys)
            self._drive = Drive(self.volume, self.cache_dir, self.name, 1 << 30, poll_interval=POLL_SECONDS,
                                io_timeout=60.0)
            started = False
            try:
                with trio.CancelScope() as self._process:
                    async with trio.open_nursery() as nursery:
                        try:
                            await self._drive.start(nursery)
                        except FusedriveError as exc:  # a mount refused (the store down at a new device's start)
                            _SIMULATION.get().note(f"{self.name}: mount failed: {exc}")
                            nursery.cancel_scope.cancel()
                        else:
                            started = True
                            self.up.set()
                            await trio.sleep_forever()
            except* SimulatedCrash:
                pass
            finally:
                with trio.CancelScope(shield=True):
                    await self.idle.wait()  # the front end's call in progress ends first
                self._drive.close()
            if self.wipe:
                self.wipe = False
                shutil.rmtree(self.cache_dir)
                self.cache_dir.mkdir()
                (self.cache_dir / "volume-id").write_text(self.volume.volume_id)
            await trio.sleep(1.0 if started else 5.0)  # the service manager starts it again

    async def run_steps(self, steps: list[Step]) -> None:
        """The user of this device, doing `steps` in order."""
        _DEVICE.set(self)
        self.idle.set()
        simulation = _SIMULATION.get()
        for step in steps:
            await trio.sleep(step.wait)
            if step.kind not in AROUND_THE_DEVICE:
                with trio.move_on_after(STARTING_SECONDS):  # a new device cut off cannot start at all
                    await self.up.wait()
                if not self.up.is_set():
                    simulation.note(f"{self.name} {step.kind} {step.a} {step.b}: not running")
                    continue
            self.idle = trio.Event()
            try:
                said = await self._do(simulation, step)
            finally:
                self.operation = None
                self.idle.set()
            simulation.note(f"{self.name} {step.kind} {step.a} {step.b}: {said}")

    async def _do(self, simulation: "Simulation", step: Step) -> str:
        """One step, as the user sees it end."""
        said = "done"
        with trio.CancelScope() as self.operation:
            try:
                if await simulation.act(self, step) is False:
                    said = "nothing to do it on"
                else:
                    simulation.outcome.operations += 1
            except SimulatedCrash:
                said = "killed"
            except (JournalGap, BlockMissing) as exc:  # the store's state after it went back, which a
                said = f"refused: {exc!r}"  # device that has what it lost repairs: the final oracles require it
            except IntegrityError as exc:
                simulation.fail(f"{self.name}: {step}: a read failed verification: {exc}")
            except (OSError, FusedriveError, trio.TooSlowError) as exc:
                said = f"refused: {exc!r}"  # as a program would be told (ENOENT, EEXIST, the store down)
        return "killed" if self.operation.cancelled_caught else said


# --- the run --------------------------------------------------------------------------

class Simulation:
    def __init__(self, seed: int, steps: list[Step], faults: Faults, base: Path, keys: Volume,
                 people: People | None = None) -> None:
        self.rng = random.Random(f"faults {seed}")
        self.faults = faults
        self.playing = faults
        self.outcome = Outcome(seed, steps)
        self.keys = keys
        self.objects = MemoryObjects()
        self.outage = False
        self.people = people
        self.devices = [SimDevice(name, base / name, self.objects, keys, people) for name in DEVICES]
        for device in self.devices:
            device.rng = random.Random(f"faults {seed} {device.name}")
        self.required: dict[str, str] = {}  # digest of each closed save → what it was
        self.unrecorded: dict[tuple[str, str], str] = {}  # (device, fid) → digest of its last closed save
        self.counter = 0
        self.notes: list[str] = []
        self.backup: dict | None = None  # the store as a "backup" step copied it
        self.nursery: trio.Nursery | None = None  # the run's, once it runs

    # --- faults, asked by the store and the thread calls --------------------------

    def _chance(self) -> float:
        """A draw from the current device's own stream (one device's requests do not shift
        another's faults: a failure shrinks better)."""
        device = _DEVICE.get()
        return (self.rng if device is None else device.rng).random()

    def delay(self) -> float:
        if self._chance() < self.faults.hang:
            self.outcome.faults += 1
            return 60 + 240 * self._chance()
        return -self.faults.slow_mean * math.log(1 - self._chance())  # exponential, of that mean

    def request(self, device: SimDevice) -> None:
        self.outcome.requests += 1
        if device.cut or self.outage:
            raise StoreUnreachable(f"Cannot reach the store ({device.name} cut off by the simulation).")
        if self._chance() < self.faults.fail:
            self.outcome.faults += 1
            raise StoreUnreachable("The store failed the request (by the simulation).")

    def answer(self, device: SimDevice, key: str) -> None:
        """A write landed: is its answer lost on the way?"""
        if device.answers_to_lose or self._chance() < self.faults.lose:
            device.answers_to_lose = max(0, device.answers_to_lose - 1)
            self.outcome.faults += 1
            raise StoreUnreachable(f"The answer to the write of {key} was lost (by the simulation).")

    def maybe_crash(self, where: str) -> None:
        device = _DEVICE.get()
        if device is None or self.faults.crash == 0 or self._chance() >= self.faults.crash:
            return
        device.crash()
        self.note(f"{device.name} killed at {where}")
        raise SimulatedCrash(f"{device.name} killed at {where}")

    def note(self, said: str) -> None:
        self.notes.append(f"[{trio.current_time():.1f}] {said}")
        if os.environ.get("FUSEDRIVE_SIMULATION_TRACE"):
            print(self.notes[-1], flush=True)

    def fail(self, failure: str) -> None:
        if self.outcome.failure is None:
            self.outcome.failure = failure

    # --- what users do ------------------------------------------------------------

    def _content(self, device: SimDevice, what: str) -> bytes:
        self.counter += 1
        return f"{device.name} {what} #{self.counter}".encode()

    def _before_writing(self, device: SimDevice, path: str) -> None:
        """A write is about to change `path`'s file here: a save of it this device has not
        uploaded yet is overwritten, as on any disk (not required any more)."""
        node = device.lookup(path)
        if node is None:
            return
        saved = self.unrecorded.pop((device.name, node.fid), None)
        if saved is not None and node.fid in device.drive.files.unsaved:
            self.required.pop(saved, None)

    def _closed(self, device: SimDevice, path: str | Inode, data: bytes) -> None:
        node = device.lookup(path) if isinstance(path, str) else path
        saved = digest(data)
        self.required[saved] = f"{device.name}: {data.decode()}"
        if node is not None:
            self.unrecorded[(device.name, node.fid)] = saved

    async def act(self, device: SimDevice, step: Step) -> bool | None:
        """Do one step; False when there was nothing to do it on."""
        kind, path, other = step.kind, step.a, step.b
        if kind in AROUND_THE_DEVICE:
            return self._around(device, kind)
        node = device.lookup(path)
        if kind in ("save", "fsync-save"):
            data = self._content(device, kind)
            self._before_writing(device, path)
            await device.save(path, data)
            self._closed(device, path, data)
            if kind == "fsync-save":
                with trio.fail_after(CALL_SECONDS):
                    await device.drive.fsync(device.lookup(path).fid)
        elif kind == "save-by-rename":
            data = self._content(device, kind)
            temporary = path + ".tmp~"
            self._before_writing(device, temporary)
            await device.save(temporary, data)
            self._closed(device, temporary, data)
            device.rename(temporary, path)
        elif kind == "mirror-save":  # what a mirror does with a file saved in its folder (mirror._upload)
            if node is not None and not node.is_reg:
                return False
            data = self._content(device, kind)
            self._before_writing(device, path)
            node = node or device.create_file(path)
            prepared = device.drive.staging.prepared_path()
            prepared.write_bytes(data)
            device.drive.take_content(node, prepared, time.time_ns())
            self._closed(device, path, data)
        elif kind in ("edit", "truncate"):
            if node is None or not node.is_reg:
                return False
            self._before_writing(device, path)
            node = await device.open_for_writing(path)
            try:
                if kind == "edit":
                    await device.write(node, self._content(device, "edit")[-6:], offset=2, truncate=False)
                else:
                    await device.drive.truncate(node, 3)
                # what the close saves, read before it: once closed it uploads, and a pull may
                # put another device's save in its place while a read of it awaits the store
                with trio.fail_after(CALL_SECONDS):
                    data = await content(device.drive, device.drive.replica.inode(node.ino) or node)
            finally:
                device.close(node)
            if data:
                self._closed(device, node, data)
        elif kind == "delete":
            if node is None or node.is_dir:
                return False
            device.delete(path)
        elif kind in ("rmdir", "rm-r"):
            if node is None or not node.is_dir:
                return False
            if kind == "rm-r":  # what rm -r does: the files in it, then the folder
                for name in device.names(path):
                    device.delete(f"{path}/{name}")
            device.delete(path)
        elif kind == "rename":
            device.rename(path, other)
        elif kind == "link":
            device.link(path, other)
        elif kind == "mkdir":
            device.mkdir(path)
        elif kind == "chmod":
            if node is None:
                return False
            device.namespace.set_attributes(node, mode=0o600 if node.mode & 0o044 else 0o644)
        elif kind == "setxattr":
            if node is None:
                return False
            device.namespace.set_xattr(node, b"user.tag", self._content(device, "tag"))
        elif kind == "read":
            if node is None or not node.is_reg:
                return False
            with trio.fail_after(CALL_SECONDS):
                await content(device.drive, node)
        elif kind == "sync":
            with trio.fail_after(CALL_SECONDS):
                await device.drive.sync_all()
        elif kind == "pull":
            with trio.fail_after(CALL_SECONDS):
                await device.drive.committer.pull()
        elif kind == "crash":
            device.crash()
        elif kind == "rejoin":  # the device replaced: an empty cache dir joins (from the newest checkpoint)
            drive = device.drive
            if drive.files.unsaved or drive.replica.pending_count():
                return False  # what only this device has would go with it
            device.wipe = True
            device.crash()
        else:
            raise ValueError(f"no such step: {kind}")
        return None

    def _around(self, device: SimDevice, kind: str) -> bool | None:
        """A step that happens to the store or the network (the device's process may be down)."""
        if kind in ("rekey", "role"):
            return self.people.change(self.objects, self.keys, kind, DEVICES.index(device.name)) \
                if self.people is not None else False
        if kind == "cut":
            device.cut = True
        elif kind == "heal":
            device.cut = False
        elif kind == "outage":
            self.outage = True
            self.nursery.start_soon(self._end_outage, self.rng.uniform(5, 120))
        elif kind == "lose-answer":
            device.answers_to_lose += 1
        elif kind == "backup":
            with self.objects.lock:
                self.backup = dict(self.objects.data)
        elif kind == "restore":
            if self.backup is None:
                return False
            with self.objects.lock:
                self.objects.data.clear()
                self.objects.data.update(self.backup)
        return None

    async def _end_outage(self, after: float) -> None:
        await trio.sleep(after)
        self.outage = False

    # --- the run and its checks ---------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for device in self.devices:
                device.cache_dir.mkdir()
                (device.cache_dir / "volume-id").write_text(self.keys.volume_id)
            # every device joins while the store is healthy, then the faults begin
            self.faults = Faults.none()
            for device in self.devices:
                nursery.start_soon(device.live)
                await device.up.wait()
            self.faults = self.playing
            with trio.move_on_after(PLAY_SECONDS) as playing:
                async with trio.open_nursery() as users:
                    for index, device in enumerate(self.devices):
                        users.start_soon(device.run_steps, [s for s in self.outcome.steps if s.device == index])
            if playing.cancelled_caught:
                self.fail(f"a step did not return within {PLAY_SECONDS} virtual seconds: {self.notes[-3:]}")
            self.faults, self.outage = Faults.none(), False
            for device in self.devices:
                device.cut, device.answers_to_lose = False, 0
            settled = await self._settle()
            if settled and any(step.kind == "restore" for step in self.outcome.steps) and await self._open_everything():
                settled = await self._settle()  # the device that has a block the store lost puts it back
            self.outcome.virtual_seconds = trio.current_time()
            if settled:
                await self._check()
            nursery.cancel_scope.cancel()

    async def _settle(self) -> bool:
        """With the store healthy and no more crashes: every device uploads, commits and
        applies everything within SETTLE_SECONDS, or it is stuck."""
        with trio.move_on_after(SETTLE_SECONDS):
            while True:
                for device in self.devices:
                    await device.up.wait()
                    device.drive.health.retry_now()
                    with trio.move_on_after(CALL_SECONDS), contextlib.suppress(FusedriveError):
                        await device.drive.sync_all()
                for device in self.devices:
                    with trio.move_on_after(CALL_SECONDS):
                        await device.drive.follower.pull_now()
                head = self.journal_head()
                if all(self._done(device, head, self.went_back_marks()) for device in self.devices):
                    return True
                await trio.sleep(5)
        stuck = [device for device in self.devices
                 if not self._done(device, self.journal_head(), self.went_back_marks())]
        self.fail("stuck: " + "; ".join(
            f"{d.name} applied {d.drive.replica.applied_seq}, {d.drive.replica.pending_count()} changes queued, "
            f"{len(d.drive.files.unsaved)} files unsaved, says {list(d.drive.problems.recent)[-2:]}" for d in stuck))
        return False

    async def _open_everything(self) -> bool:
        """After the store went back in time, users open their files and their histories: whether
        one found a block the store lost (the device that found it tells the others, see
        BlockStore._missing)."""
        found = False
        for device in self.devices:
            drive = device.drive
            for block_id, where in sorted(drive.replica.all_block_refs(), key=lambda ref: ref[0]):
                try:
                    await trio.to_thread.run_sync(drive.blocks.fetch, block_id, where)
                except BlockMissing:
                    found = True
        return found

    def journal_head(self) -> int:
        with self.objects.lock:
            return sum(1 for key in self.objects.data if key.startswith("journal/") and key[8:].isdigit())

    def went_back_marks(self) -> set[str]:
        with self.objects.lock:
            return {key[len("journal/"):] for key in self.objects.data if key.startswith("journal/went-back-")}

    @staticmethod
    def _done(device: SimDevice, head: int, marks: set[str]) -> bool:
        """Up, nothing waiting, every entry applied, and every went-back mark answered (a device
        whose pull waited behind a hung request has not put back what only it has yet)."""
        drive = device.drive
        return device.up.is_set() and not drive.files.unsaved and not drive.replica.pending_count() \
            and drive.replica.applied_seq == head and not drive.problems.stuck \
            and marks <= set(json.loads(drive.replica.get_state("went_back_marks", "[]")))

    async def _check(self) -> None:
        """The oracles, once every device is done."""
        drives = [device.drive for device in self.devices]
        trees = [await tree(drive) for drive in drives]
        for device, seen in zip(self.devices[1:], trees[1:]):
            if seen != trees[0]:
                differ = sorted(set(seen.items()) ^ set(trees[0].items()))
                return self.fail(f"{device.name} and {self.devices[0].name} do not agree: {differ[:6]}")
        healthy = Volume(MemoryStore(objects=self.objects), self.keys.volume_id, self.keys.chunking,
                         self.keys.keys if self.people is None else self.people.ring(self.keys))
        replayed = Replica(":memory:")
        try:
            await self._check_against(healthy, replayed)
        finally:
            replayed.close()

    async def _check_against(self, healthy: Volume, replayed: Replica) -> None:
        entries = list(Journal(healthy).entries_after(0))  # read once: a full replay, from entry 1
        for entry in entries:
            replayed.apply_remote(entry.seq, entry.ops, entry.format, entry.blocks)
        committed: dict[str, int] = {}
        for entry in entries:
            for op in entry.ops:
                said = json.dumps(op, sort_keys=True)
                if said in committed:  # each change a program made is committed once
                    return self.fail(f"entries {committed[said]} and {entry.seq} both commit {said[:200]} "
                                     "(a retry appended its entry again?)")
                committed[said] = entry.seq
        journal = snapshot(replayed)
        stored = {entry.seq: healthy.store.get(entry_key(entry.seq)) for entry in entries}
        for device in self.devices:
            replica = snapshot(device.drive.replica)
            if replica != journal:
                return self.fail(f"{device.name}'s replica is not a replay of the journal: it has "
                                 f"{[row for row in replica if row not in journal][:4]}, the journal "
                                 f"{[row for row in journal if row not in replica][:4]}")
            problems = device.drive.check_invariants()
            if problems:
                return self.fail(f"{device.name}: {problems}")
            copies = device.drive.journal.kept
            for seq, blob in stored.items():
                copy = copies.get(seq) if copies is not None else None
                if copy is not None and copy != blob:
                    return self.fail(f"{device.name} applied another journal entry {seq} than the store holds")
        with tempfile.TemporaryDirectory(prefix="fsck-") as scratch:
            cache = BlockCache(Path(scratch) / "blocks", 1 << 30, healthy.keys.is_id_of)
            try:
                found = fsck(Journal(healthy), BlockStore(healthy, cache), None, False, no_progress)
                kept = kept_contents(replayed, BlockStore(healthy, cache))
            finally:
                cache.close()
        if found:
            return self.fail(f"fsck: {found}")
        lost = sorted(what for digest, what in self.required.items() if digest not in kept)
        if lost:
            return self.fail(f"closed saves lost: {lost}")
        self.outcome.saves_checked = len(self.required)


def kept_contents(replica: Replica, blocks: BlockStore) -> set[str]:
    """Digests of every content a user can reach: live files and trashed ones, and the
    versions in their histories (a version row no chain leads to is lost to the user,
    whatever the table holds)."""
    reachable = [fid for (fid,) in replica.db.execute("SELECT fid FROM inodes WHERE nlink > 0 UNION SELECT fid "
                                                      "FROM trash")]
    fids = {member for fid in reachable for member in replica.history_chain(fid)}
    manifests = [m for (m,) in replica.db.execute(
        "SELECT manifest FROM inodes WHERE nlink > 0 UNION ALL SELECT manifest FROM trash")]
    manifests += [m for fid in fids for (m,) in replica.db.execute("SELECT manifest FROM versions WHERE fid=?", (fid,))]
    blocks.carried_in(replica.carried_blocks())
    return {digest(b"".join(contents(json.loads(manifest), blocks.fetch))) for manifest in set(manifests)}


def digest(data: bytes) -> str:
    """What identifies a content in the oracles (blocks do not: an edit's manifest cuts up old blocks)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_KEYS: Volume | None = None


def _keys() -> Volume:
    """One volume's keys for every run in this process (the passphrase's scrypt is what costs)."""
    global _KEYS
    if _KEYS is None:
        _KEYS = create_volume(MemoryStore(), "simulation")
    return _KEYS


def simulate(seed: int, steps: list[Step] | None = None, faults: Faults | None = None,
             base: Path | None = None, shared: bool = False) -> Outcome:
    """One run: `steps` (default: the seed's plan) with the seed's faults; its outcome.
    `shared`: on a volume shared with people (People)."""
    steps = plan(seed, shared=shared) if steps is None else steps
    keys = _keys()
    directory = Path(tempfile.mkdtemp(prefix=f"sim-{seed}-", dir=base))
    people = People.of(seed) if shared else None
    simulation = Simulation(seed, steps, faults or Faults(), directory, keys, people)
    simulation.objects.data[HEADER_KEY] = (keys.header, 0.0)
    try:
        with _deterministic(seed):
            token = _SIMULATION.set(simulation)
            try:
                start = Volume(MemoryStore(objects=simulation.objects), keys.volume_id, keys.chunking,
                               keys.keys if people is None else people.ring(keys))
                start_journal(start)
                if people is not None:
                    people.found(start)
                trio.run(simulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
            except BaseException as exc:  # noqa: BLE001 - what escaped the engine is the finding
                if isinstance(exc, KeyboardInterrupt):
                    raise
                simulation.fail(f"escaped: {_describe(exc)}")
            finally:
                _SIMULATION.reset(token)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return simulation.outcome


def shrink(seed: int, steps: list[Step], failure: str, faults: Faults | None = None, base: Path | None = None,
           runs: int = 400, shared: bool = False) -> tuple[list[Step], Faults]:
    """The shortest sequence of `steps` that still fails the same way, and the faults it
    needs: without the random ones (only its own cut, outage, lose-answer and crash
    steps) when it fails so too, which makes it shrink much further. Delta debugging:
    chunks removed, then single steps, within `runs` runs."""
    kind = failure.split(":")[0]
    faults = faults or Faults()

    def fails(candidate: list[Step], trying: Faults) -> bool:
        nonlocal runs
        runs -= 1
        found = simulate(seed, candidate, trying, base=base, shared=shared).failure
        return found is not None and found.split(":")[0] == kind

    if fails(steps, Faults.none()):
        faults = Faults.none()
    parts = 2
    while len(steps) > 1 and runs > 0:
        size = -(-len(steps) // parts)
        for start in range(0, len(steps), size):
            candidate = steps[:start] + steps[start + size:]
            if runs > 0 and fails(candidate, faults):
                steps, parts = candidate, max(parts - 1, 2)
                break
        else:
            if size == 1:
                break
            parts = min(len(steps), parts * 2)
    return steps, faults


def _describe(exc: BaseException) -> str:
    import traceback

    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    return "".join(traceback.format_exception(exc)).strip().splitlines()[-1] + "\n" + \
        "".join(traceback.format_exception(exc))[-3000:]
