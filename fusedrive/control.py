"""The control interface of a running mount: an owner-only unix socket, one JSON line each way.

The CLI finds a mount through a small registry file named after the mountpoint
(in the runtime dir), and asks it for `status` or to `sync` (upload everything
waiting, then answer).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import trio

from .errors import MountError

MAX_REQUEST = 64 * 1024


def runtime_dir() -> Path:
    """Short and private: unix socket paths must stay under 108 bytes."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "fusedrive" if base else Path(tempfile.gettempdir()) / f"fusedrive-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise MountError(f"{path} belongs to another user; set XDG_RUNTIME_DIR.")
    return path


def mount_id(mountpoint: str) -> str:
    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]


def registry_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{mount_id(mountpoint)}.json"


def socket_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{mount_id(mountpoint)}.sock"


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


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait until a mount process has exited (it drains its queue first); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


async def serve(path: Path, handlers: dict, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer control requests: {"cmd": NAME} → handlers[NAME]() (an async function)."""
    if path.exists():
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                piece = await stream.receive_some(4096)
                if not piece:
                    return
                data += piece
            try:
                request = json.loads(data)
                reply = await handlers[request["cmd"]]()
                answer = {"ok": True, **reply}
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the CLI as text
                answer = {"ok": False, "error": str(exc)}
            try:
                await stream.send_all(json.dumps(answer).encode() + b"\n")
            except trio.BrokenResourceError:
                pass

    task_status.started()
    await trio.serve_listeners(handle, [listener])


def request(mountpoint: str, cmd: str, timeout: float | None = 10.0) -> dict:
    """Ask a running mount something; raises MountError if it does not answer."""
    path = socket_path(mountpoint)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
    except OSError as exc:
        raise MountError(f"The fusedrive mount at {mountpoint} does not answer ({exc.strerror or exc}).") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise MountError(f"The fusedrive mount at {mountpoint} gave no answer.") from None
    if not answer.get("ok"):
        raise MountError(answer.get("error", "unknown error"))
    return answer
