"""Self-check of the server helpers every other integration test builds on."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.dev import redis_program
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.settings import load_settings
from tests.servers import free_port

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


def test_the_broker_make_run_supervises_starts_from_a_relative_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run`'s state folder is `.orchestrator`, relative: Redis changes into its
    `--dir` before it opens its `--logfile`, which must not be taken from there."""
    monkeypatch.chdir(tmp_path)
    server = EmbeddedRedis(free_port(), "127.0.0.1", Path(".orchestrator/redis"), persistent=True)
    settings = load_settings(env="development", redis_url=server.url)
    program = redis_program(server, settings)
    assert program.ready is not None
    process = subprocess.Popen(program.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not program.ready(process.pid):
            assert process.poll() is None, f"the broker exited with {process.returncode}"
            assert time.monotonic() < deadline, "the broker did not answer"
            time.sleep(0.05)
        assert (tmp_path / ".orchestrator/redis/redis-server.log").exists()
    finally:
        process.kill()
        process.wait(10)


def test_postgres_server_creates_database() -> None:
    with EmbeddedPostgres.start(free_port()) as server:
        server.create_database("smoke")
        engine = sa.create_engine(server.url("smoke"))
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select 1")).scalar_one() == 1
        finally:
            engine.dispose()
        server.drop_database("smoke")
    assert not server.running
    assert not server.folder.exists()
