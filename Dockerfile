# The platform image: the four services (gateway, decoder, preprocessor, postprocessor). Each
# container runs `python -m services.<name>.server` (the Helm chart sets the command); the CLI is
# `python -m services.cli.main` (e.g. `models rollout` in a Job). No models: Triton serves them
# from its own image, a volume or an object store.
#
#   docker build -t REGISTRY/imaging-platform:0.1.0 .
#
# Both stages start from the same base, pinned by the digest of its multi-platform index
# (python:3.11.16-slim-bookworm). To move to a newer base, read the current digest with
#   docker buildx imagetools inspect python:3.11-slim-bookworm     (or: crane digest ...)
# and replace it in both FROM lines (tests/supply_chain/test_dockerfile.py checks they agree).
#
# Every Python package comes from requirements/runtime.lock (make lock): exact versions, each
# with its sha256, wheels only, so nothing is resolved, built or run from an sdist at build time.

FROM python:3.11.16-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
# A venv without pip: the base image's pip (fixed by the digest) installs into it, so neither
# pip nor setuptools ends up in the runtime image.
RUN python -m venv --without-pip /opt/venv
COPY requirements/runtime.lock requirements/runtime.lock
RUN python -m pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes \
        --no-deps --only-binary=:all: -r requirements/runtime.lock \
    && python -m pip --python /opt/venv/bin/python check

FROM python:3.11.16-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS runtime
LABEL org.opencontainers.image.title="imaging-platform" \
      org.opencontainers.image.description="Triton-backed medical-imaging inference services" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# UID/GID 10001: the podSecurityContext of the Helm chart (runAsUser/runAsGroup 10001). No home
# directory, no login shell; --no-log-init (-l) keeps lastlog/faillog small with a high UID.
RUN groupadd --system --gid 10001 imaging \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin imaging
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The services' code and the shipped pipeline specs: services/common/settings.py looks for
# pipelines/ beside services/ (the chart mounts its ConfigMap at IMAGING_PIPELINES_DIR instead).
COPY services/ services/
COPY pipelines/ pipelines/
# The models' golden answers alone (.dockerignore): `models rollout` checks every pod against them.
COPY model_repository/ model_repository/
# protos/ stays out: the generated modules in services/api carry the descriptors.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# One image, four services: each one's gRPC API, Prometheus metrics and plaintext health port
# (services/common/listeners.py; the chart sets IMAGING_PORT / _METRICS_PORT / _HEALTH_PORT).
EXPOSE 50051 9100 9300 50052 9101 9301 50053 9102 9302 50054 9103 9303 50055 9104 9304 11112
CMD ["python", "-m", "services.gateway.server"]
