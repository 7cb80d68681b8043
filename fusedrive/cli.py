"""The `fusedrive` command: one console script, --help everywhere, one-sentence errors.

Exit codes: 0 success; 1 the command ran but found work pending or problems
(status, fsck, umount timeout); 2+ errors (see errors.py for each kind).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from . import __version__
from .services import control
from .store import volume as volumes
from .fuse.options import Presentation, expand_o_options, parse_umask
from .errors import (CacheDirError, DeviceStuck, FusedriveError, IntegrityError, LocalError, MountError, NewerFormat,
                     StoreRefused, StoreUnreachable, UsageError, first_clear_error)

DEFAULT_CACHE_SIZE = "4G"
MIN_CACHE_SIZE = 4 << 20  # one largest block
DRAIN_RETRY_SECONDS = 2
DEAD_MOUNT_EXIT = 13  # status: a mount's process is gone
INTERNAL_ERROR_EXIT = 70  # a bug (EX_SOFTWARE)
# what stops commits until the user acts (umount does not wait for the store then)
NEEDS_THE_USER = {DeviceStuck.exit_code, NewerFormat.exit_code, IntegrityError.exit_code, CacheDirError.exit_code}
EXIT_GRACE_SECONDS = 30  # umount: how long a mount told to leave its queue may take to exit past --timeout


def parse_size(given: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = given.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    try:
        size = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {given!r} (try 500M or 4G)") from None
    if not 0 <= size < float("inf"):
        raise argparse.ArgumentTypeError(f"a size is 0 or more, not {given!r} (try 500M or 4G)")
    return int(size)


class Parser(argparse.ArgumentParser):
    """Bad usage is one sentence and exit 64 (argparse's own is a usage dump and exit 2).
    A value such as -5G is a (bad) value, not an unknown option: argparse would say
    "expected one argument"."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d+(\.\d*)?[a-zA-Z]*$")

    def error(self, message: str) -> NoReturn:
        print(f"fusedrive: {message[0].upper()}{message[1:]} (see `{self.prog} --help`).", file=sys.stderr)
        sys.exit(UsageError.exit_code)


def with_o_options_expanded(argv: list[str]) -> list[str]:
    """`mount ... -o allow_other,uid=1000` (fstab style) as the long options they stand for."""
    if not argv or argv[0] != "mount":
        return argv
    out, groups, items = [], [], iter(argv)
    for arg in items:
        if arg == "-o":
            groups.append(next(items, ""))
        elif arg.startswith("-o") and len(arg) > 2 and not arg.startswith("--"):
            groups.append(arg[2:])
        else:
            out.append(arg)
    return out + expand_o_options(groups)


def positive_size(text: str) -> int:
    size = parse_size(text)
    if size < MIN_CACHE_SIZE:
        raise argparse.ArgumentTypeError(f"the cache needs at least {MIN_CACHE_SIZE >> 20}M, not {text!r}")
    return size


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"a number of seconds above 0, not {text!r}")
    return seconds


def listen_address(text: str) -> str:
    from .services.httpserve import parse_listen

    try:
        parse_listen(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
    return text


def hub_url(text: str) -> str:
    from urllib.parse import urlparse

    try:
        url = urlparse(text)
        port_ok = url.port is None or 0 < url.port
    except ValueError:
        port_ok = False
    if url.scheme not in ("http", "https") or not url.hostname or not port_ok:
        raise argparse.ArgumentTypeError(f"the hub is an http://HOST:PORT address, not {text!r}")
    return text


def progress(description: str, total: int, unit: str = ""):
    """A progress bar on a terminal; silent in scripts. unit="B" counts bytes."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, unit_scale=unit == "B", disable=None, leave=False,
                file=sys.stderr)


def name_in_folder(path: str) -> str:
    """The absolute path of a name as given: its folder resolved, the name itself not
    followed (a deleted file's name may be a symlink now, or nothing)."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def resolve_volume(args: argparse.Namespace) -> argparse.Namespace:
    """args.volume as a URL (given, the volume of a mount point, or the default drive's), and
    for the default drive its key file unless the user named another."""
    target = args.volume
    if target in (None, "default"):
        url = volumes.default_volume_url()
    elif "://" in target:
        url = target
    else:
        entry = control.read_registry(os.path.realpath(target))
        if entry is None:
            raise UsageError(f"{target} is neither a volume URL (s3://..., file:///...) nor a fusedrive mount point.")
        url = entry["volume"]
    if url == volumes.default_volume_url() and args.key_file is None and volumes.default_key_file().exists():
        args.key_file = str(volumes.default_key_file())
    args.volume = url
    return args


def open_volume_for(url: str, args, offline_header: bytes | None = None) -> volumes.Volume:
    """The volume, with its replica behind the store if it has one (or --replica names one:
    a device joining while the primary does not answer reads the header from it)."""
    from .store import open_store
    from .store.replicated import VolumeStore, attach_replica, follow_move

    store = VolumeStore(open_store(url, args.endpoint_url))
    if getattr(args, "replica_url", None):
        store.attach({"url": args.replica_url, "endpoint_url": args.replica_endpoint_url})
    args.key_file = volumes.key_file_for(url, args.key_file)
    member = _member_key(store, args)
    volume = volumes.open_volume(store, lambda: volumes.get_passphrase(args.key_file), offline_header, member)
    if volume.opened_by == "identity" and member.opened is not None:
        from .store.members import keep_slot

        keep_slot(volumes.config_dir(), volume.volume_id, member.opened)  # it opened the volume: kept for offline
    volume.signer = _this_device_key()
    _hold_epoch_keys(volume, member)
    cache_dir = getattr(args, "cache_dir", None)
    attach_replica(volume, Path(cache_dir) if cache_dir else None)
    follow_move(volume)
    return volume


def _hold_epoch_keys(volume: volumes.Volume, member: "_MemberKey | None") -> None:
    """The volume's newer key epochs (store/epochs.py): what this person's slot opened, and
    the others fetched when met, with the identity on this machine."""
    from .store.epochs import EpochLoader
    from .store.members import KEPT_SLOTS, load_identity

    @functools.cache
    def identity_here():
        if member is not None and member.identity is not None:  # (unsealed already: scrypt once)
            return member.identity
        try:
            return load_identity(volumes.config_dir(), os.environ.get("FUSEDRIVE_IDENTITY_PASSPHRASE"))
        except UsageError:
            return None

    if member is not None:
        volume.keys.masters.update(member.masters)
    volume.keys.loader = EpochLoader(volume.store, volume.volume_id, identity_here, volumes.config_dir() / KEPT_SLOTS,
                                     volume.wrapping)


def _this_device_key():
    from .store.devices import this_machine_key

    return this_machine_key(volumes.config_dir())


class _MemberKey:
    """How open_volume gets the master key from this person's key slot (store/members.py):
    with an identity on this machine and no passphrase given (a key file,
    FUSEDRIVE_PASSPHRASE), the slot is tried first. `opened`: the slot read from the store."""

    def __init__(self, store) -> None:
        self.store = store
        self.opened: dict | None = None
        self.masters: dict[int, bytes] = {}  # key epoch → master key, as the slot opened them
        self.identity = None  # this person's, once unsealed to open the slot

    def __call__(self, volume_id: str) -> tuple[bytes, bool] | None:
        from .store.epochs import open_member_slot
        from .store.members import NotAMember, keep_slot, kept_slot, load_identity, read_slot

        identity = self.identity = load_identity(volumes.config_dir(), os.environ.get("FUSEDRIVE_IDENTITY_PASSPHRASE"))
        try:
            slot, checked = read_slot(self.store, identity.public), False
        except StoreUnreachable:  # a device that has the volume mounts offline: with the slot kept once it opened it
            slot, checked = kept_slot(volumes.config_dir(), volume_id), True
            if slot is None:
                raise
        if slot is not None:
            self.opened = None if checked else slot
            self.masters = open_member_slot(self.store, slot, identity, volume_id)
            return self.masters[0], checked
        keep_slot(volumes.config_dir(), volume_id, None)  # taken away: not opened offline either
        if sys.stdin.isatty():
            return None  # the passphrase is asked
        raise NotAMember(f"Your identity has no key slot in the volume at {self.store.url}: a member can give you "
                         f"one (fusedrive members add VOLUME {identity.public.text}), or give the passphrase.")


def _member_key(store, args) -> _MemberKey | None:
    """The slot opener where it applies (an identity here, no passphrase given); else None."""
    from .store.members import load_public

    if args.key_file or os.environ.get("FUSEDRIVE_PASSPHRASE") or load_public(volumes.config_dir()) is None:
        return None
    return _MemberKey(store)


def ensure_default_volume(endpoint_url: str | None) -> tuple[str, Path]:
    """First use: create the embedded default volume with a generated key file."""
    from .engine.journal import start_journal
    from .store import NotFound, open_store

    url, key_file = volumes.default_volume_url(), volumes.default_key_file()
    if not key_file.exists():
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        import secrets

        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    store = open_store(url, endpoint_url)
    try:
        store.get(volumes.HEADER_KEY)
    except NotFound:
        os.makedirs(volumes.data_dir() / "default-volume", mode=0o700, exist_ok=True)
        start_journal(volumes.create_volume(store, volumes.read_key_file(key_file)))
    return url, key_file


# --- commands ------------------------------------------------------------------------------


def cmd_init(args) -> int:
    from .engine.journal import start_journal
    from .store import open_store
    from .tools.people import parse_member, set_member

    members = [parse_member(text) for text in args.member]  # first: a typo leaves nothing half made
    signer = _this_device_key() if members else None
    if members and signer is None:
        raise UsageError("Whoever shares a volume needs an identity: make yours first (fusedrive id).")
    store = open_store(args.volume, args.endpoint_url)
    if store.url.startswith("file://"):
        try:
            os.makedirs(store.root, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise LocalError(f"Cannot create the volume directory {store.root}: {exc.strerror}.") from None
    volume = volumes.create_volume(store, volumes.get_passphrase(args.key_file, confirm=True))
    start_journal(volume)
    volume.signer = signer
    for member, role in members:
        set_member(volume, member, role, _short_name(member), _my_name())
    print(f"Created volume {volume.volume_id} at {args.volume}" +
          (f", shared with {len(members)} member(s) (you are its admin)." if members else "."))
    return 0


def _my_name() -> str:
    from .store.members import load_public

    found = load_public(volumes.config_dir())
    return found[0] if found else "admin"


def _short_name(member) -> str:
    """How a member is named until `members add --name` says: the start of their identity."""
    return member.text[:12] + "…"


def cmd_id(args) -> int:
    """Make this person's identity (once) and show its public half."""
    import getpass

    from .store.devices import device_key
    from .store.members import create_identity, load_public

    found = load_public(volumes.config_dir())
    if found is None:
        passphrase = volumes.get_passphrase(None, confirm=True, env="FUSEDRIVE_IDENTITY_PASSPHRASE") \
            if args.passphrase else None
        identity = create_identity(volumes.config_dir(), args.name or getpass.getuser(), passphrase)
        device_key(volumes.config_dir(), identity)  # this machine's, certified now (the identity is open)
        found = identity.name, identity.public
        print(f"Created your identity ({found[0]}). Send this to whoever shares a volume with you:", file=sys.stderr)
    if args.device:  # this machine's signing key, certified by the identity: what `members revoke` names
        signer = _this_device_key()
        if signer is None:
            raise UsageError("Your identity is protected by a passphrase: set FUSEDRIVE_IDENTITY_PASSPHRASE.")
        print(signer.signer["key"])
        return 0
    print(found[1].text)
    return 0


def cmd_members(args) -> int:
    """add / remove / list / revoke: the people a volume is shared with, their roles, their devices."""
    from .report import count, human_bytes
    from .store.members import members
    from .tools.people import parse_member, rekey, remove_member, revoke_device, roster_of, set_member

    volume = open_volume_for(args.volume, args)
    if args.action == "list":
        roster, _replica = roster_of(volume, progress)
        if not roster.founded:  # slots given before roles existed
            for text in members(volume.store):
                print(f"{text}  writer")
        for text, member in sorted(roster.members.items(), key=lambda item: item[1]["name"]):
            print(f"{text}  {member['role']:<6}  {member['name']}")
        return 0
    if args.action == "rekey":
        epoch, resealed = rekey(volume, progress, args.full)
        print(f"Key epoch {epoch} started: what is written from now on is sealed under a key only the volume's "
              "members have." + ("" if resealed else " What was written before keeps its key: "
                                 "`members rekey --full` seals it again."))
        if resealed:
            print(f"{count(resealed.objects, 'object', 'objects')} sealed again under it"
                  f" ({count(resealed.current, 'was already', 'were already')}), "
                  f"{human_bytes(resealed.pack_bytes_zeroed)} of deleted "
                  "files' blocks in packs cleared: key material of an older epoch opens none of it.")
            if resealed.unopened:
                print(f"{count(len(resealed.unopened), 'object', 'objects')} could not be opened and were left "
                      "as they are (damaged, or not this volume's; fsck names them): "
                      f"{', '.join(resealed.unopened[:5])}"
                      + (" …" if len(resealed.unopened) > 5 else ""))
                return IntegrityError.exit_code
        return 0
    if not args.identity:
        raise UsageError(f"Name it: fusedrive members {args.action} VOLUME "
                         f"{'DEVICE-KEY (fusedrive id --device on it)' if args.action == 'revoke' else 'IDENTITY'}.")
    if args.action == "revoke":
        revoke_device(volume, args.identity, progress)
        print(f"Nothing signed by the device {args.identity} is applied by any device from now on, and what is "
              "written from now on is sealed under a new key. If the device held its person's identity, remove "
              "the person and add them again with a new one.")
        return 0
    member, role = parse_member(args.identity)
    if args.action == "add":
        if not set_member(volume, member, role, args.name or _short_name(member), _my_name(), progress):
            print(f"{member.text} is a {role} already.")
            return 0
        print(f"{member.text} is now a {role} of {volume.url}: they mount it with their identity (and the store's "
              "credentials).")
        return 0
    if not remove_member(volume, member, progress):
        print(f"{member.text} is not a member.")
        return 0
    print(f"{member.text} is no longer a member of {volume.url}: their devices may not change it, and what is "
          "written from now on is sealed under a new key they were not given" +
          (" (the volume's passphrase, given here, opens it too: if they knew the passphrase, they still can)"
           if volume.wrapping else " (nor does the volume's passphrase open it: run this with the passphrase to "
           "keep that)") +
          ". What was written before stays readable to them (they had its key) unless `fusedrive members rekey "
          f"--full` seals it again; the credentials they were given for {volume.store.url} must be revoked by whoever "
          "owns that bucket or directory: fusedrive cannot.")
    return 0


def _open_device_volume(args, place: str) -> volumes.Volume:
    """A mount's or a mirror's volume: with only a folder given, the default drive's
    (created on first use); a device whose cache dir holds the volume opens it even when
    the store does not answer."""
    if getattr(args, place) is None:
        args.volume, args.__dict__[place] = None, args.volume
    if args.volume is None:
        args.volume, default_key = ensure_default_volume(args.endpoint_url)
        args.key_file = args.key_file or str(default_key)
    return open_volume_for(args.volume, args,
                           volumes.kept_header(args.volume, Path(args.cache_dir) if args.cache_dir else None))


def _device_argv(args, cache_dir: Path) -> list[str]:
    """The options a mount or mirror started in the background is given again."""
    argv = ["--cache-dir", str(cache_dir), "--cache-size", str(args.cache_size), "--device-name", args.device_name,
            "--poll-interval", str(args.poll_interval), "--io-timeout", str(args.io_timeout)]
    if args.hub:
        argv += ["--hub", args.hub]
    if args.notify:
        argv += ["--notify"]
    if args.metrics:
        argv += ["--metrics", args.metrics]
    if args.endpoint_url:
        argv += ["--endpoint-url", args.endpoint_url]
    for flag, value in (("--replica-url", args.replica_url), ("--replica-endpoint-url", args.replica_endpoint_url)):
        if value:
            argv += [flag, value]
    argv += [flag for flag, on in (("--verbose", args.verbose), ("--quiet", args.quiet),
                                   ("--debug", getattr(args, "debug", False))) if on]
    return argv


def _start_in_background(args, volume: volumes.Volume, argv: list[str], cache_dir: Path) -> Path:
    """`volume` as this command opened it: by a member's identity, the process opens it so too."""
    from .services.process import start_background

    env = dict(os.environ)
    if volume.opened_by != "identity":
        env["FUSEDRIVE_PASSPHRASE"] = volumes.get_passphrase(args.key_file)
    log_file = Path(args.log_file).absolute() if args.log_file else cache_dir / "mount.log"
    start_background(argv, log_file, env)
    return log_file


def _log_in_foreground(args) -> None:
    debug = getattr(args, "debug", False)
    level = logging.DEBUG if debug or args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        **({"filename": args.log_file} if args.log_file and args.ready_fd is None else {}))


def _warn_about_cache_size(cache_dir: Path, cache_size: int) -> None:
    from .services.process import cache_size_warning

    warning = cache_size_warning(cache_dir, cache_size)
    if warning:
        print(f"fusedrive: {warning}", file=sys.stderr)


def cmd_mount(args) -> int:
    from .fuse.mounting import check_mountpoint, run_mount
    from .services.process import check_cache_dir, check_device_name, report_failure

    try:
        check_device_name(args.device_name)
        presentation = Presentation(args.allow_other, args.read_only, args.uid, args.gid,
                                    None if args.umask is None else parse_umask(args.umask))
        volume = _open_device_volume(args, "mountpoint")
        cache_dir = Path(args.cache_dir) if args.cache_dir else volumes.cache_root() / volume.volume_id
        if not args.foreground:
            check_mountpoint(args.mountpoint)
            check_cache_dir(cache_dir)
            argv = ["mount", args.volume, args.mountpoint, *_device_argv(args, cache_dir), *presentation.as_argv()]
            log_file = _start_in_background(args, volume, argv, cache_dir)
            print(f"Mounted {args.volume} at {args.mountpoint} (log: {log_file}).")
            _warn_about_cache_size(cache_dir, args.cache_size)
            return 0
        _log_in_foreground(args)
        run_mount(volume, args.mountpoint, cache_dir, args.device_name, args.cache_size, args.ready_fd, args.debug,
                  args.poll_interval, args.hub, args.notify, args.metrics, args.io_timeout, presentation)
        return 0
    except FusedriveError as exc:
        report_failure(args.ready_fd, exc)
        raise


def cmd_mirror(args) -> int:
    from .mirror.running import check_folder, run_mirror
    from .services.process import check_cache_dir, check_device_name, report_failure

    try:
        check_device_name(args.device_name)
        volume = _open_device_volume(args, "folder")
        folder = os.path.realpath(args.folder)
        cache_dir = Path(args.cache_dir) if args.cache_dir else \
            volumes.cache_root() / f"{volume.volume_id}.mirror-{control.mount_id(folder)}"
        if not args.foreground:
            check_folder(folder)
            check_cache_dir(cache_dir)
            log_file = _start_in_background(args, volume, ["mirror", args.volume, folder,
                                                           *_device_argv(args, cache_dir)], cache_dir)
            print(f"Mirroring {args.volume} in {folder} (log: {log_file}).")
            _warn_about_cache_size(cache_dir, args.cache_size)
            return 0 if args.no_wait else _wait_for_first_sync(folder)
        _log_in_foreground(args)
        run_mirror(volume, folder, cache_dir, args.device_name, args.cache_size, args.ready_fd, args.poll_interval,
                   args.hub, args.notify, args.metrics, args.io_timeout)
        return 0
    except FusedriveError as exc:
        report_failure(args.ready_fd, exc)
        raise


def _wait_for_first_sync(folder: str) -> int:
    """Show the first scan's progress (paths looked at, of about as many as the volume has)
    until the folder and the volume agree; 1 if something still waits (the store is away)."""
    from . import report

    bar = None
    while True:
        status = control.request(folder, "status")
        if status["first_scan_done"] and not status["folder_changes_waiting"]:
            break
        if status["folder_paths_failing"] and status["first_scan_done"]:
            break
        if bar is None:
            bar = progress("first sync", max(status["volume_entries"], 1))
        bar.total = max(bar.total, status["scanned"], status["volume_entries"])
        bar.n = status["scanned"]
        bar.refresh()
        time.sleep(0.25)
    if bar is not None:
        bar.close()
    status = control.request(folder, "status")
    if status["folder_paths_failing"]:
        print(f"fusedrive: {status['folder_paths_failing']} paths could not be synced yet (they are tried again); "
              "see `fusedrive status`.", file=sys.stderr)
        return 1
    print(report.verdict(status))
    return 0


def _unmount_kernel(mountpoint: str, lazy: bool) -> None:
    command = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown reason"
        if "busy" in reason.lower():
            raise MountError(f"{mountpoint} is busy: close the files and programs using it, then try again.")
        raise MountError(f"Cannot unmount {mountpoint}: {reason}")


def _waiting(status: dict) -> str:
    from .report import human_bytes

    return (f"{status['files_waiting']} files ({human_bytes(status['bytes_waiting'])}) and "
            f"{status['ops_waiting']} changes are waiting")


def _wait_for_upload(mountpoint: str, timeout: float) -> bool:
    """Ask the mount to upload everything, showing progress; False if the timeout passed.
    While the store fails, say so once and keep asking until the timeout."""
    deadline = time.monotonic() + timeout
    bar, told = None, False
    while True:
        outcome: dict = {}

        def sync() -> None:
            try:
                outcome["reply"] = control.request(mountpoint, "sync", timeout=max(1.0, deadline - time.monotonic()))
            except FusedriveError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=sync, daemon=True)
        worker.start()
        while worker.is_alive() and time.monotonic() < deadline:
            status = control.request(mountpoint, "status")
            if bar is None and status["bytes_waiting"]:
                bar = progress("uploading", status["bytes_waiting"], "B")
            if bar is not None:
                bar.n = max(0, bar.total - status["bytes_waiting"])
                bar.refresh()
            worker.join(0.25)
        if "reply" in outcome or time.monotonic() >= deadline:
            if bar is not None:
                bar.close()
            return "reply" in outcome
        if outcome["error"].exit_code in NEEDS_THE_USER:  # waiting cannot help: say so, leave them queued
            print(f"{outcome['error']}", file=sys.stderr)
            return False
        if not told:
            status = control.request(mountpoint, "status")
            print(f"The store does not answer ({outcome['error']}); {_waiting(status)}. Waiting up to "
                  f"{timeout:.0f} s for it (--no-wait unmounts at once and keeps them queued for the next mount).",
                  file=sys.stderr)
            told = True
        time.sleep(min(DRAIN_RETRY_SECONDS, max(0.0, deadline - time.monotonic())))


def _clean_up_dead_mount(mountpoint: str, entry: dict) -> None:
    """The mount process was killed or crashed: detach its mount point and forget it."""
    from .services.process import mounted_at

    if mounted_at(mountpoint):
        _unmount_kernel(mountpoint, lazy=True)
        if mounted_at(mountpoint):
            raise MountError(f"Cannot detach the dead mount at {mountpoint}; try `fusermount3 -u -z {mountpoint}`.")
    control.registry_path(mountpoint).unlink(missing_ok=True)
    control.socket_path(mountpoint).unlink(missing_ok=True)
    print(f"The mount process of {mountpoint} had stopped (killed or crashed); its mount point is cleaned up. "
          f"What it had queued stays in {entry['cache_dir']} and uploads at the next mount from that cache dir.")


def cmd_umount(args) -> int:
    from . import report

    mountpoint = os.path.realpath(args.mountpoint)
    entry = control.read_registry(mountpoint)
    if entry is None:  # a mount this machine's fusedrive does not know (another user's runtime dir, a reboot)
        from .services.process import FUSEDRIVE_FS_TYPE, mounted_at

        if mounted_at(mountpoint) != FUSEDRIVE_FS_TYPE:
            raise MountError(f"{args.mountpoint} is not a fusedrive mount.")
        _unmount_kernel(mountpoint, args.lazy)
        print(f"Unmounted {args.mountpoint}.")
        return 0
    if control.has_exited(entry["pid"]):
        _clean_up_dead_mount(mountpoint, entry)
        return 0
    deadline = time.monotonic() + args.timeout
    complete = not args.no_wait and _wait_for_upload(mountpoint, args.timeout)
    if not complete:
        status = control.request(mountpoint, "leave-queued")  # the mount exits without waiting for the store
        complete = not report.is_pending(status)
    if entry.get("mirror"):
        control.request(mountpoint, "stop")  # a mirror's folder is no mount: its process is told to stop
    else:
        _unmount_kernel(mountpoint, args.lazy)
    control.wait_for_exit(entry["pid"], max(deadline - time.monotonic(), EXIT_GRACE_SECONDS))
    done, next_time = ("Stopped mirroring", "next start") if entry.get("mirror") else ("Unmounted", "next mount")
    if not complete:
        print(f"{done} {args.mountpoint}, but {_waiting(status)} to upload; they are kept in the local queue "
              f"({entry['cache_dir']}) and upload at the {next_time} from it.", file=sys.stderr)
        return 1
    print(f"{done} {args.mountpoint}; all changes are in the store.")
    return 0


def _status_of(entry: dict) -> dict:
    """A mount's status with its verdict; for a mount whose process is gone, what to do."""
    from . import report

    mountpoint = entry["mountpoint"]
    if control.has_exited(entry["pid"]):
        return {"mountpoint": mountpoint, "process": "gone", "cache_dir": entry["cache_dir"],
                "verdict": f"The mount process has stopped (killed or crashed): run `fusedrive umount {mountpoint}` "
                           "to clean up; what it had queued uploads at the next mount from its cache dir."}
    status = dict(control.request(mountpoint, "status"), mountpoint=mountpoint, process="running")
    status.pop("ok", None)
    status["verdict"] = report.verdict(status)
    return status


def cmd_status(args) -> int:
    import json

    from . import report
    from .engine.membership import NotAWriter

    entries = [control.read_registry(args.mountpoint)] if args.mountpoint else control.all_registered()
    entries = [e for e in entries if e]
    if not entries:
        raise MountError("No fusedrive mount is running." if not args.mountpoint
                         else f"{args.mountpoint} is not a fusedrive mount.")
    while True:
        statuses = [_status_of(e) for e in entries]
        dead = [s for s in statuses if s.get("process") == "gone"]
        broken = [s for s in statuses if s.get("cache_dir_lost")]
        code = (DEAD_MOUNT_EXIT if dead else CacheDirError.exit_code if broken
                else NewerFormat.exit_code if any(s.get("needs_upgrade") for s in statuses)
                else IntegrityError.exit_code if any(s.get("integrity_problem") for s in statuses)
                else DeviceStuck.exit_code if any(s.get("stuck") for s in statuses)
                else NotAWriter.exit_code if any(s.get("key_not_given") or s.get("cannot_write") and s["ops_waiting"]
                                                 for s in statuses)
                else StoreRefused.exit_code if any(s.get("store_needs_attention") for s in statuses)
                else 1 if any(report.is_pending(s) for s in statuses) else 0)
        if args.watch and sys.stdout.isatty():
            print("\033[H\033[J", end="")  # refresh in place
        if args.json:
            print(json.dumps(statuses, indent=None if args.watch else 2), flush=True)
        else:
            for status in statuses:
                print(f"{status['mountpoint']}: {status['verdict']}")
                for line in [] if status in dead else report.details(status):
                    print(f"  {line}")
            sys.stdout.flush()
        if not args.watch:
            return code
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return code


def cmd_events(args) -> int:
    import json

    from .engine.events import describe

    entry = control.choose_mount(args.mountpoint)
    try:
        for line in control.stream(entry["mountpoint"], "events", timeout=None):
            if "listening" in line:
                print(f"Listening for events of {entry['mountpoint']} (Ctrl-C stops).", file=sys.stderr, flush=True)
            if "event" not in line:
                continue
            event = line["event"]
            if args.json:
                print(json.dumps(event), flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S', time.localtime(event['time']))} {describe(event)}", flush=True)
    except KeyboardInterrupt:
        return 0
    raise MountError(f"The mount at {entry['mountpoint']} went away.")


def cmd_share(args) -> int:
    from .services.sharing import parse_duration

    entry = control.mount_containing(args.path)
    expires = parse_duration(args.expires)
    bar = None
    answer: dict = {}
    for answer in control.stream(entry["mountpoint"], "share", timeout=None, path=os.path.realpath(args.path),
                                 expires=expires):
        if "progress" in answer:
            if bar is None:
                bar = progress("preparing", answer["total"], "B")
            bar.n = answer["progress"]
            bar.refresh()
    if bar is not None:
        bar.close()
    share = answer["share"]
    print(share["url"])
    print(f"Shared {share['path']} as {share['name']} until "
          f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(share['expires']))} "
          f"(fusedrive unshare {share['token']} to stop it sooner).", file=sys.stderr)
    return 0


def _paths_in_one_mount(paths: list[str]) -> tuple[str, list[str]]:
    entry = control.mount_containing(paths[0])
    real = [os.path.realpath(path) for path in paths]
    for path in real[1:]:
        if control.mount_containing(path)["mountpoint"] != entry["mountpoint"]:
            raise UsageError("Give paths of one mount at a time.")
    return entry["mountpoint"], real


def cmd_pin(args) -> int:
    from . import report

    mountpoint, paths = _paths_in_one_mount(args.paths)
    bar = None
    answer: dict = {}
    for answer in control.stream(mountpoint, "pin", timeout=None, paths=paths, wait=not args.no_wait):
        if "progress" in answer:
            if bar is None:
                bar = progress("downloading", answer["total"], "B")
            bar.total = answer["total"]
            bar.n = answer["progress"]
            bar.refresh()
    if bar is not None:
        bar.close()
    state = answer["pins"]
    print(report.pins_line(state))
    return 1 if state["pinned_files_waiting"] else 0


def cmd_unpin(args) -> int:
    mountpoint, paths = _paths_in_one_mount(args.paths)
    control.request(mountpoint, "unpin", timeout=60, paths=paths)
    print("Unpinned: the cache may let that content go when it needs room.")
    return 0


def cmd_pins(args) -> int:
    import json

    from . import report

    entry = control.choose_mount(args.mountpoint)
    answer = control.request(entry["mountpoint"], "pins", timeout=60)
    answer.pop("ok", None)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    if not answer["pins"]:
        print("Nothing is pinned.")
    for pin in answer["pins"]:
        print(pin["path"] + ("/" if pin["folder"] else ""))
    print(report.pins_line(answer))
    return 0


def cmd_shares(args) -> int:
    import json

    entry = control.choose_mount(args.mountpoint)
    shares = control.request(entry["mountpoint"], "shares", timeout=60)["shares"]
    if args.json:
        print(json.dumps(shares, indent=2))
        return 0
    if not shares:
        print("No share links.")
    for share in shares:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(share["expires"]))
        state = "EXPIRED" if share["expired"] else f"until {until}"
        print(f"{share['token']}  {share['path']}  {state}\n    {share['url']}")
    return 0


def cmd_unshare(args) -> int:
    target = args.target
    if os.path.exists(target):
        entry = control.mount_containing(target)
        target = os.path.realpath(target)
    else:
        entry = control.choose_mount(args.mountpoint)
    removed = control.request(entry["mountpoint"], "unshare", timeout=60, target=target)["removed"]
    for share in removed:
        print(f"Removed the link to {share['path']} ({share['token']}).")
    return 0


def _offline_replica(args):
    """--volume: the volume's committed state replayed into memory (no mount needed)."""
    from .engine.checkpoints import replay_to_head
    from .engine.replica import Replica

    volume = open_volume_for(resolve_volume(args).volume, args)
    replica = Replica(":memory:")
    replay_to_head(volume, replica, progress)
    return volume, replica


def _drive_path(path: str) -> str:
    return "/" + path.strip("/")


def cmd_history(args) -> int:
    from .engine import history
    from . import report

    if args.volume:
        _volume, replica = _offline_replica(args)
        node = replica.inode(history.resolve(replica, _drive_path(args.path)))
        found = [dict(number=v.number, saved=v.saved_ns / 1e9, device=v.device, size=v.size, label=v.label())
                 for v in history.versions(replica, node.fid)]
    else:
        entry = control.mount_containing(args.path)
        found = control.request(entry["mountpoint"], "versions", timeout=60,
                                path=os.path.realpath(args.path))["versions"]
    if args.json:
        import json

        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("No saved versions (the file was never written).")
    for i, v in enumerate(found):
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["saved"]))
        current = "  (current)" if i == len(found) - 1 else ""
        print(f"{v['number']:>5}  {saved}  {v['device'] or '-':<12} {report.human_bytes(v['size']):>10}{current}")
    return 0


def cmd_restore(args) -> int:
    entry = control.mount_containing(args.path)
    arguments = {"path": os.path.realpath(args.path), "version": args.version}
    if args.to:
        arguments["to"] = os.path.realpath(args.to)
    answer = control.request(entry["mountpoint"], "restore", timeout=600, **arguments)
    print(f"Restored {answer['restored']} as {'the current version of ' + args.path if not args.to else args.to}.")
    return 0


def cmd_cat(args) -> int:
    import base64

    from .engine import history

    out = sys.stdout.buffer
    if args.volume:
        import tempfile

        from .engine.blocks import BlockStore
        from .engine.cache import BlockCache
        from .engine.manifest import block_ids, contents

        volume, replica = _offline_replica(args)
        node = replica.inode(history.resolve(replica, _drive_path(args.path)))
        kept = history.version(replica, node.fid, args.version)
        with tempfile.TemporaryDirectory() as scratch:
            blocks = BlockStore(volume, BlockCache(Path(scratch), 64 << 20, volume.keys.is_id_of))
            blocks.carried_in(replica.carried_blocks())
            for block_id in block_ids(kept.manifest):
                history.check_not_archived(replica, block_id, volume.url)
            for data in contents(kept.manifest, blocks.fetch):
                out.write(data)
        return 0
    entry = control.mount_containing(args.path)
    for line in control.stream(entry["mountpoint"], "cat", timeout=600, path=os.path.realpath(args.path),
                               version=args.version):
        if "data" in line:
            out.write(base64.b64decode(line["data"]))
    out.flush()
    return 0


def cmd_trash(args) -> int:
    from . import report

    if args.action == "list":
        entry = control.choose_mount(args.target)
        items = control.request(entry["mountpoint"], "trash-list", timeout=60)["items"]
        if args.json:
            import json

            print(json.dumps(items, indent=2))
            return 0
        if not items:
            print("The trash is empty.")
        for item in items:  # the id tells apart items deleted under one name (restore --id)
            deleted = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["deleted"]))
            what = f"folder, {item['inside']} items inside" if item["is_dir"] else report.human_bytes(item["size"])
            print(f"{deleted}  {item['path']}  ({what}, id {item['id'][:8]})")
        return 0
    if args.action == "restore":
        if not args.target:
            raise UsageError("Which path? fusedrive trash restore PATH (as it was inside the mount).")
        entry = control.mount_containing(args.target)
        answer = control.request(entry["mountpoint"], "trash-restore", timeout=60, path=name_in_folder(args.target),
                                 id=args.id)
        print(f"Restored to {entry['mountpoint'].rstrip('/')}{answer['path']}.")
        return 0
    entry = control.choose_mount(args.target)
    purged = control.request(entry["mountpoint"], "trash-empty", timeout=600)["purged"]
    print(f"Emptied the trash: {purged} items are gone for good (fusedrive gc reclaims their space).")
    return 0


def cmd_gc(args) -> int:
    from .report import human_bytes
    from .engine.retention import load_retention
    from .services.sharing import parse_duration
    from .tools.space import collect

    volume = open_volume_for(args.volume, args)
    policy = load_retention(volume)
    report = collect(volume, policy, parse_duration(args.grace) if args.grace != "0" else 0, args.dry_run, progress)
    if args.json:
        import json

        print(json.dumps(report.as_dict(), indent=2))
        return 0
    would = "would be " if args.dry_run else ""
    print(f"gc of {args.volume} ({policy.describe()}):")
    print(f"  {report.versions_pruned} old versions and {report.trash_purged} trashed files {would}let go")
    print(f"  {report.blocks_deleted} blocks and {report.packs_deleted} packs of small files {would}deleted, "
          f"{human_bytes(report.bytes_reclaimed)} {would}reclaimed")
    if report.blocks_kept_young:
        print(f"  {report.blocks_kept_young} unreferenced blocks younger than {args.grace} kept (they may belong "
              "to a commit still on its way)")
    return 0


def cmd_du(args) -> int:
    from .report import human_bytes
    from .tools.space import usage

    numbers = usage(open_volume_for(args.volume, args), progress)
    if args.json:
        import json

        print(json.dumps(numbers, indent=2))
        return 0
    print(f"files          {human_bytes(numbers['logical_bytes'])} (what the files add up to)")
    where = "the volume directory's" if args.volume.startswith("file://") else "the bucket's"
    print(f"stored         {human_bytes(numbers['stored_bytes'])} in {where} blocks")
    print(f"dedup          {numbers['dedup_ratio']:.2f}x   compression {numbers['compression_ratio']:.2f}x")
    print(f"history        {human_bytes(numbers['history_bytes'])} only in old versions")
    print(f"trash          {human_bytes(numbers['trash_bytes'])} only in the trash")
    if numbers["unreferenced_stored_bytes"]:
        print(f"reclaimable    {human_bytes(numbers['unreferenced_stored_bytes'])} (fusedrive gc)")
    if numbers["unreferenced_bytes_in_packs"]:
        print(f"held in packs  {human_bytes(numbers['unreferenced_bytes_in_packs'])} of deleted small files, "
              "until the rest of their pack goes")
    return 0


def cmd_config(args) -> int:
    from dataclasses import replace

    from .engine.retention import load_retention, save_retention
    from .services.sharing import parse_duration

    volume = open_volume_for(args.volume, args)
    policy = load_retention(volume)
    changes = {}
    for option, field_name in (("keep_all", "keep_all_days"), ("keep_daily", "keep_daily_days"),
                               ("trash_days", "trash_days")):
        value = getattr(args, option)
        if value is not None:
            changes[field_name] = 0 if value == "0" else parse_duration(value) / 86400
    if args.max_versions is not None:
        if args.max_versions < 1:
            raise UsageError("--max-versions must be at least 1 (the current version).")
        changes["max_versions"] = args.max_versions
    if changes:
        policy = replace(policy, **changes)
        save_retention(volume, policy)
    print(f"Retention of {args.volume}: {policy.describe()}.")
    return 0


def cmd_archive(args) -> int:
    from .services.sharing import parse_duration
    from .tools.space import archive

    result = archive(open_volume_for(args.volume, args), parse_duration(args.older_than), args.storage_class,
                     progress)
    print(f"Archived {result['blocks_archived']} blocks held only by versions older than {args.older_than} "
          f"({args.storage_class}). Reading those versions asks for `fusedrive thaw` first.")
    return 0


def cmd_thaw(args) -> int:
    from .tools.space import thaw

    result = thaw(open_volume_for(args.volume, args), progress)
    print(f"Thawed {result['blocks_thawed']} blocks.")
    if result["blocks_waiting"]:
        print(f"{result['blocks_waiting']} blocks are being restored by the archive tier (this can take hours); "
              "run fusedrive thaw again later.")
        return 1
    return 0


def cmd_replica(args) -> int:
    """add / sync / remove / show / promote the volume's replica store."""
    from .store import open_store
    from .store.replicated import check_replica, read_record, write_record

    if args.action == "promote" and args.url and not args.replica_url:
        args.replica_url = args.url  # the store may not answer: the header and the rest come from the replica
    volume = open_volume_for(args.volume, args)
    store = volume.store
    if args.action == "show":
        record = read_record(volume)
        if record is None:
            print(f"{volume.url} has no replica.")
            return 0
        endpoint = f" at {record['endpoint_url']}" if record.get("endpoint_url") else ""
        kept_by = "the provider's replication" if record.get("provider_replicated") else "the devices"
        print(f"replica {record['url']}{endpoint}, kept by {kept_by}")
        return 0
    if args.action == "remove":
        write_record(volume, None)
        print(f"{volume.url} has no replica now; devices stop copying to it within a minute (its objects stay "
              "where they are).")
        return 0
    if args.action == "add":
        if not args.url:
            raise UsageError("Name the replica: fusedrive replica add VOLUME URL.")
        record = {"url": args.url, "endpoint_url": args.replica_endpoint_url,
                  "provider_replicated": args.provider_replicated}
        replica = open_store(args.url, args.replica_endpoint_url)
        if replica.url == volume.url and args.replica_endpoint_url in (None, args.endpoint_url):
            raise UsageError(f"{args.url} is the volume's own store: a replica must be another one.")
        check_replica(replica, volume)
        write_record(volume, record)
        store.attach(record, replica)
        print(f"{args.url} is the replica of {volume.url}; devices copy their writes to it within a minute.")
        if args.provider_replicated:
            return 0
    if store.replica is None:
        raise UsageError(f"{volume.url} has no replica: add one with fusedrive replica add VOLUME URL.")
    if args.action == "promote":
        named = read_record(volume)
        if named is not None and named["url"] != store.replica.url:
            raise UsageError(f"The replica of {volume.url} is {named['url']}, not {store.replica.url}.")
        return _promote(volume)
    _copy_missing(store, "The replica has everything the store has")
    return 0


def _copy_missing(store, done: str) -> None:
    from .report import human_bytes
    from .store.replicated import missing_on_replica, sync_replica

    missing = missing_on_replica(store)
    with progress("copying to the replica", sum(listed.size for listed in missing), "B") as bar:
        sync_replica(store, missing, bar.update)
    print(f"{done}: {len(missing):,} objects ({human_bytes(sum(listed.size for listed in missing))}) copied.")


def _promote(volume: volumes.Volume) -> int:
    """The replica becomes the volume's store: what the old store holds and the replica
    does not is copied first where the old store answers; then the move is recorded."""
    from .store.replicated import promote

    old = volume.url
    try:
        _copy_missing(volume.store, "The replica has caught up with the store")
    except StoreUnreachable as exc:
        print(f"The store at {old} does not answer ({exc}): what only it holds stays there; a device that has "
              "it puts it back.")
    move, fenced = promote(volume)
    print(f"The volume now lives at {move['to']} (its replica, promoted): running devices move to it within "
          f"seconds; mount it from there (devices that name {old} are moved too).")
    if not fenced:
        print(f"The old store at {old} does not answer: the first device that reaches it writes the fence there, "
              "so no device commits to it again.")
    return 0


def cmd_hub(args) -> int:
    import trio

    from .services.httpserve import parse_listen
    from .services.hub import serve

    host, port = parse_listen(args.listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve, host, port)
            print(f"fusedrive hub listening on {host}:{bound}", flush=True)

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        raise first_clear_error(group) from None
    return 0


def cmd_fsck(args) -> int:
    from .engine.blocks import BlockStore
    from .engine.cache import BlockCache
    from .tools.fsck import fsck
    from .engine.journal import Journal
    import tempfile

    volume = open_volume_for(args.volume, args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else volumes.cache_root() / volume.volume_id
    if args.repair:
        from .engine.entrycopies import KeptEntries
        from .tools.fsck import repair_journal

        kept = KeptEntries(cache_dir / "journal") if (cache_dir / "journal").is_dir() else None
        for line in repair_journal(Journal(volume), kept):
            print(line)
    with tempfile.TemporaryDirectory() as scratch:
        blocks = BlockStore(volume, BlockCache(Path(scratch), 1 << 20, volume.keys.is_id_of))
        problems = fsck(Journal(volume), blocks, cache_dir / "replica.sqlite3", args.verify_blocks, progress)
    if args.replica:
        problems += _compare_replica(volume)
    for problem in problems:
        print(problem)
    if problems:
        print(f"fsck found {len(problems)} problem(s) in {args.volume}.", file=sys.stderr)
        return 1
    print(f"fsck: {args.volume} is consistent.")
    return 0


def _compare_replica(volume: volumes.Volume) -> list[str]:
    from .store.replicated import compare_with_replica

    if volume.store.replica is None:
        raise UsageError(f"{volume.url} has no replica to compare (fusedrive replica add VOLUME URL).")
    return compare_with_replica(volume.store)


# --- argument parsing ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fusedrive", description="A cloud drive: an S3 (or local) volume as a folder.")
    parser.add_argument("--version", action="version", version=f"fusedrive {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def volume_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: boto3's, or $AWS_ENDPOINT_URL)")
        p.add_argument("--replica-url", default=None, metavar="URL", help="the volume's replica store, read when "
                       "the store does not answer (only needed to start while it does not: the volume names its "
                       "replica)")
        p.add_argument("--replica-endpoint-url", default=None, metavar="URL", help="the replica's S3 endpoint")
        p.add_argument("--key-file", default=None, help="read the passphrase from this file "
                       "(default: $FUSEDRIVE_PASSPHRASE, else ask)")

    def volume_command(name: str, func, **texts: str) -> argparse.ArgumentParser:
        """A command that works on VOLUME directly (no mount needed): a URL, the mount point
        of a running mount of it, or nothing for the default drive (its key found too)."""
        p = sub.add_parser(name, **texts)
        if name == "init":
            p.add_argument("volume", metavar="VOLUME")
            p.set_defaults(func=func)
        else:
            p.add_argument("volume", metavar="VOLUME", nargs="?", help="s3://BUCKET/PREFIX, file:///DIR, a mount "
                           "point of the volume, or nothing for the default drive")
            p.set_defaults(func=lambda args: func(resolve_volume(args)))
        volume_options(p)
        return p

    def action_command(name: str, func, actions: list[str], **texts: str) -> argparse.ArgumentParser:
        """A command doing ACTION to VOLUME (named: the action comes first, then what it acts on)."""
        p = sub.add_parser(name, **texts)
        p.add_argument("action", choices=actions)
        p.add_argument("volume", metavar="VOLUME", help="s3://BUCKET/PREFIX, file:///DIR or a mount point of the volume")
        volume_options(p)
        p.set_defaults(func=lambda args: func(resolve_volume(args)))
        return p

    def device_command(name: str, place: str, func, **texts: str) -> argparse.ArgumentParser:
        """A command that runs a device of a volume (a mount or a mirror) at a place."""
        p = sub.add_parser(name, **texts)
        p.add_argument("volume", metavar="VOLUME")
        p.add_argument(place, metavar=place.upper(), nargs="?")
        volume_options(p)
        p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        p.add_argument("--foreground", action="store_true", help="stay attached instead of running in the background")
        p.add_argument("--cache-dir", default=None, help="where this device keeps its replica, staging and block cache")
        p.add_argument("--cache-size", type=positive_size, default=parse_size(DEFAULT_CACHE_SIZE),
                       help=f"block cache limit (default {DEFAULT_CACHE_SIZE})")
        # a mount and a mirror on one machine are two devices: their conflicted copies must say which
        host = socket.gethostname()
        p.add_argument("--device-name", default=host if name == "mount" else f"{host}-mirror",
                       help=f"how this device is named in the journal (default: the host name"
                            f"{'' if name == 'mount' else ' and -mirror'})")
        p.add_argument("--poll-interval", type=positive_seconds, default=2.0,
                       help="seconds between checks for other devices' changes (default 2)")
        p.add_argument("--hub", type=hub_url, default=None, metavar="URL",
                       help="a `fusedrive hub` to hear about other devices' changes at once (http://HOST:PORT)")
        p.add_argument("--io-timeout", type=positive_seconds, default=60.0, metavar="SECONDS",
                       help="a read the cache cannot serve fails (EIO) if the store does not answer in this long "
                            "(default 60)")
        p.add_argument("--notify", action="store_true",
                       help="desktop notifications (notify-send) for conflicts and problems")
        p.add_argument("--metrics", type=listen_address, default=None, metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics")
        p.add_argument("--log-file", default=None, metavar="FILE",
                       help="where it logs (default: mount.log in the cache dir; with --foreground, stderr)")
        loudness = p.add_mutually_exclusive_group()
        loudness.add_argument("-v", "--verbose", action="store_true", help="log details (uploads, polls, conflicts)")
        loudness.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
        return p

    p = volume_command("init", cmd_init, help="create a new volume", description="Create a new volume in an S3 bucket "
                       "(s3://BUCKET/PREFIX) or a directory (file:///DIR). Refuses to overwrite an existing one.")
    p.add_argument("--member", action="append", default=[], metavar="IDENTITY[:ROLE]",
                   help="share it with this person (their `fusedrive id`), a writer unless :reader or :admin "
                        "follows; repeatable; you become its admin")

    p = sub.add_parser("id", help="your identity, to be given volumes", description="Make your identity (once: a key "
                       "pair to receive volumes' keys and one to sign, in the config dir) and print its public half, "
                       "a short string to send to whoever shares a volume with you (fusedrive members add).")
    p.add_argument("--name", default=None, help="how you are named (default: your user name)")
    p.add_argument("--passphrase", action="store_true", help="protect it with a passphrase (asked, or "
                   "$FUSEDRIVE_IDENTITY_PASSPHRASE) instead of a key file beside it")
    p.add_argument("--device", action="store_true", help="print this machine's device key instead (what "
                   "`members revoke` names if this machine is lost)")
    p.set_defaults(func=cmd_id)

    p = action_command("members", cmd_members, ["add", "remove", "list", "revoke", "rekey"],
                       help="the people a volume is shared with", description="add IDENTITY[:ROLE]: give a person "
                       "(their `fusedrive id`) the volume's key, wrapped for them alone, and a role — reader, writer "
                       "(the default) or admin; they mount it with their identity, no passphrase. The first member "
                       "added makes you the volume's admin; then only admins change members. remove IDENTITY: take "
                       "their role and key slot away (what they already had stays readable to them). revoke "
                       "DEVICE-KEY: one device of a person (`fusedrive id --device` on it) may change nothing any "
                       "more. remove and revoke start a new key epoch: what is written after is sealed under a key "
                       "only the members then receive; rekey starts one alone (--full: and seals everything "
                       "written before under it). list: members and roles.")
    p.add_argument("identity", nargs="?", metavar="IDENTITY", help="fdid1…[:reader|writer|admin] (add, remove); "
                   "a device key (revoke)")
    p.add_argument("--name", default=None, help="how the member is named in listings (add)")
    p.add_argument("--full", action="store_true", help="rekey: also seal everything written before under the new "
                   "key, so older key material (a removed member's) opens none of it")

    p = device_command("mount", "mountpoint", cmd_mount, help="mount a volume as a folder",
                       description="Mount VOLUME at MOUNTPOINT. With only MOUNTPOINT, mounts the default volume on "
                       "this machine (created on first use).")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    p.add_argument("--allow-other", action="store_true", help="let other users (root's daemons too) into the mount; "
                   "a non-root user needs user_allow_other in /etc/fuse.conf")
    p.add_argument("--read-only", action="store_true", help="mount read-only")
    p.add_argument("--uid", type=int, default=None, help="show every file as owned by this user id")
    p.add_argument("--gid", type=int, default=None, help="show every file as owned by this group id")
    p.add_argument("--umask", default=None, metavar="OCTAL", help="take these permission bits from every file (022)")
    p.add_argument("-o", dest="o_options", action="append", default=[], metavar="OPTIONS",
                   help="options as in /etc/fstab: allow_other, ro, uid=N, gid=N, umask=022, key_file=FILE, "
                        "cache_dir=DIR, cache_size=4G, device_name=NAME, hub=URL, ... (_netdev, nofail, noauto "
                        "and x-systemd.* are accepted and ignored)")

    p = device_command("mirror", "folder", cmd_mirror, help="keep a local folder in sync with a volume",
                       description="Keep FOLDER (real files on the local disk) and VOLUME equal, both ways, as "
                       "long as it runs: changes in the folder are uploaded once written, other devices' changes "
                       "are written into it, simultaneous edits become conflicted copies. For machines without "
                       "FUSE, folders that must be fully usable offline, and programs that want a local disk. "
                       "With only FOLDER, the default volume on this machine. Names matching the patterns of a "
                       ".fusedriveignore in FOLDER (gitignore syntax), editors' swap files and the like are never "
                       "synced. `fusedrive umount FOLDER` stops it after uploading what waits.")
    p.add_argument("--no-wait", action="store_true", help="return once started, without waiting for the first sync")

    p = sub.add_parser("umount", help="upload what is waiting, then unmount (or stop a mirror)",
                       description="Wait until every closed file is in the store (with progress), then unmount "
                       "(or stop the mirror of FOLDER).")
    p.add_argument("mountpoint", metavar="MOUNTPOINT|FOLDER")
    p.add_argument("--timeout", type=positive_seconds, default=3600,
                   help="stop waiting for uploads after this many seconds")
    p.add_argument("--lazy", action="store_true", help="detach even if files are still open")
    p.add_argument("--no-wait", action="store_true",
                   help="unmount now, even offline: what is waiting stays queued and uploads at the next mount")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("status", help="is everything uploaded yet?", description="Show whether every change of "
                       "the running mounts (or of MOUNTPOINT) is in the store, then the details: store reachable, "
                       "hub, journal, upload queue, transfer rates, cache, conflicted copies, recent errors. "
                       "Exit 0 when everything is uploaded, 1 while work is pending, 2 on error.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per mount")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=positive_seconds, default=1.0, help="seconds between refreshes with --watch")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("events", help="follow what happens", description="Stream events of a running mount as "
                       "they happen: changes from other devices, conflicted copies, upload failures and "
                       "recoveries, store offline and back. One line each; Ctrl-C stops.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="needed when several mounts run")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("share", help="make a link to a file or folder", description="Put a copy of PATH (a zip "
                       "for a folder) in the store and print a URL anyone can download it with until it expires. "
                       "Only that copy becomes readable; the rest of the volume stays encrypted.")
    p.add_argument("path", metavar="PATH", help="a file or folder inside a running mount")
    p.add_argument("--expires", default="7d", help="how long the link works: 30m, 12h, 7d (default 7d, the "
                   "most S3 allows)")
    p.set_defaults(func=cmd_share)

    p = sub.add_parser("pin", help="keep files available offline", description="Download PATH (a file or a "
                       "folder, with everything any device adds to it later) now, keep it current as other devices "
                       "change it, and never evict it from the cache. Waits until it is all on this device (a "
                       "progress bar in a terminal); exit 1 if some of it still waits for the store.")
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.add_argument("--no-wait", action="store_true", help="return at once; the download goes on in the background")
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("unpin", help="stop keeping files available offline", description="The cache may evict "
                       "PATH's content again when it needs room.")
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.set_defaults(func=cmd_unpin)

    p = sub.add_parser("pins", help="list what is kept available offline", description="List the pinned files "
                       "and folders of a mount, and whether all of it is on this device.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="needed when several mounts run")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_pins)

    p = sub.add_parser("shares", help="list share links", description="List the volume's share links, with "
                       "their expiry.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="needed when several mounts run")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_shares)

    p = sub.add_parser("unshare", help="stop a share link", description="Delete the shared copy so the link "
                       "stops working at once. TARGET is the token `shares` shows, or the shared PATH.")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="needed for a token when several mounts run")
    p.set_defaults(func=cmd_unshare)

    p = sub.add_parser("history", help="list a file's saved versions", description="List every kept version "
                       "of a file (number, time, device, size). PATH is in a running mount, or with --volume a "
                       "path inside the volume.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--volume", default=None, help="read the volume directly instead of a mount")
    p.add_argument("--json", action="store_true", help="print JSON")
    volume_options(p)
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("restore", help="make an old version current again", description="Make version N of "
                       "PATH current again, as a new version (instant: no block is copied), or with --to put it "
                       "in a new file.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--version", type=int, required=True, metavar="N", help="the number `fusedrive history` shows")
    p.add_argument("--to", default=None, metavar="NEWPATH", help="restore into a new file instead")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("cat", help="print an old version", description="Write version N of PATH to stdout.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--version", type=int, required=True, metavar="N")
    p.add_argument("--volume", default=None, help="read the volume directly instead of a mount")
    volume_options(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("trash", help="list, restore or empty deleted files", description="Deleted files and "
                       "folders stay in the trash (30 days by default, see fusedrive config). `trash list "
                       "[MOUNTPOINT]`, `trash restore PATH` (the path it had in the mount; back where it was, "
                       "or beside it as a conflicted copy if the name is taken), `trash empty [MOUNTPOINT]`.")
    p.add_argument("action", choices=["list", "restore", "empty"])
    p.add_argument("target", metavar="MOUNTPOINT|PATH", nargs="?")
    p.add_argument("--json", action="store_true", help="print JSON (list)")
    p.add_argument("--id", default=None, help="restore: the item with this id (as `trash list` shows it), when "
                   "several were deleted under one name (default: the newest)")
    p.set_defaults(func=cmd_trash)

    p = volume_command("gc", cmd_gc, help="apply retention and reclaim space", description="Let go of old versions and "
                       "trash as the retention policy says (see fusedrive config), then delete blocks that nothing "
                       "kept references and that are older than the grace period. Safe while devices are mounted.")
    p.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    p.add_argument("--grace", default="24h", help="keep unreferenced blocks younger than this (default 24h; "
                   "they may belong to a commit another device has not made yet)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = volume_command("du", cmd_du, help="space used",
                       description="Logical bytes, stored bytes, dedup and compression "
                       "ratios, and the bytes held only by history and by the trash.")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = volume_command("config", cmd_config, help="show or change the retention policy",
                       description="The retention policy "
                       "is stored in the volume; fusedrive gc applies it. Durations: 12h, 30d, 52w.")
    p.add_argument("--keep-all", default=None, metavar="DURATION", help="keep every version this long")
    p.add_argument("--keep-daily", default=None, metavar="DURATION", help="then one version per day up to this age")
    p.add_argument("--max-versions", type=int, default=None, metavar="N", help="at most N versions per file")
    p.add_argument("--trash-days", default=None, metavar="DURATION", help="how long deleted files stay in the trash")

    p = volume_command("archive", cmd_archive, help="move old versions to a cold storage class",
                       description="Move blocks "
                       "held only by versions older than --older-than to an archive storage class (S3 only). "
                       "Reading such a version then says it is archived instead of hanging; fusedrive thaw "
                       "brings it back.")
    p.add_argument("--older-than", default="180d", metavar="DURATION", help="default 180d")
    p.add_argument("--storage-class", default="GLACIER", help="default GLACIER (also DEEP_ARCHIVE, GLACIER_IR, ...)")

    p = volume_command("thaw", cmd_thaw, help="bring archived versions back",
                       description="Move every archived block back "
                       "to the standard storage class (on AWS, the restore may take hours: exit 1 until done).")

    p = action_command("replica", cmd_replica, ["add", "sync", "remove", "show", "promote"],
                       help="a copy of the volume in another store, read when it fails",
                       description="add URL: make URL (another S3 region or provider, or a directory) the volume's "
                       "replica and copy everything there; devices then copy what they write to it in the background, "
                       "and read from it when the store does not answer. sync: copy what the replica is missing "
                       "(objects from before it was added, or from devices that did not know it yet). remove: "
                       "stop copying to it. show: which replica the volume names. promote: make the replica the "
                       "volume's store, for a region lost for good (the old store is fenced: no device commits to "
                       "it again; running devices move to the replica).")
    p.add_argument("url", nargs="?", metavar="URL", help="the replica (add; promote, where the volume cannot "
                   "say which it is): s3://BUCKET/PREFIX or file:///DIR")
    p.add_argument("--provider-replicated", action="store_true", help="the provider copies the bucket itself "
                   "(S3 cross-region replication): devices only read from the replica")

    p = sub.add_parser("hub", help="run a notification hub", description="Serve long-poll change "
                       "notifications to devices (mount --hub URL). Holds no data; devices fall back to polling "
                       "when it is down.")
    p.add_argument("--listen", type=listen_address, default="127.0.0.1:7780", help="HOST:PORT to listen on (default 127.0.0.1:7780)")
    p.set_defaults(func=cmd_hub)

    p = volume_command("fsck", cmd_fsck, help="check a volume",
                       description="Replay the journal, check the tree and that "
                       "every referenced block exists, and compare this device's replica. Exit 1 if problems.")
    p.add_argument("--cache-dir", default=None, help="the cache dir of the replica to compare")
    p.add_argument("--verify-blocks", action="store_true", help="download and verify every referenced block")
    p.add_argument("--replica", action="store_true", help="also compare the volume's replica with the store: what "
                   "it is missing (copies not made yet), and journal entries that differ (never right)")
    p.add_argument("--repair", action="store_true", help="first fill the journal's gaps (a store restored from an "
                   "older copy): put back what this device's cache dir kept, mark the rest lost so new devices "
                   "can join; name forks, change nothing else; safe to run again")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(with_o_options_expanded(argv))
        return args.func(args)
    except FusedriveError as exc:
        print(f"fusedrive: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fusedrive: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fusedrive status | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the local system refused something (a path, a permission): say which
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"fusedrive: {exc.strerror or exc}{where}.", file=sys.stderr)
        return LocalError.exit_code
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user; FUSEDRIVE_DEBUG=1 shows it
        if os.environ.get("FUSEDRIVE_DEBUG"):
            raise
        print(f"fusedrive: internal error ({type(exc).__name__}: {exc}); FUSEDRIVE_DEBUG=1 shows where.",
              file=sys.stderr)
        return INTERNAL_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
