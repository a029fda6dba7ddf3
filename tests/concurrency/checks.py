"""Invariants of a counter run, checked from the database history."""

from __future__ import annotations

from collections import Counter
from itertools import combinations, pairwise
from typing import Any


def total(results: list[dict[str, Any]], key: str) -> Counter[int]:
    """Sum the per-counter counts ``key`` ("writes", "picked") over all workers."""
    summed: Counter[int] = Counter()
    for result in results:
        summed.update(result[key])
    return summed


def check_counter_history(
    history: dict[int, dict[str, Any]], results: list[dict[str, Any]]
) -> dict[int, int]:
    """Assert that no update was lost and no two exclusive holds overlapped; return writes.

    * every final value equals the number of successful writes to it, and so
      does the version; version v holds value v (each write saw the last);
    * fences accepted, in version order, strictly increase;
    * exclusive holds of one counter, as intervals [acquired_at, released_at),
      are pairwise disjoint. Sorted by start, that is: each starts no earlier
      than every earlier one ended (the running maximum of the ends).
    """
    writes = total(results, "writes")
    picked = total(results, "picked")
    for resource_id, facts in history.items():
        n = writes[resource_id]
        assert (facts["value"], facts["version"]) == (n, n), (resource_id, facts["value"], n)
        versions = facts["versions"]
        assert [v for v, _, _ in versions] == list(range(n + 1))
        assert [value for _, value, _ in versions] == list(range(n + 1))
        fences = [fence for version, _, fence in versions if version > 0]
        assert None not in fences
        bad = [(a, b) for a, b in pairwise(fences) if not b > a]
        assert not bad, f"fences accepted out of order on {resource_id}: {bad[:5]}"

        locks = facts["locks"]
        assert len(locks) == picked[resource_id]
        assert {lock["mode"] for lock in locks} <= {"exclusive"}
        assert all(lock["released_at"] is not None for lock in locks)
        latest_end = None
        latest = None
        for lock in locks:
            if latest_end is not None:
                assert lock["acquired_at"] >= latest_end, f"overlapping holds: {latest} {lock}"
            if latest_end is None or lock["released_at"] > latest_end:
                latest_end, latest = lock["released_at"], lock
    return dict(writes)


def check_folder_holds(folder_id: int, file_ids: list[int]) -> dict[int, list[tuple]]:
    """Assert that no two holds of one resource overlap and that no hold of the folder
    overlaps a hold of a file under it; return each one's holds (acquired, released)."""
    from orchestrator.core.models import Lock

    holds = {
        rid: list(Lock.objects.filter(resource_id=rid).values_list("acquired_at", "released_at"))
        for rid in [folder_id, *file_ids]
    }
    for rid, intervals in holds.items():  # one resource: holds one after another
        for (a0, a1), (b0, b1) in combinations(sorted(intervals), 2):
            assert a1 <= b0, (rid, (a0, a1), (b0, b1))
    for file_id in file_ids:  # the folder against each file under it
        for f0, f1 in holds[folder_id]:
            for g0, g1 in holds[file_id]:
                assert f1 <= g0 or g1 <= f0, (folder_id, file_id, (f0, f1), (g0, g1))
    return holds
