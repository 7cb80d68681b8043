"""The retention policy with a fake clock: exactly which versions and trash gc lets go."""

from __future__ import annotations

from fusedrive.engine.retention import DAY, Retention, expired_trash, thin

NOW = 1_800_000_000.0  # a fixed "now"


def test_every_version_of_the_last_30_days_is_kept():
    versions = [(n, NOW - n * 3600) for n in range(1, 50)]  # hourly, the last two days
    assert thin(versions, current=1, policy=Retention(), now=NOW) == set()


def test_older_versions_thin_to_the_newest_of_each_day_then_go_after_a_year():
    policy = Retention(keep_all_days=30, keep_daily_days=365, max_versions=100)
    day = lambda d, h: NOW - d * DAY - h * 3600  # noqa: E731 - d days and h hours ago
    versions = [
        (1, day(400, 0)),  # older than a year: goes
        (2, day(40, 5)), (3, day(40, 3)), (4, day(40, 1)),  # same day, 40 days ago: only the newest stays
        (5, day(35, 2)),  # alone on its day: stays
        (6, day(10, 0)), (7, day(10, 0) + 60),  # within 30 days: both stay
        (8, NOW - 60),  # current
    ]
    same_day = {n for n, saved in versions if n in (2, 3, 4)}
    newest_that_day = max(same_day, key=lambda n: dict(versions)[n])
    assert thin(versions, current=8, policy=policy, now=NOW) == {1} | (same_day - {newest_that_day})


def test_at_most_max_versions_and_never_the_current_one():
    versions = [(n, NOW - (20 - n) * 60) for n in range(1, 21)]  # 20 recent versions
    dropped = thin(versions, current=20, policy=Retention(max_versions=5), now=NOW)
    assert dropped == set(range(1, 16))
    assert thin([(1, NOW - 1000 * DAY)], current=1, policy=Retention(), now=NOW) == set()


def test_trash_expires_after_its_days():
    deleted = {"old": NOW - 31 * DAY, "recent": NOW - 29 * DAY}
    assert expired_trash(deleted, Retention(trash_days=30), NOW) == {"old"}
