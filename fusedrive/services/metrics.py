"""`mount --metrics HOST:PORT`: Prometheus metrics of a running mount (prometheus_client).

A custom collector reads the drive's own counters when scraped, so nothing on the
I/O path calls into the metrics library. Scrapes are answered in the trio loop
(httpserve), where reading the drive's state is safe.
"""

from __future__ import annotations

import prometheus_client
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from ..engine.drive import Drive
from .httpserve import parse_listen, serve_http


class DriveCollector:
    def __init__(self, drive: Drive) -> None:
        self.drive = drive

    def collect(self):
        d = self.drive
        yield _counter("fusedrive_uploaded_bytes", "Bytes of sealed blocks uploaded", d.blocks.uploaded.bytes)
        yield _counter("fusedrive_uploaded_blocks", "Blocks uploaded", d.blocks.uploaded.blocks)
        yield _counter("fusedrive_downloaded_bytes", "Bytes of sealed blocks downloaded", d.blocks.downloaded.bytes)
        yield _counter("fusedrive_downloaded_blocks", "Blocks downloaded", d.blocks.downloaded.blocks)
        yield _counter("fusedrive_cache_hits", "Block reads served by the local cache", d.cache.hits)
        yield _counter("fusedrive_cache_misses", "Block reads that went to the store", d.cache.misses)
        yield _counter("fusedrive_conflicts", "Conflicted copies made or seen", d.changes.conflicts_seen)
        yield _counter("fusedrive_commits", "Journal entries appended by this device", d.committer.commits)
        yield SummaryMetricFamily("fusedrive_commit_latency_seconds", "Time to append one journal entry",
                                  count_value=d.committer.commits, sum_value=d.committer.commit_seconds)
        status = d.status()
        yield _gauge("fusedrive_files_waiting", "Files written here and not uploaded yet", status["files_waiting"])
        yield _gauge("fusedrive_bytes_waiting", "Bytes of those files", status["bytes_waiting"])
        yield _gauge("fusedrive_ops_waiting", "Changes queued for the journal", status["ops_waiting"])
        yield _gauge("fusedrive_cache_bytes", "Block cache size on disk", status["cache_bytes"])
        yield _gauge("fusedrive_store_offline", "1 while the store is unreachable",
                     int(status["store_offline_since"] is not None))
        yield _gauge("fusedrive_journal_applied_seq", "Newest journal entry applied here", status["applied_seq"])


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


async def serve_metrics(drive: Drive, listen: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    registry = prometheus_client.CollectorRegistry()
    registry.register(DriveCollector(drive))

    async def answer(method: bytes, path: str, query: dict) -> tuple[int, str, bytes]:
        if path != "/metrics":
            return 404, "text/plain", b"see /metrics\n"
        return 200, prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(registry)

    host, port = parse_listen(listen)
    await serve_http(host, port, answer, task_status=task_status)
