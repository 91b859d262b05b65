"""How the gRPC port is exposed: TLS or mutual TLS credentials, and the refusal to listen
beyond loopback unprotected.

A server bound to an address other than loopback (``127.0.0.0/8``, ``::1``, ``localhost``)
must have both TLS (``tls_cert_file`` and ``tls_key_file``) and API keys, or be told with
``insecure`` that the missing part is provided elsewhere (TLS ends at an ingress, a load
balancer or a mesh, and that hop is trusted). :func:`exposure_problem` says what is missing and
how to add it; :class:`~.app.CompanionServer` refuses to start with it, and ``companion serve``
prints it and exits with status 2.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from .settings import ServerSettings

__all__ = ["exposure_problem", "is_loopback", "missing_protection", "server_credentials"]


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` (also written ``[::1]``).

    Anything else is not, names included: a name that resolves to loopback today may not
    tomorrow, and ``0.0.0.0`` or ``::`` mean every interface.
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def missing_protection(settings: ServerSettings) -> list[str]:
    """What a non-loopback server lacks: ``"TLS"`` and/or ``"API keys"``."""
    missing = []
    if settings.tls == "off":
        missing.append("TLS")
    if not settings.api_keys:
        missing.append("API keys")
    return missing


def exposure_problem(settings: ServerSettings) -> str | None:
    """Why these settings must not start, or ``None`` when they may: the host is loopback, or
    TLS and API keys are both on, or ``insecure`` is set. The message names what to add."""
    if settings.insecure or is_loopback(settings.host):
        return None
    missing = missing_protection(settings)
    if not missing:
        return None
    add = []
    if "TLS" in missing:
        add.append(
            "TLS: tls_cert_file and tls_key_file (--tls-cert FILE --tls-key FILE, or"
            " COMPANION_TLS_CERT_FILE and COMPANION_TLS_KEY_FILE)"
        )
    if "API keys" in missing:
        add.append("API keys: api_keys (COMPANION_API_KEYS=key1,key2; 16 characters or more)")
    return (
        f"refusing to listen on {settings.address}, which is not a loopback address, without"
        f" {' and without '.join(missing)}. Add {'; and '.join(add)}. Or, when TLS ends in"
        " front of the server (an ingress, a load balancer, a mesh) and that hop is trusted,"
        " pass --insecure (COMPANION_INSECURE=true)"
    )


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """The TLS credentials of the gRPC port, or ``None`` for plaintext. With
    ``tls_client_ca_file``, clients must present a certificate that CA signed (mutual TLS).

    Raises:
        OSError: a file cannot be read (the message names the setting and the path).
        ValueError: a file is not PEM (named the same way; its content is never quoted).
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _pem("tls_cert_file", settings.tls_cert_file)
    key = _pem("tls_key_file", settings.tls_key_file)
    ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=None if ca is None else _pem("tls_client_ca_file", ca),
        require_client_auth=ca is not None,
    )


def _pem(setting: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OSError(f"cannot read {setting} {path}: {reason}") from None
    # grpc accepts any bytes here and fails only at the first handshake, with a message that
    # names neither file: check the shape now.
    if b"-----BEGIN " not in data:
        raise ValueError(f"{setting} {path}: not a PEM file (no -----BEGIN line)")
    return data
