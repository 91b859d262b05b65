"""TLS and mutual TLS on a real server (certificates made in the test), and the refusal to
listen beyond loopback without TLS or API keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from companion import Companion, Unavailable
from companion.client import AsyncCompanionClient, CompanionClient
from companion.server import CompanionServer, ServerSettings
from companion.server._transport import exposure_problem, is_loopback, server_credentials
from companion.sessions import InMemorySessionStore
from companion.testing import TestServer, run_test_server, test_settings

from .certs import Certs, make_certs
from .fakes import FakeGenerator, FakeGuard

ROOT = Path(__file__).resolve().parents[1]
KEY = "key-tls-0123456789abcdef"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _companion() -> Companion:
    return Companion(FakeGuard(), FakeGenerator(["I hear you."] * 50), InMemorySessionStore())


def _serve(certs: Certs, mutual: bool) -> Iterator[TestServer]:
    settings = test_settings().replace(
        warmup=False,
        metrics_port=None,
        tls_cert_file=str(certs.server.cert_file),
        tls_key_file=str(certs.server.key_file),
        tls_client_ca_file=str(certs.ca.cert_file) if mutual else None,
    )
    with run_test_server(_companion(), settings=settings) as server:
        yield server


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[TestServer]:
    yield from _serve(certs, mutual=False)


@pytest.fixture(scope="module")
def mtls_server(certs: Certs) -> Iterator[TestServer]:
    yield from _serve(certs, mutual=True)


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


# --- TLS ---------------------------------------------------------------------------------


def test_tls_client_talks_to_a_tls_server(tls_server, certs):
    with CompanionClient(tls_server.address, root_ca=certs.ca.cert_file, timeout=10) as cl:
        sid = cl.create_session()
        assert cl.send(sid, "hello").text == "I hear you."
        assert len(cl.history(sid)) == 2


async def test_async_tls_client_with_pem_bytes(tls_server, certs):
    async with AsyncCompanionClient(tls_server.address, root_ca=certs.ca.cert, timeout=10) as cl:
        sid = await cl.create_session()
        assert (await cl.send(sid, "hello")).text == "I hear you."


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server):
    with grpc.insecure_channel(tls_server.address) as ch, pytest.raises(grpc.RpcError) as err:
        _health(ch)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    with (
        CompanionClient(tls_server.address, retries=0, timeout=5) as cl,
        pytest.raises(Unavailable, match=r"^UNAVAILABLE"),
    ):
        cl.create_session()


def test_client_that_does_not_trust_the_server_ca_is_refused(tls_server, certs):
    with (
        CompanionClient(
            tls_server.address, root_ca=certs.other_ca.cert, retries=0, timeout=5
        ) as cl,
        pytest.raises(Unavailable),
    ):
        cl.create_session()


def test_health_answers_over_tls(tls_server, certs):
    creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.cert)
    with grpc.secure_channel(tls_server.address, creds) as ch:
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING


# --- mutual TLS --------------------------------------------------------------------------


def test_mtls_client_without_a_certificate_is_rejected(mtls_server, certs):
    with (
        CompanionClient(mtls_server.address, root_ca=certs.ca.cert, retries=0, timeout=5) as cl,
        pytest.raises(Unavailable),
    ):
        cl.create_session()
    creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.cert)
    with grpc.secure_channel(mtls_server.address, creds) as ch, pytest.raises(grpc.RpcError):
        _health(ch)  # no certificate, no health either: the handshake fails


def test_mtls_client_with_a_certificate_of_another_ca_is_rejected(mtls_server, certs):
    with (
        CompanionClient(
            mtls_server.address,
            root_ca=certs.ca.cert,
            client_cert=certs.stranger.cert,
            client_key=certs.stranger.key,
            retries=0,
            timeout=5,
        ) as cl,
        pytest.raises(Unavailable),
    ):
        cl.create_session()


def test_mtls_client_with_a_certificate_works(mtls_server, certs):
    with CompanionClient(
        mtls_server.address,
        root_ca=certs.ca.cert_file,
        client_cert=certs.client.cert_file,
        client_key=certs.client.key_file,
        timeout=10,
    ) as cl:
        sid = cl.create_session()
        assert cl.send(sid, "hello").text == "I hear you."


async def test_async_mtls_client_with_a_certificate_works(mtls_server, certs):
    async with AsyncCompanionClient(
        mtls_server.address,
        root_ca=certs.ca.cert,
        client_cert=certs.client.cert,
        client_key=certs.client.key,
        timeout=10,
    ) as cl:
        sid = await cl.create_session()
        assert len(await cl.history(sid)) == 0


def test_client_tls_options_are_checked(certs):
    with pytest.raises(ValueError, match="client_cert and client_key go together"):
        CompanionClient("127.0.0.1:1", client_cert=certs.client.cert)
    with pytest.raises(ValueError, match="not both"):
        CompanionClient(
            "127.0.0.1:1", credentials=grpc.ssl_channel_credentials(), root_ca=certs.ca.cert
        )


# --- settings ----------------------------------------------------------------------------


def test_tls_settings_from_env_and_their_rules(certs):
    env = {
        "COMPANION_TLS_CERT_FILE": str(certs.server.cert_file),
        "COMPANION_TLS_KEY_FILE": str(certs.server.key_file),
    }
    assert ServerSettings.from_env(env).tls == "tls"
    env["COMPANION_TLS_CLIENT_CA_FILE"] = str(certs.ca.cert_file)
    assert ServerSettings.from_env(env).tls == "mtls"
    assert ServerSettings().tls == "off"
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        ServerSettings.from_env({"COMPANION_TLS_CERT_FILE": "server.pem"})
    with pytest.raises(ValueError, match=r"tls_client_ca_file .*needs tls_cert_file"):
        ServerSettings.from_env({"COMPANION_TLS_CLIENT_CA_FILE": "ca.pem"})


def test_unreadable_or_non_pem_tls_files_are_named_without_their_content(certs, tmp_path):
    missing = ServerSettings(tls_cert_file=str(tmp_path / "nope.pem"), tls_key_file="k")
    with pytest.raises(OSError, match=r"cannot read tls_cert_file .*nope\.pem"):
        server_credentials(missing)
    secret = tmp_path / "key.txt"
    secret.write_text("hunter2-not-a-key")
    bad = ServerSettings(tls_cert_file=str(certs.server.cert_file), tls_key_file=str(secret))
    with pytest.raises(ValueError, match=r"tls_key_file .*not a PEM file") as err:
        server_credentials(bad)
    assert "hunter2" not in str(err.value)


# --- exposure ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("[::]", False),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_non_loopback_needs_tls_and_keys_or_insecure(certs):
    tls = {"tls_cert_file": str(certs.server.cert_file), "tls_key_file": "server.key"}
    bare = ServerSettings(host="0.0.0.0")
    message = exposure_problem(bare)
    assert message is not None
    assert "0.0.0.0:50051" in message and "without TLS and without API keys" in message
    for hint in ("--tls-cert", "COMPANION_TLS_CERT_FILE", "COMPANION_API_KEYS", "--insecure"):
        assert hint in message
    keys_only = exposure_problem(bare.replace(api_keys=(KEY,)))
    assert keys_only is not None and "without TLS." in keys_only and "API keys:" not in keys_only
    tls_only = exposure_problem(bare.replace(**tls))
    assert tls_only is not None and "without API keys" in tls_only and "TLS:" not in tls_only
    assert exposure_problem(bare.replace(api_keys=(KEY,), **tls)) is None
    assert exposure_problem(bare.replace(insecure=True)) is None
    assert exposure_problem(ServerSettings(host="::1")) is None


async def test_server_refuses_to_start_on_all_interfaces_unprotected():
    server = CompanionServer(ServerSettings(host="0.0.0.0", port=0, metrics_port=None))
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0:0"):
        await server.start()
    assert server.port == 0  # nothing was bound


def _serve_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "COMPANION_SESSION_STORE": "memory",
        "COMPANION_ENCODER": str(ROOT / "no-such-encoder"),  # the load fails fast, after bind
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "companion.cli", "serve", "--port", "0", "--metrics-port", "0",
         *args],
        capture_output=True, text=True, timeout=120, env=environ,
    )  # fmt: skip


def test_serve_on_all_interfaces_without_protection_exits_2_saying_what_to_add():
    proc = _serve_cli("--host", "0.0.0.0")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("companion serve: refusing to listen on 0.0.0.0:0")
    assert "--tls-cert FILE --tls-key FILE" in line and "--insecure" in line
    # API keys on, TLS still missing: the message names TLS only.
    proc = _serve_cli("--host", "0.0.0.0", COMPANION_API_KEYS=KEY)
    assert proc.returncode == 2 and "without TLS." in proc.stderr and KEY not in proc.stderr


def test_serve_with_insecure_starts_and_warns():
    proc = _serve_cli("--host", "0.0.0.0", "--insecure")
    assert proc.returncode == 1  # the fake encoder path fails the load, after the bind
    events = [json.loads(ln) for ln in proc.stderr.splitlines() if ln[:1] == "{"]
    started = next(e for e in events if e["event"] == "server_started")
    assert started["tls"] == "off" and started["metrics_host"] == "127.0.0.1"
    warning = next(e for e in events if e["event"] == "insecure_listen")
    assert warning["missing"] == ["TLS", "API keys"] and warning["level"] == "warning"


def test_serve_over_tls_from_flags_says_so(certs):
    proc = _serve_cli(
        "--tls-cert", str(certs.server.cert_file), "--tls-key", str(certs.server.key_file),
        "--tls-client-ca", str(certs.ca.cert_file),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "(mutual TLS, no authentication)" in proc.stderr
    events = [json.loads(ln) for ln in proc.stderr.splitlines() if ln[:1] == "{"]
    assert next(e for e in events if e["event"] == "server_started")["tls"] == "mtls"


# --- metrics host ------------------------------------------------------------------------


def test_metrics_listen_on_loopback_by_default_whatever_the_grpc_host():
    assert ServerSettings().metrics_host == "127.0.0.1"
    settings = test_settings().replace(host="0.0.0.0", insecure=True, warmup=False)
    with run_test_server(_companion(), settings=settings) as server:
        http = server.server.metrics._http
        assert http is not None and http.server_address[0] == "127.0.0.1"
    assert ServerSettings.from_env({"COMPANION_METRICS_HOST": "0.0.0.0"}).metrics_host == (
        "0.0.0.0"
    )
