"""Frames shared by the feeds of one process (orchestrator.dashboard.frames)."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.dashboard.frames import SharedBuilds

pytestmark = pytest.mark.asyncio


class Builder:
    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.calls += 1
        await self.release.wait()
        return self.calls


async def test_feeds_asking_at_once_share_one_build() -> None:
    shared, build = SharedBuilds(fresh=60), Builder()
    now = asyncio.get_running_loop().time()
    waiting = [asyncio.create_task(shared.get("k", build, not_before=now)) for _ in range(5)]
    await asyncio.sleep(0)
    build.release.set()
    assert await asyncio.gather(*waiting) == [1] * 5
    assert build.calls == 1


async def test_a_feed_woken_after_the_build_started_gets_a_new_one() -> None:
    shared, build = SharedBuilds(fresh=60), Builder()
    build.release.set()
    loop = asyncio.get_running_loop()
    assert await shared.get("k", build, not_before=loop.time()) == 1
    assert await shared.get("k", build, not_before=0.0) == 1  # woken before: shares
    assert await shared.get("k", build, not_before=loop.time() + 1) == 2  # woken since: rebuilds
    assert await shared.get("other", build, not_before=0.0) == 3  # another frame


async def test_stale_or_failed_builds_are_not_reused() -> None:
    shared = SharedBuilds(fresh=0)
    build = Builder()
    build.release.set()
    assert await shared.get("k", build, not_before=0.0) == 1
    await asyncio.sleep(0.01)
    assert await shared.get("k", build, not_before=0.0) == 2  # older than `fresh`

    fails = SharedBuilds(fresh=60)

    async def broken() -> int:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        await fails.get("k", broken, not_before=0.0)
    assert await fails.get("k", build, not_before=0.0) == 3


async def test_a_feed_that_goes_away_does_not_cancel_the_others_build() -> None:
    shared, build = SharedBuilds(fresh=60), Builder()
    first = asyncio.create_task(shared.get("k", build, not_before=0.0))
    second = asyncio.create_task(shared.get("k", build, not_before=0.0))
    await asyncio.sleep(0)
    first.cancel()
    build.release.set()
    assert await second == 1
