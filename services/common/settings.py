"""Typed settings read from IMAGING_* environment variables, loaded once in each main()."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PIPELINES_DIR = Path(__file__).resolve().parents[2] / "pipelines"


class ServiceSettings(BaseSettings):
    """What every gRPC service needs: where to listen, how big messages may be, log level."""

    model_config = SettingsConfigDict(env_prefix="IMAGING_", extra="ignore")

    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 in containers)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int = Field(9100, ge=0, le=65535, description="Prometheus /metrics port")
    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0, description="gRPC message cap")
    workers: int = Field(8, gt=0, description="threads serving RPCs")
    grace_seconds: float = Field(10.0, ge=0, description="drain time on SIGTERM")
    max_connection_age_seconds: float = Field(
        60.0, gt=0, description="close client connections after this long so they re-resolve"
    )
    log_level: str = Field("INFO", description="root log level")


class DecoderSettings(ServiceSettings):
    max_encoded_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_pixels: int = Field(2**28, gt=0, description="rows x cols x frames x samples")
    max_decoded_bytes: int = Field(2 * 1024**3, gt=0)


class PipelineServiceSettings(ServiceSettings):
    pipelines_dir: Path = Field(DEFAULT_PIPELINES_DIR, description="folder of pipeline YAML")


class GatewaySettings(PipelineServiceSettings):
    decoder_address: str = "127.0.0.1:50052"
    preprocessor_address: str = "127.0.0.1:50053"
    postprocessor_address: str = "127.0.0.1:50054"
    triton_address: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint")
    call_timeout_seconds: float = Field(60.0, gt=0, description="deadline of each inner call")
    max_instances: int = Field(64, gt=0, description="instances per study")
    max_study_bytes: int = Field(1024 * 1024 * 1024, gt=0, description="bytes per study")
