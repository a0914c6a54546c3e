"""TLS for every gRPC hop, from IMAGING_TLS_CERT / IMAGING_TLS_KEY / IMAGING_TLS_CA.

With a certificate and key a service's API port serves TLS only; with a CA as well, callers
must present a certificate that CA signed (mutual TLS). Clients read the same variables: the
CA to trust the server, and the pair as their own client certificate. Servers re-read the
files when they change (each new connection checks their modification times), so a rotated
certificate needs no restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from services.common.tls_files import TlsFiles

log = logging.getLogger(__name__)


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def _stamp(files: TlsFiles) -> tuple[float, ...]:
    return tuple(
        p.stat().st_mtime_ns if p is not None else 0.0 for p in (files.cert, files.key, files.ca)
    )


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials | None:
    """TLS server credentials that follow the files on disk; None without a certificate."""
    files.check()
    if not files.serves_tls:
        return None

    def configuration() -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(_read(files.key), _read(files.cert))], root_certificates=_read(files.ca)
        )

    state = {"stamp": _stamp(files)}

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = _stamp(files)
        except OSError:
            return None  # mid-rotation: keep serving with what we have
        if stamp == state["stamp"]:
            return None
        state["stamp"] = stamp
        log.info("TLS files changed: serving the new certificate")
        return configuration()

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=files.ca is not None
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials | None:
    """Client credentials: trust IMAGING_TLS_CA, present the pair when set; None: plaintext."""
    files.check()
    if not files.dials_tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(files.ca),
        private_key=_read(files.key),
        certificate_chain=_read(files.cert),
    )
