"""What a running mount answers on its control socket (see control.py for the wire).

Each handler runs in the trio loop as `handler(request, send) → final answer`; the
slow parts (building and uploading a share) run in worker threads while the
handler streams progress lines.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Awaitable, Callable

import trio

from ..engine import history
from . import sharing
from ..engine.drive import Drive
from ..engine.manifest import pieces
from ..engine.tree import Inode
from ..engine.membership import NotAWriter
from ..errors import UsageError

Send = Callable[[dict], Awaitable[None]]
PROGRESS_EVERY_SECONDS = 0.25


def handlers(drive: Drive, mountpoint: str, scratch: Path) -> dict:
    def inside(path: str) -> str:
        """An absolute path in the mount → its path in the drive ("/docs/a.txt")."""
        relative = os.path.relpath(path, mountpoint)
        if relative.startswith(".."):
            raise UsageError(f"{path} is not inside the drive mounted at {mountpoint}.")
        return "/" if relative == "." else "/" + relative

    def file_at(path: str) -> Inode:
        node = drive.node_at(inside(path))
        if not node.is_reg:
            raise UsageError(f"{path} is not a file; only files have versions.")
        return node

    async def status(request: dict, send: Send) -> dict:
        return drive.status()

    async def sync(request: dict, send: Send) -> dict:
        await drive.sync_all()
        return drive.status()

    async def leave_queued(request: dict, send: Send) -> dict:
        """`umount` gave up waiting (or was told not to): after the unmount, exit at once;
        what is waiting stays queued in the cache dir for the next mount."""
        drive.upload_on_exit = False
        return drive.status()

    async def check(request: dict, send: Send) -> dict:
        """For tests and support: what does not hold in the engine's per-file state."""
        return {"problems": drive.check_invariants()}

    async def pause(request: dict, send: Send) -> dict:
        drive.pause_commits()
        return drive.status()

    async def resume(request: dict, send: Send) -> dict:
        drive.resume_commits()
        return drive.status()

    async def events(request: dict, send: Send) -> dict:
        """Stream every event from now on until the client goes away."""
        with drive.events.subscribe() as receive:
            await send({"listening": True})
            async for event in receive:
                await send({"event": event})
        return {}

    async def share(request: dict, send: Send) -> dict:
        refused = drive.write_refusal()
        if refused is not None:  # (a volume shared with people: only those who may write make links)
            raise NotAWriter(f"Only a member who may change the volume makes share links: {refused}.")
        source = Path(request["path"])
        in_drive = inside(str(source))
        # Looked up in the tree: a stat of our own mount from this thread would wait for itself.
        drive.node_at(in_drive)
        expires_in = int(request["expires"])
        total = await trio.to_thread.run_sync(sharing.size_of, source)
        copy, name = await _with_progress(send, total, sharing.prepare_copy, source, scratch)
        try:
            made = await trio.to_thread.run_sync(sharing.publish, drive.volume, copy, name, in_drive,
                                                 expires_in, drive.device)
        finally:
            copy.unlink(missing_ok=True)
        return {"share": asdict(made)}

    def node_at(path: str) -> Inode:
        return drive.node_at(inside(path))

    async def pin(request: dict, send: Send) -> dict:
        """Pin the paths; with `wait`, stream {"progress", "total"} until they are local (or
        the store stops answering)."""
        drive.pins.pin([node_at(path) for path in request["paths"]])
        if request.get("wait"):
            async def report(done: int, total: int) -> None:
                await send({"progress": done, "total": total})
            await drive.pins.settle(report)
        return {"pins": drive.pins.state()}

    async def unpin(request: dict, send: Send) -> dict:
        return {"unpinned": drive.pins.unpin([node_at(path) for path in request["paths"]])}

    async def pins(request: dict, send: Send) -> dict:
        listed = []
        for fid in drive.pins.pinned_fids():
            ino = drive.tree.ino_of(fid)
            node = drive.tree.inode(ino) if ino is not None else None
            if node is not None and node.nlink > 0:
                listed.append({"path": drive.tree.path_of(fid), "folder": node.is_dir})
        return {"pins": listed, **drive.pins.state()}

    async def shares(request: dict, send: Send) -> dict:
        found = await trio.to_thread.run_sync(sharing.list_shares, drive.volume)
        return {"shares": [dict(asdict(s), expired=s.expired) for s in found]}

    async def unshare(request: dict, send: Send) -> dict:
        def remove() -> list[dict]:
            target = request["target"]
            if os.path.isabs(target):
                target = "/" + os.path.relpath(target, mountpoint)
            found = sharing.find(drive.volume, target)
            for one in found:
                sharing.remove(drive.volume, one)
            return [asdict(s) for s in found]
        return {"removed": await trio.to_thread.run_sync(remove)}

    async def versions(request: dict, send: Send) -> dict:
        node = file_at(request["path"])
        await drive.wait_uploaded({node.fid})  # what was just saved is a version too
        found = drive.versions(node.fid)
        return {"versions": [dict(number=v.number, saved=v.saved_ns / 1e9, device=v.device, size=v.size,
                                  label=v.label()) for v in found]}

    async def restore(request: dict, send: Send) -> dict:
        node = file_at(request["path"])
        await drive.wait_uploaded({node.fid})  # the restore is based on what was saved last
        node = drive.tree.inode(node.ino)
        kept = drive.version(node.fid, int(request["version"]))
        drive.restore_version(node, kept, inside(request["to"]) if request.get("to") else None)
        return {"restored": kept.label()}

    async def cat(request: dict, send: Send) -> dict:
        node = file_at(request["path"])
        kept = drive.version(node.fid, int(request["version"]))
        for piece in pieces(kept.manifest):
            data = bytes(piece.length) if piece.block is None else piece.of(await drive.fetch_block(piece, node))
            await send({"data": base64.b64encode(data).decode()})
        return {}

    def trash_listing() -> list[dict]:
        items = drive.trash()
        return [dict(path=i.path, id=i.fid, deleted=i.deleted_ns / 1e9, size=i.size, is_dir=i.is_dir,
                     inside=len(history.contents(items, i.fid))) for i in history.top_level(items)]

    async def trash_list(request: dict, send: Send) -> dict:
        return {"items": trash_listing()}

    async def trash_restore(request: dict, send: Send) -> dict:
        return {"path": drive.restore_from_trash(inside(request["path"]), request.get("id"))}

    async def trash_empty(request: dict, send: Send) -> dict:
        fids = [i.fid for i in drive.trash()]
        if fids:
            drive.record_user_ops([{"op": "purge", "fids": fids, "t": time.time_ns()}])
            await drive.sync_all()
        return {"purged": len(fids)}

    return {"status": status, "sync": sync, "leave-queued": leave_queued, "check": check, "pause": pause,
            "resume": resume, "events": events,
            "share": share, "shares": shares, "unshare": unshare, "versions": versions, "restore": restore,
            "cat": cat, "trash-list": trash_list, "trash-restore": trash_restore, "trash-empty": trash_empty,
            "pin": pin, "unpin": unpin, "pins": pins}


async def _with_progress(send: Send, total: int, function, *args):
    """Run `function(*args, progress)` in a worker thread, sending {"progress", "total"}
    lines meanwhile (a client that went away just stops getting them)."""
    done = [0]
    outcome: dict = {}
    finished = trio.Event()

    def progress(n: int) -> None:
        done[0] += n

    async def work() -> None:
        try:
            outcome["value"] = await trio.to_thread.run_sync(function, *args, progress)
        except Exception as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        listening = True
        while not finished.is_set():
            if listening:
                try:
                    await send({"progress": done[0], "total": total})
                except trio.BrokenResourceError:
                    listening = False
            with trio.move_on_after(PROGRESS_EVERY_SECONDS):
                await finished.wait()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
