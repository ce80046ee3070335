"""Self-check of the server helpers every other integration test builds on."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.embedded_redis import EmbeddedRedis
from tests.servers import PostgresServer, free_port

pytestmark = pytest.mark.integration


def test_embedded_redis_serves_tcp_and_stops(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedRedis.start(port, data_dir=tmp_path) as server:
        assert server.url == f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(server.url) as client:
            client.set("greeting", "hello")
            assert client.get("greeting") == b"hello"
    assert not server.running
    with (
        redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)) as client,
        pytest.raises(redis.ConnectionError),
    ):
        client.ping()


def test_postgres_server_creates_database() -> None:
    with PostgresServer.start() as server:
        server.create_database("smoke")
        engine = sa.create_engine(server.url("smoke"))
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select 1")).scalar_one() == 1
        finally:
            engine.dispose()
        server.drop_database("smoke")
    assert not server.running
    assert not server.base_dir.exists()
