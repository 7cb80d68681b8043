"""Start a real S3 server (SeaweedFS `weed mini`) on loopback, on free ports, and stop it.

Pinned to 127.0.0.1 with telemetry off and credentials required, as
shared/s3-local.md describes. Used by the tests and by scripts/bench.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "fusedrive-test"
SECRET_KEY = "fusedrive-test-secret"
START_TIMEOUT = 60


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("The SeaweedFS binary `weed` is missing: run scripts/setup.sh --test.")
    return found


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _pick_base() -> int:
    """A block of free ports below the kernel's ephemeral range: there, the outgoing
    connections of other test processes (several pytest workers) cannot take one of them
    between this check and SeaweedFS binding it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        base = random.randrange(10000, max(10001, low - 10020))
        ports = [base + i for i in range(9)] + [base + 7 + 10000]
        if _ports_free(ports):
            return base
    raise RuntimeError("No free block of ports for SeaweedFS on 127.0.0.1.")


@dataclass
class SeaweedServer:
    directory: Path
    process: subprocess.Popen
    endpoint: str
    master_port: int

    @property
    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(signature_version="s3v4", retries={"mode": "standard"}))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_seaweed(directory: Path, attempts: int = 3) -> SeaweedServer:
    """Start `weed mini` in `directory`; returns once S3 answers and a volume server has joined.
    A start that fails (a port taken meanwhile by another process) is tried again on others."""
    for attempt in range(attempts - 1):
        try:
            return _start_once(directory / f"try-{attempt}" if attempt else directory)
        except RuntimeError:
            continue
    return _start_once(directory / f"try-{attempts - 1}")


def _start_once(directory: Path) -> SeaweedServer:
    base = _pick_base()
    s3_port = base + 8
    for sub in ("data", "logs", "run"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "data" / "mini.options").unlink(missing_ok=True)
    (directory / "s3.json").write_text(json.dumps({"identities": [{
        "name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET")}
    d = directory
    command = [
        weed_binary(), f"-logdir={d}/logs", "mini", f"-dir={d}/data",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}", f"-s3.port.grpc={base + 6}", f"-s3.config={d}/s3.json",
        "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false", f"-s3.localSocket={d}/run/s3.sock",
        f"-master.port={base}", f"-master.port.grpc={base + 1}",
        f"-volume.port={base + 2}", f"-volume.port.grpc={base + 3}",
        f"-filer.port={base + 4}", f"-filer.port.grpc={base + 5}", f"-filer.localSocket={d}/run/filer.sock",
        f"-admin.port={base + 7}", "-admin.ui=false", f"-admin.dataDir={d}/data/admin",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:9/",
    ]
    log = open(directory / "logs" / "stdout.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    server = SeaweedServer(directory, process, f"http://127.0.0.1:{s3_port}", base)
    deadline = time.monotonic() + START_TIMEOUT
    client = server.client()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited early; see {directory}/logs.")
        try:
            client.list_buckets()
            with urllib.request.urlopen(f"http://127.0.0.1:{base}/dir/status", timeout=2) as r:
                if b'"DataNodes":[{' in r.read():
                    return server
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not become ready in {START_TIMEOUT} s; see {directory}/logs.")
