"""The gRPC server, assembled in one place from :class:`ServerSettings`.

Start-up order: bind the port and answer health checks as NOT_SERVING at once; load the models
and run one short generation in the background; then start the retention purge
(:mod:`._retention`) and switch health to SERVING. Shutdown
(SIGTERM/SIGINT or :meth:`CompanionServer.stop`): health goes NOT_SERVING, new calls are
refused, in-flight turns get ``grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any, Literal

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .._companion import Companion
from .._logging import get_logger
from .._proto.companion.v1 import companion_pb2 as pb
from .._proto.companion.v1 import companion_pb2_grpc as pb_grpc
from ..config import GenerationConfig
from ..errors import Unavailable
from ..protocols import SessionStore
from ..sessions import RedisSessionStore
from ._access import AccessControl
from ._admission import GenerationQueue
from ._remote import make_generator
from ._retention import PurgeTask
from ._transport import exposure_problem, is_loopback, missing_protection, server_credentials
from .interceptors import ServiceInterceptor
from .metrics import Metrics
from .servicer import CompanionServicer
from .settings import ServerSettings

__all__ = [
    "SERVICE_NAME",
    "CompanionServer",
    "load_companion",
    "make_generator",
    "make_store",
    "serve",
    "warm_up",
]

log = get_logger("companion.server")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["CompanionService"].full_name
# Generous for 4000 characters of UTF-8 plus metadata; larger messages get RESOURCE_EXHAUSTED
# from the transport before they reach the servicer.
MAX_RECEIVE_BYTES = 64 * 1024

CompanionFactory = Callable[[ServerSettings], Companion]

# A remote generator that is not up yet is tried again after 1 s, doubling to 30 s.
_WARMUP_RETRY_S, _WARMUP_RETRY_MAX_S = 1.0, 30.0


def load_companion(settings: ServerSettings) -> Companion:
    """The library facade these settings describe (embedded models unless named), with torch's
    threads set first (``settings.torch_threads``). With ``generator = "openai"`` the local
    model is not loaded; the guard is."""
    from ..models._threads import set_torch_threads

    threads = set_torch_threads(settings.torch_threads)
    log.info("torch_threads", threads=threads)
    companion = Companion.from_defaults(
        make_store(settings),
        model=settings.model,
        adapter=settings.adapter,
        encoder=settings.encoder,
        db_path=settings.db_path,
        config=settings.pipeline_config(),
        device=settings.device,
        generator=make_generator(settings),
        batch_size=settings.generation_batch_size,
        static_cache=settings.generation_static_cache,
        dtype=settings.generation_dtype,
        guard_runtime=settings.guard_runtime,
    )
    guard = companion.pipeline.guard
    log.info(
        "models_loaded",
        guard_policy=getattr(guard, "policy_version", None),
        guard_encoder=getattr(getattr(guard, "encoder", None), "name", None),
        generator=type(companion.pipeline.generator).__name__,
    )
    return companion


def make_store(settings: ServerSettings) -> SessionStore | Literal["sqlite", "memory"]:
    """The Redis store these settings describe (URL, TTL, timeouts), or the name of the other
    kinds for :meth:`Companion.from_defaults` to build."""
    if settings.session_store == "redis":
        return RedisSessionStore(
            settings.redis_url,
            ttl_seconds=settings.session_max_age_seconds,
            connect_timeout=settings.redis_connect_timeout,
            timeout=settings.redis_timeout,
            lock_seconds=settings.redis_lock_seconds,
            lock_wait_seconds=settings.redis_lock_wait_seconds,
        )
    return settings.session_store


def warm_up(companion: Companion) -> None:
    """One guard check and a two-token generation, so that the first real turn is not slow."""
    pipeline = companion.pipeline
    pipeline.guard.classify("Hello")
    messages = [{"role": "user", "content": "Hello"}]
    for _ in pipeline.generator.stream(
        messages, GenerationConfig(max_new_tokens=2, do_sample=False)
    ):
        pass


async def _warm_up_when_reachable(companion: Companion) -> None:
    """:func:`warm_up`, again and again while the generator is :class:`Unavailable` (a remote
    engine still starting, or down): health stays NOT_SERVING until it answers. Any other
    error ends the load."""
    delay = _WARMUP_RETRY_S
    while True:
        try:
            await asyncio.to_thread(warm_up, companion)
            return
        except Unavailable as exc:
            log.warning("warmup_waiting", error=str(exc), retry_in_s=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _WARMUP_RETRY_MAX_S)


def _bind(server: aio.Server, address: str, credentials: Any = None) -> int:
    failed = f"cannot listen for gRPC on {address}: address in use or unavailable"
    try:
        port = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
        raise OSError(failed) from exc
    if port == 0:
        raise OSError(failed)
    return int(port)


class CompanionServer:
    """The service: companion API, health, reflection, interceptor and metrics endpoint.

    Args:
        settings: Address, keys, models and limits.
        companion: An already built facade (tests, custom parts); when ``None`` the models are
            loaded in the background by ``factory``.
        factory: Builds the facade from the settings; :func:`load_companion` by default.

    Example:
        >>> server = CompanionServer(ServerSettings(port=0, metrics_port=None))
        >>> await server.start(); await server.wait_ready()
        >>> server.port
    """

    def __init__(
        self,
        settings: ServerSettings,
        companion: Companion | None = None,
        *,
        factory: CompanionFactory = load_companion,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.servicer = CompanionServicer(
            queue=GenerationQueue(
                self.metrics,
                depth=settings.generation_queue_depth,
                slots=settings.generation_batch_size,
            )
        )
        self.health = health.aio.HealthServicer()
        self._companion = companion
        self._factory = factory
        self._owns_companion = companion is None
        self._loading: asyncio.Task[None] | None = None
        self._purge: PurgeTask | None = None
        self._server: aio.Server | None = None
        self.port = 0
        self.metrics_port: int | None = None

    @property
    def address(self) -> str:
        """``host:port`` the server listens on (after :meth:`start`)."""
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Bind, start serving (health NOT_SERVING) and begin loading the models.

        Raises:
            ValueError: a non-loopback host without TLS or API keys, and not ``insecure``
                (the message says what to add); or a TLS file that is not PEM.
            OSError: the gRPC or the metrics address cannot be bound, or a TLS file cannot be
                read (the message names it); nothing is left running.
        """
        s = self.settings
        problem = exposure_problem(s)
        if problem is not None:
            raise ValueError(problem)
        credentials = server_credentials(s)
        access = AccessControl(
            self.metrics,
            s.api_keys,
            key_rate=s.key_rate_limit,
            key_burst=s.key_rate_burst,
            failure_rate=s.auth_failure_rate,
            failure_burst=s.auth_failure_burst,
        )
        # No maximum_concurrent_rpcs here: grpc's limit refuses health and reflection too, and
        # says nothing of what it refuses. The interceptor limits the companion service alone.
        server = aio.server(
            interceptors=[
                ServiceInterceptor(
                    self.metrics, max_concurrent_rpcs=s.max_concurrent_rpcs, access=access
                )
            ],
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_CompanionServiceServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = _bind(server, s.address, credentials)
            await server.start()
            if s.metrics_port is not None:
                try:
                    self.metrics_port = self.metrics.serve_http(s.metrics_host, s.metrics_port)
                except OSError as exc:
                    where = f"{s.metrics_host}:{s.metrics_port}"
                    reason = exc.strerror or type(exc).__name__
                    raise OSError(f"cannot serve metrics on {where}: {reason}") from exc
        except BaseException:
            # A server left running would be shut down by its finaliser on a closed event loop.
            await server.stop(None)
            raise
        self._server = server
        log.info(
            "server_started",
            address=self.address,
            metrics_port=self.metrics_port,
            metrics_host=s.metrics_host,
            auth=bool(s.api_keys),
            tls=s.tls,
            key_rate_limit=s.key_rate_limit,
            auth_failure_rate=s.auth_failure_rate,
        )
        if not is_loopback(s.host) and missing_protection(s):
            log.warning(
                "insecure_listen",
                address=self.address,
                missing=missing_protection(s),
                reason="insecure is set: TLS or keys are expected in front of the server",
            )
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            companion = self._companion
            if companion is None:
                companion = await asyncio.to_thread(self._factory, self.settings)
                self._companion = companion
            if self.settings.warmup:
                await _warm_up_when_reachable(companion)
        except Exception as exc:
            log.error("model_load_failed", error=type(exc).__name__, detail=str(exc))
            raise
        self.servicer.companion = companion
        self._purge = PurgeTask(companion, self.settings.purge_interval_seconds, self.metrics)
        self._purge.start()  # retention: the first purge runs now
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", load_ms=round((time.perf_counter() - started) * 1000))

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the models are loaded and health is SERVING.

        Raises:
            ModelLoadError: loading failed (the server keeps answering NOT_SERVING).
            TimeoutError: not ready within ``timeout`` seconds.
        """
        if self._loading is None:
            raise RuntimeError("call start() first")
        await asyncio.wait_for(asyncio.shield(self._loading), timeout)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, give in-flight ones ``grace`` seconds, then close everything."""
        grace = self.settings.grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self._purge is not None:
            await self._purge.stop()
        self.metrics.close()
        self.servicer.close()
        if self._owns_companion and self._companion is not None:
            self._companion.close()
        log.info("server_stopped")

    async def wait_for_termination(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(
    settings: ServerSettings,
    *,
    factory: CompanionFactory = load_companion,
    on_listening: Callable[[CompanionServer], Any] | None = None,
    on_ready: Callable[[CompanionServer], Any] | None = None,
) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down gracefully.

    Args:
        settings: What to serve and where.
        factory: Builds the facade from the settings.
        on_listening: Called once the port is bound (before the models are ready).
        on_ready: Called once health is SERVING.

    Raises:
        ModelLoadError: the models could not be loaded.
        OSError: the gRPC or the metrics address cannot be bound.
    """
    server = CompanionServer(settings, factory=factory)
    await server.start()
    if on_listening is not None:
        on_listening(server)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        ready = asyncio.ensure_future(server.wait_ready())
        stop_wait = asyncio.ensure_future(stopping.wait())
        done, _ = await asyncio.wait({ready, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if ready in done:
            ready.result()  # re-raises a load error
            if on_ready is not None:
                on_ready(server)
            await stop_wait
        else:
            ready.cancel()
        log.info("shutting_down", grace_seconds=settings.grace_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
