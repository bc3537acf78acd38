"""Fixtures that start real services and clean up after themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import API_TOKEN
from tools.cluster import RedisClusterServers
from tools.procs import AppServer, RedisServer

if TYPE_CHECKING:
    from scripts.stack_state import StackState


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A fresh Redis Cluster: 3 masters + 3 replicas on free loopback ports."""
    cluster = RedisClusterServers().start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    """One Redis Cluster shared by a test module's tests (forming one takes seconds): for
    tests that leave it as they found it, each on keys of its own."""
    servers = RedisClusterServers().start()
    yield servers
    servers.cleanup()


@pytest.fixture
def make_app() -> Iterator[Callable[..., AppServer]]:
    """Start ``python -m app`` processes: ``make_app(env={...}, wait="/readyz")``."""
    started: list[AppServer] = []

    def make(env: dict[str, str] | None = None, wait: str | None = "/readyz", **kwargs: object) -> AppServer:
        server = AppServer(env=env, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start(wait=wait)

    yield make
    for server in started:
        server.cleanup()


@pytest.fixture(params=["memory", "redis"])
def api_server(request: pytest.FixtureRequest, make_app: Callable[..., AppServer]) -> AppServer:
    """A server with the backend API on (``tests.support.API_TOKEN``), on each history
    backend: the in-memory one and a real Redis."""
    env = {"CHAT_API_TOKEN": API_TOKEN}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    return make_app(env=env)


@pytest.fixture
def app_server(make_app: Callable[..., AppServer]) -> AppServer:
    """One server with the embedded in-memory layer."""
    return make_app()


@pytest.fixture
def redis_app(make_app: Callable[..., AppServer], redis_server: RedisServer) -> AppServer:
    """One server on a fresh redis-server."""
    return make_app(env={"REDIS_URL": redis_server.url})


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[StackState]:
    """The local blue/green stack (redis-server, real Traefik, blue) in its own state dir."""
    from scripts.stack import down, up

    directory = tmp_path / "stack"
    try:
        yield up(directory, "blue")
    finally:
        down(directory)


@pytest.fixture
def two_process_stack(tmp_path: Path) -> Iterator[StackState]:
    """The local stack with two app processes per colour (blue and blue.1 serve)."""
    from scripts.stack import down, up

    directory = tmp_path / "stack2"
    try:
        yield up(directory, "blue", processes=2)
    finally:
        down(directory)
