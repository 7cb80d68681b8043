"""The control interface of a running mount: an owner-only unix socket, one JSON line each way.

The CLI finds a mount through a small registry file named after the mountpoint
(in the runtime dir) and sends one request line: {"cmd": NAME, ...arguments}. The
mount may answer with any number of lines without "ok" (events, progress) before
the final one, which has "ok" (and "error" when false).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

import trio

from ..errors import FusedriveError, MountError

MAX_REQUEST = 64 * 1024


SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the final NUL


def runtime_dir() -> Path:
    """Short and private: a unix socket path must fit in 108 bytes, so an XDG_RUNTIME_DIR too
    deep for `<dir>/fusedrive/<16 hex>.sock` is passed over for /tmp/fusedrive-<uid>."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "fusedrive" if base else None
    if path is None or len(os.fsencode(path)) + len("/0123456789abcdef.sock") > SOCKET_PATH_MAX:
        path = Path(tempfile.gettempdir()) / f"fusedrive-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise MountError(f"{path} belongs to another user; set XDG_RUNTIME_DIR.")
    return path


def mount_id(mountpoint: str) -> str:
    return _id_of_real(os.path.realpath(mountpoint))


def _id_of_real(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:16]


def registry_path(mountpoint: str) -> Path:
    return registry_file(os.path.realpath(mountpoint))


def socket_path(mountpoint: str) -> Path:
    return socket_file(os.path.realpath(mountpoint))


def registry_file(real_path: str) -> Path:
    """The registry entry of a device serving `real_path` (already resolved: not looked at)."""
    return runtime_dir() / f"{_id_of_real(real_path)}.json"


def socket_file(real_path: str) -> Path:
    return runtime_dir() / f"{_id_of_real(real_path)}.sock"


def read_registry(mountpoint: str) -> dict | None:
    try:
        return json.loads(registry_path(mountpoint).read_text())
    except (OSError, ValueError):
        return None


def all_registered() -> list[dict]:
    found = []
    for path in sorted(runtime_dir().glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def mount_containing(path: str) -> dict:
    """The registry entry of the running mount that holds `path`."""
    real = os.path.realpath(path)
    for entry in all_registered():
        if real == entry["mountpoint"] or real.startswith(entry["mountpoint"].rstrip("/") + "/"):
            return entry
    raise MountError(f"{path} is not inside a running fusedrive mount.")


def choose_mount(mountpoint: str | None) -> dict:
    """The named mount, or the only one running."""
    if mountpoint:
        entry = read_registry(mountpoint)
        if entry is None:
            raise MountError(f"{mountpoint} is not a fusedrive mount.")
        return entry
    entries = all_registered()
    if not entries:
        raise MountError("No fusedrive mount is running.")
    if len(entries) > 1:
        raise MountError("Several fusedrive mounts are running: name one ("
                         + ", ".join(e["mountpoint"] for e in entries) + ").")
    return entries[0]


def has_exited(pid: int) -> bool:
    """Whether a process has exited. A zombie has: it only waits for its parent (for a
    mount started in the background, init) to collect it, which some inits do seconds later."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait until a mount process has exited (it drains its queue first); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if has_exited(pid):
            return True
        time.sleep(0.05)
    return False


async def serve(path: Path, handlers: dict, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer control requests: handlers[cmd](request, send) → the final answer (a dict).
    `send(dict)` streams a line before it; it raises trio.BrokenResourceError once the
    client has gone, which ends a streaming handler."""
    if path.exists():
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        async def send(line: dict) -> None:
            await stream.send_all(json.dumps(line).encode() + b"\n")

        async with stream:
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                piece = await stream.receive_some(4096)
                if not piece:
                    return
                data += piece
            try:
                request = json.loads(data)
                answer = {"ok": True, **await handlers[request["cmd"]](request, send)}
            except trio.BrokenResourceError:
                return
            except FusedriveError as exc:
                answer = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the CLI as text
                answer = {"ok": False, "error": str(exc)}
            try:
                await send(answer)
            except trio.BrokenResourceError:
                pass

    task_status.started()
    await trio.serve_listeners(handle, [listener])


def stream(mountpoint: str, cmd: str, timeout: float | None = 10.0, **arguments) -> Iterator[dict]:
    """Send a request to a running mount and yield every line it answers, the final one
    (with "ok") last. Raises MountError if it does not answer or the request failed."""
    path = socket_path(mountpoint)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"cmd": cmd, **arguments}).encode() + b"\n")
            for raw in sock.makefile("rb"):
                try:
                    line = json.loads(raw)
                except ValueError:
                    break
                if "ok" in line and not line["ok"]:
                    error = FusedriveError(line.get("error", "unknown error"))
                    error.exit_code = line.get("exit_code", MountError.exit_code)
                    raise error
                yield line
                if "ok" in line:
                    return
    except OSError as exc:
        raise MountError(f"The fusedrive mount at {mountpoint} does not answer ({exc.strerror or exc}).") from None
    raise MountError(f"The fusedrive mount at {mountpoint} gave no answer.")


def request(mountpoint: str, cmd: str, timeout: float | None = 10.0, **arguments) -> dict:
    """Ask a running mount something and return its final answer."""
    answer: dict = {}
    for answer in stream(mountpoint, cmd, timeout, **arguments):
        pass
    return answer
