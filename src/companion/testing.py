"""Run a real companion server in your integration tests.

:func:`run_test_server` starts the gRPC server on a free local port, in a background thread,
with the embedded models (or your settings, or a :class:`~companion.Companion` you built), waits
until health is SERVING and gives you a connected client. Build it once per test session: the
models take a few seconds to load.

Example:
    >>> from companion.testing import run_test_server
    >>> with run_test_server() as server:
    ...     sid = server.client.create_session(locale="en-GB")
    ...     assert server.client.send(sid, "I want to kill myself").action == "redirected"

With pytest, add ``pytest_plugins = ["companion.testing"]`` to your ``conftest.py`` and use the
session-scoped ``companion_server`` fixture (a :class:`TestServer`) or ``companion_client``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._companion import Companion
from .client import CompanionClient
from .server.app import CompanionFactory, CompanionServer, load_companion
from .server.settings import ServerSettings

__all__ = ["TestServer", "run_test_server", "test_settings"]

T = TypeVar("T")


def test_settings(api_keys: Sequence[str] = (), max_new_tokens: int = 32) -> ServerSettings:
    """Settings for a throwaway server: free ports, sessions in memory, short greedy replies."""
    return ServerSettings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        session_store="memory",
        api_keys=tuple(api_keys),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        grace_seconds=2.0,
        log_level="warning",
    )


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


@dataclass
class TestServer:
    """A running test server.

    Attributes:
        address: ``127.0.0.1:<port>``.
        server: The :class:`~companion.server.CompanionServer` (``.metrics_port``, ``.health``).
        client: A connected client, using the first API key when keys are on.
    """

    __test__ = False  # tell pytest this is not a test class

    address: str
    server: CompanionServer
    client: CompanionClient
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _clients: list[CompanionClient] = field(default_factory=list, repr=False)

    @property
    def companion(self) -> Companion | None:
        """The library facade the server runs (``None`` until the models are loaded)."""
        return self.server.servicer.companion

    def new_client(self, api_key: str | None = None, **kwargs: Any) -> CompanionClient:
        """Another client of this server (closed with the server)."""
        cl = CompanionClient(self.address, api_key=api_key, **kwargs)
        self._clients.append(cl)
        return cl

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the server's event loop (e.g. ``server.server.wait_ready()``)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)


@contextmanager
def run_test_server(
    companion: Companion | None = None,
    *,
    settings: ServerSettings | None = None,
    factory: CompanionFactory = load_companion,
    wait_ready: bool = True,
    ready_timeout: float = 600.0,
) -> Iterator[TestServer]:
    """Start a real server on a free port; yield a :class:`TestServer`; stop it afterwards.

    Args:
        companion: A facade to serve; when ``None`` the server loads ``settings``' models
            (the embedded ones by default) with ``factory``.
        settings: Server settings; :func:`test_settings` by default. Give ``port=0``.
        factory: Builds the facade from the settings when ``companion`` is ``None``.
        wait_ready: Wait for health SERVING before yielding.
        ready_timeout: Seconds to wait for the models (the very first load converts the
            embedded model, about a minute).

    With TLS settings, ``server.client`` still speaks plaintext (it has no CA to trust): make
    a TLS one with ``server.new_client(root_ca=..., client_cert=..., client_key=...)``.
    """
    settings = settings or test_settings()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="companion-test-server", daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def make() -> CompanionServer:
        return CompanionServer(settings, companion, factory=factory)

    server = run(make())
    handle: TestServer | None = None
    try:
        run(server.start())
        api_key = settings.api_keys[0] if settings.api_keys else None
        handle = TestServer(server.address, server, CompanionClient(server.address, api_key), loop)
        if wait_ready:
            run(server.wait_ready(), ready_timeout)
        yield handle
    finally:
        if handle is not None:
            for cl in [handle.client, *handle._clients]:
                cl.close()
        run(server.stop(grace=settings.grace_seconds))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pass
else:

    @pytest.fixture(scope="session")
    def companion_server() -> Iterator[TestServer]:
        """A real server on the embedded models, shared by the whole test session."""
        with run_test_server() as server:
            yield server

    @pytest.fixture
    def companion_client(companion_server: TestServer) -> CompanionClient:
        """The shared test server's client."""
        return companion_server.client
