"""Prometheus metrics of the service, on their own registry and HTTP port.

Labels are method names, status codes, categories, directions and actions: never text, never
session ids (unbounded cardinality), never API keys or client addresses.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The service's metrics.

    Args:
        registry: Where they are registered; a fresh one by default, so that several servers
            (tests) can live in one process.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc_latency = Histogram(
            "companion_rpc_duration_seconds",
            "Time from request to final status, per RPC method and status code.",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rpc_errors = Counter(
            "companion_rpc_errors",
            "RPCs that ended with a status other than OK.",
            ["method", "code"],
            registry=self.registry,
        )
        self.guard_decisions = Counter(
            "companion_guard_decisions",
            "Safety checks run, by the category they found, what they decided (none / check_in /"
            " redirect) and the side they checked.",
            ["category", "decision", "direction"],
            registry=self.registry,
        )
        self.turns = Counter(
            "companion_turns",
            "Completed turns, by what the service did (answered / checked_in / redirected)"
            " and why.",
            ["action", "category"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "companion_rejected_rpcs",
            "Calls refused or dropped before they reached the model: reason queue_full (the"
            " generation queue was full), concurrency_limit (max_concurrent_rpcs), client_gone"
            " or deadline_passed (while the turn waited in the queue), rate_limited (the API"
            " key's key_rate_limit), auth_throttled (the client address failed to authenticate"
            " too often: auth_failure_rate).",
            ["method", "reason"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "companion_auth_failures",
            "Calls refused for a missing or wrong API key (UNAUTHENTICATED).",
            registry=self.registry,
        )
        self.faults = Counter(
            "companion_faults",
            "Faults of the service's parts, by component (input_guard, output_guard: the turn"
            " failed closed with the resource message; generator, store: the call got"
            " UNAVAILABLE) and reason (error, timeout, full, locked, unreachable).",
            ["component", "reason"],
            registry=self.registry,
        )
        self.purged = Counter(
            "companion_sessions_purged",
            "Sessions erased by the retention purge (older than session_max_age_seconds).",
            registry=self.registry,
        )
        self.queue_length = Gauge(
            "companion_generation_queue_length",
            "Turns waiting for the model now.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "companion_rpcs_in_flight",
            "RPCs being handled now.",
            registry=self.registry,
        )
        self._http: Any = None

    def serve_http(self, host: str, port: int) -> int:
        """Expose ``/metrics`` on ``host:port`` (0 picks a free port); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint, if any."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
