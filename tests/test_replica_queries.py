"""What runs on every commit (so on every fsync's path) must not read every inode: on a
volume of 100,000 files a scan costs milliseconds per commit."""

from __future__ import annotations

import pytest

from fusedrive.engine.replica import Replica

pytestmark = pytest.mark.inprocess


def _plan(replica: Replica, query: str) -> str:
    return " ".join(row[-1] for row in replica.db.execute(f"EXPLAIN QUERY PLAN {query}"))


def test_the_nameless_inodes_looked_for_after_each_commit_come_from_an_index(tmp_path):
    replica = Replica(str(tmp_path / "replica.sqlite3"))
    plan = _plan(replica, "SELECT * FROM inodes WHERE nlink=0")  # Replica.orphans, from reap_orphans
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
