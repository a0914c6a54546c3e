"""The dev PKI: file modes, chains, EKUs and SANs, and real mutual TLS (ssl and gRPC)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.cli.pki import DevPki, common_name, create_dev_pki

TIMEOUT_S = 5.0


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return create_dev_pki(tmp_path / "pki", client_name="alice")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_files_have_tight_permissions_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        pki = create_dev_pki(tmp_path / "a" / "pki")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "pki") == 0o700
    assert _mode(pki.server_key) == 0o600
    assert _mode(pki.client_key) == 0o600
    assert _mode(pki.internal_key) == 0o600
    assert pki.ingest_client_key is not None and _mode(pki.ingest_client_key) == 0o600
    for cert in (
        pki.ingest_client_cert,
        pki.ca_cert,
        pki.server_cert,
        pki.client_cert,
        pki.internal_ca_cert,
        pki.internal_cert,
    ):
        assert cert.is_file() and _mode(cert) == 0o644
    assert b"PRIVATE KEY" in pki.server_key.read_bytes()
    # Only the ten PEM files: no CA key, no leftover temp files.
    assert sorted(p.name for p in pki.ca_cert.parent.iterdir()) == [
        "ca.pem",
        "client-key.pem",
        "client.pem",
        "ingest-client-key.pem",
        "ingest-client.pem",
        "internal-ca.pem",
        "internal-key.pem",
        "internal.pem",
        "server-key.pem",
        "server.pem",
    ]


def test_an_existing_directory_and_readable_key_are_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    stale = directory / "server-key.pem"
    stale.write_bytes(b"old")
    os.chmod(stale, 0o644)
    pki = create_dev_pki(directory)
    assert _mode(directory) == 0o700
    assert pki.server_key == stale and _mode(stale) == 0o600
    assert stale.read_bytes() != b"old"


def test_chains_usages_and_names(pki: DevPki) -> None:
    ca, server, client = _cert(pki.ca_cert), _cert(pki.server_cert), _cert(pki.client_cert)
    ca.verify_directly_issued_by(ca)
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for leaf in (server, client):
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature

    server_ekus = list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    client_ekus = list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert server_ekus == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert client_ekus == [ExtendedKeyUsageOID.CLIENT_AUTH]

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert common_name(pki.server_cert.read_bytes()) == "imaging-platform"


def test_the_services_have_a_ca_of_their_own_that_no_client_chains_to(pki: DevPki) -> None:
    """A client's certificate must open the gateway and nothing behind it."""
    internal_ca, internal = _cert(pki.internal_ca_cert), _cert(pki.internal_cert)
    internal.verify_directly_issued_by(internal_ca)
    for edge in (pki.client_cert, pki.server_cert):
        with pytest.raises((InvalidSignature, ValueError, TypeError)):
            _cert(edge).verify_directly_issued_by(internal_ca)
    with pytest.raises((InvalidSignature, ValueError, TypeError)):
        internal.verify_directly_issued_by(_cert(pki.ca_cert))
    ekus = list(internal.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ekus == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san = internal.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["imaging-internal", "localhost"]
    assert common_name(pki.internal_cert.read_bytes()) == "imaging-internal"


def test_validity_starts_in_the_past_and_lasts_the_given_days(tmp_path: Path) -> None:
    before = datetime.datetime.now(datetime.UTC)
    pki = create_dev_pki(tmp_path, days=3)
    for path in (pki.ca_cert, pki.server_cert, pki.client_cert):
        cert = _cert(path)
        assert cert.not_valid_before_utc <= before - datetime.timedelta(minutes=1)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 3 * 86400 + 60 <= lifetime.total_seconds() <= 3 * 86400 + 3600


def test_chains_pass_a_strict_rfc5280_verifier(pki: DevPki) -> None:
    store = verification.Store([_cert(pki.ca_cert)])
    server = _cert(pki.server_cert)
    for subject in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verifier = verification.PolicyBuilder().store(store).build_server_verifier(subject)
        assert verifier.verify(server, []) == [server, _cert(pki.ca_cert)]
    wrong_host = x509.DNSName("example.org")
    with pytest.raises(verification.VerificationError):
        verification.PolicyBuilder().store(store).build_server_verifier(wrong_host).verify(
            server, []
        )
    # The identity is the CN, not a SAN: the client certificate carries none, which the WebPKI
    # defaults require, so this one rule is relaxed; every other default still applies.
    ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
    )
    clients = (
        verification.PolicyBuilder()
        .store(store)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
        .build_client_verifier()
    )
    client = _cert(pki.client_cert)
    assert clients.verify(client, []).chain == [client, _cert(pki.ca_cert)]
    # The gateway's public certificate is a server's only; a client certificate is never a
    # server's.
    with pytest.raises(verification.VerificationError):
        clients.verify(server, [])
    localhost = x509.DNSName("localhost")
    with pytest.raises(verification.VerificationError, match="subjectAltName"):
        verification.PolicyBuilder().store(store).build_server_verifier(localhost).verify(
            client, []
        )


def test_other_hosts_get_the_right_san_types(tmp_path: Path) -> None:
    pki = create_dev_pki(tmp_path, hosts=("gateway.local", "::1", "10.0.0.7"))
    san = _cert(pki.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["gateway.local"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.7"),
    ]


@pytest.mark.parametrize(
    ("hosts", "days", "client_name"),
    [((), 7, "cli"), ("localhost", 7, "cli"), (("localhost",), 0, "cli"), (("a",), 7, "")],
)
def test_bad_arguments_are_refused(
    tmp_path: Path, hosts: tuple[str, ...], days: int, client_name: str
) -> None:
    with pytest.raises(ValueError):
        create_dev_pki(tmp_path / "pki", hosts=hosts, days=days, client_name=client_name)
    assert not (tmp_path / "pki").exists()


def test_common_name(pki: DevPki) -> None:
    assert common_name(pki.client_cert.read_bytes()) == "alice"
    default = create_dev_pki(pki.ca_cert.parent.parent / "default")
    assert common_name(default.client_cert.read_bytes()) == "imaging-cli"
    with pytest.raises(ValueError):
        common_name(b"not a certificate")


# --- mutual TLS with the ssl module -------------------------------------------------------------


@dataclass
class _Served:
    """What the one-shot server saw: the client's CN and DER cert, or why the handshake failed."""

    port: int
    thread: threading.Thread
    peer_cn: str | None = None
    peer_der: bytes | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _server_context(pki: DevPki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _client_context(ca: DevPki, own: DevPki | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca_cert))
    if own is not None:
        context.load_cert_chain(str(own.client_cert), str(own.client_key))
    return context


@pytest.fixture
def serve_once() -> Iterator[list[socket.socket]]:
    listeners: list[socket.socket] = []
    yield listeners
    for listener in listeners:
        listener.close()


def _start_server(context: ssl.SSLContext, listeners: list[socket.socket]) -> _Served:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT_S)
    listeners.append(listener)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT_S)
            with context.wrap_socket(conn, server_side=True) as tls:
                served.peer_der = tls.getpeercert(binary_form=True)
                assert served.peer_der is not None  # CERT_REQUIRED: no certificate, no handshake
                subject = x509.load_der_x509_certificate(served.peer_der).subject
                served.peer_cn = subject.rfc4514_string().removeprefix("CN=")
                tls.sendall(b"pong:" + tls.recv(4))
        except (OSError, ssl.SSLError) as error:
            served.error = error
        finally:
            served.done.set()

    served = _Served(port=listener.getsockname()[1], thread=threading.Thread(target=serve))
    served.thread.start()
    return served


def _exchange(context: ssl.SSLContext, port: int) -> bytes:
    """Send ``ping`` and return the reply; b"" where the connection failed either side."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"ping")
            return tls.recv(16)
    except (OSError, ssl.SSLError):
        return b""


def _finish(served: _Served) -> None:
    served.thread.join(TIMEOUT_S * 2)
    assert served.done.is_set(), "the test server thread hung"


def test_mutual_tls_handshake(pki: DevPki, serve_once: list[socket.socket]) -> None:
    served = _start_server(_server_context(pki), serve_once)
    assert _exchange(_client_context(pki, pki), served.port) == b"pong:ping"
    _finish(served)
    assert served.error is None
    assert served.peer_cn == "alice"
    assert served.peer_der is not None
    # The gateway's path: the peer's certificate, as PEM, to an identity.
    assert common_name(ssl.DER_cert_to_PEM_cert(served.peer_der).encode()) == "alice"


def test_handshake_without_client_certificate_fails(
    pki: DevPki, serve_once: list[socket.socket]
) -> None:
    served = _start_server(_server_context(pki), serve_once)
    assert _exchange(_client_context(pki, None), served.port) == b""
    _finish(served)
    assert isinstance(served.error, ssl.SSLError)
    assert served.peer_cn is None


def test_each_call_makes_a_new_ca(
    pki: DevPki, tmp_path: Path, serve_once: list[socket.socket]
) -> None:
    other = create_dev_pki(tmp_path / "other")
    ca, other_ca = _cert(pki.ca_cert), _cert(other.ca_cert)
    assert ca.public_key() != other_ca.public_key()
    assert ca.serial_number != other_ca.serial_number
    with pytest.raises(InvalidSignature):
        _cert(other.client_cert).verify_directly_issued_by(ca)

    # The client trusts the right server CA, but presents the other CA's certificate.
    served = _start_server(_server_context(pki), serve_once)
    assert _exchange(_client_context(pki, other), served.port) == b""
    _finish(served)
    assert isinstance(served.error, ssl.SSLError)
    assert served.peer_cn is None

    # And a client of the other CA does not trust this server.
    served = _start_server(_server_context(pki), serve_once)
    with (
        socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT_S) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        _client_context(other, other).wrap_socket(raw, server_hostname="localhost")
    _finish(served)
    assert served.error is not None


# --- mutual TLS with gRPC -----------------------------------------------------------------------


@pytest.fixture
def grpc_port(pki: DevPki) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    server.start()
    yield port
    server.stop(grace=None).wait(TIMEOUT_S)


def _check(channel: grpc.Channel) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    return response.status


def _refusal(channel: grpc.Channel) -> grpc.StatusCode:
    """The status of a Health.Check that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        _check(channel)
    assert isinstance(caught.value, grpc.Call)
    return caught.value.code()


@pytest.mark.parametrize(
    ("target", "options"),
    [
        ("127.0.0.1", ()),  # matched against the IP SAN
        ("127.0.0.1", (("grpc.ssl_target_name_override", "localhost"),)),  # the DNS SAN
    ],
)
def test_grpc_mutual_tls(
    pki: DevPki, grpc_port: int, target: str, options: tuple[tuple[str, str], ...]
) -> None:
    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    with grpc.secure_channel(f"{target}:{grpc_port}", credentials, options=options) as channel:
        assert _check(channel) == health_pb2.HealthCheckResponse.SERVING


def test_grpc_without_client_certificate_is_refused(pki: DevPki, grpc_port: int) -> None:
    credentials = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
        assert _refusal(channel) == grpc.StatusCode.UNAVAILABLE


def test_grpc_with_another_cas_client_certificate_is_refused(
    pki: DevPki, grpc_port: int, tmp_path: Path
) -> None:
    other = create_dev_pki(tmp_path / "other")
    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), other.client_key.read_bytes(), other.client_cert.read_bytes()
    )
    with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
        assert _refusal(channel) == grpc.StatusCode.UNAVAILABLE


def test_grpc_plaintext_is_refused(grpc_port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        assert _refusal(channel) == grpc.StatusCode.UNAVAILABLE
