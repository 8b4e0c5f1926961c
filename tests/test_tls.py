"""TLS on both sides of the gateway.

Toward WhatsApp, the gateway verifies the certificate: against the system CAs by default,
``--upstream-ca-file`` instead, or not at all with ``--upstream-insecure``. Toward callers, the
gRPC listener is plaintext unless ``--tls-cert`` and ``--tls-key`` are given, and requires client
certificates from ``--tls-client-ca`` when that is given too (mutual TLS). ``identity-gateway
get`` and ``ack`` reach a TLS gateway with ``--ca-file`` (and ``--cert-file``/``--key-file``).

Every certificate is made here, for this run: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and an unrelated "other" CA with a client certificate of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from whatsapp_emulator.emulator import RunningEmulator

from gateway.app.cli import build_parser, config_from_args
from gateway.app.config import ConfigError, GatewayConfig
from gateway.app.server import GatewayServer
from gateway.app.startup import prepare
from tests.conftest import Gateway, call, new_wa_id

HASH = "UKD6Y/5SqDU="
GATEWAY = Path(sys.executable).parent / "identity-gateway"
HANG_GUARD = 30.0  # seconds; a hang guard, not a timing assertion
KEY_MARKER = "KEY-MATERIAL-7f3a9c"  # planted in a bad key file: must never be echoed
TOKEN_ENV = {
    "IDENTITY_GATEWAY_UPSTREAM_URL": "https://graph.wa.example.com",
    "IDENTITY_GATEWAY_UPSTREAM_TOKEN": "tok-Kq93-SECRET",
}


# --- certificates ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """PEM files on disk for one test session."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


_NO_OTHER_USAGE = dict(
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> Any:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, **_NO_OTHER_USAGE
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _make_leaf(
    common_name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    issuer_key, issuer_certificate = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _builder(common_name, issuer_certificate.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=False, crl_sign=False, **_NO_OTHER_USAGE
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return key, certificate


def _write_certificate(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(
    path: Path,
    key: ec.EllipticCurvePrivateKey,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            encryption or serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _make_ca("identity-gateway test CA")
    other_ca = _make_ca("unrelated CA")
    server_names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    server = _make_leaf("gateway", ca, server_names, ExtendedKeyUsageOID.SERVER_AUTH)
    client_names: list[x509.GeneralName] = [x509.DNSName("caller.test")]
    client = _make_leaf("caller", ca, client_names, ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _make_leaf("stranger", other_ca, client_names, ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca=_write_certificate(directory / "ca.pem", ca[1]),
        server_cert=_write_certificate(directory / "server.pem", server[1]),
        server_key=_write_key(directory / "server.key", server[0]),
        client_cert=_write_certificate(directory / "client.pem", client[1]),
        client_key=_write_key(directory / "client.key", client[0]),
        other_ca=_write_certificate(directory / "other-ca.pem", other_ca[1]),
        other_client_cert=_write_certificate(directory / "stranger.pem", stranger[1]),
        other_client_key=_write_key(directory / "stranger.key", stranger[0]),
    )


# --- servers and clients ---------------------------------------------------------------------


@pytest.fixture
async def https_emulator(pki: Pki) -> AsyncIterator[RunningEmulator]:
    """The emulator serving HTTPS with the server certificate (conftest's is plaintext)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    async with RunningEmulator(ssl_context=context) as running:
        yield running


@asynccontextmanager
async def running_gateway(
    upstream: RunningEmulator, credentials: grpc.ChannelCredentials | None = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    """A gateway against ``upstream``, and a channel to it: TLS with ``credentials``, else
    plaintext. ``overrides`` are GatewayConfig fields."""
    settings: dict[str, Any] = {
        "upstream_url": upstream.url,
        "listen": "127.0.0.1:0",
        "upstream_username": "admin",
        "upstream_password": "secret",
        "upstream_retries": 0,  # one attempt per call: the outcome is the handshake's
    }
    settings.update(overrides)
    async with GatewayServer(GatewayConfig(**settings)) as server:
        target = f"127.0.0.1:{server.port}"
        if credentials is None:
            channel = grpc.aio.insecure_channel(target)
        else:
            channel = grpc.aio.secure_channel(target, credentials)
        async with channel:
            yield Gateway(server, channel)


def listener_tls(pki: Pki, *, mutual: bool = False) -> dict[str, Path]:
    """GatewayConfig overrides for a TLS (or, with ``mutual``, mTLS) listener."""
    settings = {"tls_cert": pki.server_cert, "tls_key": pki.server_key}
    if mutual:
        settings["tls_client_ca"] = pki.ca
    return settings


def trusting(
    pki: Pki, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials trusting ``ca`` (the test CA by default), with an optional client
    certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or pki.ca).read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def clean_env(**variables: str) -> dict[str, str]:
    """The inherited environment minus every IDENTITY_GATEWAY_* variable, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDENTITY_GATEWAY_")}
    env.update(variables)
    return env


async def run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the real console script without blocking the loop (an in-process gateway may be
    serving it); returns (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(GATEWAY),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or clean_env(),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), HANG_GUARD)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def assert_nothing_listens(port: int) -> None:
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


# --- upstream verification -------------------------------------------------------------------


@pytest.mark.integration
async def test_upstream_certificate_is_verified_against_the_system_cas_by_default(
    https_emulator: RunningEmulator,
) -> None:
    wa_id = new_wa_id()
    https_emulator.state.set_identity(wa_id, HASH)

    async with running_gateway(https_emulator) as gateway:
        outcome = await gateway.get(wa_id)

    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert outcome.reason == "UPSTREAM_UNAVAILABLE"
    assert "TLS" in outcome.message
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.message
    for revealing in (https_emulator.url, "127.0.0.1", str(https_emulator.port), "https"):
        assert revealing not in outcome.message
    assert https_emulator.state.count() == 0  # refused before any request was sent


@pytest.mark.integration
async def test_upstream_verification_ignores_the_environments_ca_and_proxy_settings(
    https_emulator: RunningEmulator, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the configuration says what to trust: a CA slipped in through OpenSSL's environment
    # variables is not trusted, and no proxy is used.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(pki.ca.parent))
    for proxy in ("HTTPS_PROXY", "ALL_PROXY"):  # gRPC's own channel reads https_proxy
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    wa_id = new_wa_id()
    https_emulator.state.set_identity(wa_id, HASH)

    async with running_gateway(https_emulator) as gateway:
        refused = await gateway.get(wa_id)
    async with running_gateway(https_emulator, upstream_ca_file=pki.ca) as gateway:
        trusted = await gateway.get(wa_id)

    assert "CERTIFICATE_VERIFY_FAILED" in refused.message, refused
    assert trusted.ok, trusted  # straight to the emulator: the proxy on port 9 would refuse


@pytest.mark.integration
async def test_upstream_ca_file_lets_the_gateway_trust_a_private_ca(
    https_emulator: RunningEmulator, pki: Pki
) -> None:
    wa_id = new_wa_id()
    https_emulator.state.set_identity(wa_id, HASH)

    async with running_gateway(https_emulator, upstream_ca_file=pki.ca) as gateway:
        outcome = await gateway.get(wa_id)

    assert outcome.ok, outcome
    assert outcome.response.identity.hash == HASH


@pytest.mark.integration
async def test_upstream_certificate_from_another_ca_than_the_ca_file_is_refused(
    https_emulator: RunningEmulator, pki: Pki
) -> None:
    wa_id = new_wa_id()
    https_emulator.state.set_identity(wa_id, HASH)

    async with running_gateway(https_emulator, upstream_ca_file=pki.other_ca) as gateway:
        outcome = await gateway.get(wa_id)

    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert outcome.reason == "UPSTREAM_UNAVAILABLE"
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.message
    assert https_emulator.state.count() == 0


@pytest.mark.integration
async def test_upstream_insecure_accepts_an_unverifiable_certificate(
    https_emulator: RunningEmulator,
) -> None:
    wa_id = new_wa_id()
    https_emulator.state.set_identity(wa_id, HASH)

    async with running_gateway(https_emulator, upstream_insecure=True) as gateway:
        outcome = await gateway.get(wa_id)

    assert outcome.ok, outcome
    assert outcome.response.identity.hash == HASH


# --- listener TLS and mutual TLS -------------------------------------------------------------


@pytest.mark.integration
async def test_tls_listener_serves_a_client_that_trusts_its_ca(
    emulator: RunningEmulator, pki: Pki
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)

    async with running_gateway(emulator, trusting(pki), **listener_tls(pki)) as gateway:
        outcome = await gateway.get(wa_id)

    assert outcome.ok, outcome
    assert outcome.response.identity.hash == HASH


@pytest.mark.integration
async def test_tls_listener_refuses_a_plaintext_client(emulator: RunningEmulator, pki: Pki) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)

    async with running_gateway(emulator, None, **listener_tls(pki)) as gateway:
        outcome = await gateway.get(wa_id)

    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert emulator.state.count("GET") == 0


@pytest.mark.integration
async def test_tls_listener_answers_health_checks_over_tls(
    emulator: RunningEmulator, pki: Pki
) -> None:
    async with running_gateway(emulator, trusting(pki), **listener_tls(pki)) as gateway:
        health = health_pb2_grpc.HealthStub(gateway.channel)
        request = health_pb2.HealthCheckRequest(service="whatsapp.identity.v1.IdentityService")
        outcome = await call(health.Check, request)

    assert outcome.ok, outcome
    assert outcome.response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.integration
async def test_mutual_tls_listener_refuses_a_client_without_a_certificate(
    emulator: RunningEmulator, pki: Pki
) -> None:
    tls = listener_tls(pki, mutual=True)

    async with running_gateway(emulator, trusting(pki), **tls) as gateway:
        outcome = await gateway.get(new_wa_id())

    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert emulator.state.count("GET") == 0


@pytest.mark.integration
async def test_mutual_tls_listener_serves_a_client_certificate_from_its_client_ca(
    emulator: RunningEmulator, pki: Pki
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    credentials = trusting(pki, cert=pki.client_cert, key=pki.client_key)

    async with running_gateway(emulator, credentials, **listener_tls(pki, mutual=True)) as gateway:
        outcome = await gateway.get(wa_id)

    assert outcome.ok, outcome
    assert outcome.response.identity.hash == HASH


@pytest.mark.integration
async def test_mutual_tls_listener_refuses_a_client_certificate_from_another_ca(
    emulator: RunningEmulator, pki: Pki
) -> None:
    credentials = trusting(pki, cert=pki.other_client_cert, key=pki.other_client_key)

    async with running_gateway(emulator, credentials, **listener_tls(pki, mutual=True)) as gateway:
        outcome = await gateway.get(new_wa_id())

    assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert emulator.state.count("GET") == 0


# --- configuration ---------------------------------------------------------------------------


def load(argv: list[str], environ: dict[str, str]) -> GatewayConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]), environ)


def config(**overrides: Any) -> GatewayConfig:
    return GatewayConfig(
        upstream_url="https://graph.wa.example.com", upstream_token="t", **overrides
    )


def config_error(**overrides: Any) -> str:
    """The ConfigError message GatewayConfig gives for ``overrides`` (fails if none): the
    settings that go together, checked without reading any file."""
    with pytest.raises(ConfigError) as caught:
        config(**overrides)
    return str(caught.value)


def startup_error(**overrides: Any) -> str:
    """The ConfigError message start-up (``prepare``) gives for the files ``overrides`` name
    (fails if none). GatewayConfig reads no file, so it must accept them first."""
    configured = config(**overrides)
    with pytest.raises(ConfigError) as caught:
        prepare(configured)
    return str(caught.value)


def copies(pki: Pki, directory: Path) -> Pki:
    """The same PEM files under other paths, so a flag and a variable can name different ones."""
    moved = {}
    for field in dataclasses.fields(Pki):
        source: Path = getattr(pki, field.name)
        moved[field.name] = Path(shutil.copy(source, directory / source.name))
    return Pki(**moved)


def test_listener_is_plaintext_unless_a_certificate_is_configured() -> None:
    config = load([], TOKEN_ENV)

    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == (None, None, None)
    assert config.listener_security == "plaintext"


def test_listener_tls_settings_come_from_the_environment(pki: Pki) -> None:
    environ = {
        **TOKEN_ENV,
        "IDENTITY_GATEWAY_TLS_CERT": str(pki.server_cert),
        "IDENTITY_GATEWAY_TLS_KEY": str(pki.server_key),
        "IDENTITY_GATEWAY_TLS_CLIENT_CA": str(pki.ca),
    }

    config = load([], environ)

    assert config.tls_cert == pki.server_cert
    assert config.tls_key == pki.server_key
    assert config.tls_client_ca == pki.ca
    assert config.listener_security == "mtls"


def test_listener_tls_flags_win_over_the_environment(pki: Pki, tmp_path: Path) -> None:
    flagged = copies(pki, tmp_path)
    environ = {
        **TOKEN_ENV,
        "IDENTITY_GATEWAY_TLS_CERT": str(pki.server_cert),
        "IDENTITY_GATEWAY_TLS_KEY": str(pki.server_key),
        "IDENTITY_GATEWAY_TLS_CLIENT_CA": str(pki.ca),
    }
    argv = [
        "--tls-cert",
        str(flagged.server_cert),
        "--tls-key",
        str(flagged.server_key),
        "--tls-client-ca",
        str(flagged.ca),
    ]

    config = load(argv, environ)

    assert config.tls_cert == flagged.server_cert
    assert config.tls_key == flagged.server_key
    assert config.tls_client_ca == flagged.ca


def test_listener_with_certificate_and_key_but_no_client_ca_is_tls(pki: Pki) -> None:
    config = load(["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)], TOKEN_ENV)

    assert config.listener_security == "tls"


def test_start_up_reads_the_listener_files_and_never_shows_the_key(pki: Pki) -> None:
    assert prepare(config()).listener_tls is None  # plaintext: no file to read

    runtime = prepare(config(**listener_tls(pki, mutual=True)))

    assert runtime.listener_tls is not None
    assert runtime.listener_tls.chain == pki.server_cert.read_bytes()
    assert runtime.listener_tls.key == pki.server_key.read_bytes()
    assert runtime.listener_tls.client_ca == pki.ca.read_bytes()
    assert "PRIVATE KEY" not in repr(runtime)


def test_certificate_without_key_is_refused_naming_the_missing_flag(pki: Pki) -> None:
    message = config_error(tls_cert=pki.server_cert)

    assert "--tls-key" in message


def test_key_without_certificate_is_refused_naming_the_missing_flag(pki: Pki) -> None:
    message = config_error(tls_key=pki.server_key)

    assert "--tls-cert is missing" in message


def test_client_ca_without_certificate_and_key_is_refused(pki: Pki) -> None:
    message = config_error(tls_client_ca=pki.ca)

    assert message.startswith("--tls-client-ca")


@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key", "--tls-client-ca"])
@pytest.mark.parametrize("problem", ["missing", "directory"])
def test_unreadable_listener_tls_file_is_refused_naming_its_flag(
    pki: Pki, tmp_path: Path, flag: str, problem: str
) -> None:
    unreadable = tmp_path / "absent.pem" if problem == "missing" else tmp_path
    settings = {**listener_tls(pki, mutual=True), flag[2:].replace("-", "_"): unreadable}

    message = startup_error(**settings)

    assert message.startswith(f"{flag} {unreadable} is unreadable"), message


def test_key_that_does_not_match_the_certificate_is_refused(pki: Pki) -> None:
    message = startup_error(tls_cert=pki.server_cert, tls_key=pki.client_key)

    assert message.startswith("--tls-key")
    assert "does not match" in message


@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key", "--tls-client-ca"])
@pytest.mark.parametrize(
    "content",
    [
        "-----BEGIN CERTIFICATE-----\n{marker}\n-----END CERTIFICATE-----\n",
        "-----BEGIN PRIVATE KEY-----\n{marker}\n-----END PRIVATE KEY-----\n",
        "{marker}\n",
    ],
    ids=["broken-certificate", "broken-key", "not-pem"],
)
def test_garbage_pem_is_refused_naming_its_flag_without_echoing_it(
    pki: Pki, tmp_path: Path, flag: str, content: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(content.format(marker=KEY_MARKER))
    settings = {**listener_tls(pki, mutual=True), flag[2:].replace("-", "_"): garbage}

    message = startup_error(**settings)

    assert message.startswith(f"{flag} {garbage}"), message
    assert KEY_MARKER not in message


def test_private_key_in_place_of_the_certificate_is_refused(pki: Pki) -> None:
    message = startup_error(tls_cert=pki.server_key, tls_key=pki.server_key)

    assert message.startswith("--tls-cert")
    assert "BEGIN" not in message


def test_encrypted_key_is_refused_without_asking_for_a_passphrase(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encrypted = _write_key(
        tmp_path / "encrypted.key", key, serialization.BestAvailableEncryption(b"passphrase")
    )

    message = startup_error(tls_cert=pki.server_cert, tls_key=encrypted)

    assert message.startswith("--tls-key")
    assert "encrypted" in message


@pytest.mark.integration
async def test_serve_with_a_mismatched_key_exits_2_with_one_stderr_line_before_listening(
    pki: Pki, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(**TOKEN_ENV, IDENTITY_GATEWAY_TLS_KEY=str(pki.client_key))

    status, stdout, stderr = await run_cli(
        "serve", "--listen", f"127.0.0.1:{port}", "--tls-cert", str(pki.server_cert), env=env
    )

    assert status == 2, stderr
    assert stdout == ""
    [line] = stderr.splitlines()
    assert "--tls-key" in line
    assert "does not match" in line
    assert "PRIVATE KEY" not in stderr
    assert_nothing_listens(port)


@pytest.mark.integration
async def test_serve_logs_that_its_listener_is_mutual_tls_and_serves_over_it(
    emulator: RunningEmulator, pki: Pki, tmp_path: Path
) -> None:
    """The whole path: IDENTITY_GATEWAY_TLS_* variables → the real serve process → an mTLS
    listener, and the start-up log says so without any key material."""
    port = free_port()
    log = tmp_path / "gateway.log"
    env = clean_env(
        IDENTITY_GATEWAY_UPSTREAM_PASSWORD="secret",
        IDENTITY_GATEWAY_TLS_CERT=str(pki.server_cert),
        IDENTITY_GATEWAY_TLS_KEY=str(pki.server_key),
        IDENTITY_GATEWAY_TLS_CLIENT_CA=str(pki.ca),
    )
    argv = ["serve", "--listen", f"127.0.0.1:{port}", "--upstream-url", emulator.url]
    argv += ["--upstream-username", "admin"]
    credentials = trusting(pki, cert=pki.client_cert, key=pki.client_key)
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(GATEWAY), *argv, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink, env=env
        )
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(
                health_pb2.HealthCheckRequest(), timeout=HANG_GUARD, wait_for_ready=True
            )
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), HANG_GUARD)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    [serving] = [record for record in records if record["message"] == "serving"]
    assert serving["listener"] == "mtls"
    key_body = pki.server_key.read_text().splitlines()[1]
    assert key_body not in text
    assert "PRIVATE KEY" not in text


# --- identity-gateway get / ack against a TLS gateway ----------------------------------------


@pytest.mark.integration
async def test_get_with_ca_file_reads_an_identity_through_a_tls_gateway(
    emulator: RunningEmulator, pki: Pki
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)

    async with running_gateway(emulator, trusting(pki), **listener_tls(pki)) as gateway:
        target = f"127.0.0.1:{gateway.server.port}"
        status, stdout, stderr = await run_cli(
            "get", wa_id, "--target", target, "--ca-file", str(pki.ca)
        )

    assert status == 0, stderr
    assert json.loads(stdout)["identity"]["hash"] == HASH
    assert stderr == ""


@pytest.mark.integration
async def test_get_without_ca_file_cannot_reach_a_tls_gateway(
    emulator: RunningEmulator, pki: Pki
) -> None:
    async with running_gateway(emulator, trusting(pki), **listener_tls(pki)) as gateway:
        target = f"127.0.0.1:{gateway.server.port}"
        status, stdout, stderr = await run_cli("get", new_wa_id(), "--target", target)

    assert status == 1
    assert stdout == ""
    assert json.loads(stderr)["code"] == "UNAVAILABLE"


@pytest.mark.integration
async def test_ack_with_a_client_certificate_acknowledges_through_a_mutual_tls_gateway(
    emulator: RunningEmulator, pki: Pki
) -> None:
    wa_id = new_wa_id()
    emulator.state.set_identity(wa_id, HASH)
    tls = listener_tls(pki, mutual=True)

    async with running_gateway(emulator, None, **tls) as gateway:
        target = f"127.0.0.1:{gateway.server.port}"
        status, stdout, stderr = await run_cli(
            "ack",
            wa_id,
            HASH,
            "--target",
            target,
            "--ca-file",
            str(pki.ca),
            "--cert-file",
            str(pki.client_cert),
            "--key-file",
            str(pki.client_key),
        )

    assert status == 0, stderr
    assert json.loads(stdout) == {}
    assert emulator.state.count("PUT", f"/v1/contacts/{wa_id}/identity") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--cert-file", "client.pem", "--key-file", "client.key"],
        ["--ca-file", "ca.pem", "--cert-file", "client.pem"],
        ["--ca-file", "absent.pem"],
    ],
    ids=["client-cert-without-ca", "cert-without-key", "unreadable-ca"],
)
async def test_get_with_incomplete_or_unreadable_tls_files_exits_2_with_one_line(
    pki: Pki, argv: list[str]
) -> None:
    located = [str(pki.ca.parent / a) if a.endswith((".pem", ".key")) else a for a in argv]
    port = free_port()

    status, stdout, stderr = await run_cli(
        "get", "16315551234", "--target", f"127.0.0.1:{port}", *located
    )

    assert status == 2, stderr
    assert stdout == ""
    [line] = stderr.splitlines()
    assert line.startswith("identity-gateway get: --")
