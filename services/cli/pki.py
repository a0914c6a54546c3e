"""Throwaway CAs and certificates for the local stack (``imaging-platform up --tls``).

Two trust domains, so that a client's certificate opens the gateway and nothing behind it:
the *edge* CA signs the gateway's public certificate and the clients' certificates; the
*internal* CA signs the one certificate the services and Triton present to each other. The
inner services and Triton trust only the internal CA, which no client certificate chains to
(a red team's workstation certificate once called the decoder and Triton directly).

Development only: each call mints fresh CAs whose private keys are never written anywhere, so
nothing else can ever be signed by them, and a stale directory can never be trusted by a new one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_COMMON_NAME = "imaging-platform"
CA_COMMON_NAME = "imaging-platform dev CA"
INTERNAL_CA_COMMON_NAME = "imaging-platform dev internal CA"
# The services' identity (CN and a DNS SAN): what inner services accept as a caller.
INTERNAL_COMMON_NAME = "imaging-internal"
# The client name of the ingest's worker, in its certificate and its API key alike.
INGEST_CLIENT_NAME = "imaging-ingest"
# Validity starts this far in the past, so that a peer whose clock runs a little behind
# does not reject a certificate minted a second ago.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class DevPki:
    """Where :func:`create_dev_pki` wrote the PEM files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    internal_ca_cert: Path
    internal_cert: Path
    internal_key: Path
    # The ingest worker's own client pair (edge CA): the gateway lets this name alone assert
    # a DICOM caller as a study's origin, so it is not the CLI's.
    ingest_client_cert: Path | None = None
    ingest_client_key: Path | None = None


def create_dev_pki(
    directory: Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 7,
    client_name: str = "imaging-cli",
) -> DevPki:
    """Mint the edge CA with the gateway's server pair for ``hosts`` and a client pair, and the
    internal CA with the services' pair; write them as PEM.

    ``directory`` is created (or tightened) to 0700; keys are 0600 from the moment they exist.
    Files already there are replaced atomically, never rewritten in place.
    """
    if isinstance(hosts, str):  # a bare str is a Sequence[str] of characters
        raise ValueError("hosts must be a sequence of host names, not a single string")
    if not hosts or any(not host for host in hosts):
        raise ValueError("the server certificate needs at least one non-empty host")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    if not client_name:
        raise ValueError("client_name must not be empty")

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask and skipped if it existed

    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - _CLOCK_SKEW, now + datetime.timedelta(days=days)

    ca_key, ca_cert = _ca(CA_COMMON_NAME, not_before, not_after)
    internal_ca_key, internal_ca_cert = _ca(INTERNAL_CA_COMMON_NAME, not_before, not_after)

    server_key, server_cert = _leaf(
        ca_cert,
        ca_key,
        SERVER_COMMON_NAME,
        # The gateway's public port; the services present the internal one to each other.
        [ExtendedKeyUsageOID.SERVER_AUTH],
        [_general_name(host) for host in hosts],
        not_before,
        not_after,
    )
    internal_key, internal_cert = _leaf(
        internal_ca_cert,
        internal_ca_key,
        INTERNAL_COMMON_NAME,
        # The services present it to each other (gateway -> decoder, ...) and serve with it.
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [x509.DNSName(INTERNAL_COMMON_NAME), *(_general_name(host) for host in hosts)],
        not_before,
        not_after,
    )
    client_key, client_cert = _leaf(
        ca_cert,
        ca_key,
        client_name,
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        [],
        not_before,
        not_after,
    )

    ingest_key, ingest_cert = _leaf(
        ca_cert,
        ca_key,
        INGEST_CLIENT_NAME,
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        [],
        not_before,
        not_after,
    )

    pki = DevPki(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        internal_ca_cert=directory / "internal-ca.pem",
        internal_cert=directory / "internal.pem",
        internal_key=directory / "internal-key.pem",
        ingest_client_cert=directory / "ingest-client.pem",
        ingest_client_key=directory / "ingest-client-key.pem",
    )
    _write(pki.ca_cert, _cert_pem(ca_cert), 0o644)
    _write(pki.server_key, _key_pem(server_key), 0o600)
    _write(pki.server_cert, _cert_pem(server_cert), 0o644)
    _write(pki.client_key, _key_pem(client_key), 0o600)
    _write(pki.client_cert, _cert_pem(client_cert), 0o644)
    _write(pki.internal_ca_cert, _cert_pem(internal_ca_cert), 0o644)
    _write(pki.internal_key, _key_pem(internal_key), 0o600)
    _write(pki.internal_cert, _cert_pem(internal_cert), 0o644)
    assert pki.ingest_client_key is not None and pki.ingest_client_cert is not None
    _write(pki.ingest_client_key, _key_pem(ingest_key), 0o600)
    _write(pki.ingest_client_cert, _cert_pem(ingest_cert), 0o644)
    return pki


def common_name(cert_pem: bytes) -> str:
    """The subject CN of a PEM certificate: the gateway's caller identity for a client cert."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attributes) != 1:
        # Zero or several CNs: picking one would let a certificate choose its identity.
        raise ValueError(f"expected exactly one subject CN, found {len(attributes)}")
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode()


def _ca(
    common_name: str, not_before: datetime.datetime, not_after: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that signs leaves only (its key lives in memory alone)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    usages: list[x509.ObjectIdentifier],
    alt_names: list[x509.GeneralName],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An end-entity key and certificate signed by the CA, for one TLS role."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(name), ca_cert.subject, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    """The fields every certificate here shares; SKI because strict verifiers require it."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    """An IP SAN for an address literal, a DNS SAN otherwise: TLS clients match them apart."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write via a fresh temp file, created 0600 by ``os.open``, and rename it into place.

    The data never sits in a file wider than 0600, and an existing (perhaps world-readable, or
    symlinked) file at ``path`` is replaced rather than written through.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # exact, whatever the umask; 0600 or wider for certs
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
