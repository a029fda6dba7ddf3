"""Two deployments on one Redis server, on two database numbers, do not hear each
other's pushes: Redis pub/sub ignores the database number, so the channel layer's
prefix comes from the deployment (config.parse_channel_prefix). Real Redis, real
channels_redis pub/sub layers, configured as settings.py configures them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from orchestrator import config
from orchestrator.core.events import ALL_EVENTS_GROUP

pytestmark = pytest.mark.asyncio


def deployment_layer(tmp_path: Path, database: str, redis_db: int) -> RedisPubSubChannelLayer:
    """The channel layer of a deployment on ``database``, with REDIS_URL's database
    number set to ``redis_db`` (the rest of the URL: the test run's Redis)."""
    url = settings.REDIS_URL.split("?")[0]
    if url.startswith("unix://"):  # the embedded Redis: the number goes in the query
        redis_url = f"{url}?db={redis_db}"
    else:
        redis_url = f"{url.rsplit('/', 1)[0]}/{redis_db}"
    cfg = config.load(
        {
            "ORCHESTRATOR_DATA_DIR": str(tmp_path),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
            "REDIS_URL": redis_url,
        }
    )
    return RedisPubSubChannelLayer(hosts=[cfg.redis_url], prefix=cfg.channel_prefix)


async def heard(listener: RedisPubSubChannelLayer, sender: RedisPubSubChannelLayer) -> bool:
    """Whether a wake-up sent by ``sender`` reaches a feed of ``listener``."""
    channel = await listener.new_channel()
    await listener.group_add(ALL_EVENTS_GROUP, channel)
    try:
        await sender.group_send(ALL_EVENTS_GROUP, {"type": "events.logged", "last_id": 7})
        try:
            message = await asyncio.wait_for(listener.receive(channel), timeout=2)
        except TimeoutError:
            return False
        return message == {"type": "events.logged", "last_id": 7}
    finally:
        await listener.group_discard(ALL_EVENTS_GROUP, channel)


async def test_two_deployments_on_one_redis_do_not_hear_each_other(tmp_path: Path) -> None:
    staging = deployment_layer(tmp_path, "staging", redis_db=3)
    production = deployment_layer(tmp_path, "production", redis_db=4)
    production_worker = deployment_layer(tmp_path, "production", redis_db=4)
    try:
        assert not await heard(production, staging)
        assert await heard(production, production_worker)  # one deployment still hears itself
    finally:
        for layer in (staging, production, production_worker):
            await layer.flush()
