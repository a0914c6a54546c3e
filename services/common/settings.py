"""Typed settings read from IMAGING_* environment variables, loaded once in each main()."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.listeners import LISTENERS, NATS, TRITON, Service, loopback
from services.common.pipelines import BodyPartAliases
from services.common.tls_files import TlsFiles

DEFAULT_PIPELINES_DIR = Path(__file__).resolve().parents[2] / "pipelines"
DEFAULT_MODEL_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
_MiB = 2**20


# Decoded pixels nobody took (a request cancelled between decode and preprocess) are swept
# after this long (services/common/exchange.py).
PIXEL_EXCHANGE_TTL_SECONDS = 120.0


class DecodeLimits(BaseModel):
    """Caps the decoder checks before any pixel is decoded, so one request cannot exhaust
    memory. Defined once: DecoderSettings inherits these fields (IMAGING_MAX_PIXELS, ...) and
    hands the decoder this sub-model (:meth:`DecoderSettings.limits`)."""

    model_config = ConfigDict(frozen=True)

    max_encoded_bytes: int = Field(512 * _MiB, gt=0, description="encoded instance size")
    max_pixels: int = Field(2**28, gt=0, description="rows x cols x frames x samples")
    max_decoded_bytes: int = Field(2048 * _MiB, gt=0, description="decoded image size")
    # Decompression bombs: natively encoded size / compressed size of the pixel data (the
    # ratio a codec must expand by), checked when the image decodes to more than
    # compression_check_min_bytes (below that the allocation is harmless: a blank 512x1024
    # J2K test image legitimately compresses 1971:1). Real images stay far below the ratio.
    max_compression_ratio: float = Field(
        1000.0, gt=0, description="decoded/encoded pixel bytes (decompression-bomb guard)"
    )
    compression_check_min_bytes: int = Field(
        16 * _MiB, ge=0, description="apply max_compression_ratio above this decoded size"
    )


class ServiceSettings(BaseSettings):
    """What every gRPC service needs: where to listen, how big messages may be, log level."""

    model_config = SettingsConfigDict(env_prefix="IMAGING_", extra="ignore")

    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 in containers)")
    # Defaults: the gateway's listeners; each service's settings class has its own
    # (services/common/listeners.py).
    port: int = Field(
        LISTENERS[Service.GATEWAY].grpc, ge=0, le=65535, description="gRPC port; 0: any free one"
    )
    metrics_port: int = Field(
        LISTENERS[Service.GATEWAY].metrics, ge=0, le=65535, description="Prometheus /metrics port"
    )
    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0, description="gRPC message cap")
    workers: int = Field(8, gt=0, description="RPCs served at once")
    # Thread-pool services only (the gateway bounds whole studies instead): calls beyond
    # workers + this many are refused at once with RESOURCE_EXHAUSTED (OVERLOADED).
    max_queued_rpcs: int = Field(64, ge=0, description="RPCs that may wait for a worker")
    grace_seconds: float = Field(10.0, ge=0, description="drain time on SIGTERM")
    max_connection_age_seconds: float = Field(
        60.0, gt=0, description="close client connections after this long so they re-resolve"
    )
    # A connection past its age still finishes its calls for this long: at least the longest
    # call allowed (the gateway's IMAGING_CALL_TIMEOUT_SECONDS, 60 s), or long calls are cut.
    max_connection_age_grace_seconds: float = Field(
        65.0, ge=0, description="in-flight calls on an aged connection may finish this long"
    )
    # Clients ping to find dead peers (the gateway: every keepalive_seconds); a server answers
    # pings this often or more rarely with GOAWAY too_many_pings. Triton takes the same value
    # (--grpc-http2-min-recv-ping-interval-without-data), below every client's keepalive.
    min_ping_interval_seconds: float = Field(
        5.0, gt=0, description="accept client keepalive pings this often (no calls in flight)"
    )
    log_level: str = Field("INFO", description="root log level")
    # mTLS (services/common/tls.py): cert + key serve TLS only; a CA requires client certificates
    # signed by it. Clients use the same files to dial their peers.
    tls_cert: Path | None = Field(None, description="PEM certificate of this service")
    tls_key: Path | None = Field(None, description="PEM private key of this service")
    tls_ca: Path | None = Field(None, description="PEM CA: trust peers, require client certs")
    # Inner services: who may call, by the certificate's CN or a DNS SAN (the internal
    # certificate the gateway presents); empty: any certificate IMAGING_TLS_CA signed.
    allowed_peers: str = Field(
        "", description="comma-separated caller identities (certificate CN or DNS SAN)"
    )
    health_port: int = Field(
        0,
        ge=-1,
        le=65535,
        description="plaintext port serving grpc.health.v1 only; 0: none; -1: any free one",
    )
    # A launcher that asks for port 0 (any free one) learns the ports bound from this file,
    # written once they are (no port is picked, released and bound again: another process
    # could take it in between). Unset: not written.
    ports_file: Path | None = Field(
        None, description="JSON file to write the bound ports to (port, metrics, health)"
    )
    reflection: bool = Field(True, description="serve gRPC server reflection")
    # Decoder and preprocessor: a directory both mount on a memory-backed filesystem, through
    # which decoded pixels pass instead of gRPC (services/common/exchange.py); unset: inline.
    pixel_exchange_dir: Path | None = Field(
        None, description="shared-memory directory for decoded pixels (decoder, preprocessor)"
    )
    pixel_exchange_ttl_seconds: float = Field(
        PIXEL_EXCHANGE_TTL_SECONDS, gt=0, description="pixels nobody took are deleted after this"
    )

    def tls(self) -> TlsFiles:
        return TlsFiles(self.tls_cert, self.tls_key, self.tls_ca)

    def peer_identities(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.allowed_peers.split(",") if name.strip())


def _grpc_port(service: Service) -> Any:
    return Field(LISTENERS[service].grpc, ge=0, le=65535, description="gRPC port; 0: any free one")


def _metrics_port(service: Service) -> Any:
    return Field(LISTENERS[service].metrics, ge=0, le=65535, description="/metrics port")


class DecoderSettings(ServiceSettings, DecodeLimits):  # type: ignore[misc]
    port: int = _grpc_port(Service.DECODER)
    metrics_port: int = _metrics_port(Service.DECODER)
    # Decoding runs in worker processes (services/decoder/pool.py): a codec that crashes,
    # hangs or runs out of memory on one file costs that request and one worker, nothing else.
    decode_workers: int = Field(
        default_factory=lambda: min(4, len(os.sched_getaffinity(0))),
        gt=0,
        description="decoder worker processes; default: the CPUs this process may use, at most 4",
    )
    decode_timeout_seconds: float = Field(
        30.0, gt=0, description="a decode running longer is stopped: RESOURCE_EXHAUSTED"
    )
    decode_memory_bytes: int = Field(
        4 * 1024**3,
        ge=0,
        description="memory one decode may map on top of an idle worker (RLIMIT_AS); 0: no cap",
    )
    decode_max_tasks_per_child: int = Field(
        200, ge=0, description="replace a worker after this many decodes; 0: never"
    )

    def limits(self) -> DecodeLimits:
        """The decode limits alone (what travels to the worker processes with each file)."""
        return DecodeLimits(**{name: getattr(self, name) for name in DecodeLimits.model_fields})


class PipelineServiceSettings(ServiceSettings):
    pipelines_dir: Path = Field(DEFAULT_PIPELINES_DIR, description="folder of pipeline YAML")


class PreprocessorSettings(PipelineServiceSettings):
    port: int = _grpc_port(Service.PREPROCESSOR)
    metrics_port: int = _metrics_port(Service.PREPROCESSOR)


class PostprocessorSettings(PipelineServiceSettings):
    port: int = _grpc_port(Service.POSTPROCESSOR)
    metrics_port: int = _metrics_port(Service.POSTPROCESSOR)


class AuditTrailSettings(BaseModel):
    """Where a service appends its records to the HMAC-chained audit trail (services/common/
    audit.py): the gateway's calls and the ingest's received instances share one file, one
    chain per writer."""

    audit_log: Path | None = Field(None, description="audit trail (JSON lines, HMAC-chained)")
    audit_key_file: Path | None = Field(None, description="HMAC key of the audit trail")
    audit_chain: str = Field(
        default_factory=socket.gethostname, description="this writer's chain (pod name)"
    )


class GatewaySettings(PipelineServiceSettings, AuditTrailSettings):
    decoder_address: str = loopback(Service.DECODER)
    preprocessor_address: str = loopback(Service.PREPROCESSOR)
    postprocessor_address: str = loopback(Service.POSTPROCESSOR)
    triton_address: str = Field(f"127.0.0.1:{TRITON.grpc}", description="Triton gRPC endpoint")
    call_timeout_seconds: float = Field(60.0, gt=0, description="deadline of each inner call")
    # services/gateway/clients.py ChannelTuning: keepalive finds a frozen peer or a dead node in
    # keepalive + timeout seconds; re-resolution lets Triton pods added by the HPA get traffic.
    keepalive_seconds: float = Field(
        10.0, gt=0, description="ping peers this often (above their min ping interval)"
    )
    # Generous: the same timeout bounds every ping's answer (flow-control pings included),
    # and a gateway saturated by uploads processes answers late.
    keepalive_timeout_seconds: float = Field(
        10.0, gt=0, description="a ping unanswered this long closes the connection"
    )
    dns_refresh_seconds: float = Field(
        5.0, gt=0, description="resolve a peer's name again at most this often"
    )
    # A chest CT is hundreds to a couple of thousand slices; each pipeline's own `limits`
    # (services/common/pipelines.py StudyLimits) lower this for its studies.
    max_instances: int = Field(2048, gt=0, description="instances per study (the ceiling)")
    max_study_bytes: int = Field(1024 * 1024 * 1024, gt=0, description="bytes per study")
    max_study_decoded_bytes: int = Field(
        2 * 1024**3, gt=0, description="decoded pixel bytes per study (all its instances)"
    )
    # The gateway's side of the internal trust domain: the pair it presents to its peers and
    # Triton and the CA it trusts in them (services/common/pki.py); unset: IMAGING_TLS_*. Its
    # own IMAGING_TLS_* then belong to its public port and its clients' CA alone.
    peer_tls_cert: Path | None = Field(None, description="PEM certificate shown to peers")
    peer_tls_key: Path | None = Field(None, description="PEM private key of that certificate")
    peer_tls_ca: Path | None = Field(None, description="PEM CA the peers' certificates chain to")
    api_keys_file: Path | None = Field(
        None, description="'<client> <sha256 hex of key>' lines; set: every call needs a key"
    )
    oidc_issuer: str = Field("", description="OIDC: the issuer JWTs must name ('': no OIDC)")
    oidc_audience: str = Field("", description="OIDC: the audience JWTs must name")
    oidc_jwks_file: Path | None = Field(None, description="OIDC: the issuer's JWKS (JSON)")
    client_policy_file: Path | None = Field(
        None, description="YAML: per client, allowed pipelines, highest priority, rate limit"
    )
    peer_unreachable_seconds: float = Field(
        3.0, gt=0, description="NOT_SERVING once Triton or a peer failed probes this long"
    )
    peer_probe_interval_seconds: float = Field(1.0, gt=0, description="dependency probe period")
    # AnalyzeStream: the header is judged before a slot is taken; then every message must
    # arrive within the idle time and the whole upload within the receive time.
    stream_idle_seconds: float = Field(
        30.0, gt=0, description="a stream sending nothing this long: DEADLINE_EXCEEDED"
    )
    stream_receive_seconds: float = Field(
        300.0, gt=0, description="a stream's whole upload must arrive within this long"
    )
    max_studies_per_client: int = Field(
        0, ge=0, description="studies one client may hold (running + waiting); 0: no cap"
    )
    max_concurrent_studies: int = Field(8, gt=0, description="studies analysed at once")
    max_queued_studies: int = Field(
        128, ge=0, description="studies waiting for a slot; beyond: RESOURCE_EXHAUSTED at once"
    )
    # JSON object, e.g. {"THORAX": "CHEST", "LUNG": "CHEST", "BRST": "BREAST"}: site-specific
    # BodyPartExamined values -> the PS3.16 CID 4031 defined terms the pipelines route on
    # (BodyPartAliases in services/common/pipelines.py). Checked here, so a bad one stops the
    # gateway at start-up.
    body_part_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="BodyPartExamined value -> defined term, applied before routing",
    )

    @field_validator("body_part_aliases")
    @classmethod
    def _body_part_aliases_are_code_strings(cls, value: dict[str, str]) -> dict[str, str]:
        """IMAGING_BODY_PART_ALIASES: refused unless both sides are DICOM Code Strings."""
        return BodyPartAliases(value).as_dict()

    def body_parts(self) -> BodyPartAliases:
        return BodyPartAliases(self.body_part_aliases)

    def peer_tls(self) -> TlsFiles:
        """What the gateway dials its peers and Triton with."""
        if (self.peer_tls_cert, self.peer_tls_key, self.peer_tls_ca) == (None, None, None):
            return self.tls()
        return TlsFiles(self.peer_tls_cert, self.peer_tls_key, self.peer_tls_ca)

    @model_validator(mode="after")
    def _no_default_reflection_behind_credentials(self) -> GatewaySettings:
        """A gateway that asks for credentials does not describe itself unless told to
        (IMAGING_REFLECTION=true; reflection then needs credentials like any other call)."""
        if "reflection" not in self.model_fields_set and (
            self.api_keys_file is not None or self.oidc_issuer
        ):
            self.reflection = False
        return self


class IngestSettings(PipelineServiceSettings, AuditTrailSettings):
    """The ingest service (services/ingest): a DICOM SCP that stores studies durably, NATS
    JetStream as its queue and state engine, workers that analyse through the gateway."""

    port: int = _grpc_port(Service.INGEST)
    metrics_port: int = _metrics_port(Service.INGEST)
    roles: str = Field(
        "receiver,worker,exporter",
        description="comma-separated: receiver (DIMSE SCP), worker (analysis), exporter",
    )
    # YAML: destinations (DICOM, DICOMweb, FHIR) and the rules routing results to them
    # (services/ingest/destinations.py); unset: nothing is exported.
    destinations_file: Path | None = Field(
        None, description="where results are delivered, and which go where"
    )
    dimse_port: int = Field(
        LISTENERS[Service.INGEST].dimse or 0, ge=0, le=65535, description="DICOM port; 0: any free"
    )
    ae_title: str = Field("IMAGING", description="the SCP's own (called) AE title")
    # YAML, one entry per calling AE (services/ingest/peers.py); unset: any AE title from a
    # loopback address only.
    dicom_peers_file: Path | None = Field(
        None, description="allowed calling AE titles, their source addresses, quiet periods"
    )
    max_associations: int = Field(16, gt=0, description="DICOM associations at once")
    dimse_timeout_seconds: float = Field(
        60.0, gt=0, description="a peer silent this long mid-association is aborted"
    )
    tls_handshake_seconds: float = Field(
        10.0, gt=0, description="a TLS handshake not finished by then is dropped"
    )
    spool_dir: Path = Field(
        Path("/var/lib/imaging/ingest"), description="instances and results (stable storage)"
    )
    disk_watermark: float = Field(
        0.95, gt=0, le=1, description="above this fraction of the spool's disk used: 0xA700"
    )
    nats_url: str = Field(f"nats://127.0.0.1:{NATS.client}", description="NATS server")
    # Read once at start-up: the server must report `sync_interval: always` (engine.py).
    nats_monitoring_url: str = Field(
        f"http://127.0.0.1:{NATS.monitoring}", description="the NATS server's HTTP monitoring"
    )
    nats_timeout_seconds: float = Field(
        5.0, gt=0, description="a JetStream acknowledgement later than this: out of resources"
    )
    quiet_seconds: float = Field(
        30.0, gt=0, description="a study is complete this long after its last instance"
    )
    max_attempts: int = Field(5, gt=0, description="analyses of a job before it is dead-lettered")
    # The gateway bounds studies analysed at once across all its callers; this keeps one
    # ingest from queueing more there than it needs to keep it busy.
    analyses_at_once: int = Field(2, gt=0, description="studies one worker analyses at once")
    # The worker tells JetStream it is still busy every third of this, so only a worker that
    # died (or hangs) loses its job to another after this long.
    job_timeout_seconds: float = Field(
        60.0, gt=0, description="a job whose worker stopped answering is delivered again after"
    )
    analysis_timeout_seconds: float = Field(
        600.0, gt=0, description="deadline of one AnalyzeStream call to the gateway"
    )
    retry_seconds: float = Field(
        5.0, gt=0, description="first back-off after a failed analysis (doubles, with jitter)"
    )
    retention_seconds: float = Field(
        86400.0, ge=0, description="instances are deleted this long after the result is stored"
    )
    gateway_address: str = Field(loopback(Service.GATEWAY), description="the gateway's API")
    gateway_api_key_file: Path | None = Field(
        None, description="the worker's API key for the gateway (a file holding the key)"
    )
    # What the worker dials the gateway with: a client pair of the gateway's (edge) CA and that
    # CA; unset: IMAGING_TLS_*.
    gateway_tls_cert: Path | None = Field(None, description="PEM client certificate")
    gateway_tls_key: Path | None = Field(None, description="PEM client key")
    gateway_tls_ca: Path | None = Field(None, description="PEM CA of the gateway's certificate")
    audit_chain: str = Field(
        default_factory=lambda: f"ingest-{socket.gethostname()}",
        description="this writer's chain (pod name)",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        from services.common.dicom import checked_ae_title

        return checked_ae_title(value)

    def role_set(self) -> frozenset[str]:
        roles = frozenset(r.strip() for r in self.roles.split(",") if r.strip())
        unknown = roles - {"receiver", "worker", "exporter"}
        if unknown or not roles:
            raise ValueError("IMAGING_ROLES: one or more of receiver, worker, exporter")
        return roles

    def gateway_tls(self) -> TlsFiles:
        if (self.gateway_tls_cert, self.gateway_tls_key, self.gateway_tls_ca) == (None,) * 3:
            return self.tls()
        return TlsFiles(self.gateway_tls_cert, self.gateway_tls_key, self.gateway_tls_ca)
