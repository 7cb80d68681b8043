"""The `fusedrive` command: one console script, --help everywhere, one-sentence errors.

Exit codes: 0 success; 1 the command ran but found work pending or problems
(status, fsck, umount timeout); 2+ errors (see errors.py for each kind).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import control, volume as volumes
from .errors import FusedriveError, MountError, UsageError

DEFAULT_CACHE_SIZE = "4G"


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 500M or 4G)") from None


def progress(description: str, total: int):
    """A progress bar on a terminal; silent in scripts."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="", disable=None, leave=False, file=sys.stderr)


def open_volume_for(url: str, args) -> volumes.Volume:
    from .store import open_store

    store = open_store(url, args.endpoint_url)
    return volumes.open_volume(store, volumes.get_passphrase(args.key_file))


def ensure_default_volume(endpoint_url: str | None) -> tuple[str, Path]:
    """First use: create the embedded default volume with a generated key file."""
    from .journal import start_journal
    from .store import NotFound, open_store

    url, key_file = volumes.default_volume_url(), volumes.default_key_file()
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        import secrets

        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    store = open_store(url, endpoint_url)
    try:
        store.get(volumes.HEADER_KEY)
    except NotFound:
        os.makedirs(volumes.data_dir() / "default-volume", exist_ok=True)
        start_journal(volumes.create_volume(store, volumes.read_key_file(key_file)))
    return url, key_file


# --- commands ------------------------------------------------------------------------------


def cmd_init(args) -> int:
    from .journal import start_journal
    from .store import open_store

    store = open_store(args.volume, args.endpoint_url)
    if store.url.startswith("file://"):
        os.makedirs(store.root, exist_ok=True)
    volume = volumes.create_volume(store, volumes.get_passphrase(args.key_file, confirm=True))
    start_journal(volume)
    print(f"Created volume {volume.volume_id} at {args.volume}.")
    return 0


def cmd_mount(args) -> int:
    from .mounting import report_failure, run_mount, start_background

    try:
        if args.mountpoint is None:
            args.volume, args.mountpoint = None, args.volume
        if args.volume is None:
            args.volume, default_key = ensure_default_volume(args.endpoint_url)
            args.key_file = args.key_file or str(default_key)
        volume = open_volume_for(args.volume, args)
        cache_dir = Path(args.cache_dir) if args.cache_dir else volumes.cache_root() / volume.volume_id
        if not args.foreground:
            from .mounting import check_mountpoint

            check_mountpoint(args.mountpoint)
            argv = ["mount", args.volume, args.mountpoint, "--cache-dir", str(cache_dir),
                    "--cache-size", str(args.cache_size), "--device-name", args.device_name,
                    "--poll-interval", str(args.poll_interval)]
            if args.hub:
                argv += ["--hub", args.hub]
            if args.endpoint_url:
                argv += ["--endpoint-url", args.endpoint_url]
            env = dict(os.environ, FUSEDRIVE_PASSPHRASE=volumes.get_passphrase(args.key_file))
            start_background(argv, cache_dir / "mount.log", env)
            print(f"Mounted {args.volume} at {args.mountpoint}.")
            return 0
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run_mount(volume, args.mountpoint, cache_dir, args.device_name, args.cache_size, args.ready_fd, args.debug,
                  args.poll_interval, args.hub)
        return 0
    except FusedriveError as exc:
        report_failure(args.ready_fd, exc)
        raise


def _unmount_kernel(mountpoint: str, lazy: bool) -> None:
    command = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown reason"
        if "busy" in reason.lower():
            raise MountError(f"{mountpoint} is busy: close the files and programs using it, then try again.")
        raise MountError(f"Cannot unmount {mountpoint}: {reason}")


def _wait_for_upload(mountpoint: str, timeout: float) -> bool:
    """Ask the mount to upload everything, showing progress; False if the timeout passed."""
    from tqdm import tqdm

    outcome: dict = {}

    def sync() -> None:
        try:
            outcome["reply"] = control.request(mountpoint, "sync", timeout=timeout)
        except FusedriveError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=sync, daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout
    bar = None
    while worker.is_alive() and time.monotonic() < deadline:
        status = control.request(mountpoint, "status")
        if bar is None and status["bytes_waiting"]:
            bar = tqdm(total=status["bytes_waiting"], unit="B", unit_scale=True, desc="uploading",
                       disable=None, leave=False, file=sys.stderr)
        if bar is not None:
            bar.n = max(0, bar.total - status["bytes_waiting"])
            bar.refresh()
        worker.join(0.25)
    if bar is not None:
        bar.close()
    if "error" in outcome:
        raise outcome["error"]
    return "reply" in outcome


def cmd_umount(args) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    entry = control.read_registry(mountpoint)
    if entry is None:
        if not os.path.ismount(mountpoint):
            raise MountError(f"{args.mountpoint} is not a fusedrive mount.")
        _unmount_kernel(mountpoint, args.lazy)
        return 0
    complete = _wait_for_upload(mountpoint, args.timeout)
    _unmount_kernel(mountpoint, args.lazy)
    control.wait_for_exit(entry["pid"], max(args.timeout, 30))
    if not complete:
        print(f"Unmounted {args.mountpoint}, but some changes are still waiting to upload; they are kept "
              "in the local queue and upload on the next mount.", file=sys.stderr)
        return 1
    print(f"Unmounted {args.mountpoint}; all changes are in the store.")
    return 0


def cmd_status(args) -> int:
    entries = [control.read_registry(args.mountpoint)] if args.mountpoint else control.all_registered()
    entries = [e for e in entries if e]
    if not entries:
        raise MountError("No fusedrive mount is running." if not args.mountpoint
                         else f"{args.mountpoint} is not a fusedrive mount.")
    pending = False
    for entry in entries:
        status = control.request(entry["mountpoint"], "status")
        waiting = status["files_waiting"] or status["ops_waiting"]
        pending = pending or bool(waiting)
        if waiting:
            verdict = f"{status['files_waiting']} files ({status['bytes_waiting']} bytes) and " \
                      f"{status['ops_waiting']} changes waiting to upload"
        else:
            verdict = "All changes are in the cloud"
        print(f"{entry['mountpoint']}: {verdict}.")
        print(f"  volume {status['volume']}, device {status['device']}, journal entry {status['applied_seq']}")
        for error in status["errors"][-3:]:
            print(f"  recent error: {error}")
    return 1 if pending else 0


def cmd_hub(args) -> int:
    import trio

    from .hub import serve

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen wants HOST:PORT, not {args.listen!r}.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve, host, int(port))
            print(f"fusedrive hub listening on {host}:{bound}", flush=True)

    try:
        trio.run(main)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {args.listen}: {exc.strerror or exc}.") from None
    return 0


def cmd_fsck(args) -> int:
    from .blocks import BlockStore
    from .cache import BlockCache
    from .fsck import fsck
    from .journal import Journal
    import tempfile

    volume = open_volume_for(args.volume, args)
    cache_dir = Path(args.cache_dir) if args.cache_dir else volumes.cache_root() / volume.volume_id
    with tempfile.TemporaryDirectory() as scratch:
        blocks = BlockStore(volume, BlockCache(Path(scratch), 1 << 20, volume.keys.id_of))
        problems = fsck(Journal(volume), blocks, cache_dir / "replica.sqlite3", args.verify_blocks, progress)
    for problem in problems:
        print(problem)
    if problems:
        print(f"fsck found {len(problems)} problem(s) in {args.volume}.", file=sys.stderr)
        return 1
    print(f"fsck: {args.volume} is consistent.")
    return 0


# --- argument parsing ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedrive", description="A cloud drive: an S3 (or local) volume as a folder.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def volume_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: boto3's, or $AWS_ENDPOINT_URL)")
        p.add_argument("--key-file", default=None, help="read the passphrase from this file "
                       "(default: $FUSEDRIVE_PASSPHRASE, else ask)")

    p = sub.add_parser("init", help="create a new volume", description="Create a new volume in an S3 bucket "
                       "(s3://BUCKET/PREFIX) or a directory (file:///DIR). Refuses to overwrite an existing one.")
    p.add_argument("volume", metavar="VOLUME")
    volume_options(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("mount", help="mount a volume as a folder", description="Mount VOLUME at MOUNTPOINT. With "
                       "only MOUNTPOINT, mounts the default volume on this machine (created on first use).")
    p.add_argument("volume", metavar="VOLUME")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    volume_options(p)
    p.add_argument("--foreground", action="store_true", help="stay attached instead of running in the background")
    p.add_argument("--cache-dir", default=None, help="where this device keeps its replica, staging and block cache")
    p.add_argument("--cache-size", type=parse_size, default=parse_size(DEFAULT_CACHE_SIZE),
                   help=f"block cache limit (default {DEFAULT_CACHE_SIZE})")
    p.add_argument("--device-name", default=socket.gethostname(), help="how this device is named in the journal")
    p.add_argument("--poll-interval", type=float, default=2.0,
                   help="seconds between checks for other devices' changes (default 2)")
    p.add_argument("--hub", default=None, metavar="URL",
                   help="a `fusedrive hub` to hear about other devices' changes at once (http://HOST:PORT)")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="upload what is waiting, then unmount",
                       description="Wait until every closed file is in the store (with progress), then unmount.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--timeout", type=float, default=3600, help="stop waiting for uploads after this many seconds")
    p.add_argument("--lazy", action="store_true", help="detach even if files are still open")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("status", help="is everything uploaded yet?", description="Show whether every change of "
                       "the running mounts is in the store. Exit 0 when it is, 1 while work is pending.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("hub", help="run a notification hub", description="Serve long-poll change "
                       "notifications to devices (mount --hub URL). Holds no data; devices fall back to polling "
                       "when it is down.")
    p.add_argument("--listen", default="127.0.0.1:7780", help="HOST:PORT to listen on (default 127.0.0.1:7780)")
    p.set_defaults(func=cmd_hub)

    p = sub.add_parser("fsck", help="check a volume", description="Replay the journal, check the tree and that "
                       "every referenced block exists, and compare this device's replica. Exit 1 if problems.")
    p.add_argument("volume", metavar="VOLUME")
    volume_options(p)
    p.add_argument("--cache-dir", default=None, help="the cache dir of the replica to compare")
    p.add_argument("--verify-blocks", action="store_true", help="download and verify every referenced block")
    p.set_defaults(func=cmd_fsck)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FusedriveError as exc:
        print(f"fusedrive: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fusedrive: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
