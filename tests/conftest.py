from __future__ import annotations

import pytest

from companion import Pipeline, PipelineConfig, ResourceCatalogue
from companion.sessions import InMemorySessionStore

from .fakes import FakeGenerator, FakeGuard


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
