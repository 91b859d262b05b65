#!/usr/bin/env python3
"""Container health probe: exit 0 when companion's ``grpc.health.v1`` service says SERVING.

The Dockerfile's ``HEALTHCHECK`` and the compose file run it inside the container; Kubernetes
uses its native ``grpc:`` probes instead. It needs only grpcio and grpcio-health-checking
(companion's own dependencies), never a downloaded probe binary.

Usage: ``healthcheck.py [HOST:PORT] [SERVICE]``. The target defaults to
``127.0.0.1:$COMPANION_PORT`` (50051), the service to ``""`` (the whole server; companion
reports ``companion.v1.CompanionService`` the same way). Exit codes: 0 SERVING, 1 anything
else (NOT_SERVING while the models load or during shutdown, no answer within 3 s, refused).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def default_target() -> str:
    """``127.0.0.1:$COMPANION_PORT``: the server's own port setting, 50051 when unset."""
    return f"127.0.0.1:{os.environ.get('COMPANION_PORT', '').strip() or 50051}"


def check(target: str, service: str = "", timeout: float = TIMEOUT_SECONDS) -> str:
    """The serving status of ``service`` at ``target`` by name (``SERVING``, ``NOT_SERVING``...),
    or the gRPC status code name when the call itself failed (``UNAVAILABLE``...)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: Sequence[str] | None = None) -> int:
    """Print ``TARGET STATUS`` and return 0 for SERVING, 1 otherwise."""
    args = list(sys.argv[1:] if argv is None else argv)
    target = args[0] if args else default_target()
    service = args[1] if len(args) > 1 else ""
    status = check(target, service)
    print(f"{target} {status}", file=sys.stdout if status == "SERVING" else sys.stderr)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
