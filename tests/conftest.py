from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from companion import Pipeline, PipelineConfig, ResourceCatalogue
from companion.sessions import InMemorySessionStore

from .fakes import FakeGenerator, FakeGuard
from .redis_server import RedisServer


@pytest.fixture
def catalogue() -> ResourceCatalogue:
    return ResourceCatalogue.load()


@pytest.fixture
def make_pipeline(catalogue: ResourceCatalogue):
    def make(
        guard: FakeGuard | None = None,
        generator: FakeGenerator | None = None,
        config: PipelineConfig | None = None,
    ):
        return Pipeline(
            guard or FakeGuard(),
            generator or FakeGenerator(["I hear you."]),
            InMemorySessionStore(),
            catalogue,
            config,
        )

    return make


SAFETY_SCRIPTS = Path(__file__).resolve().parents[1] / "safety"
SHARED_DATA = SAFETY_SCRIPTS.parents[1] / "shared" / "data"  # public data, read-only, not in git


def safety_script(name: str) -> ModuleType:
    """Import one of the ``safety/`` scripts (``prepare``, ``finetune_encoder``...) as a module;
    they import ``_common`` from their own folder."""
    sys.path.insert(0, str(SAFETY_SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole run (skips if redis-server is not on PATH)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def make_redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a redis-server of the test's own (to stop or freeze it; extra arguments go to
    redis-server); stopped afterwards."""
    started: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        started.append(RedisServer(tmp_path / f"redis{len(started)}", *args))
        return started[-1]

    yield make
    for server in started:
        server.stop()
